/* The scheduler's inbox: how another thread wakes a coroutine of this one. The other thread
 * claims the wait under the lock of the object involved (a thread queue, an offload job),
 * pushes it here and writes the scheduler's eventfd; the loop hears the eventfd through its
 * backend and delivers the wake-ups. A waiter whose wait was claimed but that woke for another
 * reason first waits for the delivery, so no wake-up is ever left in flight to hit a later,
 * unrelated wait. Invariant: s->external_waits counts the rwaits begun and not yet ended. */
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

/* The eventfd, made and watched on first use. */
static int inbox_open(sched *s)
{
    if (s->in.fd >= 0)
        return 0;
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
    WEFT_ASSERT(r->s->external_waits > 0);
    r->s->external_waits--;
}

void rwait_end(rwait *r)
{
    WEFT_ASSERT(r->s->external_waits > 0);
    r->s->external_waits--;
}
