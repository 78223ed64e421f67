/* Thread queues: bounded FIFOs of pointers that any thread may use, so coroutines of
 * different schedulers (and plain threads) can talk. One mutex guards a queue. A waiting
 * coroutine is woken through its scheduler's inbox and eventfd (rwait), a waiting plain
 * thread through a condition variable. As in the single-thread queues, whoever completes a
 * wait hands the item over itself (claimed under the lock), so no wake-up is ever lost or
 * doubled. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

/* A waiter's node (first, so a list's head converts back) sits in the same wait lists as
 * the single-thread queues use; here q->mu guards them. */
typedef struct tq_waiter {
    waiter node;
    rwait rw;              /* a coroutine */
    pthread_cond_t *cv;    /* or a plain thread */
    bool claimed;
    int err;
    void *item;
} tq_waiter;

struct weft_tqueue {
    pthread_mutex_t mu;
    item_ring ring;
    bool closed;
    int users;             /* waiters not yet gone: free must wait for them (under mu) */
    wait_list senders, receivers;
};

static tq_waiter *first(const wait_list *l)
{
    return (tq_waiter *)l->head;
}

/* Under q->mu: complete w's wait with err and wake it. */
static void claim(wait_list *l, tq_waiter *w, int err)
{
    wait_list_remove(l, &w->node);
    w->claimed = true;
    w->err = err;
    if (w->cv)
        pthread_cond_signal(w->cv);
    else
        rwait_wake(&w->rw);
}

weft_tqueue *weft_tqueue_new(size_t capacity)
{
    if (capacity == 0) {
        errno = EINVAL;
        return NULL;
    }
    weft_tqueue *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    if (item_ring_init(&q->ring, capacity) != 0) {
        free(q);
        return NULL;
    }
    pthread_mutex_init(&q->mu, NULL);
    return q;
}

/* tq_wait for a coroutine: park until the claim's wake-up arrives through the inbox. */
static int tq_wait_co(weft_tqueue *q, wait_list *list, tq_waiter *w, int64_t deadline)
{
    if (rwait_begin(&w->rw) != 0)
        return -1;
    wait_list_push(list, &w->node);
    pthread_mutex_unlock(&q->mu);
    uint8_t kind = list == &q->senders ? WAIT_TQUEUE_SEND : WAIT_TQUEUE_RECV;
    int rc = sched_park_on(kind, q, deadline, true);
    int err = errno;
    pthread_mutex_lock(&q->mu);
    while (!w->claimed && rc == 0) { /* not for us: park again */
        pthread_mutex_unlock(&q->mu);
        rc = sched_park_on(kind, q, deadline, true);
        err = errno;
        pthread_mutex_lock(&q->mu);
    }
    if (!w->claimed) {
        wait_list_remove(list, &w->node);
        rwait_end(&w->rw);
        errno = err;
        return -1;
    }
    return 0; /* the caller settles the rwait once it has let go of q */
}

/* tq_wait outside any coroutine, running the loop meanwhile (see tq_wait). */
static int tq_wait_driving(weft_tqueue *q, wait_list *list, tq_waiter *w, int64_t deadline)
{
    if (rwait_begin(&w->rw) != 0)
        return -1;
    wait_list_push(list, &w->node);
    pthread_mutex_unlock(&q->mu);
    int rc = sched_drive(&w->rw.delivered, deadline);
    int err = errno;
    pthread_mutex_lock(&q->mu);
    if (!w->claimed) {
        wait_list_remove(list, &w->node);
        rwait_end(&w->rw);
        errno = rc != 0 ? err : ETIMEDOUT;
        return -1;
    }
    return 0; /* claimed: the caller settles the rwait (waits for the delivery) */
}

/* Under q->mu: park the caller in list as w until claimed or the deadline; returns with
 * q->mu held. 0 when claimed (w->err tells the outcome), else -1 and w is off the list. A
 * claimed coroutine must then call finish() after unlocking q. */
