/* The scheduler: one per thread, a FIFO run queue of coroutines, a timer heap and an event
 * backend. The loop runs on the thread's own stack; each turn it takes the run queue as a
 * list, and the coroutines on it switch straight from one to the next, the last one back to
 * the loop. Invariant: a coroutine is READY exactly while it is in the run queue (or on the
 * list the turn is running), PARKED while something else (a timer, an fd slot, a joinee)
 * holds it. Nothing on the switch path allocates. */
#include "internal.h"
#include "sys.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define WEFT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define WEFT_ASAN 1
#endif
#endif
#ifdef WEFT_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

/* ThreadSanitizer must be told about every switch of stacks, or it mixes up the histories of
 * the coroutines that share a thread. */
#if defined(__SANITIZE_THREAD__)
#define WEFT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define WEFT_TSAN 1
#endif
#endif
#ifdef WEFT_TSAN
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
static _Thread_local void *tsan_main_fiber;
#endif

#define PREFETCH_STACK_LINES 8 /* the registers and the frames back up to the handler */
#define PREFETCH_HINT_LINES 3  /* a channel's two hot lines and its timeouts */

/* Read by tools/weft-gdb.py by name, in each thread. */
static _Thread_local sched *tls_sched;
#ifdef WEFT_ASAN
static _Thread_local void *asan_main_fake;
#endif

int64_t weft_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- Choosing the backend (weft_set_backend and friends) ---- */

static _Thread_local char chosen[8]; /* "" until weft_set_backend */
static _Atomic uint64_t backends_made; /* each scheduler's backend gets a number (be_gen) */

int weft_set_backend(const char *name)
{
    if (!name || (strcmp(name, "epoll") && strcmp(name, "uring") && strcmp(name, "auto"))) {
        errno = EINVAL;
        return -1;
    }
    if (tls_sched) {
        errno = EBUSY;
        return -1;
    }
    snprintf(chosen, sizeof chosen, "%s", name);
    return 0;
}

/* Without a scheduler the answer is what one would get if it started now: a backend is made
 * to find out and freed at once, so that asking starts nothing that would stay (a thread
 * that only asks must not keep a ring and descriptors), and weft_set_backend still works. */
static _Thread_local char probe_reason[96];

static const char *probe(void)
{
    backend *b = backend_new(chosen, probe_reason, sizeof probe_reason);
    if (!b) {
        snprintf(probe_reason, sizeof probe_reason, "no backend could start: %s",
                 strerror(errno));
        return "none";
    }
    const char *name = b->ops->name; /* static storage */
    backend_free(b);
    return name;
}

const char *weft_backend_name(void)
{
    return tls_sched ? tls_sched->be->ops->name : probe();
}

const char *weft_backend_reason(void)
{
    if (tls_sched)
        return tls_sched->backend_reason;
    probe();
    return probe_reason;
}

/* ---- The scheduler's life ---- */

static void after_fork_child(void);
static void at_thread_exit(void *p);
static pthread_once_t process_once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key; /* its value: the thread's scheduler, for at_thread_exit */

static void process_init(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
    pthread_key_create(&exit_key, at_thread_exit);
}

/* For the SIGSEGV handler (stack.c), in signal context: whose stack is it? */
static const stack *running_stack(const char **name, bool *deep)
{
    sched *s = tls_sched;
    weft_co *co = s ? s->current : NULL;
    if (!co)
        return NULL;
    *name = co->name;
    const stack *d = deep_running_stack(s);
    *deep = d != NULL;
    return d ? d : co->stack;
}

/* A new backend for s (at start, or in a forked child). -1 with errno. */
static int make_backend(sched *s)
{
    s->be = backend_new(chosen, s->backend_reason, sizeof s->backend_reason);
    if (!s->be)
        return -1;
    s->be_gen = atomic_fetch_add(&backends_made, 1) + 1;
    return 0;
}

sched *sched_get(void)
{
    if (tls_sched)
        return tls_sched;
    pthread_once(&process_once, process_init);
    sched *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (stack_guard_init(running_stack) != 0 || make_backend(s) != 0) {
        int err = errno;
        free(s);
        errno = err;
        return NULL;
    }
    s->in.fd = -1;
    pthread_mutex_init(&s->in.mu, NULL);
    s->turn_ms = weft_now();
    requests_init(s);
    tls_sched = s;
    pthread_setspecific(exit_key, s);
    return s;
}

sched *sched_peek(void)
{
    return tls_sched;
}

backend *sched_backend(void)
{
    sched *s = tls_sched;
    return s && s->current ? s->be : NULL;
}

