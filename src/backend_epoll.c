/* The epoll backend. Each fd is registered once, edge-triggered, for both directions, the
 * first time a coroutine waits on it; after that a wait costs no system call, only a slot
 * update. Edge-triggered events are only reliable if the waiter has seen EAGAIN first, which
 * is the contract of backend_wait: a wait always follows a failed non-blocking call -- or,
 * for reads of a TCP socket, a short read with no edge since (input_hint), which says the
 * same without the extra system call. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MAX_EVENTS 512

typedef struct epoll_backend {
    backend base;
    int epfd;
    int wakeup_fd;     /* the scheduler's eventfd, or -1 */
    slot_table fds;
    struct epoll_event events[MAX_EVENTS];
} epoll_backend;

static void epoll_free(backend *b)
{
    epoll_backend *e = (epoll_backend *)b;
    close(e->epfd);
    slot_table_free(&e->fds);
    free(e);
}

static int epoll_watch_wakeup(backend *b, int fd)
{
    epoll_backend *e = (epoll_backend *)b;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd}; /* level: drained by read */
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        return -1;
    e->wakeup_fd = fd;
    return 0;
}

static int epoll_wait_fd(backend *b, int fd, int events, int64_t deadline)
{
    epoll_backend *e = (epoll_backend *)b;
    fd_slot *slot = slot_table_get(&e->fds, fd);
    if (!slot)
        return -1;
    if (!slot->registered) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.fd = fd};
        if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) != 0 && errno != EEXIST)
            /* Regular files and the like cannot be polled: they are always ready. */
            return errno == EPERM ? 0 : -1;
        slot->registered = true;
    }
    return slot_park(b, &e->fds, fd, events, deadline);
}

/* With thousands of ready fds, each event's slot and the coroutine it wakes are cold. While
 * one event is handled, the slot of the one PREFETCH_AHEAD * 2 on is fetched, and the
 * coroutine waiting in the slot PREFETCH_AHEAD on (fetched by then). At 4 the slot was still
 * missed; at 12 the wake-up no longer stalls (perf, 10,000 connections). Always inlined: GCC
 * drops calls to a function it finds pure, and one that only reads and prefetches is. */
#define PREFETCH_AHEAD 12

#if defined(__GNUC__)
__attribute__((always_inline)) static inline void prefetch_event(epoll_backend *e, int i, int n)
{
    int j = i + PREFETCH_AHEAD * 2;
    if (j < n && (size_t)e->events[j].data.fd < e->fds.n)
        __builtin_prefetch(&e->fds.slots[e->events[j].data.fd]);
    j = i + PREFETCH_AHEAD;
    if (j < n && (size_t)e->events[j].data.fd < e->fds.n) {
        const fd_slot *slot = &e->fds.slots[e->events[j].data.fd];
        if (slot->reader)
            __builtin_prefetch(slot->reader);
        if (slot->writer)
            __builtin_prefetch(slot->writer);
    }
}
#else
static void prefetch_event(epoll_backend *e, int i, int n)
{
    (void)e, (void)i, (void)n;
}
#endif

static int epoll_poll(backend *b, int timeout_ms)
{
    epoll_backend *e = (epoll_backend *)b;
    int n = epoll_wait(e->epfd, e->events, MAX_EVENTS, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    for (int i = 0; i < n; i++) {
        prefetch_event(e, i, n);
        int fd = e->events[i].data.fd;
        uint32_t ev = e->events[i].events;
        if (fd == e->wakeup_fd) {
            sched_drain_inbox(sched_peek());
            continue;
        }
        if ((size_t)fd >= e->fds.n)
            continue;
        fd_slot *slot = &e->fds.slots[fd];
        /* Noted even with no reader parked: one may be about to decide whether to read. */
        if (ev & EPOLLIN)
            slot->in_edge = true;
        /* A hang-up's edge comes once, and urgent data makes reads stop short of the rest:
         * from now on always try the read. */
        if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI))
            slot->in_hup = true;
        /* Errors and hang-ups wake both sides: the retried call reports what happened. */
        if (ev & (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            slot_wake(b, &slot->reader, 0);
        if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            slot_wake(b, &slot->writer, 0);
    }
    return 0;
}

static bool epoll_input_hint(backend *b, int fd)
{
    epoll_backend *e = (epoll_backend *)b;
    if (fd < 0 || (size_t)fd >= e->fds.n)
        return true;
    fd_slot *slot = &e->fds.slots[fd];
    if (!slot->registered || slot->in_hup)
        return true; /* no edges seen for it yet, or the last one is spent */
    bool edge = slot->in_edge;
    slot->in_edge = false;
    return edge;
}

static void epoll_cancel_wait(backend *b, int fd, int events, int err)
{
    epoll_backend *e = (epoll_backend *)b;
    if (fd < 0 || (size_t)fd >= e->fds.n)
        return;
    fd_slot *slot = &e->fds.slots[fd];
    slot_wake(b, (events & WEFT_READABLE) ? &slot->reader : &slot->writer, err);
}

static void epoll_forget(backend *b, int fd)
{
    epoll_backend *e = (epoll_backend *)b;
    if (fd < 0 || (size_t)fd >= e->fds.n)
        return;
    fd_slot *slot = &e->fds.slots[fd];
    if (slot->registered) {
        /* Explicitly: close() alone leaves the registration alive while a forked child
         * still holds the file, and its events would reach whoever reuses the number. */
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
        slot->registered = false;
    }
    slot->in_edge = slot->in_hup = false;
    slot_wake(b, &slot->reader, EBADF);
    slot_wake(b, &slot->writer, EBADF);
}

static const backend_ops epoll_ops = {
    .name = "epoll",
    .free = epoll_free,
    .wait = epoll_wait_fd,
    .poll = epoll_poll,
    .forget = epoll_forget,
    .watch_wakeup = epoll_watch_wakeup,
    .cancel_wait = epoll_cancel_wait,
    .input_hint = epoll_input_hint,
};

backend *epoll_backend_new(void)
{
    epoll_backend *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->base.ops = &epoll_ops;
    e->wakeup_fd = -1;
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0) {
        free(e);
        return NULL;
    }
    return &e->base;
}
