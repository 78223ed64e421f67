/* The scheduler: FIFO order, join with results, detach, cancel of every kind of wait,
 * sleep ordering, stop, yield outside a coroutine, and deadlock detection. */
#include "harness.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <weft.h>

static char trace[256];
static size_t trace_len;

static void note(char ch)
{
    if (trace_len < sizeof trace - 1)
        trace[trace_len++] = ch;
}

static void *step3(void *arg)
{
    char id = (char)(intptr_t)arg;
    for (int i = 0; i < 3; i++) {
        note(id);
        CHECK(weft_yield() == 0);
    }
    return NULL;
}

static void runs_in_spawn_order_and_round_robin(void)
{
    CHECK(weft_self() == NULL);
    weft_spawn_opts o = {.detached = 1};
    CHECK(weft_spawn_ex(step3, (void *)'a', &o));
    CHECK(weft_spawn_ex(step3, (void *)'b', &o));
    CHECK(weft_spawn_ex(step3, (void *)'c', &o));
    CHECK(weft_count() == 3);
    CHECK(weft_run() == 0);
    CHECK(weft_count() == 0);
    CHECK(strcmp(trace, "abcabcabc") == 0);
}

static void *square(void *arg)
{
    intptr_t n = (intptr_t)arg;
    weft_yield();
    return (void *)(n * n);
}

static void *joiner(void *arg)
{
    (void)arg;
    weft_co *kids[10];
    for (intptr_t i = 0; i < 10; i++)
        CHECK((kids[i] = weft_spawn(square, (void *)i)));
    intptr_t sum = 0;
    for (int i = 9; i >= 0; i--) { /* join in reverse: some are done, some not yet */
        void *r;
        CHECK(weft_join(kids[i], &r, -1) == 0);
        sum += (intptr_t)r;
    }
    return (void *)sum;
}

static void join_returns_results(void)
{
    weft_co *j = weft_spawn(joiner, NULL);
    void *r;
    CHECK(j && weft_join(j, &r, -1) == 0);
    CHECK((intptr_t)r == 285); /* 0^2 + ... + 9^2 */
}

static void *self_join(void *arg)
{
    (void)arg;
    CHECK(weft_join(weft_self(), NULL, -1) == -1 && errno == EDEADLK);
    CHECK(strcmp(weft_name(weft_self()), "me") == 0);
    return NULL;
}

static void join_misuse_is_refused(void)
{
    weft_spawn_opts o = {.name = "me"};
    weft_co *co = weft_spawn_ex(self_join, NULL, &o);
    CHECK(co && weft_join(co, NULL, -1) == 0);
    weft_co *d = weft_spawn(square, (void *)3);
    CHECK(d && weft_detach(d) == 0);
    CHECK(weft_detach(d) == -1 && errno == EINVAL);
    CHECK(weft_join(d, NULL, -1) == -1 && errno == EINVAL);
    CHECK(weft_run() == 0);
}

/* ---- cancel ---- */

static int cancel_seen;

static void *sleep_long(void *arg)
{
    (void)arg;
    CHECK(weft_sleep(60000) == -1 && errno == ECANCELED);
    CHECK(weft_cancelled());
    /* Sticky: every later blocking call fails too. */
    CHECK(weft_sleep(1) == -1 && errno == ECANCELED);
    CHECK(weft_yield() == -1 && errno == ECANCELED);
    cancel_seen++;
    return NULL;
}

static void *read_forever(void *arg)
{
    int fd = *(int *)arg;
    char b;
    CHECK(read(fd, &b, 1) == -1 && errno == EAGAIN);
    CHECK(weft_wait_fd(fd, WEFT_READABLE, -1) == -1 && errno == ECANCELED);
    cancel_seen++;
    return NULL;
}

static void *join_forever(void *arg)
{
    weft_co *other = arg;
    CHECK(weft_join(other, NULL, -1) == -1 && errno == ECANCELED);
    cancel_seen++;
    return NULL;
}

static void *canceller(void *arg)
{
    weft_co **victims = arg;
    weft_yield(); /* let them all park first */
    /* The joiner first, on its own turn: had its joinee ended in the same turn, the join
     * would have counted as done. */
    weft_cancel(victims[2]);
    weft_yield();
    weft_cancel(victims[0]);
    weft_cancel(victims[1]);
    return NULL;
}