/* Free the scheduler once nothing uses it, so a program that is done with weft holds no
 * epoll fd, pooled stack or heap, nor what the quiet callbacks would give back (the send
 * slabs): they run first. A later call simply makes a new one. */
static void sched_release_if_idle(sched *s)
{
    if (s->live || s->loop_depth || s->current || s->external_waits || s->io_owned)
        return; /* (a wake-up from another thread may be on its way to the inbox; a transport
                 * may hold the backend's buffers or have an operation in flight) */
    for (unsigned i = 0; i < s->nquiet; i++)
        s->quiet_fns[i]();
    pthread_setspecific(exit_key, NULL);
    backend_free(s->be);
    if (s->in.fd >= 0)
        sys_close(s->in.fd);
    pthread_mutex_destroy(&s->in.mu);
    timer_heap_free(&s->timers);
    deep_free(s);
    stack_pool_drain();
    buf_pool_drain();
    free(s);
    tls_sched = NULL;
}

void sched_release_unused(void)
{
    if (tls_sched)
        sched_release_if_idle(tls_sched);
}

bool sched_exiting(void)
{
    return tls_sched && tls_sched->exiting;
}

/* The lists of coroutines linked through all_prev/all_next: every live one (s->all) and,
 * during thread exit, the ended ones not yet joined (s->exit_ended). */
static void all_link_into(weft_co **head, weft_co *co)
{
    co->all_prev = NULL;
    co->all_next = *head;
    if (*head)
        (*head)->all_prev = co;
    *head = co;
}

static void all_unlink_from(weft_co **head, weft_co *co)
{
    if (co->all_prev)
        co->all_prev->all_next = co->all_next;
    else
        *head = co->all_next;
    if (co->all_next)
        co->all_next->all_prev = co->all_prev;
    co->all_prev = co->all_next = NULL;
}

static void all_link(sched *s, weft_co *co)
{
    all_link_into(&s->all, co);
}

static void all_unlink(sched *s, weft_co *co)
{
    all_unlink_from(&s->all, co);
}

static void runq_push(sched *s, weft_co *co)
{
    co->next = NULL;
    if (s->runq_tail)
        s->runq_tail->next = co;
    else
        s->runq_head = co;
    s->runq_tail = co;
}

/* ---- Switching ---- */

/* A coroutine that gives up the CPU switches straight to the next one of the turn's run list
 * (s->batch), and back to the loop only when the list is empty: one switch per hand-off, not
 * two. One that ended cannot free the stack it runs on, so whoever runs next, coroutine or
 * loop, reaps it (s->reap) before anything else: nothing else ever sees it ended but not
 * reaped (weft_join frees a joinable one's struct at once). */

static void co_reap(sched *s, weft_co *co);
static void exit_list_push(sched *s, weft_co *co);

/* With thousands of connections a resumed coroutine is cold, and the switch stalls on the
 * frames it returns through. The loop fetches them while the coroutine before it runs,
 * together with the channel it waits on (its resume_hint) and the struct of the one after
 * it, so that reading its stack pointer next time does not stall either. Always inlined: GCC finds a function that only prefetches pure, and
 * a call to a pure function whose result is unused is dropped, prefetches and all. */
#if defined(__GNUC__)
__attribute__((always_inline)) static inline void prefetch_resume(const weft_co *co)
{
    if (co->next)
        __builtin_prefetch(co->next);
#if !defined(WEFT_CTX_UCONTEXT)
    const char *sp = co->ctx.sp;
    for (int i = 0; i < PREFETCH_STACK_LINES; i++)
        __builtin_prefetch(sp + 64 * i);
#endif
    /* A stale hint (its channel freed since) is harmless: a prefetch never faults. */
    const char *hint = co->resume_hint;
    if (hint)
        for (int i = 0; i < PREFETCH_HINT_LINES; i++)
            __builtin_prefetch(hint + 64 * i);
}
#else
static void prefetch_resume(const weft_co *co)
{
    (void)co;
}
#endif

static void reap_pending(sched *s)
{
    if (s->reap) {
        co_reap(s, s->reap);
        s->reap = NULL;
    }
}

/* Run in a coroutine that has just got the CPU. */
static void after_switch(sched *s, weft_co *co, void *fake_stack)
{
    s->current = co; /* only now: a fault while the switch pushed was still the last one's */
#ifdef WEFT_ASAN
    /* Only a switch from the loop tells the loop's stack bounds, needed to switch back. */
    const void *lo;
    size_t size;
    __sanitizer_finish_switch_fiber(fake_stack, s->from_main ? &s->main_stack_lo : &lo,
                                    s->from_main ? &s->main_stack_size : &size);
#else
    (void)fake_stack;
#endif
    reap_pending(s);
}

