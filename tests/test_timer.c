/* The timer heap (ordering, removal from the middle) and deadlines as the scheduler uses
 * them: a wait with a deadline ends with ETIMEDOUT, on the monotonic clock; and the loop's
 * quiet callbacks, which run when it has had nothing to do for a while. */
#include "harness.h"
#include "../src/internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned rng = 12345;
static unsigned next_rand(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

static void heap_pops_in_deadline_order(void)
{
    enum { N = 2000 };
    static timer t[N];
    timer_heap h = {0};
    for (int i = 0; i < N; i++) {
        t[i].deadline = (int64_t)(next_rand() % 500);
        t[i].index = SIZE_MAX;
        CHECK(timer_heap_add(&h, &t[i]) == 0);
    }
    /* Remove every third one from wherever it sits. */
    for (int i = 0; i < N; i += 3) {
        timer_heap_remove(&h, &t[i]);
        CHECK(!timer_armed(&t[i]));
    }
    int64_t last = -1;
    size_t popped = 0;
    timer *top;
    while ((top = timer_heap_peek(&h))) {
        CHECK(top->deadline >= last);
        last = top->deadline;
        timer_heap_remove(&h, top);
        popped++;
    }
    CHECK(popped == N - (N + 2) / 3);
    timer_heap_free(&h);
}

static void clock_is_monotonic_milliseconds(void)
{
    int64_t a = weft_now();
    CHECK(weft_sleep(30) == 0);
    int64_t b = weft_now();
    CHECK(b - a >= 30);
}

static void *sleeper(void *arg)
{
    int64_t ms = (int64_t)(intptr_t)arg;
    int64_t t0 = weft_now();
    CHECK(weft_sleep(ms) == 0);
    CHECK(weft_now() - t0 >= ms); /* never early */
    return NULL;
}

static void sleeps_end_no_earlier_than_asked(void)
{
    weft_co *a = weft_spawn(sleeper, (void *)(intptr_t)40);
    weft_co *b = weft_spawn(sleeper, (void *)(intptr_t)5);
    CHECK(a && b);
    CHECK(weft_run() == 0);
    CHECK(weft_join(a, NULL, -1) == 0 && weft_join(b, NULL, -1) == 0);
}

static void *wait_forever_on(void *arg)
{
    int fd = *(int *)arg;
    int64_t deadline = weft_now() + 50;
    CHECK(weft_wait_fd(fd, WEFT_READABLE, deadline) == -1 && errno == ETIMEDOUT);
    CHECK(weft_now() >= deadline);
    return NULL;
}

static void fd_wait_times_out_in_and_out_of_coroutines(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    weft_co *co = weft_spawn(wait_forever_on, &sv[0]);
    CHECK(co && weft_join(co, NULL, -1) == 0);
    wait_forever_on(&sv[0]); /* the same call, blocking, outside any coroutine */
    close(sv[0]);
    close(sv[1]);
}

static void *join_target(void *arg)
{
    (void)arg;
    weft_sleep(10000);
    return NULL;
}

static void join_times_out(void)
{
    weft_co *co = weft_spawn(join_target, NULL);
    CHECK(co);
    CHECK(weft_join(co, NULL, weft_now() + 30) == -1 && errno == ETIMEDOUT);
    weft_cancel(co);
    CHECK(weft_join(co, NULL, -1) == 0);
}

/* ---- The loop's quiet callbacks (sched_on_quiet) ---- */

static int quiet_calls, other_calls;
static void on_quiet(void) { quiet_calls++; }
static void on_quiet_other(void) { other_calls++; }
static void on_quiet_2(void) {}
static void on_quiet_3(void) {}
static void on_quiet_4(void) {}

static void *quiet_poker(void *arg)
{
    CHECK(write(*(int *)arg, "x", 1) == 1);
    return NULL;
}

static void *quiet_sleeper(void *arg)
{
    (void)arg;
    CHECK(sched_on_quiet(on_quiet) == 0);
    CHECK(sched_on_quiet(on_quiet) == 0); /* (the same one twice: still called once) */
    /* A wait that a byte ends early leaves its timer (timers are lazy): it wakes the loop
     * again inside the spell below, at 2 x SCHED_QUIET_MS, without a switch. */
    int sp[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
    weft_co *poker = weft_spawn(quiet_poker, &sp[1]);
    CHECK(poker && weft_wait_fd(sp[0], WEFT_READABLE, weft_now() + 2 * SCHED_QUIET_MS) == 0);
    CHECK(weft_join(poker, NULL, -1) == 0);
    CHECK(weft_sleep(3 * SCHED_QUIET_MS) == 0);
    CHECK(quiet_calls == 1); /* once in the spell, though the loop woke twice in it */
    close(sp[0]);
    close(sp[1]);
    CHECK(weft_sleep(3 * SCHED_QUIET_MS) == 0);
    CHECK(quiet_calls == 2); /* the switch back into this coroutine began a new spell */
    CHECK(sched_on_quiet(on_quiet_other) == 0);
    CHECK(sched_on_quiet(on_quiet_2) == 0);
    CHECK(sched_on_quiet(on_quiet_3) == 0);
    errno = 0;
    CHECK(sched_on_quiet(on_quiet_4) == -1 && errno == ENOSPC); /* SCHED_QUIET_FNS taken */
    CHECK(weft_sleep(3 * SCHED_QUIET_MS) == 0);
    CHECK(quiet_calls == 3 && other_calls == 1);
    return NULL;
}

/* Busy: always something to run, so the loop never sleeps and nothing is called. */
static void *quiet_spinner(void *arg)
{
    CHECK(sched_on_quiet(on_quiet) == 0); /* (the last run's scheduler may be gone) */
    int64_t end = weft_now() + 3 * SCHED_QUIET_MS;
    while (weft_now() < end)
        CHECK(weft_yield() == 0);
    *(int *)arg = quiet_calls;
    return NULL;
}

static void *quiet_thread(void *arg)
{
    (void)arg;
    weft_co *co = weft_spawn(quiet_sleeper, NULL);
    CHECK(co && weft_join(co, NULL, -1) == 0);
    quiet_calls = 0;
    int seen = -1;
    co = weft_spawn(quiet_spinner, &seen);
    CHECK(co && weft_join(co, NULL, -1) == 0);
    CHECK(seen == 0);
    return NULL;
}

/* A loop with nothing to run for SCHED_QUIET_MS calls each registered callback once per such
 * spell (the send slabs of sock.c go then); a busy one never does. On a thread of its own,
 * whose scheduler ends with it. */
static void quiet_callbacks_run_once_per_quiet_spell(void)
{
    pthread_t t;
    CHECK(pthread_create(&t, NULL, quiet_thread, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
}

const struct test tests[] = {
    {"heap_pops_in_deadline_order", heap_pops_in_deadline_order, 0},
    {"clock_is_monotonic_milliseconds", clock_is_monotonic_milliseconds, 0},
    {"sleeps_end_no_earlier_than_asked", sleeps_end_no_earlier_than_asked, 0},
    {"fd_wait_times_out_in_and_out_of_coroutines", fd_wait_times_out_in_and_out_of_coroutines, 0},
    {"join_times_out", join_times_out, 0},
    {"quiet_callbacks_run_once_per_quiet_spell", quiet_callbacks_run_once_per_quiet_spell, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
