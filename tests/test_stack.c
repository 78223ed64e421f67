/* Stacks: guard page at the overflow end, reuse through the pool, per-spawn sizes, and an
 * overflow that ends the process with a message naming the coroutine. */
#include "harness.h"
#include "../src/internal.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void guard_page_below_every_stack(void)
{
    stack *s = stack_take(64 * 1024, 0, 0);
    /* (the stack's own record takes the top 64 bytes of the mapping) */
    CHECK(s && s->size < 64 * 1024 && s->size >= 64 * 1024 - 128);
    memset(s->lo, 1, s->size); /* the whole usable range is writable */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL);
        ((volatile char *)s->lo)[-1] = 1; /* must fault */
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
    stack_give(s);
    stack_pool_drain();
}

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
#include <sanitizer/asan_interface.h>
#define QUARANTINED 8 /* stack.c: QUARANTINE */
#else
#define QUARANTINED 0
#endif

static void pool_reuses_stacks_of_the_same_size(void)
{
    stack *a = stack_take(WEFT_STACK_DEFAULT, 0, 0);
    CHECK(a);
    void *lo = a->lo;
    stack_give(a);
#ifdef TEST_ASAN
    /* Poisoned and kept out of use for the next QUARANTINED gives: a pointer into an ended
     * coroutine's stack is reported when used, not aimed at the next coroutine. */
    CHECK(__asan_address_is_poisoned(lo));
    stack *other[QUARANTINED];
    for (int i = 0; i < QUARANTINED; i++) {
        other[i] = stack_take(WEFT_STACK_DEFAULT, 0, 0);
        CHECK(other[i] && other[i]->lo != lo);
    }
    for (int i = 0; i < QUARANTINED; i++)
        stack_give(other[i]); /* (the last one sends a to the pool) */
#endif
    stack *b = stack_take(WEFT_STACK_DEFAULT, 0, 0);
    CHECK(b && b->lo == lo); /* came back from the pool */
#ifdef TEST_ASAN
    CHECK(!__asan_address_is_poisoned(lo));
#endif
    stack *c = stack_take(128 * 1024, 0, 0);
    CHECK(c && c->lo != lo && c->size < 128 * 1024 && c->size >= 128 * 1024 - 128);
    stack_give(b);
    stack_give(c);
    stack_pool_drain();
}

static void *use_stack(void *arg)
{
    size_t n = (size_t)arg;
    volatile char *buf = __builtin_alloca(n);
    for (size_t i = 0; i < n; i += 512)
        buf[i] = (char)i;
    return (void *)(uintptr_t)buf[0];
}

static void spawn_honours_stack_size(void)
{
    /* 900 KiB of locals fit in a 1 MiB stack (they would overflow the default 256 KiB). */
    weft_spawn_opts o = {.name = "big", .stack_size = 1024 * 1024};
    weft_co *co = weft_spawn_ex(use_stack, (void *)(uintptr_t)(900 * 1024), &o);
    CHECK(co);
    CHECK(weft_join(co, NULL, -1) == 0);
    /* Sizes below the minimum are rounded up, not refused. */
    o.stack_size = 100;
    co = weft_spawn_ex(use_stack, (void *)(uintptr_t)4096, &o);
    CHECK(co && weft_join(co, NULL, -1) == 0);
}

/* Sizes no mapping could hold are refused with EINVAL, for spawns and servers alike. Before
 * the fix they were rounded up to pages, which wrapped: SIZE_MAX became a stack of 0 bytes
 * (a crash at spawn) and a guard of SIZE_MAX no guard at all. */
static void no_handler(weft_chan *c, void *arg)
{
    (void)c, (void)arg;
}

static void absurd_stack_and_guard_sizes_are_refused(void)
{
    const size_t absurd[] = {SIZE_MAX, SIZE_MAX - 4095, SIZE_MAX / 2, SIZE_MAX / 4 + 1};
    for (size_t i = 0; i < sizeof absurd / sizeof absurd[0]; i++) {
        weft_spawn_opts o = {.stack_size = absurd[i]};
        errno = 0;
        CHECK(weft_spawn_ex(use_stack, NULL, &o) == NULL && errno == EINVAL);
        o = (weft_spawn_opts){.guard_size = absurd[i], .detached = 1};
        errno = 0;
        CHECK(weft_spawn_ex(use_stack, NULL, &o) == NULL && errno == EINVAL);
    }
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    weft_server_opts so = {.stack_size = SIZE_MAX};
    CHECK(weft_server_start_ex(l, no_handler, NULL, &so) == NULL && errno == EINVAL);
    so = (weft_server_opts){.guard_size = SIZE_MAX};
    CHECK(weft_server_start_ex(l, no_handler, NULL, &so) == NULL && errno == EINVAL);
    CHECK(weft_listener_close(l) == 0);
    /* Nothing was left half made: ordinary spawns go on. */
    weft_co *co = weft_spawn(use_stack, (void *)(uintptr_t)4096);
    CHECK(co && weft_join(co, NULL, -1) == 0 && weft_count() == 0);
}