/* From a running coroutine to the next of the run list, or to the loop. done: it will never
 * run again (the sanitizer may drop its fake stack, and the next one reaps it). Every
 * coroutine leaves through the one ctx_switch call below, so the return that resumes one is
 * where the CPU's return predictor expects it, whichever way it left. */
#if defined(__GNUC__)
__attribute__((noinline)) /* inlined into its callers, it would be several call sites again */
#endif
static void switch_out(sched *s, weft_co *co, bool done)
{
    co->io_streak = 0;
    s->switches++;
    if (!co->guarded && !stack_canary_ok(co->stack))
        stack_overflow_abort(co->name); /* before anything else runs on corrupted memory */
    if (s->in_deep)
        deep_parked_abort(co->name); /* its frames on the deep-call stack would be lost */
    if (done)
        s->reap = co;
    weft_co *next = s->batch;
    ctx *to = &s->main_ctx;
    if (next) {
        s->batch = next->next;
        if (s->batch)
            prefetch_resume(s->batch);
        next->state = CO_RUNNING;
        s->from_main = false;
        to = &next->ctx;
    }
#ifdef WEFT_ASAN
    __sanitizer_start_switch_fiber(done ? NULL : &co->asan_fake_stack,
                                   next ? next->stack->lo : s->main_stack_lo,
                                   next ? next->stack->size : s->main_stack_size);
#endif
#ifdef WEFT_TSAN
    __tsan_switch_to_fiber(next ? next->tsan_fiber : tsan_main_fiber, 0);
#endif
    ctx_switch(&co->ctx, to);
    after_switch(s, co, co->asan_fake_stack);
}

static void co_main(void *p)
{
    weft_co *co = p;
    sched *s = tls_sched;
    after_switch(s, co, NULL);
    co->result = co->fn(co->arg);
    if (co->held_output)
        chan_release_held(co, sched_fork_gen()); /* its peer gets it as it reads */
    co->state = CO_DONE;
    if (co->on_end)
        co->on_end(co);
    if (co->joiner)
        sched_wake(co->joiner, 0);
    switch_out(s, co, true);
    abort(); /* unreachable: an ended coroutine is never switched to */
}

/* After a coroutine's last switch: its stack can be reused now that nothing runs on it. */
static void co_reap(sched *s, weft_co *co)
{
#ifdef WEFT_TSAN
    __tsan_destroy_fiber(co->tsan_fiber);
#endif
    timer_heap_remove(&s->timers, &co->timer); /* a lazy one may remain */
    s->live--;
    all_unlink(s, co);
    stack *st = co->stack;
    co->stack = NULL;
    bool free_struct = co->detached && !co->in_stack;
    if (!co->detached && s->exiting)
        exit_list_push(s, co); /* its handle may still be joined until the thread has gone */
    stack_give(st); /* last: an in-stack struct goes with it */
    if (free_struct)
        free(co);
}

/* From the loop into co; returns when the run list is done. */
static void run_co(sched *s, weft_co *co)
{
    co->state = CO_RUNNING;
    s->from_main = true;
    s->switches++;
#ifdef WEFT_ASAN
    __sanitizer_start_switch_fiber(&asan_main_fake, co->stack->lo, co->stack->size);
#endif
#ifdef WEFT_TSAN
    tsan_main_fiber = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(co->tsan_fiber, 0);
#endif
    ctx_switch(&s->main_ctx, &co->ctx);
#ifdef WEFT_ASAN
    __sanitizer_finish_switch_fiber(asan_main_fake, NULL, NULL);
#endif
    s->current = NULL;
    reap_pending(s);
}

/* ---- Parking and waking ---- */

/* Lazy timers. A wait that ends early (its fd became ready) leaves its timer in the heap,
 * and the next wait with a later deadline leaves it there too: a server's idle timeout,
 * renewed by every read, then costs no heap operation at all. A timer may therefore sit
 * before its coroutine's deadline, or belong to a coroutine that no longer waits with one.
 * That is sorted out only when the timer's time comes (expire_timers), or when it is first
 * and the loop is about to sleep (idle_timers_top). Only a deadline earlier than the timer
 * moves it. */
static int arm_timer(sched *s, weft_co *co, int64_t deadline)
{
    if (timer_armed(&co->timer)) {
        if (co->timer.deadline <= deadline)
            return 0;
        timer_heap_remove(&s->timers, &co->timer);
    }
    co->timer.deadline = deadline;
    return timer_heap_add(&s->timers, &co->timer);
}

static weft_co *timer_owner(timer *t)
{
    return (weft_co *)((char *)t - offsetof(weft_co, timer));
}

static bool waits_with_deadline(const weft_co *co)
{
    return co->state == CO_PARKED && co->deadline >= 0;
}