static void cancel_wakes_parked_calls_with_ecanceled(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    weft_co *victims[3];
    weft_co *sleeper = weft_spawn(sleep_long, NULL);
    victims[0] = sleeper;
    victims[1] = weft_spawn(read_forever, &sv[0]);
    victims[2] = weft_spawn(join_forever, sleeper);
    weft_co *c = weft_spawn(canceller, victims);
    CHECK(victims[1] && victims[2] && c);
    CHECK(weft_join(victims[2], NULL, -1) == 0); /* its join failed; the sleeper is still ours */
    CHECK(weft_join(sleeper, NULL, -1) == 0);
    CHECK(weft_join(victims[1], NULL, -1) == 0);
    CHECK(weft_join(c, NULL, -1) == 0);
    CHECK(cancel_seen == 3);
    weft_fd_close(sv[0]);
    close(sv[1]);
}

static void *ends_at_once(void *arg)
{
    return arg;
}

static void cancel_of_an_ended_coroutine_is_harmless(void)
{
    weft_co *co = weft_spawn(ends_at_once, (void *)42);
    CHECK(co);
    CHECK(weft_run() == 0);
    weft_cancel(co);
    void *r;
    CHECK(weft_join(co, &r, -1) == 0 && (intptr_t)r == 42);
}

/* ---- sleep ordering ---- */

static void *sleep_then_note(void *arg)
{
    intptr_t ms = (intptr_t)arg;
    CHECK(weft_sleep(ms) == 0);
    note((char)('0' + ms / 10));
    return NULL;
}

static void sleepers_wake_in_deadline_order(void)
{
    static const int ms[] = {50, 10, 40, 0, 30, 20};
    weft_spawn_opts o = {.detached = 1};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        CHECK(weft_spawn_ex(sleep_then_note, (void *)(intptr_t)ms[i], &o));
    CHECK(weft_run() == 0);
    CHECK(strcmp(trace, "012345") == 0);
}

/* ---- run, stop, yield ---- */

static int ticks;

static void *ticker(void *arg)
{
    (void)arg;
    while (weft_yield() == 0) {
        if (++ticks == 5)
            weft_stop();
    }
    return NULL;
}

static void stop_returns_from_run_and_run_resumes(void)
{
    weft_co *t = weft_spawn(ticker, NULL);
    CHECK(t);
    CHECK(weft_run() == 0);
    CHECK(ticks == 5 && weft_count() == 1);
    CHECK(weft_yield() == 0); /* outside: one more turn */
    CHECK(ticks == 6);
    weft_cancel(t);
    CHECK(weft_join(t, NULL, -1) == 0);
    CHECK(weft_count() == 0);
}

static void *run_inside(void *arg)
{
    (void)arg;
    CHECK(weft_run() == -1 && errno == EDEADLK);
    return NULL;
}

static void *wait_for_nothing(void *arg)
{
    weft_co *other = arg;
    weft_join(other, NULL, -1);
    return NULL;
}

static void *park_forever(void *arg)
{
    (void)arg;
    weft_sleep_until(-1);
    return NULL;
}

static void deadlock_is_detected_not_slept_through(void)
{
    weft_co *r = weft_spawn(run_inside, NULL);
    CHECK(r && weft_join(r, NULL, -1) == 0);
    /* Two coroutines parked with no fd, no timer, nobody to wake them. */
    weft_co *a = weft_spawn(park_forever, NULL);
    weft_co *b = weft_spawn(wait_for_nothing, a);
    CHECK(a && b);
    CHECK(weft_run() == -1 && errno == EDEADLK);
    weft_cancel(b);
    weft_cancel(a);
    CHECK(weft_run() == 0);
    CHECK(weft_join(a, NULL, -1) == 0 && weft_join(b, NULL, -1) == 0);
}

static void *spawner(void *arg)
{
    int *count = arg;
    weft_spawn_opts o = {.detached = 1};
    if (++*count < 1000)
        CHECK(weft_spawn_ex(spawner, count, &o));
    return NULL;
}