static volatile long overflow_limit = 1L << 40; /* never reached: the stack ends first */

static long overflow(long n)
{
    volatile char pad[256];
    pad[0] = (char)n;
    if (n >= overflow_limit)
        return 0;
    return overflow(n + 1) + pad[0];
}

static void *overflower(void *arg)
{
    (void)arg;
    return (void *)overflow(0);
}

/* Run fn in a child process with its stderr captured into out; returns the wait status. */
static int run_child(void (*fn)(void), char *out, size_t cap)
{
    int err[2];
    CHECK(pipe(err) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(err[1], 2);
        fn();
        _exit(0); /* not reached in these tests: the process is meant to die */
    }
    close(err[1]);
    size_t n = 0;
    ssize_t r;
    while (n < cap - 1 && (r = read(err[0], out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(err[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    return status;
}

static void spawn_overflower(void)
{
    weft_spawn_opts o = {.name = "runaway-recursion", .stack_size = 64 * 1024};
    CHECK(weft_spawn_ex(overflower, NULL, &o));
    weft_run();
}

static void overflow_is_reported_with_the_coroutine_name(void)
{
    char out[4096];
    int status = run_child(spawn_overflower, out, sizeof out);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
    CHECK(strstr(out, "stack overflow in coroutine 'runaway-recursion'"));
}

/* ---- Frames larger than the guard gap ---- */

/* The audit's case: a 300 KiB local array on a 256 KiB stack, of which only the low 16 KiB
 * are written. Unprobed, the frame jumps over the guard page into the stack mapped below (a
 * neighbour's) and corrupts it silently; with -fstack-clash-protection (how weft and its
 * tests are built) the frame's pages are touched in order and the guard reports it. */
static volatile char *victim_canary;

static void *big_frame(void *arg)
{
    (void)arg;
    volatile char a[300 * 1024];
    for (size_t i = 0; i < 16 * 1024; i++)
        a[i] = 0x5a;
    return (void *)(uintptr_t)(a[0] + a[sizeof a - 1]);
}

static void *victim(void *arg)
{
    (void)arg;
    volatile char mine[64];
    memset((char *)mine, 0x11, sizeof mine);
    victim_canary = mine;
    weft_yield(); /* big_frame runs now */
    for (size_t i = 0; i < sizeof mine; i++)
        if (mine[i] != 0x11)
            _exit(3); /* corrupted and never told */
    return NULL;
}

static void spawn_big_frame_over_a_neighbour(void)
{
    weft_spawn_opts b = {.name = "big-frame", .detached = 1};
    weft_spawn_opts v = {.name = "neighbour", .detached = 1};
    CHECK(weft_spawn_ex(big_frame, NULL, &b)); /* mapped first, so the next maps below it */
    CHECK(weft_spawn_ex(victim, NULL, &v));
    weft_run();
}

static void a_frame_larger_than_the_guard_is_reported(void)
{
#if defined(__riscv) && !defined(__clang__) && __GNUC__ < 14
    printf("  skipped: GCC %d does not probe large frames on riscv64\n", __GNUC__);
    return;
#endif
    char out[4096];
    int status = run_child(spawn_big_frame_over_a_neighbour, out, sizeof out);
    CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 3)); /* the neighbour was hit */
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
    CHECK(strstr(out, "stack overflow in coroutine 'big-frame'"));
}

/* For code built without the probes, a wider guard gap: a write 40 KiB below the stack (what
 * an unprobed 40 KiB frame does) lands in a 64 KiB gap and is reported. */
static void *jump_below(void *arg)
{
    (void)arg;
    stack *st = weft_self()->stack;
    CHECK(st->guard >= 64 * 1024);
    ((volatile char *)st->lo)[-40 * 1024] = 1;
    return NULL;
}

static void spawn_jumper(void)
{
    weft_spawn_opts o = {.name = "wide-gap", .guard_size = 60 * 1024 + 1}; /* rounds up */
    CHECK(weft_spawn_ex(jump_below, NULL, &o));
    weft_run();
}

static void the_guard_gap_is_settable(void)
{
    if (getenv("WEFT_STACK_GUARD")) {
        printf("  skipped: WEFT_STACK_GUARD is set\n");
        return;
    }
    if (under_valgrind()) { /* (its write 40 KiB below the stack is let through) */
        printf("  skipped under valgrind\n");
        return;
    }
    char out[4096];
    int status = run_child(spawn_jumper, out, sizeof out);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
    CHECK(strstr(out, "stack overflow in coroutine 'wide-gap'"));
}

/* ---- Past the mapping budget: canaries ---- */

static void *park(void *arg)
{
    (void)arg;
    weft_sleep(100000);
    return NULL;
}

/* Writes over the low end of its own stack, as a runaway frame would, then switches out. */
static void *scribble_then_yield(void *arg)
{
    (void)arg;
    stack *s = weft_self()->stack;
    CHECK(!s->guarded && stack_canary_ok(s));
    memset(s->lo, 0x41, 16);
    weft_yield(); /* the switch out checks the canary */
    return NULL;
}

static void spawn_scribbler(void)
{
    setenv("WEFT_STACK_GUARD", "never", 1);
    weft_spawn_opts v = {.name = "canary-victim", .stack_size = 16 * 1024, .detached = 1};
    CHECK(weft_spawn_ex(scribble_then_yield, NULL, &v));
    CHECK(weft_spawn_ex(park, NULL, NULL)); /* must never run on corrupted memory */
    weft_run();
}

static void unguarded_overflow_is_caught_by_the_canary(void)
{
    char out[4096];
    int status = run_child(spawn_scribbler, out, sizeof out);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    CHECK(strstr(out, "stack overflow in coroutine 'canary-victim'"));
}

static void more_coroutines_than_guard_pages_allow(void)
{
    /* With WEFT_STACK_GUARD=auto, 40,000 parked coroutines: past the ~24,000 guarded stacks
     * the mapping budget allows, the rest come with canaries instead of failing. */
    setenv("WEFT_STACK_GUARD", "auto", 1);
    int n = test_scale(40000);
    weft_co **cos = calloc((size_t)n, sizeof *cos);
    CHECK(cos);
    weft_spawn_opts o = {.stack_size = 16 * 1024};
    for (int i = 0; i < n; i++)
        CHECK((cos[i] = weft_spawn_ex(park, NULL, &o)));
    CHECK(weft_yield() == 0); /* every one runs and parks */
    CHECK(weft_count() == (size_t)n);
    for (int i = 0; i < n; i++)
        weft_cancel(cos[i]);
    for (int i = 0; i < n; i++)
        CHECK(weft_join(cos[i], NULL, -1) == 0);
    free(cos);
}

/* ---- Deep calls (deep.c): one stack per thread for calls that go deep ---- */

struct span {
    const char *lo;
    size_t size;
};

static bool on_stack(struct span st, const void *p)
{
    return st.lo && (const char *)p >= st.lo && (const char *)p < st.lo + st.size;
}

struct where {
    const void *frame;   /* a local of the call */
    struct span deep;    /* the thread's deep-call stack during it (it is unmapped after) */
    struct where *inner; /* a deep call made inside this one, if any */
    pthread_barrier_t *both; /* threads: wait for the other's call before ending */
};

static void note_where(void *p)
{
    struct where *w = p;
    volatile char local = 0;
    w->frame = (const void *)&local;
    sched *s = sched_peek();
    if (s && s->deep)
        w->deep = (struct span){s->deep->st->lo, s->deep->st->size};
    if (w->inner)
        deep_call(note_where, w->inner); /* re-entered: runs in place */
}

static void *deep_caller(void *arg)
{
    struct where *w = arg;
    deep_call(note_where, w);
    if (w->both) /* (blocks the thread: both runners exist at once) */
        pthread_barrier_wait(w->both);
    return NULL;
}

static void *thread_deep(void *arg)
{
    weft_co *co = weft_spawn(deep_caller, arg);
    CHECK(co && weft_run() == 0 && weft_join(co, NULL, -1) == 0);
    CHECK(sched_peek() == NULL); /* the scheduler, and its runner with it, is freed */
    return NULL;
}

static void deep_calls_run_on_one_stack_per_thread(void)
{
    /* In a coroutine: on the deep-call stack, not its own; a deep call inside it stays there. */
    struct where inner = {0}, outer = {.inner = &inner}, mine = {0};
    weft_co *co = weft_spawn(deep_caller, &outer);
    CHECK(co && weft_run() == 0 && weft_join(co, NULL, -1) == 0);
    CHECK(on_stack(outer.deep, outer.frame));
    CHECK(inner.deep.lo == outer.deep.lo && on_stack(inner.deep, inner.frame));
    CHECK((const char *)inner.frame < (const char *)outer.frame);
    /* Outside coroutines: a plain call, on the thread's own stack. */
    deep_call(note_where, &mine);
    CHECK(!on_stack(mine.deep, mine.frame));
    /* Each thread its own. */
    pthread_barrier_t both;
    CHECK(pthread_barrier_init(&both, NULL, 2) == 0);
    struct where a = {.both = &both}, b = {.both = &both};
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, thread_deep, &a) == 0);
    CHECK(pthread_create(&tb, NULL, thread_deep, &b) == 0);
    CHECK(pthread_join(ta, NULL) == 0 && pthread_join(tb, NULL) == 0);
    CHECK(on_stack(a.deep, a.frame) && on_stack(b.deep, b.frame));
    CHECK(!on_stack(a.deep, b.frame) && !on_stack(b.deep, a.frame));
    pthread_barrier_destroy(&both);
}

static void deep_overflow(void *arg)
{
    (void)arg;
    overflow(0);
}

static void *deep_overflower(void *arg)
{
    deep_call(deep_overflow, arg);
    return NULL;
}

static void spawn_deep_overflower(void)
{
    weft_spawn_opts o = {.name = "deep-recursion"};
    CHECK(weft_spawn_ex(deep_overflower, NULL, &o));
    weft_run();
}

static void a_deep_call_overflow_is_reported_with_the_coroutine_name(void)
{
    char out[4096];
    int status = run_child(spawn_deep_overflower, out, sizeof out);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
    CHECK(strstr(out, "stack overflow in coroutine 'deep-recursion', in a deep call"));
}

static void yield_inside(void *arg)
{
    (void)arg;
    weft_yield();
}

static void *deep_yielder(void *arg)
{
    deep_call(yield_inside, arg);
    return NULL;
}

static void spawn_deep_yielder(void)
{
    weft_spawn_opts o = {.name = "deep-waiter"};
    CHECK(weft_spawn_ex(deep_yielder, NULL, &o) && weft_spawn(deep_yielder, NULL));
    weft_run();
}

/* Its frames would be left on the deep-call stack for the next caller to overwrite. */
static void waiting_inside_a_deep_call_ends_the_process(void)
{
    char out[4096];
    int status = run_child(spawn_deep_yielder, out, sizeof out);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    CHECK(strstr(out, "coroutine 'deep-waiter' tried to wait inside a deep call"));
}

static void raise_usr1(void *arg)
{
    (void)arg;
    raise(SIGUSR1);
}

static void *signal_and_fork_in_deep_calls(void *arg)
{
    (void)arg;
    deep_call(raise_usr1, NULL); /* its dump comes at the loop's next turn */
    CHECK(weft_sleep(50) == 0);
    pid_t pid = fork(); /* (the runner exists: the child has its copy) */
    CHECK(pid >= 0);
    struct where w = {0};
    deep_call(note_where, &w);
    if (pid == 0)
        _exit(on_stack(w.deep, w.frame) ? 0 : 1);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return NULL;
}

static void run_signal_and_fork(void)
{
    CHECK(weft_dump_on_signal(SIGUSR1) == 0);
    weft_spawn_opts o = {.name = "deep-signaller"};
    weft_co *co = weft_spawn_ex(signal_and_fork_in_deep_calls, NULL, &o);
    CHECK(co && weft_run() == 0 && weft_join(co, NULL, -1) == 0);
    _exit(0);
}

/* A dump asked for by a signal that came during a deep call names the coroutine; a child
 * forked by a coroutine after deep calls makes them on its copy of the runner's stack. */
static void a_signal_during_a_deep_call_and_a_fork_after(void)
{
    char out[8192];
    int status = run_child(run_signal_and_fork, out, sizeof out);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fprintf(stderr, "  the child (status %#x) said:\n%s", (unsigned)status, out);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(strstr(out, "\"deep-signaller\""));
}

const struct test tests[] = {
    {"unguarded_overflow_is_caught_by_the_canary", unguarded_overflow_is_caught_by_the_canary, 0},
    {"more_coroutines_than_guard_pages_allow", more_coroutines_than_guard_pages_allow, 120},
    {"guard_page_below_every_stack", guard_page_below_every_stack, 0},
    {"pool_reuses_stacks_of_the_same_size", pool_reuses_stacks_of_the_same_size, 0},
    {"spawn_honours_stack_size", spawn_honours_stack_size, 0},
    {"absurd_stack_and_guard_sizes_are_refused", absurd_stack_and_guard_sizes_are_refused, 0},
    {"overflow_is_reported_with_the_coroutine_name", overflow_is_reported_with_the_coroutine_name, 0},
    {"a_frame_larger_than_the_guard_is_reported", a_frame_larger_than_the_guard_is_reported, 0},
    {"the_guard_gap_is_settable", the_guard_gap_is_settable, 0},
    {"deep_calls_run_on_one_stack_per_thread", deep_calls_run_on_one_stack_per_thread, 0},
    {"a_deep_call_overflow_is_reported_with_the_coroutine_name",
     a_deep_call_overflow_is_reported_with_the_coroutine_name, 0},
    {"waiting_inside_a_deep_call_ends_the_process", waiting_inside_a_deep_call_ends_the_process, 0},
    {"a_signal_during_a_deep_call_and_a_fork_after", a_signal_during_a_deep_call_and_a_fork_after, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