/* With nothing runnable: the earliest timer, after dropping those whose coroutine waits
 * without a deadline (so that a real deadlock is still seen). It may be early: then the loop
 * wakes once for nothing and expire_timers moves it. */
static timer *idle_timers_top(sched *s)
{
    timer *t;
    while ((t = timer_heap_peek(&s->timers)) && !waits_with_deadline(timer_owner(t)))
        timer_heap_remove(&s->timers, t);
    return t;
}

/* Park the running coroutine; kind and on say what it waits on (weft_dump), in two stores:
 * the kind goes with the loop's clock, which tells the dump for how long. */
static int park(uint8_t kind, wait_on on, int64_t deadline, bool cancellable)
{
    sched *s = tls_sched;
    weft_co *co = s->current;

    /* Held output goes to the channel's transport, which sends it as the peer reads whatever
     * we wait on; not by a send that waits here: a wait may already be registered, and a
     * nested one could take its wake-up. */
    if (co->held_output)
        chan_release_held(co, sched_fork_gen());

    if (cancellable && co->cancelled) {
        errno = ECANCELED;
        return -1;
    }
    if (deadline >= 0 && arm_timer(s, co, deadline) != 0)
        return -1;
    co->deadline = deadline;
    co->state = CO_PARKED;
    co->nocancel = !cancellable;
    co->wake_errno = 0;
    co->wait_mark = wait_mark(kind, s->turn_ms);
    co->wait_on = on;
    switch_out(s, co, false);
    co->nocancel = false;
    if (co->wake_errno) {
        errno = co->wake_errno;
        return -1;
    }
    return 0;
}

int sched_park_on(uint8_t kind, const void *obj, int64_t deadline, bool cancellable)
{
    return park(kind, (wait_on){.obj = obj}, deadline, cancellable); /* (a jump: same order) */
}

int sched_park(int64_t deadline)
{
    return sched_park_on(WAIT_OTHER, NULL, deadline, true);
}

int sched_park_nocancel(int64_t deadline)
{
    return sched_park_on(WAIT_OTHER, NULL, deadline, false);
}

int sched_park_io(uint8_t kind, wait_on on, int64_t deadline, bool cancellable)
{
    sched *s = tls_sched;
    s->io_waiting++;
    int rc = park(kind, on, deadline, cancellable);
    s->io_waiting--;
    return rc;
}

void sched_resume_hint(const void *p)
{
    sched *s = tls_sched;
    if (s && s->current)
        s->current->resume_hint = p;
}

void sched_wake(weft_co *co, int err)
{
    sched *s = tls_sched;
    if (co->state != CO_PARKED)
        return;
    co->deadline = -1; /* its timer, if any, stays in the heap (lazy) */
    co->wake_errno = err;
    co->state = CO_READY;
    runq_push(s, co);
}

/* ---- The loop ---- */

/* Returns whether it read the clock (then s->turn_ms is up to date). */
static bool expire_timers(sched *s)
{
    if (!timer_heap_peek(&s->timers))
        return false;
    int64_t now = weft_now();
    s->turn_ms = now;
    timer *t;
    while ((t = timer_heap_peek(&s->timers)) && t->deadline <= now) {
        weft_co *co = timer_owner(t);
        timer_heap_remove(&s->timers, t);
        if (!waits_with_deadline(co))
            continue; /* stale */
        if (co->deadline <= now) {
            sched_wake(co, ETIMEDOUT);
        } else {
            t->deadline = co->deadline; /* renewed since it was armed */
            timer_heap_add(&s->timers, t); /* cannot fail: the heap just had room for it */
        }
    }
    return true;
}

/* How long the loop may sleep in the backend: not at all with work queued, else until the
 * next timer or limit (an outer deadline), whichever is first. */
