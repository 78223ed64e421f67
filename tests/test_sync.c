/* Sync between coroutines: queues (order, blocking, close, deadlines), select, mutex,
 * condition, wait group, groups, and what happens when things are closed or cancelled under
 * a waiter. */
#include "harness.h"

#include <errno.h>
#include <string.h>
#include <weft.h>

static void *producer(void *arg)
{
    weft_queue *q = arg;
    for (intptr_t i = 1; i <= 1000; i++)
        CHECK(weft_queue_send(q, (void *)i, -1) == 0);
    weft_queue_close(q);
    return NULL;
}

static void *consumer(void *arg)
{
    weft_queue *q = arg;
    intptr_t expect = 1;
    void *item;
    while (weft_queue_recv(q, &item, -1) == 0)
        CHECK((intptr_t)item == expect++);
    CHECK(errno == EPIPE && expect == 1001);
    return NULL;
}

static void queue_delivers_in_order_and_close_drains(void)
{
    weft_queue *q = weft_queue_new(3); /* small: the producer blocks often */
    weft_co *p = weft_spawn(producer, q), *c = weft_spawn(consumer, q);
    CHECK(q && p && c);
    CHECK(weft_join(p, NULL, -1) == 0 && weft_join(c, NULL, -1) == 0);
    void *item;
    CHECK(weft_queue_try_recv(q, &item) == -1 && errno == EPIPE);
    CHECK(weft_queue_try_send(q, NULL) == -1 && errno == EPIPE);
    CHECK(weft_queue_free(q) == 0);
    CHECK(weft_queue_new(0) == NULL && errno == EINVAL);
}

static void *blocked_sender(void *arg)
{
    weft_queue *q = arg;
    CHECK(weft_queue_send(q, (void *)2, -1) == -1 && errno == EPIPE);
    return NULL;
}

static void *timed_recv(void *arg)
{
    weft_queue *q = arg;
    void *item;
    int64_t deadline = weft_now() + 30;
    CHECK(weft_queue_recv(q, &item, deadline) == -1 && errno == ETIMEDOUT);
    CHECK(weft_now() >= deadline);
    return NULL;
}

static void queue_deadlines_close_and_free_under_waiters(void)
{
    weft_queue *q = weft_queue_new(1);
    CHECK(q);
    weft_co *t = weft_spawn(timed_recv, q);
    CHECK(t && weft_join(t, NULL, -1) == 0);
    CHECK(weft_queue_try_send(q, (void *)1) == 0);
    CHECK(weft_queue_try_send(q, (void *)1) == -1 && errno == EAGAIN);
    weft_co *s = weft_spawn(blocked_sender, q);
    CHECK(s);
    weft_yield(); /* s is parked now */
    CHECK(weft_queue_free(q) == -1 && errno == EBUSY); /* nothing freed under it */
    weft_queue_close(q);
    CHECK(weft_join(s, NULL, -1) == 0);
    void *item;
    CHECK(weft_queue_recv(q, &item, -1) == 0 && (intptr_t)item == 1); /* drained first */
    CHECK(weft_queue_recv(q, &item, -1) == -1 && errno == EPIPE);
    CHECK(weft_queue_free(q) == 0);
}

static void *cancelled_recv(void *arg)
{
    void *item;
    CHECK(weft_queue_recv(arg, &item, -1) == -1 && errno == ECANCELED);
    return NULL;
}

static void cancel_wakes_queue_waiters(void)
{
    weft_queue *q = weft_queue_new(1);
    weft_co *c = weft_spawn(cancelled_recv, q);
    CHECK(q && c);
    weft_yield();
    weft_cancel(c);
    CHECK(weft_join(c, NULL, -1) == 0);
    CHECK(weft_queue_free(q) == 0); /* it took itself off the list */
}

static void *send_later(void *arg)
{
    weft_queue *q = arg;
    weft_sleep(10);
    CHECK(weft_queue_send(q, (void *)7, -1) == 0);
    return NULL;
}