static int tq_wait(weft_tqueue *q, wait_list *list, tq_waiter *w, int64_t deadline)
{
    if (weft_self())
        return tq_wait_co(q, list, w, deadline);
    /* Outside a coroutine on a thread that has coroutines: they must go on running while we
     * wait (one of them may be the sender we wait for), so drive the loop until the wake-up
     * comes through the scheduler's inbox, as a coroutine's would. */
    if (weft_count() > 0)
        return tq_wait_driving(q, list, w, deadline);
    pthread_cond_t cv;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &ca);
    pthread_condattr_destroy(&ca);
    w->cv = &cv;
    wait_list_push(list, &w->node);
    struct timespec ts = {deadline / 1000, (deadline % 1000) * 1000000};
    int rc = 0;
    while (!w->claimed && rc != ETIMEDOUT)
        rc = deadline < 0 ? pthread_cond_wait(&cv, &q->mu) : pthread_cond_timedwait(&cv, &q->mu, &ts);
    pthread_cond_destroy(&cv);
    if (!w->claimed) {
        wait_list_remove(list, &w->node);
        errno = ETIMEDOUT;
        return -1;
    }
    return 0;
}

/* After a claimed wait, with q unlocked (q may be freed as soon as we are off its lists): wait
 * for the wake-up that is in flight to us. */
static void finish(tq_waiter *w)
{
    if (w->claimed && !w->cv)
        rwait_settle(&w->rw);
}

/* Under q->mu: wait in list as w, then let go of q (it is unlocked on return) and settle.
 * 0 when handed over, else -1 with errno (the claim's error, or ETIMEDOUT/ECANCELED). */
static int wait_and_unlock(weft_tqueue *q, wait_list *list, tq_waiter *w, int64_t deadline)
{
    q->users++;
    int rc = tq_wait(q, list, w, deadline);
    int err = rc == 0 ? w->err : errno;
    q->users--;
    pthread_mutex_unlock(&q->mu);
    finish(w);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

int weft_tqueue_send(weft_tqueue *q, void *item, int64_t deadline)
{
    pthread_mutex_lock(&q->mu);
    int rc = 0;
    if (q->closed) {
        errno = EPIPE;
        rc = -1;
    } else if (q->ring.len == 0 && q->receivers.head) {
        tq_waiter *r = first(&q->receivers);
        r->item = item;
        claim(&q->receivers, r, 0);
    } else if (q->ring.len < q->ring.cap) {
        item_ring_push(&q->ring, item);
    } else {
        tq_waiter w = {.item = item};
        return wait_and_unlock(q, &q->senders, &w, deadline);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int weft_tqueue_recv(weft_tqueue *q, void **item, int64_t deadline)
{
    pthread_mutex_lock(&q->mu);
    int rc = 0;
    if (q->ring.len > 0) {
        *item = item_ring_pop(&q->ring);
        if (q->senders.head) { /* the room just made is theirs */
            tq_waiter *s = first(&q->senders);
            item_ring_push(&q->ring, s->item);
            claim(&q->senders, s, 0);
        }
    } else if (q->closed) {
        errno = EPIPE;
        rc = -1;
    } else {
        tq_waiter w = {0};
        if (wait_and_unlock(q, &q->receivers, &w, deadline) != 0)
            return -1;
        *item = w.item;
        return 0;
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

void weft_tqueue_close(weft_tqueue *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = true;
    while (q->senders.head)
        claim(&q->senders, first(&q->senders), EPIPE);
    while (q->receivers.head)
        claim(&q->receivers, first(&q->receivers), EPIPE);
    pthread_mutex_unlock(&q->mu);
}

int weft_tqueue_free(weft_tqueue *q)
{
    pthread_mutex_lock(&q->mu);
    bool busy = q->users > 0; /* waiting, or woken and not yet out of q */
    pthread_mutex_unlock(&q->mu);
    if (busy) {
        errno = EBUSY;
        return -1;
    }
    pthread_mutex_destroy(&q->mu);
    item_ring_free(&q->ring);
    free(q);
    return 0;
}
