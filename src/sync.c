/* Sync between the coroutines of one scheduler: queues (with select), mutex, condition and
 * wait group. Single-threaded by design, so no locks: a waiter is a node on the waiting
 * side's stack, linked into the object's FIFO list, and the side that satisfies the wait
 * hands over directly (the item, or the mutex itself) before waking it. A node of a select
 * stays in several lists; once one operation completes, its siblings are skipped. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

static void wake_all(wait_list *l, int err)
{
    waiter *w;
    while ((w = wait_list_pop(l)))
        waiter_done(w, err);
}

/* ---- Queues ---- */

int item_ring_init(item_ring *r, size_t cap)
{
    r->items = malloc(cap * sizeof *r->items);
    if (!r->items) {
        errno = ENOMEM;
        return -1;
    }
    r->cap = cap;
    r->head = r->len = 0;
    return 0;
}

void item_ring_free(item_ring *r)
{
    free(r->items);
    r->items = NULL;
}

void item_ring_push(item_ring *r, void *item)
{
    r->items[(r->head + r->len) % r->cap] = item;
    r->len++;
}

void *item_ring_pop(item_ring *r)
{
    void *item = r->items[r->head];
    r->head = (r->head + 1) % r->cap;
    r->len--;
    return item;
}

struct weft_queue {
    item_ring ring;
    bool closed;
    wait_list senders;   /* waiting with an item that did not fit */
    wait_list receivers; /* waiting for an item */
};

weft_queue *weft_queue_new(size_t capacity)
{
    if (capacity == 0) {
        errno = EINVAL;
        return NULL;
    }
    weft_queue *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    if (item_ring_init(&q->ring, capacity) != 0) {
        free(q);
        return NULL;
    }
    return q;
}

int weft_queue_try_send(weft_queue *q, void *item)
{
    if (q->closed) {
        errno = EPIPE;
        return -1;
    }
    waiter *r = q->ring.len == 0 ? wait_list_pop(&q->receivers) : NULL;
    if (r) { /* straight into a waiting receiver's hands */
        r->item = item;
        waiter_done(r, 0);
        return 0;
    }
    if (q->ring.len == q->ring.cap) {
        errno = EAGAIN;
        return -1;
    }
    item_ring_push(&q->ring, item);
    return 0;
}

int weft_queue_try_recv(weft_queue *q, void **item)
{
    if (q->ring.len > 0) {
        *item = item_ring_pop(&q->ring);
        waiter *s = wait_list_pop(&q->senders); /* the room just made is theirs */
        if (s) {
            item_ring_push(&q->ring, s->item);
            waiter_done(s, 0);
        }
        return 0;
    }
    errno = q->closed ? EPIPE : EAGAIN;
    return -1;
}

/* Wait in list as w until handed over; then w->err says how it went. */
static int queue_wait(wait_list *list, waiter *w, int64_t deadline)
{
    wait_list_push(list, w);
    if (waiter_wait(w, deadline, true) != 0) {
        wait_list_remove(list, w);
        return -1;
    }
    if (w->err) {
        errno = w->err;
        return -1;
    }
    return 0;
}

int weft_queue_send(weft_queue *q, void *item, int64_t deadline)
{
    if (weft_queue_try_send(q, item) == 0)
        return 0;
    if (errno != EAGAIN)
        return -1;
    waiter w;
    waiter_init_as(&w, WAIT_QUEUE_SEND, q);
    w.item = item;
    return queue_wait(&q->senders, &w, deadline);
}

int weft_queue_recv(weft_queue *q, void **item, int64_t deadline)
{
    if (weft_queue_try_recv(q, item) == 0)
        return 0;
    if (errno != EAGAIN)
        return -1;
    waiter w;
    waiter_init_as(&w, WAIT_QUEUE_RECV, q);
    if (queue_wait(&q->receivers, &w, deadline) != 0)
        return -1;
    *item = w.item;
    return 0;
}

void weft_queue_close(weft_queue *q)
{
    q->closed = true;
    wake_all(&q->senders, EPIPE);
    wake_all(&q->receivers, EPIPE); /* they wait only while the queue is empty */
}

int weft_queue_free(weft_queue *q)
{
    if (q->senders.head || q->receivers.head) {
        errno = EBUSY;
        return -1;
    }
    item_ring_free(&q->ring);
    free(q);
    return 0;
}

size_t weft_queue_len(const weft_queue *q)
{
    return q->ring.len;
}

/* ---- Select ---- */

/* Try ops[i] without waiting: 1 done (ops[i].err set), 0 would wait. */
static int select_try(weft_select_op *op)
{
    int rc = op->op == WEFT_SEND ? weft_queue_try_send(op->q, op->item)
                                 : weft_queue_try_recv(op->q, &op->item);
    if (rc == 0) {
        op->err = 0;
        return 1;
    }
    if (errno == EPIPE) {
        op->err = EPIPE;
        return 1;
    }
    return 0;
}

#define SELECT_MAX 64

