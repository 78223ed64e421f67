/* The scheduler's inbox: how another thread wakes a coroutine of this one. The other thread
 * claims the wait under the lock of the object involved (a thread queue, an offload job),
 * pushes it here and writes the scheduler's eventfd; the loop hears the eventfd through its
 * backend and delivers the wake-ups. A waiter whose wait was claimed but that woke for another
 * reason first waits for the delivery, so no wake-up is ever left in flight to hit a later,
 * unrelated wait. Invariant: s->external_waits counts the rwaits begun and not yet ended,
 * s->outside_waits those of them that the thread itself waits for, outside any coroutine;
 * once such a wait is over, the scheduler is freed if nothing else uses it (it may have been
 * made for that wait alone: a name lookup of a weft_connect outside any coroutine). */
#include "internal.h"
#include "sys.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Callback from the backend: the eventfd is readable. */
static void inbox_readable(io_watcher *w, unsigned events)
{
    (void)events;
    sched *s = sched_peek();
    uint64_t n;
    ssize_t r = sys_read(w->fd, &n, sizeof n);
    (void)r;
    pthread_mutex_lock(&s->in.mu);
    rwait *list = s->in.list;
    s->in.list = NULL;
    pthread_mutex_unlock(&s->in.mu);
    while (list) {
        rwait *next = list->inbox_next; /* read first: the waiter may free list once woken */
        weft_co *co = list->co;
        list->delivered = true; /* (a waiter outside any coroutine sees this and leaves) */
        if (co)
            sched_wake(co, 0);
        list = next;
    }
    backend_watch(s->be, w, IO_IN); /* (io_uring: re-arms a multishot poll the kernel ended) */
}

static void register_fork_handlers(void);

/* The eventfd, made and watched on first use. */
static int inbox_open(sched *s)
{
    if (s->in.fd >= 0)
        return 0;
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handlers);
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return -1;
    s->in.w = (io_watcher){.cb = inbox_readable, .fd = fd};
    if (backend_watch(s->be, &s->in.w, IO_IN) != 0) {
        int err = errno;
        sys_close(fd);
        errno = err;
        return -1;
    }
    s->in.fd = fd;
    return 0;
}

int rwait_begin(rwait *r)
{
    sched *s = sched_get();
    if (!s || inbox_open(s) != 0)
        return -1;
    r->co = s->current;
    r->s = s;
    r->delivered = false;
    r->inbox_next = NULL;
    s->external_waits++;
    s->outside_waits += r->co == NULL;
    return 0;
}

void rwait_wake(rwait *r)
{
    sched *s = r->s;
    if (s == sched_peek()) { /* same thread: no need for the inbox */
        r->delivered = true;
        if (r->co)
            sched_wake(r->co, 0);
        return;
    }
    /* The write stays under the lock: once r is drained its scheduler may end and close the
     * eventfd, so it must not be used after the unlock. */
    pthread_mutex_lock(&s->in.mu);
    bool first = s->in.list == NULL; /* else a write is already pending the drain */
    r->inbox_next = s->in.list;
    s->in.list = r;
    if (first) {
        uint64_t one = 1;
        ssize_t w = sys_write(s->in.fd, &one, sizeof one);
        (void)w; /* fails only if the counter is saturated, and then it is readable anyway */
    }
    pthread_mutex_unlock(&s->in.mu);
}

void rwait_settle(rwait *r)
{
    while (!r->delivered) {
        if (r->co)
            sched_park_on(WAIT_DELIVERY, r, -1, false);
        else
            sched_drive(&r->delivered, -1);
    }
    rwait_end(r);
}

void rwait_end(rwait *r)
{
    sched *s = r->s;
    WEFT_ASSERT(s == sched_peek() && s->external_waits > 0);
    s->external_waits--;
    if (!r->co) {
        WEFT_ASSERT(s->outside_waits > 0);
        s->outside_waits--;
        sched_release_unused();
    }
}

/* ---- fork() ----
 * The child has only the thread that forked, and the scheduler's new backend (sched.c's
 * handler ran first). Wake-ups that other threads had queued here were claims already made:
 * the thread's own wait, if one is among them, has been handed what it waited for, so it
 * counts as delivered; the orphans' are never looked at. The eventfd is the parent's too
 * (its counter shared): the child closes its copy and makes its own, now if the thread still
 * waits on another thread, else on first use. The lock is held across the fork, so that the
 * child's copy of the list is whole. */
static void inbox_fork_prepare(void)
{
    sched *s = sched_peek();
    if (s)
        pthread_mutex_lock(&s->in.mu);
}

static void inbox_fork_parent(void)
{
    sched *s = sched_peek();
    if (s)
        pthread_mutex_unlock(&s->in.mu);
}

static void inbox_fork_child(void)
{
    sched *s = sched_peek();
    if (!s)
        return;
    for (rwait *r = s->in.list; r; r = r->inbox_next)
        r->delivered = true;
    s->in.list = NULL;
    pthread_mutex_init(&s->in.mu, NULL);
    if (s->in.fd >= 0)
        sys_close(s->in.fd); /* (our copy: the parent's stays watched there) */
    s->in.fd = -1;
    if (s->external_waits > 0)
        inbox_open(s); /* (should it fail, only the child's coroutines can end the wait) */
}

static void register_fork_handlers(void)
{
    pthread_atfork(inbox_fork_prepare, inbox_fork_parent, inbox_fork_child);
}
