/* Deep calls: a library call that goes deep (OpenSSL's handshakes and records) runs on one
 * stack per thread instead of the calling coroutine's own, so that its deepest pages are
 * touched once per thread and not once per coroutine: an idle TLS coroutine keeps the one
 * page a plain one keeps (docs/tls.md, "Idle memory").
 *
 * The stack belongs to a runner, a context of the scheduler's that loops: run the call it is
 * given, switch back to its caller. A deep call switches to it and is switched back to when
 * the call returns. The call must not wait: a coroutine that parks or yields inside one would
 * leave its frames on the runner's stack for the next caller to overwrite, so switch_out ends
 * the process instead (deep_parked_abort). A deep call made inside one (a callback of the
 * library that calls it again, TLS over TLS) is already on the runner's stack and runs there
 * in place. Outside coroutines a deep call is a plain call: the thread's own stack is deep. */
#include "internal.h"
#include "sys.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define DEEP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DEEP_ASAN 1
#endif
#endif
#ifdef DEEP_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__SANITIZE_THREAD__)
#define DEEP_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DEEP_TSAN 1
#endif
#endif
#ifdef DEEP_TSAN
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);

/* TSan counts fibers as threads: a fork with the runner's fiber alive looks like the fork of
 * a threaded process, and in the child TSan then ignores every synchronisation (each switch
 * between coroutines), reporting races that are none. The forking thread's runner drops its
 * fiber before a fork and takes a new one at its next call. */
static void tsan_fork_prepare(void)
{
    sched *s = sched_peek();
    deep_stack *d = s ? s->deep : NULL;
    if (d && d->tsan_fiber && !s->in_deep) {
        __tsan_destroy_fiber(d->tsan_fiber);
        d->tsan_fiber = NULL;
    }
}

static void tsan_register_fork(void)
{
    pthread_atfork(tsan_fork_prepare, NULL, NULL);
}
#endif

static void runner_main(void *p)
{
    deep_stack *d = p;
    for (;;) {
#ifdef DEEP_ASAN
        __sanitizer_finish_switch_fiber(d->asan_fake, &d->caller_lo, &d->caller_size);
#endif
        d->fn(d->arg);
#ifdef DEEP_ASAN
        __sanitizer_start_switch_fiber(&d->asan_fake, d->caller_lo, d->caller_size);
#endif
#ifdef DEEP_TSAN
        __tsan_switch_to_fiber(d->tsan_caller, 0);
#endif
        ctx_switch(&d->runner, &d->caller);
    }
}

/* The runner of s, made on first use. NULL when no stack could be mapped. */
static deep_stack *deep_get(sched *s)
{
    if (s->deep)
        return s->deep;
    stack *st = stack_take(DEEP_STACK_SIZE, 0, 0);
    if (!st)
        return NULL;
    deep_stack *d = calloc(1, sizeof *d);
    if (!d) {
        stack_give(st);
        return NULL;
    }
    d->st = st;
    ctx_make(&d->runner, st->lo, st->size, runner_main, d);
#ifdef DEEP_TSAN
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, tsan_register_fork);
#endif
    s->deep = d;
    return d;
}

void deep_call(void (*fn)(void *), void *arg)
{
    sched *s = sched_peek();
    weft_co *co = s ? s->current : NULL;
    deep_stack *d;
    /* Outside coroutines, inside a deep call already, or without memory for the runner's
     * stack (then the coroutine's own pays, as it did before there were deep calls). */
    if (!co || s->in_deep || !(d = deep_get(s))) {
        fn(arg);
        return;
    }
    d->fn = fn;
    d->arg = arg;
    d->co = co;
    s->in_deep = true;
#ifdef DEEP_ASAN
    void *fake;
    __sanitizer_start_switch_fiber(&fake, d->st->lo, d->st->size);
#endif
#ifdef DEEP_TSAN
    d->tsan_caller = __tsan_get_current_fiber();
    if (!d->tsan_fiber)
        d->tsan_fiber = __tsan_create_fiber(0);
    __tsan_switch_to_fiber(d->tsan_fiber, 0);
#endif
    ctx_switch(&d->caller, &d->runner);
#ifdef DEEP_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
    s->in_deep = false;
    d->co = NULL;
    if (!d->st->guarded && !stack_canary_ok(d->st))
        stack_overflow_abort(co->name); /* (WEFT_STACK_GUARD=auto: a canary, no guard) */
}

const stack *deep_running_stack(const sched *s)
{
    return s && s->in_deep ? s->deep->st : NULL;
}

void deep_free(sched *s)
{
    deep_stack *d = s->deep;
    if (!d)
        return;
#ifdef DEEP_TSAN
    if (d->tsan_fiber)
        __tsan_destroy_fiber(d->tsan_fiber);
#endif
    stack_give(d->st); /* (the scheduler's end drains the pool next) */
    free(d);
    s->deep = NULL;
}

static void write_str(const char *str)
{
    ssize_t r = sys_write(STDERR_FILENO, str, strlen(str));
    (void)r;
}

void deep_parked_abort(const char *name)
{
    write_str("weft: coroutine '");
    write_str(name);
    write_str("' tried to wait inside a deep call (the call must return without waiting)\n");
    abort();
}