static int poll_timeout(sched *s, int64_t limit)
{
    if (s->runq_head)
        return 0;
    timer *t = idle_timers_top(s);
    int64_t until = t ? t->deadline : -1;
    if (limit >= 0 && (until < 0 || limit < until))
        until = limit;
    if (until < 0)
        return -1;
    int64_t ms = until - weft_now();
    if (ms <= 0)
        return 0;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

#ifdef WEFT_TSAN
/* TSan runs a handler for a signal that came outside a blocking call later, at the next call
 * it intercepts, and keeps it with the running fiber: a coroutine that then ended or parked
 * for good took the signal with it, and SIGTERM never stopped the server (test_chat), nor
 * SIGUSR1 dumped it (test_examples). So in TSan builds the signals weft handles (SIGINT and
 * SIGTERM once serve.c's handlers are in, weft_dump_on_signal's) go only to the loop's fiber:
 * they are blocked while coroutines run. *held gets those this blocked, to unblock
 * afterwards, so a mask a coroutine set meanwhile stays. (Threads and processes started from
 * a coroutine inherit the block: a TSan-build limitation.) */
static _Atomic uint64_t handled_signals; /* bit sig - 1 */

static void tsan_hold_signals(sigset_t *held)
{
    sigemptyset(held);
    uint64_t want = atomic_load_explicit(&handled_signals, memory_order_relaxed);
    if (!want)
        return;
    sigset_t now;
    pthread_sigmask(SIG_SETMASK, NULL, &now);
    for (int sig = 1; sig <= 64; sig++)
        if ((want >> (sig - 1) & 1) && !sigismember(&now, sig))
            sigaddset(held, sig);
    pthread_sigmask(SIG_BLOCK, held, NULL);
}
#endif

void sched_note_handled_signal(int sig)
{
#ifdef WEFT_TSAN
    if (sig >= 1 && sig <= 64)
        atomic_fetch_or(&handled_signals, (uint64_t)1 << (sig - 1));
#else
    (void)sig;
#endif
}

/* A coarse reading of the monotonic clock: a few ns instead of a few tens, to within a tick. */
static int64_t coarse_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int sched_on_quiet(sched_quiet_fn fn)
{
    sched *s = sched_peek();
    if (!s)
        return 0;
    for (unsigned i = 0; i < s->nquiet; i++)
        if (s->quiet_fns[i] == fn)
            return 0;
    if (s->nquiet == SCHED_QUIET_FNS) {
        errno = ENOSPC;
        return -1;
    }
    s->quiet_fns[s->nquiet++] = fn;
    return 0;
}

/* Before the loop sleeps for timeout ms (-1: until an event): once it has switched to no
 * coroutine for SCHED_QUIET_MS, call the quiet callbacks, once per quiet spell; until then,
 * sleep no longer than that. Returns the timeout to sleep with. */
static int quiet_check(sched *s, int timeout)
{
    int64_t now = coarse_now_ms();
    if (s->switches != s->quiet_switches) {
        s->quiet_switches = s->switches;
        s->quiet_since = now;
        s->quiet_done = false;
    }
    if (s->quiet_done)
        return timeout;
    int64_t left = s->quiet_since + SCHED_QUIET_MS - now;
    if (left > 0)
        return timeout >= 0 && timeout <= left ? timeout : (int)left;
    s->quiet_done = true;
    for (unsigned i = 0; i < s->nquiet; i++)
        s->quiet_fns[i]();
    return timeout;
}

/* One turn: collect I/O events and expired timers, then run every coroutine that was
 * runnable at that moment once (those made runnable meanwhile wait for the next turn, so a
 * coroutine that keeps yielding cannot starve I/O). Returns -1/EDEADLK if no coroutine can
 * ever be woken again. */
static int loop_turn(sched *s, bool may_block, int64_t limit)
{
    int timeout = may_block ? poll_timeout(s, limit) : 0;

    /* (With no coroutine at all this is a wait outside any coroutine that nothing can end.) */
    if (timeout < 0 && !s->io_waiting && !s->external_waits) {
        errno = EDEADLK; /* everyone is parked on something no event can end */
        return -1;
    }
    /* With work queued and nothing that only the kernel can report or carry out (output a
     * transport queued, operations it started), skip the system call. */
    bool quiet = timeout == 0 && !s->io_waiting && !s->external_waits && !s->io_owned;
    if (timeout != 0 && !s->requests_watched)
        requests_watch(s); /* so that a signal's request ends the sleep */
    if (timeout != 0 && s->nquiet)
        timeout = quiet_check(s, timeout);
    if (!quiet && backend_poll(s->be, timeout) != 0)
        return -1;
    s->turns++;
    /* The loop's clock, which a park notes (weft_dump's "for how long"): the timers' reading
     * when there are timers; else a coarse one after a poll, a system call anyway, and every
     * 64 turns of a loop that makes none. So a park's time is that of the start of its turn,
     * to within a few ms, and costs the park a load, not a clock reading. */
    if (!expire_timers(s) && (!quiet || (s->turns & 63) == 0))
        s->turn_ms = coarse_now_ms();
    requests_answer(s);

    /* The coroutines run one after the other, each switching straight to the next
     * (switch_out); the loop gets the CPU back when the list is done. */
    weft_co *co = s->runq_head;
    s->runq_head = s->runq_tail = NULL;
    if (co) {
        s->batch = co->next;
        if (s->batch)
            prefetch_resume(s->batch);
#ifdef WEFT_TSAN
        sigset_t held;
        tsan_hold_signals(&held);
#endif
        run_co(s, co);
#ifdef WEFT_TSAN
        pthread_sigmask(SIG_UNBLOCK, &held, NULL);
#endif
    }
    return 0;
}

int weft_run(void)
{
    sched *s = sched_get();
    if (!s)
        return -1;
    if (s->current) {
        errno = EDEADLK;
        return -1;
    }
    int rc = 0;
    s->stop = false;
    s->loop_depth++;
    while (!s->stop && s->live > 0 && rc == 0)
        rc = loop_turn(s, true, -1);
    s->loop_depth--;
    s->stop = false;
    sched_release_if_idle(s);
    return rc;
}

void weft_stop(void)
{
    if (tls_sched)
        tls_sched->stop = true;
}

size_t weft_count(void)
{
    return tls_sched ? tls_sched->live : 0;
}

/* ---- Coroutines ---- */

#ifndef WEFT_CTX_UCONTEXT
_Static_assert(offsetof(weft_co, stack) <= 64, "what a switch touches in one line");
#endif

static _Atomic uint64_t coroutines_made; /* for ids: unique in the process */

static weft_co *co_alloc(void)
{
    size_t size = CO_ROOM; /* aligned_alloc wants a multiple of the alignment */
    weft_co *co = aligned_alloc(64, size);
    if (co)
        memset(co, 0, sizeof *co);
    return co;
}

weft_co *weft_spawn(weft_fn fn, void *arg)
{
    return weft_spawn_ex(fn, arg, NULL);
}

/* The body of weft_spawn_ex, with room bytes (rounded up to 64) kept at the top of a detached
 * coroutine's stack, just below its record: *roomp points to them (zeroed), and they are
 * fn's argument. */
static weft_co *spawn(weft_fn fn, void *arg, const weft_spawn_opts *opts, size_t room,
                      void **roomp)
{
    sched *s = sched_get();
    if (!s)
        return NULL;
    size_t size = opts && opts->stack_size ? opts->stack_size : WEFT_STACK_DEFAULT;
    if (size < WEFT_STACK_MIN)
        size = WEFT_STACK_MIN;
    room = (room + 63) / 64 * 64;

    stack *st = stack_take(size, opts ? opts->guard_size : 0, CO_ROOM + room);
    if (!st)
        return NULL; /* ENOMEM, or EINVAL for sizes no mapping could have */
    /* A detached coroutine's struct lives at the top of its own stack, in the page its first
     * frames touch anyway: no allocation, and resuming it touches one page fewer. A joinable
     * one's outlives its stack (the handle stays valid until weft_join), so it is allocated. */
    bool detached = opts && opts->detached;
    char *top = (char *)st->lo + st->size;
    weft_co *co = detached ? (weft_co *)(top - CO_ROOM) : co_alloc();
    if (!co) {
        stack_give(st);
        return NULL;
    }
    if (detached)
        memset(co, 0, sizeof *co);
    if (room) {
        arg = top - CO_ROOM - room;
        memset(arg, 0, room);
        *roomp = arg;
    }
    co->in_stack = detached;
    co->id = atomic_fetch_add_explicit(&coroutines_made, 1, memory_order_relaxed) + 1;
    co->stack = st;
    co->guarded = co->stack->guarded;
    const char *name = opts && opts->name ? opts->name : "co";
    strncpy(co->name, name, sizeof co->name - 1);
    co->detached = detached;
    co->fn = fn;
    co->arg = arg;
    co->timer.index = SIZE_MAX;
    co->deadline = -1;
    co->state = CO_READY;
    ctx_make(&co->ctx, st->lo, st->size - CO_ROOM - room, co_main, co);
#ifdef WEFT_TSAN
    co->tsan_fiber = __tsan_create_fiber(0);
#endif
    s->live++;
    all_link(s, co);
    runq_push(s, co);
    return co;
}

weft_co *weft_spawn_ex(weft_fn fn, void *arg, const weft_spawn_opts *opts)
{
    return spawn(fn, arg, opts, 0, NULL);
}

weft_co *co_spawn_room(weft_fn fn, const weft_spawn_opts *opts, size_t room, void **roomp)
{
    weft_spawn_opts o = {0};
    if (opts)
        o = *opts;
    o.detached = 1;
    return spawn(fn, NULL, &o, room, roomp);
}

static void exit_list_remove(sched *s, weft_co *co);

int weft_detach(weft_co *co)
{
    if (co->detached || co->joiner || co->joined_outside) {
        errno = EINVAL;
        return -1;
    }
    if (co->state == CO_DONE) {
        exit_list_remove(tls_sched, co);
        free(co); /* already reaped: only the handle was left */
        return 0;
    }
    co->detached = true;
    return 0;
}

/* Outside any coroutine, a wait runs the loop until *flag is set (or co has ended, when
 * given) or the deadline. */
static int drive_until(sched *s, const bool *flag, const weft_co *co, int64_t deadline)
{
    int rc = 0;
    s->loop_depth++;
    while (!(flag && *flag) && !(co && co->state == CO_DONE) && rc == 0) {
        if (deadline >= 0 && weft_now() >= deadline) {
            errno = ETIMEDOUT;
            rc = -1;
            break;
        }
        rc = loop_turn(s, true, deadline);
    }
    s->loop_depth--;
    return rc;
}

int sched_drive(const bool *flag, int64_t deadline)
{
    sched *s = sched_get();
    if (!s)
        return -1;
    int rc = drive_until(s, flag, NULL, deadline);
    sched_release_if_idle(s);
    return *flag ? 0 : rc;
}

int sched_drive_io(const bool *flag, int64_t deadline)
{
    sched *s = sched_get();
    if (!s)
        return -1;
    s->io_waiting++; /* the backend may end this wait: not a deadlock */
    int rc = drive_until(s, flag, NULL, deadline);
    s->io_waiting--;
    sched_release_if_idle(s);
    return *flag ? 0 : rc;
}

/* ---- Thread exit ----
 * A thread that ends while coroutines of its scheduler are parked would leave the scheduler
 * (backend descriptors, ring, stacks) behind for good. So at its exit they are cancelled and
 * the loop runs until they have ended, letting them close what they hold (a server's
 * handlers close their channels, its acceptor its listener) -- for at most EXIT_GRACE_MS.
 * Those that still have not ended are dropped: their stacks and structs freed, what they
 * hold left as it is. A joinable coroutine that ends meanwhile keeps its struct while a
 * coroutine may still join it (a joiner whose join was cancelled may try again), in the
 * exit list; whatever nobody joined is freed at the end. Only a scheduler that another
 * thread still owes a wake-up is left entirely, as freeing it would be unsafe. */
#define EXIT_GRACE_MS 1000

static void co_drop(sched *s, weft_co *co);

/* The exit list: joinable coroutines that ended during the thread's exit, not yet joined,
 * linked through their all_ links (free once a coroutine is reaped). */
static void exit_list_push(sched *s, weft_co *co)
{
    co->exit_listed = true;
    all_link_into(&s->exit_ended, co);
}

static void exit_list_remove(sched *s, weft_co *co)
{
    if (!co->exit_listed)
        return;
    co->exit_listed = false;
    all_unlink_from(&s->exit_ended, co);
}

static void at_thread_exit(void *p)
{
    sched *s = p;
    if (s != tls_sched || s->current)
        return; /* (pthread_exit from inside a coroutine: nothing can be unwound safely) */
    s->exiting = true;
    for (weft_co *co = s->all; co; co = co->all_next)
        weft_cancel(co);
    int64_t deadline = weft_now() + EXIT_GRACE_MS;
    s->loop_depth++;
    while (s->live > 0 && weft_now() < deadline && loop_turn(s, true, deadline) == 0) {
    }
    s->loop_depth--;
    if (s->external_waits)
        return;
    /* The kernel's operations may point into the stacks about to go (a receive in a
     * handler's room, an accept's address): they end first. Their callbacks may make
     * coroutines runnable, which never run now. */
    if (s->be->ops->quiesce)
        s->be->ops->quiesce(s->be);
    s->runq_head = s->runq_tail = s->batch = NULL;
    while (s->all)
        co_drop(s, s->all);
    while (s->exit_ended) { /* nothing runs any more: nobody can join them now */
        weft_co *co = s->exit_ended;
        exit_list_remove(s, co);
        free(co);
    }
    s->io_owned = 0; /* (the backend's end cancels what transports still have in flight) */
    sched_release_if_idle(s);
}

/* Free a coroutine that will never run again (thread exit), as if it had ended detached:
 * whoever could join it is dropped too, or ended. */
static void co_drop(sched *s, weft_co *co)
{
    co->state = CO_DONE;
    co->detached = true;
    co_reap(s, co);
}

/* ---- fork() ----
 * A child has only the thread that forked, with a copy of its scheduler, whose backend (an
 * epoll instance, a ring) it shares with the parent: it must neither take the parent's events
 * nor run copies of the parent's coroutines. So in the child the scheduler gets a backend of
 * its own, and every coroutine but the one that called fork (if one did) becomes an orphan:
 * never run, never woken, its memory left as it is (objects may still point into its stack).
 * The forking coroutine goes on as the only one; when it ends, the child's weft_run returns.
 * (No registration is removed from the shared instance: the child only closes its copies.) */
static uint64_t forks_seen; /* forked children this process descends from (see chan.c) */

uint64_t sched_fork_gen(void)
{
    return forks_seen;
}

static void after_fork_child(void)
{
    forks_seen++;
    sched *s = tls_sched;
    if (!s)
        return;
    weft_co *self = s->current, *next;
    for (weft_co *co = s->all; co; co = next) {
        next = co->all_next;
        if (co != self) {
            co->state = CO_ORPHAN;
            co->all_prev = co->all_next = NULL;
        }
    }
    s->all = NULL;
    s->live = 0;
    if (self) {
        all_link(s, self);
        s->live = 1;
        self->timer.index = SIZE_MAX;
    }
    s->runq_head = s->runq_tail = s->batch = NULL;
    s->timers.len = 0; /* the orphans' timers go; they are never looked at again */
    /* The orphans' waits on other threads are never ended; the thread's own wait (outside
     * any coroutine: it is running the loop for it now) goes on, and will be ended. (The
     * inbox, its eventfd and the wake-ups queued there are inbox.c's: see inbox_fork_child,
     * which runs after this.) */
    s->external_waits = s->outside_waits;
    s->io_waiting = 0;
    s->io_owned = 0; /* (the parent's ring, buffers and operations are not ours) */
    s->stop = false;
    s->requests_watched = false; /* (by the old backend) */
    s->be->ops->abandon(s->be);
    if (make_backend(s) != 0) {
        static const char msg[] = "weft: no event backend in a forked child\n";
        ssize_t w = sys_write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)w;
        abort();
    }
}