static void coroutines_spawn_coroutines(void)
{
    int count = 0;
    weft_spawn_opts o = {.detached = 1};
    CHECK(weft_spawn_ex(spawner, &count, &o));
    CHECK(weft_run() == 0);
    CHECK(count == 1000);
}

static void backend_choice_and_fallback(void)
{
    CHECK(weft_set_backend("bogus") == -1 && errno == EINVAL);
    CHECK(weft_set_backend("epoll") == 0);
    CHECK(strcmp(weft_backend_name(), "epoll") == 0); /* asking starts no scheduler */
    CHECK(strstr(weft_backend_reason(), "as asked"));
    CHECK(weft_yield() == 0 && weft_set_backend("uring") == 0); /* nor does a yield */
    CHECK(weft_set_backend("epoll") == 0);
    weft_co *co = weft_spawn(square, (void *)(intptr_t)3); /* this starts the scheduler */
    CHECK(co && strcmp(weft_backend_name(), "epoll") == 0);
    CHECK(weft_set_backend("uring") == -1 && errno == EBUSY);
    CHECK(weft_join(co, NULL, -1) == 0); /* nothing left: the idle scheduler is let go */
    CHECK(weft_set_backend("uring") == 0);
    const char *name = weft_backend_name(), *why = weft_backend_reason();
    /* io_uring where it can start, else epoll saying why (qemu-user, seccomp, ...). */
    CHECK(strcmp(name, "uring") == 0 || (strcmp(name, "epoll") == 0 && strstr(why, "unavailable")));
    fprintf(stderr, "  uring asked: %s (%s)\n", name, why);
    CHECK(weft_run() == 0);
    /* auto: io_uring wherever it starts, so the same answer as asking for it. */
    bool uring_starts = strcmp(name, "uring") == 0;
    CHECK(weft_set_backend("auto") == 0);
    name = weft_backend_name();
    why = weft_backend_reason();
    fprintf(stderr, "  auto: %s (%s)\n", name, why);
    /* (Under valgrind, epoll: it would stop every other thread while the ring waits.) */
    bool want_uring = uring_starts && !under_valgrind();
    CHECK(strcmp(name, want_uring ? "uring" : "epoll") == 0 && strstr(why, "auto"));
    CHECK(!under_valgrind() || strstr(why, "valgrind"));
    CHECK(weft_run() == 0);
}

/* Asking for the backend on a thread that never runs a coroutine leaves nothing behind. */
static void *ask_backend(void *arg)
{
    (void)arg;
    CHECK(strcmp(weft_backend_name(), "epoll") == 0 || strcmp(weft_backend_name(), "uring") == 0);
    CHECK(weft_backend_reason()[0] != '\0');
    return NULL;
}

static void asking_for_the_backend_leaks_nothing(void)
{
    int before = count_open_fds();
    for (int i = 0; i < 100; i++) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, ask_backend, NULL) == 0);
        CHECK(pthread_join(t, NULL) == 0);
    }
    ask_backend(NULL);
    CHECK(count_open_fds() == before); /* (and LeakSanitizer sees no scheduler left) */
}

const struct test tests[] = {
    {"asking_for_the_backend_leaks_nothing", asking_for_the_backend_leaks_nothing, 0},
    {"backend_choice_and_fallback", backend_choice_and_fallback, 0},
    {"runs_in_spawn_order_and_round_robin", runs_in_spawn_order_and_round_robin, 0},
    {"join_returns_results", join_returns_results, 0},
    {"join_misuse_is_refused", join_misuse_is_refused, 0},
    {"cancel_wakes_parked_calls_with_ecanceled", cancel_wakes_parked_calls_with_ecanceled, 0},
    {"cancel_of_an_ended_coroutine_is_harmless", cancel_of_an_ended_coroutine_is_harmless, 0},
    {"sleepers_wake_in_deadline_order", sleepers_wake_in_deadline_order, 0},
    {"stop_returns_from_run_and_run_resumes", stop_returns_from_run_and_run_resumes, 0},
    {"deadlock_is_detected_not_slept_through", deadlock_is_detected_not_slept_through, 0},
    {"coroutines_spawn_coroutines", coroutines_spawn_coroutines, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
