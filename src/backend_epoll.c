/* The epoll backend. Each fd is registered once, edge-triggered, for both directions, the
 * first time a coroutine waits on it; after that a wait costs no system call, only a slot
 * update. Edge-triggered events are only reliable if the waiter has seen EAGAIN first, which
 * is the contract of backend_wait: a wait always follows a failed non-blocking call. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MAX_EVENTS 256

typedef struct fd_slot {
    weft_co *reader;   /* coroutine waiting for input, if any */
    weft_co *writer;   /* coroutine waiting for output space, if any */
    bool registered;
} fd_slot;

struct backend {
    int epfd;
    fd_slot *slots;    /* indexed by fd */
    size_t nslots;
    size_t waiting;
    int wakeup_fd;     /* the scheduler's eventfd, or -1 */
    struct epoll_event events[MAX_EVENTS];
};

backend *backend_new(void)
{
    backend *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->wakeup_fd = -1;
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (b->epfd < 0) {
        free(b);
        return NULL;
    }
    return b;
}

void backend_free(backend *b)
{
    close(b->epfd);
    free(b->slots);
    free(b);
}

int backend_watch_wakeup(backend *b, int fd)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd}; /* level: drained by read */
    if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        return -1;
    b->wakeup_fd = fd;
    return 0;
}

size_t backend_waiting(const backend *b)
{
    return b->waiting;
}

static fd_slot *slot_for(backend *b, int fd)
{
    if ((size_t)fd >= b->nslots) {
        size_t n = b->nslots ? b->nslots : 64;
        while (n <= (size_t)fd)
            n *= 2;
        fd_slot *slots = realloc(b->slots, n * sizeof *slots);
        if (!slots)
            return NULL;
        memset(slots + b->nslots, 0, (n - b->nslots) * sizeof *slots);
        b->slots = slots;
        b->nslots = n;
    }
    return &b->slots[fd];
}

static int slot_register(backend *b, int fd, fd_slot *slot)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = fd};
    if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &ev) != 0 && errno != EEXIST)
        return -1;
    slot->registered = true;
    return 0;
}

int backend_wait(backend *b, int fd, int events, int64_t deadline)
{
    if (fd < 0) {
        errno = EBADF;
        return -1;
    }
    fd_slot *slot = slot_for(b, fd);
    if (!slot)
        return -1;
    if (!slot->registered && slot_register(b, fd, slot) != 0) {
        /* Regular files and the like cannot be polled: they are always ready. */
        return errno == EPERM ? 0 : -1;
    }
    weft_co *self = weft_self();
    weft_co **w = (events & WEFT_READABLE) ? &slot->reader : &slot->writer;
    if (*w) {
        errno = EBUSY;
        return -1;
    }
    *w = self;
    b->waiting++;
    int rc = sched_park(deadline);
    /* Timeout or cancel: take ourselves out (slots may have moved while we were parked). */
    slot = &b->slots[fd];
    w = (events & WEFT_READABLE) ? &slot->reader : &slot->writer;
    if (*w == self) {
        *w = NULL;
        b->waiting--;
    }
    return rc;
}

static void wake_slot(backend *b, weft_co **w, int err)
{
    if (*w) {
        weft_co *co = *w;
        *w = NULL;
        b->waiting--;
        sched_wake(co, err);
    }
}

int backend_poll(backend *b, int timeout_ms)
{
    int n = epoll_wait(b->epfd, b->events, MAX_EVENTS, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    for (int i = 0; i < n; i++) {
        int fd = b->events[i].data.fd;
        uint32_t ev = b->events[i].events;
        if (fd == b->wakeup_fd) {
            sched_drain_inbox(sched_peek());
            continue;
        }
        if ((size_t)fd >= b->nslots)
            continue;
        fd_slot *slot = &b->slots[fd];
        /* Errors and hang-ups wake both sides: the retried call reports what happened. */
        if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            wake_slot(b, &slot->reader, 0);
        if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            wake_slot(b, &slot->writer, 0);
    }
    return 0;
}

void backend_cancel_wait(backend *b, int fd, int events, int err)
{
    if (fd < 0 || (size_t)fd >= b->nslots)
        return;
    fd_slot *slot = &b->slots[fd];
    wake_slot(b, (events & WEFT_READABLE) ? &slot->reader : &slot->writer, err);
}

void backend_forget(backend *b, int fd)
{
    if (fd < 0 || (size_t)fd >= b->nslots)
        return;
    fd_slot *slot = &b->slots[fd];
    if (slot->registered) {
        /* Explicitly: close() alone leaves the registration alive while a forked child
         * still holds the file, and its events would reach whoever reuses the number. */
        epoll_ctl(b->epfd, EPOLL_CTL_DEL, fd, NULL);
        slot->registered = false;
    }
    wake_slot(b, &slot->reader, EBADF);
    wake_slot(b, &slot->writer, EBADF);
}