int weft_join(weft_co *co, void **result, int64_t deadline)
{
    sched *s = tls_sched;
    weft_co *self = s ? s->current : NULL;
    if (co == self) {
        errno = EDEADLK;
        return -1;
    }
    if (co->detached || co->joiner || co->joined_outside) {
        errno = EINVAL;
        return -1;
    }
    if (co->state != CO_DONE) {
        int rc;
        if (self) {
            co->joiner = self;
            rc = sched_park_on(WAIT_JOIN, co, deadline, true);
            co->joiner = NULL;
        } else {
            co->joined_outside = true;
            rc = drive_until(s, NULL, co, deadline);
            co->joined_outside = false;
        }
        if (rc != 0 && co->state != CO_DONE) /* it ended in the same turn: that counts */
            return -1;
    }
    if (result)
        *result = co->result;
    exit_list_remove(s, co);
    free(co);
    if (!self && tls_sched)
        sched_release_if_idle(tls_sched);
    return 0;
}

void weft_cancel(weft_co *co)
{
    if (co->state == CO_DONE)
        return;
    co->cancelled = true;
    if (co->state == CO_PARKED && !co->nocancel)
        sched_wake(co, ECANCELED);
}

weft_co *weft_self(void)
{
    return tls_sched ? tls_sched->current : NULL;
}