int weft_select(weft_select_op *ops, size_t n, int64_t deadline)
{
    if (n == 0 || n > SELECT_MAX) {
        errno = EINVAL;
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!ops[i].q || (ops[i].op != WEFT_SEND && ops[i].op != WEFT_RECV)) {
            errno = EINVAL;
            return -1;
        }
        if (select_try(&ops[i]))
            return (int)i;
    }
    selector sel = {false, -1};
    waiter nodes[SELECT_MAX];
    for (size_t i = 0; i < n; i++) {
        waiter_init_as(&nodes[i], WAIT_SELECT, ops);
        nodes[i].sel = &sel;
        nodes[i].index = (int)i;
        nodes[i].item = ops[i].item;
        wait_list_push(ops[i].op == WEFT_SEND ? &ops[i].q->senders : &ops[i].q->receivers,
                       &nodes[i]);
    }
    int rc = waiter_wait(&nodes[0], deadline, true);
    for (size_t i = 0; i < n; i++) { /* whatever is still linked goes */
        if (!nodes[i].linked)
            continue; /* its queue may be closed and freed by now: not ours to touch */
        wait_list_remove(ops[i].op == WEFT_SEND ? &ops[i].q->senders : &ops[i].q->receivers,
                         &nodes[i]);
    }
    if (rc != 0)
        return -1;
    int i = sel.index;
    ops[i].err = nodes[i].err;
    if (ops[i].op == WEFT_RECV && !nodes[i].err)
        ops[i].item = nodes[i].item;
    return i;
}

/* ---- Mutex ---- */

struct weft_mutex {
    const void *owner; /* a coroutine, or the thread itself outside coroutines */
    wait_list waiters;
};

static _Thread_local char outside_owner;

static const void *me(void)
{
    weft_co *co = weft_self();
    return co ? (const void *)co : (const void *)&outside_owner;
}

weft_mutex *weft_mutex_new(void)
{
    return calloc(1, sizeof(weft_mutex));
}

int weft_mutex_trylock(weft_mutex *m)
{
    if (m->owner) {
        errno = EBUSY;
        return -1;
    }
    m->owner = me();
    return 0;
}

static int mutex_lock(weft_mutex *m, int64_t deadline, bool cancellable)
{
    if (!m->owner) {
        m->owner = me();
        return 0;
    }
    if (m->owner == me()) {
        errno = EDEADLK;
        return -1;
    }
    waiter w;
    waiter_init_as(&w, WAIT_MUTEX, m);
    wait_list_push(&m->waiters, &w);
    if (waiter_wait(&w, deadline, cancellable) != 0) {
        wait_list_remove(&m->waiters, &w);
        return -1;
    }
    return 0; /* the unlocker made us the owner */
}

int weft_mutex_lock(weft_mutex *m, int64_t deadline)
{
    return mutex_lock(m, deadline, true);
}

int weft_mutex_unlock(weft_mutex *m)
{
    if (m->owner != me()) {
        errno = EPERM;
        return -1;
    }
    waiter *w = wait_list_pop(&m->waiters);
    m->owner = NULL;
    if (w) { /* hand it over: nobody can slip in between */
        m->owner = w->co ? (const void *)w->co : (const void *)&outside_owner;
        waiter_done(w, 0);
    }
    return 0;
}

weft_co *mutex_holder(const weft_mutex *m, bool *held)
{
    *held = m->owner != NULL;
    return m->owner && m->owner != (const void *)&outside_owner ? (weft_co *)m->owner : NULL;
}

int weft_mutex_free(weft_mutex *m)
{
    if (m->owner || m->waiters.head) {
        errno = EBUSY;
        return -1;
    }
    free(m);
    return 0;
}

/* ---- Condition ---- */

struct weft_cond {
    wait_list waiters;
};

weft_cond *weft_cond_new(void)
{
    return calloc(1, sizeof(weft_cond));
}

int weft_cond_wait(weft_cond *c, weft_mutex *m, int64_t deadline)
{
    if (weft_mutex_unlock(m) != 0)
        return -1;
    waiter w;
    waiter_init_as(&w, WAIT_COND, c);
    wait_list_push(&c->waiters, &w);
    int rc = waiter_wait(&w, deadline, true);
    int err = errno;
    if (rc != 0)
        wait_list_remove(&c->waiters, &w);
    /* The mutex comes back whatever happened, as with pthread_cond_wait: a cancel must not
     * leave the caller running without the lock it expects to hold. */
    mutex_lock(m, -1, false);
    errno = err;
    return rc;
}

void weft_cond_signal(weft_cond *c)
{
    waiter *w = wait_list_pop(&c->waiters);
    if (w)
        waiter_done(w, 0);
}

void weft_cond_broadcast(weft_cond *c)
{
    wake_all(&c->waiters, 0);
}

int weft_cond_free(weft_cond *c)
{
    if (c->waiters.head) {
        errno = EBUSY;
        return -1;
    }
    free(c);
    return 0;
}

/* ---- Wait group ---- */

struct weft_waitgroup {
    long count;
    wait_list waiters;
};

weft_waitgroup *weft_waitgroup_new(void)
{
    return calloc(1, sizeof(weft_waitgroup));
}

int weft_waitgroup_add(weft_waitgroup *wg, int delta)
{
    if (wg->count + delta < 0) {
        errno = EINVAL;
        return -1;
    }
    wg->count += delta;
    if (wg->count == 0)
        wake_all(&wg->waiters, 0);
    return 0;
}

int weft_waitgroup_done(weft_waitgroup *wg)
{
    return weft_waitgroup_add(wg, -1);
}

int weft_waitgroup_wait(weft_waitgroup *wg, int64_t deadline)
{
    if (wg->count == 0)
        return 0;
    waiter w;
    waiter_init_as(&w, WAIT_WAITGROUP, wg);
    wait_list_push(&wg->waiters, &w);
    if (waiter_wait(&w, deadline, true) != 0) {
        wait_list_remove(&wg->waiters, &w);
        return -1;
    }
    return 0;
}

long waitgroup_count(const weft_waitgroup *wg)
{
    return wg->count;
}

int weft_waitgroup_free(weft_waitgroup *wg)
{
    if (wg->waiters.head) {
        errno = EBUSY;
        return -1;
    }
    free(wg);
    return 0;
}