static void select_picks_the_ready_operation(void)
{
    weft_queue *a = weft_queue_new(1), *b = weft_queue_new(1), *full = weft_queue_new(1);
    CHECK(a && b && full && weft_queue_try_send(full, (void *)9) == 0);
    weft_co *s = weft_spawn(send_later, b);
    CHECK(s);
    weft_select_op ops[3] = {
        {a, WEFT_RECV, NULL, 0}, {b, WEFT_RECV, NULL, 0}, {full, WEFT_SEND, (void *)1, 0}};
    CHECK(weft_select(ops, 3, -1) == 1);
    CHECK(ops[1].err == 0 && (intptr_t)ops[1].item == 7);
    CHECK(weft_join(s, NULL, -1) == 0);
    /* Immediate readiness, in array order. */
    CHECK(weft_queue_try_send(a, (void *)5) == 0);
    ops[1].item = NULL;
    CHECK(weft_select(ops, 3, -1) == 0 && (intptr_t)ops[0].item == 5);
    /* A closed queue completes a receive with EPIPE. */
    weft_queue_close(b);
    CHECK(weft_select(ops, 3, -1) == 1 && ops[1].err == EPIPE);
    /* Nothing ready: the deadline. */
    weft_select_op only[1] = {{full, WEFT_SEND, (void *)1, 0}};
    CHECK(weft_select(only, 1, weft_now() + 20) == -1 && errno == ETIMEDOUT);
    CHECK(weft_queue_free(a) == 0 && weft_queue_free(b) == 0 && weft_queue_free(full) == 0);
}

/* ---- mutex, cond, wait group ---- */

static weft_mutex *mu;
static int in_critical, max_in_critical, counter;

static void *locker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100; i++) {
        CHECK(weft_mutex_lock(mu, -1) == 0);
        in_critical++;
        if (in_critical > max_in_critical)
            max_in_critical = in_critical;
        weft_yield(); /* others run, and must not get in */
        counter++;
        in_critical--;
        CHECK(weft_mutex_unlock(mu) == 0);
    }
    return NULL;
}

static void mutex_excludes_and_hands_over(void)
{
    mu = weft_mutex_new();
    weft_co *c[5];
    for (int i = 0; i < 5; i++)
        CHECK((c[i] = weft_spawn(locker, NULL)));
    for (int i = 0; i < 5; i++)
        CHECK(weft_join(c[i], NULL, -1) == 0);
    CHECK(max_in_critical == 1 && counter == 500);
    CHECK(weft_mutex_lock(mu, -1) == 0); /* outside a coroutine too */
    CHECK(weft_mutex_lock(mu, -1) == -1 && errno == EDEADLK);
    CHECK(weft_mutex_trylock(mu) == -1 && errno == EBUSY);
    CHECK(weft_mutex_free(mu) == -1 && errno == EBUSY);
    CHECK(weft_mutex_unlock(mu) == 0);
    CHECK(weft_mutex_unlock(mu) == -1 && errno == EPERM);
    CHECK(weft_mutex_free(mu) == 0);
}

static weft_cond *cv;
static int ready_items;

static void *cond_consumer(void *arg)
{
    int *got = arg;
    CHECK(weft_mutex_lock(mu, -1) == 0);
    while (ready_items == 0)
        CHECK(weft_cond_wait(cv, mu, -1) == 0);
    ready_items--;
    (*got)++;
    CHECK(weft_mutex_unlock(mu) == 0);
    return NULL;
}

static void *cond_timeout(void *arg)
{
    (void)arg;
    CHECK(weft_mutex_lock(mu, -1) == 0);
    CHECK(weft_cond_wait(cv, mu, weft_now() + 20) == -1 && errno == ETIMEDOUT);
    CHECK(weft_mutex_unlock(mu) == 0); /* it holds the mutex again after the timeout */
    return NULL;
}

