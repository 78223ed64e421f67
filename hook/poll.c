/* poll, ppoll, select, pselect. In a coroutine, the kernel's own answer is asked with a zero
 * timeout (so revents, the sets and the count are exactly the kernel's); if nothing is ready
 * the coroutine parks until one of the descriptors may be, the timeout, or a signal handler,
 * and asks again. One descriptor waited on for one direction parks on it directly; more are
 * gathered in a short-lived epoll instance (level-triggered, the events asked for), and the
 * coroutine parks on that. Any pollable descriptor is waited on this way, sockets or not:
 * waiting does not touch the descriptor. As the kernel, these calls are never restarted
 * after a handler (EINTR), and select (not pselect) leaves the time not slept in *timeout.
 *
 * ppoll and pselect's mask: signals it lets in that are already pending run their handlers at
 * the start (the call then fails with EINTR); those that come during the wait end it through
 * a signalfd, and then run their handlers the same way. */
#include "hook.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <unistd.h>

#define IN_EVENTS (POLLIN | POLLPRI | POLLRDNORM | POLLRDBAND | POLLRDHUP)
#define OUT_EVENTS (POLLOUT | POLLWRNORM | POLLWRBAND)

int hook_poll_now(struct pollfd *fds, nfds_t n)
{
    return REAL(poll)(fds, n, 0);
}

/* Gather fds (and extra) in a new epoll instance and park on it. */
static int wait_many(hook_call *c, const struct pollfd *fds, nfds_t n, int extra,
                     int64_t deadline)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -1;
    fd_forget(ep); /* a fresh number: nothing of this thread's backend may stay on it */
    for (nfds_t i = 0; i < n; i++) {
        if (fds[i].fd < 0)
            continue;
        struct epoll_event ev = {.events = (uint32_t)(fds[i].events & (IN_EVENTS | OUT_EVENTS))};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i].fd, &ev) != 0 && errno == EEXIST) {
            for (nfds_t k = 0; k < i; k++) /* the same fd twice: wait for both */
                if (fds[k].fd == fds[i].fd)
                    ev.events |= (uint32_t)(fds[k].events & (IN_EVENTS | OUT_EVENTS));
            epoll_ctl(ep, EPOLL_CTL_MOD, fds[i].fd, &ev);
        }
        /* (Any other failure: a regular file, which poll already found ready.) */
    }
    if (extra >= 0) {
        struct epoll_event ev = {.events = EPOLLIN};
        epoll_ctl(ep, EPOLL_CTL_ADD, extra, &ev);
    }
    int rc = hook_wait_own_fd(c, ep, WEFT_READABLE, deadline);
    int err = errno;
    fd_forget(ep);
    REAL(close)(ep);
    errno = err;
    return rc;
}

int hook_wait_pollfds(hook_call *c, const struct pollfd *fds, nfds_t n, int extra,
                      int64_t deadline)
{
    const struct pollfd *only = NULL;
    nfds_t valid = 0;
    for (nfds_t i = 0; i < n; i++)
        if (fds[i].fd >= 0) {
            only = &fds[i];
            valid++;
        }
    if (valid == 0 && extra < 0)
        return hook_sleep_until(c, deadline);
    if (valid == 1 && extra < 0) {
        bool in = only->events & IN_EVENTS, out = only->events & OUT_EVENTS;
        if (!(in && out)) /* (no events at all: errors and hang-ups wake readers too) */
            return hook_wait_fd(c, only->fd, out ? WEFT_WRITABLE : WEFT_READABLE, deadline);
    }
    return wait_many(c, fds, n, extra, deadline);
}

/* Wait until something in fds is ready, end_ns passes (-1: never), or a handler ran. mask:
 * ppoll's, or NULL. */
