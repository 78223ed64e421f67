/* The timer heap (ordering, removal from the middle) and deadlines as the scheduler uses
 * them: a wait with a deadline ends with ETIMEDOUT, on the monotonic clock. */
#include "harness.h"
#include "../src/internal.h"

#include <errno.h>
#include <poll.h>
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

const struct test tests[] = {
    {"heap_pops_in_deadline_order", heap_pops_in_deadline_order, 0},
    {"clock_is_monotonic_milliseconds", clock_is_monotonic_milliseconds, 0},
    {"sleeps_end_no_earlier_than_asked", sleeps_end_no_earlier_than_asked, 0},
    {"fd_wait_times_out_in_and_out_of_coroutines", fd_wait_times_out_in_and_out_of_coroutines, 0},
    {"join_times_out", join_times_out, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
