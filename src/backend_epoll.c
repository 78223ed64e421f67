/* The epoll backend. Each fd is registered once, edge-triggered, for both directions, the
 * first time it is watched; after that a wait costs no system call. Edge-triggered events
 * are only reliable once the caller has seen EAGAIN (or a short read, which says the same),
 * which is the contract of watch. Events go to the watcher registered with the fd, whose
 * address the epoll event carries. Per fd the backend keeps only whether it is registered. */
#include "internal.h"
#include "sys.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MAX_EVENTS 512

typedef struct epoll_backend {
    backend base;
    int epfd;
    uint8_t *registered; /* by fd */
    size_t n;
    struct epoll_event events[MAX_EVENTS];
} epoll_backend;

static void epoll_free(backend *b)
{
    epoll_backend *e = (epoll_backend *)b;
    sys_close(e->epfd);
    free(e->registered);
    free(e);
}

/* The registered flag of fd, growing the table as needed; NULL/ENOMEM. */
static uint8_t *reg_flag(epoll_backend *e, int fd)
{
    if ((size_t)fd >= e->n) {
        size_t n = e->n ? e->n : 64;
        while (n <= (size_t)fd)
            n *= 2;
        uint8_t *r = realloc(e->registered, n);
        if (!r) {
            errno = ENOMEM;
            return NULL;
        }
        memset(r + e->n, 0, n - e->n);
        e->registered = r;
        e->n = n;
    }
    return &e->registered[fd];
}

static int epoll_watch(backend *b, io_watcher *w, unsigned events)
{
    (void)events; /* registered once for everything: later waits cost nothing */
    epoll_backend *e = (epoll_backend *)b;
    uint8_t *reg = w->fd >= 0 ? reg_flag(e, w->fd) : NULL;
    if (!reg)
        return -1;
    if (*reg)
        return 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.ptr = w};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, w->fd, &ev) != 0 && errno != EEXIST)
        return -1; /* (EPERM: a regular file, which cannot be polled and is always ready) */
    *reg = 1;
    return 0;
}

/* With thousands of ready fds, each event's watcher and the coroutine it wakes are cold.
 * While one event is handled, the watcher of the one PREFETCH_AHEAD * 2 on is fetched, and
 * what the watcher of the one PREFETCH_AHEAD on will touch (its hint: the waiting coroutine).
 * At 4 the slot was still missed; at 12 the wake-up no longer stalls (perf, 10,000
 * connections). Always inlined: GCC drops calls to a function it finds pure, and one that
 * only reads and prefetches is. */
#define PREFETCH_AHEAD 12

#if defined(__GNUC__)
__attribute__((always_inline)) static inline void prefetch_event(epoll_backend *e, int i, int n)
{
    int j = i + PREFETCH_AHEAD * 2;
    if (j < n)
        __builtin_prefetch(e->events[j].data.ptr);
    j = i + PREFETCH_AHEAD;
    if (j < n) {
        const io_watcher *w = e->events[j].data.ptr;
        if (w->hint)
            __builtin_prefetch(w->hint);
    }
}
#else
static void prefetch_event(epoll_backend *e, int i, int n)
{
    (void)e, (void)i, (void)n;
}
#endif

static unsigned io_events(uint32_t ev)
{
    unsigned io = 0;
    if (ev & EPOLLIN)
        io |= IO_IN;
    if (ev & EPOLLOUT)
        io |= IO_OUT;
    if (ev & EPOLLPRI)
        io |= IO_PRI;
    if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        io |= IO_HUP;
    return io;
}

static int epoll_poll(backend *b, int timeout_ms)
{
    epoll_backend *e = (epoll_backend *)b;
    int n = epoll_wait(e->epfd, e->events, MAX_EVENTS, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    e->base.dispatched += (uint64_t)n;
    for (int i = 0; i < n; i++) {
        prefetch_event(e, i, n);
        io_watcher *w = e->events[i].data.ptr;
        w->cb(w, io_events(e->events[i].events));
    }
    return 0;
}

static void epoll_forget(backend *b, int fd)
{
    epoll_backend *e = (epoll_backend *)b;
    if (fd < 0 || (size_t)fd >= e->n || !e->registered[fd])
        return;
    /* Explicitly: close() alone leaves the registration alive while a forked child still
     * holds the file, and its events would reach whoever reuses the number. */
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
    e->registered[fd] = 0;
}

static const backend_ops epoll_ops = {
    .name = "epoll",
    .free = epoll_free,
    .abandon = epoll_free, /* (closing our copy of the epoll fd touches nothing shared) */
    .watch = epoll_watch,
    .forget = epoll_forget,
    .poll = epoll_poll,
    .edges_show_urgent = true,
};

backend *epoll_backend_new(void)
{
    epoll_backend *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->base.ops = &epoll_ops;
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0) {
        free(e);
        return NULL;
    }
    return &e->base;
}