static int poll_until(struct pollfd *fds, nfds_t n, int64_t end_ns, const sigset_t *mask)
{
    int saved = errno;
    hook_call c;
    hook_call_begin(&c);
    int sfd = -1, rc;
    if (mask && !hook_sig_deliver_pending(mask))
        sfd = hook_sig_unblock_fd(mask);
    int64_t deadline = end_ns < 0 ? -1 : hook_ms_deadline(end_ns);
    for (;;) {
        rc = hook_poll_now(fds, n);
        if (rc != 0)
            break; /* ready, or an error of poll's own (EFAULT, EINVAL) */
        if (mask && sfd >= 0)
            hook_sig_deliver_pending(mask);
        if (hook_call_interrupted(&c)) {
            errno = EINTR;
            rc = -1;
            break;
        }
        if (end_ns >= 0 && hook_now_ns() >= end_ns)
            break; /* rc == 0: timed out */
        if (hook_wait_pollfds(&c, fds, n, sfd, deadline) != 0 && errno != EINTR &&
            errno != ETIMEDOUT && errno != EBADF) {
            rc = -1; /* ECANCELED */
            break;
        }
    }
    int err = rc >= 0 ? saved : errno;
    if (sfd >= 0) {
        fd_forget(sfd);
        REAL(close)(sfd);
    }
    errno = err;
    return rc;
}

static bool timespec_bad(const struct timespec *ts)
{
    return ts->tv_sec < 0 || ts->tv_nsec < 0 || ts->tv_nsec >= 1000000000;
}

static int64_t end_after_ns(int64_t sec, int64_t nsec)
{
    if (sec > INT64_MAX / 2000000000) /* decades: as good as forever */
        return -1;
    return hook_now_ns() + sec * 1000000000 + nsec;
}

HOOK_API int poll(struct pollfd *fds, nfds_t n, int timeout)
{
    if (timeout == 0 || !hook_in_coroutine())
        return REAL(poll)(fds, n, timeout);
    int64_t end = timeout < 0 ? -1 : end_after_ns(timeout / 1000, (timeout % 1000) * 1000000ll);
    return poll_until(fds, n, end, NULL);
}

HOOK_API int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *tmo,
                   const sigset_t *mask)
{
    if (!hook_in_coroutine() || (tmo && (timespec_bad(tmo) || (!tmo->tv_sec && !tmo->tv_nsec))))
        return REAL(ppoll)(fds, n, tmo, mask);
    return poll_until(fds, n, tmo ? end_after_ns(tmo->tv_sec, tmo->tv_nsec) : -1, mask);
}

/* ---- select and pselect ----
 * Sets are read and written as arrays of longs (FD_ISSET would stop at FD_SETSIZE, and a
 * caller may pass larger sets). */

#define LBITS (8 * (int)sizeof(long))

static bool bit(const fd_set *s, int fd)
{
    return s && (((const unsigned long *)(const void *)s)[fd / LBITS] >> (fd % LBITS)) & 1ul;
}

typedef struct fdsets {
    fd_set *user[3];  /* read, write, except: the caller's, written with the answer */
    unsigned long *orig; /* their contents on entry, 3 * words longs */
    size_t words;
    unsigned long small[3 * (FD_SETSIZE / LBITS)];
} fdsets;

static int sets_save(fdsets *s, int nfds, fd_set *r, fd_set *w, fd_set *x)
{
    s->user[0] = r, s->user[1] = w, s->user[2] = x;
    s->words = ((size_t)nfds + LBITS - 1) / LBITS;
    s->orig = s->words * 3 <= sizeof s->small / sizeof(long) ? s->small
                                                             : malloc(s->words * 3 * sizeof(long));
    if (!s->orig)
        return -1;
    for (int k = 0; k < 3; k++)
        if (s->user[k])
            memcpy(s->orig + k * s->words, s->user[k], s->words * sizeof(long));
    return 0;
}

static void sets_restore(fdsets *s)
{
    for (int k = 0; k < 3; k++)
        if (s->user[k])
            memcpy(s->user[k], s->orig + k * s->words, s->words * sizeof(long));
}

static void sets_free(fdsets *s)
{
    if (s->orig != s->small)
        free(s->orig);
}