const char *weft_name(const weft_co *co)
{
    return co->name;
}

int weft_cancelled(void)
{
    weft_co *co = weft_self();
    return co && co->cancelled;
}

/* Let the others run. Held line output goes first (without waiting, as at a park): the
 * others may be waiting for it. */
static void yield_now(sched *s, weft_co *co)
{
    if (co->held_output)
        chan_release_held(co, sched_fork_gen());
    co->state = CO_READY;
    runq_push(s, co);
    switch_out(s, co, false);
}

int weft_yield(void)
{
    sched *s = tls_sched;
    weft_co *co = s ? s->current : NULL;
    if (!co) {
        /* Outside: give the coroutines one turn, without waiting for events. */
        if (!s)
            return 0;
        s->loop_depth++;
        int rc = loop_turn(s, false, -1);
        s->loop_depth--;
        sched_release_if_idle(s);
        return rc;
    }
    if (co->cancelled) {
        errno = ECANCELED;
        return -1;
    }
    yield_now(s, co);
    return 0;
}

void sched_spend_io(void)
{
    sched *s = tls_sched;
    weft_co *co = s ? s->current : NULL;
    if (co && ++co->io_streak >= IO_BUDGET)
        yield_now(s, co); /* a yield that a cancel does not skip */
}

int weft_sleep(int64_t ms)
{
    return weft_sleep_until(weft_now() + (ms > 0 ? ms : 0));
}

int weft_sleep_until(int64_t deadline)
{
    if (!weft_self()) {
        int64_t left;
        while ((left = deadline - weft_now()) > 0)
            sched_poll_outside(NULL, 0, left > INT_MAX ? INT_MAX : (int)left); /* (a dump) */
        return 0;
    }
    if (sched_park_on(WAIT_SLEEP, NULL, deadline, true) == 0 || errno == ETIMEDOUT)
        return 0;
    return -1;
}