static void condition_signal_broadcast_timeout(void)
{
    mu = weft_mutex_new();
    cv = weft_cond_new();
    int got = 0;
    weft_co *c[4];
    for (int i = 0; i < 4; i++)
        CHECK((c[i] = weft_spawn(cond_consumer, &got)));
    weft_yield(); /* all four wait */
    weft_mutex_lock(mu, -1);
    ready_items = 1;
    weft_cond_signal(cv);
    weft_mutex_unlock(mu);
    weft_yield();
    weft_yield();
    CHECK(got == 1);
    weft_mutex_lock(mu, -1);
    ready_items = 3;
    weft_cond_broadcast(cv);
    weft_mutex_unlock(mu);
    for (int i = 0; i < 4; i++)
        CHECK(weft_join(c[i], NULL, -1) == 0);
    CHECK(got == 4);
    weft_co *t = weft_spawn(cond_timeout, NULL);
    CHECK(t && weft_join(t, NULL, -1) == 0);
    CHECK(weft_cond_free(cv) == 0 && weft_mutex_free(mu) == 0);
}

static void *worker_done(void *arg)
{
    weft_sleep(5);
    CHECK(weft_waitgroup_done(arg) == 0);
    return NULL;
}

static void waitgroup_waits_for_all(void)
{
    weft_waitgroup *wg = weft_waitgroup_new();
    CHECK(wg && weft_waitgroup_add(wg, 10) == 0);
    weft_spawn_opts o = {.detached = 1};
    for (int i = 0; i < 10; i++)
        CHECK(weft_spawn_ex(worker_done, wg, &o));
    CHECK(weft_waitgroup_wait(wg, -1) == 0); /* outside: runs the scheduler meanwhile */
    CHECK(weft_waitgroup_add(wg, -1) == -1 && errno == EINVAL);
    CHECK(weft_waitgroup_wait(wg, -1) == 0);
    CHECK(weft_waitgroup_free(wg) == 0);
}

/* ---- groups ---- */

static int ended;

static void *sleeps(void *arg)
{
    intptr_t ms = (intptr_t)arg;
    if (weft_sleep(ms) != 0)
        CHECK(errno == ECANCELED);
    ended++;
    return NULL;
}

static void group_wait_joins_all(void)
{
    weft_group *g = weft_group_new();
    CHECK(g);
    for (intptr_t i = 0; i < 20; i++)
        CHECK(weft_group_spawn(g, sleeps, (void *)(i % 5), NULL));
    CHECK(weft_group_count(g) == 20);
    CHECK(weft_group_wait(g, -1) == 0);
    CHECK(ended == 20 && weft_group_count(g) == 0);
    CHECK(weft_group_close(g) == 0);
}

static void *group_waiter(void *arg)
{
    CHECK(weft_group_wait(arg, -1) == -1 && errno == EBADF);
    return NULL;
}

static void *closes_own_group(void *arg)
{
    CHECK(weft_group_close(arg) == -1 && errno == EDEADLK);
    return NULL;
}

static void group_close_cancels_members_and_wakes_waiters(void)
{
    weft_group *g = weft_group_new();
    CHECK(g);
    for (int i = 0; i < 10; i++)
        CHECK(weft_group_spawn(g, sleeps, (void *)100000, NULL));
    CHECK(weft_group_spawn(g, closes_own_group, g, NULL));
    weft_co *w1 = weft_spawn(group_waiter, g), *w2 = weft_spawn(group_waiter, g);
    CHECK(w1 && w2);
    weft_yield();
    weft_yield();
    CHECK(weft_group_close(g) == 0); /* cancels the sleepers, waits for them, frees g */
    CHECK(ended == 10);
    CHECK(weft_join(w1, NULL, -1) == 0 && weft_join(w2, NULL, -1) == 0);
    CHECK(weft_count() == 0);
}

const struct test tests[] = {
    {"queue_delivers_in_order_and_close_drains", queue_delivers_in_order_and_close_drains, 0},
    {"queue_deadlines_close_and_free_under_waiters", queue_deadlines_close_and_free_under_waiters, 0},
    {"cancel_wakes_queue_waiters", cancel_wakes_queue_waiters, 0},
    {"select_picks_the_ready_operation", select_picks_the_ready_operation, 0},
    {"mutex_excludes_and_hands_over", mutex_excludes_and_hands_over, 0},
    {"condition_signal_broadcast_timeout", condition_signal_broadcast_timeout, 0},
    {"waitgroup_waits_for_all", waitgroup_waits_for_all, 0},
    {"group_wait_joins_all", group_wait_joins_all, 0},
    {"group_close_cancels_members_and_wakes_waiters", group_close_cancels_members_and_wakes_waiters, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