/* The sets as pollfds, to wait on; *out is malloc'd. -1/ENOMEM. */
static int sets_pollfds(const fdsets *s, int nfds, struct pollfd **out, nfds_t *n)
{
    const fd_set *orig[3];
    for (int k = 0; k < 3; k++)
        orig[k] = s->user[k] ? (const fd_set *)(const void *)(s->orig + k * s->words) : NULL;
    nfds_t count = 0;
    for (int fd = 0; fd < nfds; fd++)
        count += bit(orig[0], fd) || bit(orig[1], fd) || bit(orig[2], fd);
    struct pollfd *p = malloc((count ? count : 1) * sizeof *p);
    if (!p)
        return -1;
    nfds_t i = 0;
    for (int fd = 0; fd < nfds; fd++) {
        short ev = (short)((bit(orig[0], fd) ? POLLIN : 0) | (bit(orig[1], fd) ? POLLOUT : 0) |
                           (bit(orig[2], fd) ? POLLPRI : 0));
        if (ev)
            p[i++] = (struct pollfd){.fd = fd, .events = ev};
    }
    *out = p;
    *n = count;
    return 0;
}

static int select_until(int nfds, fd_set *r, fd_set *w, fd_set *x, int64_t end_ns,
                        const sigset_t *mask)
{
    int saved = errno;
    fdsets s;
    struct pollfd *pfds = NULL;
    nfds_t np = 0;
    if (sets_save(&s, nfds, r, w, x) != 0)
        return -1;
    hook_call c;
    hook_call_begin(&c);
    int sfd = -1, rc;
    if (mask && !hook_sig_deliver_pending(mask))
        sfd = hook_sig_unblock_fd(mask);
    int64_t deadline = end_ns < 0 ? -1 : hook_ms_deadline(end_ns);
    for (;;) {
        sets_restore(&s);
        struct timeval zero = {0, 0};
        rc = REAL(select)(nfds, r, w, x, &zero); /* writes the answer into the sets */
        if (rc != 0)
            break;
        if (mask && sfd >= 0)
            hook_sig_deliver_pending(mask);
        if (hook_call_interrupted(&c)) {
            sets_restore(&s); /* (the kernel leaves them as they were on an error) */
            errno = EINTR;
            rc = -1;
            break;
        }
        if (end_ns >= 0 && hook_now_ns() >= end_ns)
            break; /* timed out: the sets are empty */
        if (!pfds && sets_pollfds(&s, nfds, &pfds, &np) != 0) {
            rc = -1;
            break;
        }
        if (hook_wait_pollfds(&c, pfds, np, sfd, deadline) != 0 && errno != EINTR &&
            errno != ETIMEDOUT && errno != EBADF) {
            sets_restore(&s);
            rc = -1;
            break;
        }
    }
    int err = rc >= 0 ? saved : errno;
    if (sfd >= 0) {
        fd_forget(sfd);
        REAL(close)(sfd);
    }
    free(pfds);
    sets_free(&s);
    errno = err;
    return rc;
}

HOOK_API int select(int nfds, fd_set *r, fd_set *w, fd_set *x, struct timeval *tv)
{
    if (!hook_in_coroutine() || nfds < 0 || (tv && tv->tv_sec == 0 && tv->tv_usec == 0) ||
        (tv && (tv->tv_sec < 0 || tv->tv_usec < 0 || tv->tv_usec >= 1000000)))
        return REAL(select)(nfds, r, w, x, tv);
    int64_t end = tv ? end_after_ns(tv->tv_sec, (int64_t)tv->tv_usec * 1000) : -1;
    int rc = select_until(nfds, r, w, x, end, NULL);
    if (tv && end >= 0 && (rc >= 0 || errno == EINTR)) {
        /* Linux tells the caller how much of the timeout is left. */
        int err = errno;
        int64_t left = end - hook_now_ns();
        if (left < 0)
            left = 0;
        tv->tv_sec = (time_t)(left / 1000000000);
        tv->tv_usec = (suseconds_t)(left % 1000000000 / 1000);
        errno = err;
    }
    return rc;
}

HOOK_API int pselect(int nfds, fd_set *r, fd_set *w, fd_set *x, const struct timespec *tmo,
                     const sigset_t *mask)
{
    if (!hook_in_coroutine() || nfds < 0 ||
        (tmo && (timespec_bad(tmo) || (!tmo->tv_sec && !tmo->tv_nsec))))
        return REAL(pselect)(nfds, r, w, x, tmo, mask);
    int64_t end = tmo ? end_after_ns(tmo->tv_sec, tmo->tv_nsec) : -1;
    return select_until(nfds, r, w, x, end, mask);
}
