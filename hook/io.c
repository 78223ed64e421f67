/* read, readv, write, writev, recv, recvfrom, recvmsg, send, sendto, sendmsg.
 *
 * In a coroutine, on a socket or pipe its caller believes blocking, each attempt is made
 * non-blocking for that one call (MSG_DONTWAIT on sockets, RWF_NOWAIT on pipes), and only
 * EAGAIN parks the coroutine, after which the call tries again: what the caller sees is what
 * the blocking call gives. A read returns what is there once anything is; a write (and a
 * stream socket's MSG_WAITALL receive) goes on until everything is through, and returns a
 * short count only where the blocking call would: a signal handler without SA_RESTART, the
 * socket's timeout, an error after part of it went (that error then comes at the next call,
 * as the kernel keeps it for then). read and write on a socket become recv and send, which
 * the kernel runs the same way (a write on a SOCK_SEQPACKET socket ends a record: MSG_EOR). */
#include "hook.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/uio.h>

/* One transfer: what to move, and how one attempt that would not block is made. */
typedef struct xfer {
    hook_fd *e;
    int fd;
    bool pipe;
    bool input;
    bool all;          /* go on until len bytes are through */
    bool peek_all;     /* MSG_PEEK | MSG_WAITALL: wait until len bytes can be seen */
    size_t len;        /* bytes asked for */
    /* One attempt past done bytes; nosig: do not raise SIGPIPE (part already went). */
    ssize_t (*attempt)(struct xfer *x, size_t done, bool nosig);
    const struct iovec *iov;
    int iovcnt;
    void *buf;
    int flags;
    struct msghdr *msg;
    struct sockaddr *from;
    socklen_t *fromlen;
    const struct sockaddr *to;
    socklen_t tolen;
} xfer;

size_t hook_iov_len(const struct iovec *iov, int n)
{
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += iov[i].iov_len;
    return len;
}

int hook_iov_advance(const struct iovec *iov, int n, size_t done, struct iovec *out)
{
    int i = 0;
    while (i < n && done >= iov[i].iov_len)
        done -= iov[i++].iov_len;
    int k = 0;
    for (; i < n; i++, k++) {
        out[k].iov_base = (char *)iov[i].iov_base + done;
        out[k].iov_len = iov[i].iov_len - done;
        done = 0;
    }
    return k;
}

/* An error the kernel would have kept for the next call, which our extra attempt took. */
static int take_pending(hook_fd *e)
{
    if (!atomic_load_explicit(&e->pending_err, memory_order_relaxed))
        return 0;
    return atomic_exchange(&e->pending_err, 0);
}

/* Before a pipe's wait: is it still one? (A regular file's RWF_NOWAIT read can say EAGAIN
 * too, and waiting for it would never end.) */
static bool still_pipe(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
}

/* A TCP socket whose last read was short had nothing left; on a backend whose edges show
 * urgent data apart (epoll: urgent data is the one thing that stops a read short with more
 * queued), nothing has come since unless the backend reported input. Then the read parks at
 * once, without the recv that would only say EAGAIN: one system call in three, per request
 * and reply. Plain reads only (not a peek, not MSG_OOB, not MSG_WAITALL). */
static bool drain_known(const xfer *x)
{
    return x->input && !x->pipe && !x->all && !x->peek_all &&
           !(x->flags & (MSG_PEEK | MSG_OOB)) &&
           (atomic_load_explicit(&x->e->flags, memory_order_relaxed) & HOOK_TCP) &&
           fd_edges_show_urgent();
}

static void note_drained(xfer *x, ssize_t r)
{
    bool drained = (r > 0 && (size_t)r < x->len) || (r < 0 && errno == EAGAIN);
    if (atomic_load_explicit(&x->e->drained, memory_order_relaxed) != drained)
        atomic_store_explicit(&x->e->drained, drained, memory_order_relaxed);
}

/* On io_uring a plain receive on a stream socket that has to wait is made by the ring
 * itself, into the caller's buffer: the kernel completes it when bytes come, so neither a
 * readiness wait nor a second recv is needed, and a read after one that left the socket
 * drained goes to the ring at once (the ring's own first attempt finds what is there). Only
 * calls whose whole meaning the ring's recv (flags 0) has: no peek, MSG_WAITALL, MSG_OOB,
 * MSG_TRUNC ...; not recvfrom asking for the address, recvmsg or readv (the readiness path
 * keeps them). */
static bool ring_read(const xfer *x)
{
    return x->input && !x->pipe && !x->msg && !x->from && !x->all && !x->peek_all &&
           (x->flags & ~MSG_NOSIGNAL) == 0 &&
           (atomic_load_explicit(&x->e->flags, memory_order_relaxed) & HOOK_STREAM) &&
           atomic_load_explicit(&x->e->rcvlowat, memory_order_relaxed) <= 1 &&
           fd_ops_available();
}

/* SO_RCVLOWAT above 1 on TCP: the blocking recv waits until min(low-water mark, len) bytes
 * are there (or the end, an error, its timeout, a signal), where the non-blocking attempt
 * returns whatever is there. So such a read attempts only when that many are there (FIONREAD)
 * or TCP's poll says readable, which it does at the low-water mark, at the end and on an
 * error: where the kernel's own wait would end (its wake-up, too, waits for the mark). */
static bool below_lowat(const xfer *x)
{
    int32_t lowat = atomic_load_explicit(&x->e->rcvlowat, memory_order_relaxed);
    if (lowat <= 1 || !x->input || x->pipe || x->all || (x->flags & MSG_OOB) ||
        !(atomic_load_explicit(&x->e->flags, memory_order_relaxed) & HOOK_TCP))
        return false;
    size_t target = (size_t)lowat < x->len ? (size_t)lowat : x->len;
    int avail = 0;
    if (syscall(SYS_ioctl, x->fd, FIONREAD, &avail) == 0 && avail >= 0 && (size_t)avail >= target)
        return false;
    struct pollfd p = {.fd = x->fd, .events = POLLIN};
    return hook_poll_now(&p, 1) == 0;
}

/* The bytes a transfer must have moved before it returns: all of them for a write and for
 * MSG_WAITALL; on a Unix stream socket with SO_RCVLOWAT above 1, min(mark, len) for a read
 * (the kernel's reader takes what comes and waits for more until then; a recvmsg or a
 * recvfrom asking for the address is not gathered: docs/hooks.md); else any. */
static size_t transfer_target(const xfer *x)
{
    if (x->all)
        return x->len;
    if (!x->input || x->pipe || x->msg || x->from || (x->flags & (MSG_PEEK | MSG_OOB)))
        return 1;
    uint8_t f = atomic_load_explicit(&x->e->flags, memory_order_relaxed);
    int32_t lowat = atomic_load_explicit(&x->e->rcvlowat, memory_order_relaxed);
    if (!(f & HOOK_STREAM) || (f & HOOK_TCP) || lowat <= 1)
        return 1;
    return (size_t)lowat < x->len ? (size_t)lowat : x->len;
}

#define RING_FALL_BACK (-3) /* the ring could not take it: wait for readiness instead */

/* After the ring's receive was cancelled for a signal or the timeout: what the socket has
 * now. The cancel may have won against bytes (or an end, an error) that came before it; the
 * kernel's blocking recv looks at those before it looks at signals and its timeout, so they
 * are the answer. -1/EAGAIN: nothing there. */
static ssize_t ring_last_look(xfer *x)
{
    ssize_t r = x->attempt(x, 0, false);
    note_drained(x, r);
    return r;
}

/* The ring's receive, as the blocking recv ends: the count, or -1 with its errno; a signal
 * handler restarts it or ends it with EINTR (unless the bytes came first: then they are the
 * answer), the socket's timeout with EAGAIN, a close by another coroutine with EBADF. -2 as
 * transfer (not a socket); RING_FALL_BACK. */
static ssize_t ring_recv(xfer *x, hook_call *c, int64_t deadline, bool restartable)
{
    for (;;) {
        ssize_t r = hook_recv_op(c, x->fd, x->e, x->buf, x->len, deadline);
        if (r >= 0) {
            note_drained(x, r);
            return r;
        }
        if (r == -2)
            return RING_FALL_BACK;
        int err = errno;
        if ((err == EINTR || err == ETIMEDOUT) &&
            ((r = ring_last_look(x)) >= 0 || errno != EAGAIN))
            return r;
        switch (err) {
        case EINTR:
            if (hook_call_restart(c, restartable))
                continue;
            errno = EINTR;
            return -1;
        case EAGAIN: /* the file is non-blocking after all (set where the hook did not see) */
            return RING_FALL_BACK;
        case ENOTSOCK:
            return -2;
        case ETIMEDOUT:
            errno = EAGAIN;
            return -1;
        case ECANCELED:
            if (!weft_cancelled())
                errno = EBADF; /* fd_forget cancelled it: closed by another coroutine */
            return -1;
        default:
            return -1;
        }
    }
}

/* The engine: attempts, parks on EAGAIN, decides on signals and timeouts. Returns the count,
 * or -1 with errno; -2 when the descriptor is not what the table said (the caller then makes
 * the real call). */
static ssize_t transfer_errno(xfer *x)
{
    int32_t tmo = x->pipe ? 0 : atomic_load_explicit(x->input ? &x->e->rcvtimeo_ms
                                                              : &x->e->sndtimeo_ms,
                                                     memory_order_relaxed);
    int pending = x->pipe ? 0 : take_pending(x->e);
    if (pending) {
        errno = pending;
        return -1;
    }
    hook_call c;
    hook_call_begin(&c);
    int64_t deadline = hook_deadline(tmo);
    size_t done = 0, target = transfer_target(x);
    bool tcp_read = drain_known(x), ring = ring_read(x);
    for (;;) {
        ssize_t r = -1;
        if (ring && atomic_load_explicit(&x->e->drained, memory_order_relaxed)) {
            errno = EAGAIN; /* drained: the ring's receive tries first anyway */
        } else if (tcp_read && !fd_input_hint(x->fd) &&
                   atomic_load_explicit(&x->e->drained, memory_order_relaxed)) {
            /* (The hint is asked before every read, so that each arrival answers one.) */
            errno = EAGAIN; /* drained, and nothing came since: the recv would say so */
        } else if (below_lowat(x)) {
            errno = EAGAIN; /* the blocking recv would wait for more */
        } else {
            r = x->attempt(x, done, done > 0);
            if (tcp_read || ring)
                note_drained(x, r);
        }
        if (r > 0) {
            if (x->peek_all) {
                if ((size_t)r >= x->len)
                    return r;
            } else {
                done += (size_t)r;
                if (done >= target)
                    return (ssize_t)done;
                continue; /* until EAGAIN: only then is an edge-triggered wait sound */
            }
        } else if (r == 0) {
            return (ssize_t)done; /* end of input */
        } else if (errno != EAGAIN) {
            int err = errno;
            /* Not what the table said: a "socket" that is not one, a "pipe" that turned
             * out to be something RWF_NOWAIT does not apply to. */
            if (done == 0 && ((err == ENOTSOCK && !x->pipe) ||
                              ((err == EOPNOTSUPP || err == ENOSYS) && x->pipe)))
                return -2;
            if (done == 0)
                return -1;
            if (!x->pipe && err != EPIPE) /* EPIPE stays: the next call meets it again */
                atomic_store(&x->e->pending_err, err);
            return (ssize_t)done;
        }
        /* It would block. */
        if (hook_call_interrupted(&c) && !hook_call_restart(&c, tmo == 0)) {
            if (done)
                return (ssize_t)done;
            errno = EINTR;
            return -1;
        }
        if (ring) {
            ssize_t rr = ring_recv(x, &c, deadline, tmo == 0);
            if (rr != RING_FALL_BACK)
                return rr;
            ring = false;
            continue;
        }
        if (x->pipe && !still_pipe(x->fd))
            return done ? (ssize_t)done : -2;
        if (hook_wait_fd(&c, x->fd, x->input ? WEFT_READABLE : WEFT_WRITABLE, deadline) != 0) {
            if (errno == EINTR)
                continue; /* try again; then the check above decides */
            int err = errno == ETIMEDOUT ? EAGAIN : errno;
            if (done)
                return (ssize_t)done;
            errno = err;
            return -1;
        }
    }
}

/* errno stays as it was when the call succeeds, as with the real call. */
static ssize_t transfer(xfer *x)
{
    int saved = errno;
    ssize_t r = transfer_errno(x);
    if (r >= 0)
        errno = saved;
    return r;
}

/* ---- Attempts ---- */

/* Kernels before RWF_NOWAIT on pipes, and emulators (qemu-user 7), refuse it; then a pipe is
 * asked with poll first, and written at most PIPE_BUF bytes at a time: poll says writable
 * when a buffer slot is free, which takes that much without waiting. (Another process
 * taking the data or the room between the two calls would block the thread: the blocking
 * call's result, late.) */
static _Atomic bool nowait_refused;

static ssize_t pipe_polled(xfer *x, const struct iovec *iov, int n)
{
    struct pollfd p = {.fd = x->fd, .events = x->input ? POLLIN : POLLOUT};
    int ready = hook_poll_now(&p, 1);
    if (ready <= 0) {
        if (ready == 0)
            errno = EAGAIN;
        return -1;
    }
    if (x->input)
        return REAL(readv)(x->fd, iov, n);
    struct iovec part[16];
    size_t room = PIPE_BUF;
    int k = 0;
    for (; k < n && k < 16 && room > 0; k++) {
        part[k] = iov[k];
        if (part[k].iov_len > room)
            part[k].iov_len = room;
        room -= part[k].iov_len;
    }
    return REAL(writev)(x->fd, part, k);
}

static ssize_t pipe_nowait(xfer *x, const struct iovec *iov, int n)
{
    if (!atomic_load_explicit(&nowait_refused, memory_order_relaxed)) {
        ssize_t r = x->input ? REAL(preadv2)(x->fd, iov, n, -1, RWF_NOWAIT)
                             : REAL(pwritev2)(x->fd, iov, n, -1, RWF_NOWAIT);
        if (r >= 0 || (errno != EOPNOTSUPP && errno != ENOSYS))
            return r;
        if (!still_pipe(x->fd))
            return -1; /* not a pipe any more: transfer() falls back on the real call */
        atomic_store(&nowait_refused, true);
    }
    return pipe_polled(x, iov, n);
}

static ssize_t pipe_attempt(xfer *x, size_t done, bool nosig)
{
    (void)nosig; /* a pipe raises SIGPIPE even after a part, as the blocking write does */
    struct iovec one = {x->buf, x->len}, rest[64];
    const struct iovec *iov = x->iov ? x->iov : &one;
    int n = x->iov ? x->iovcnt : 1;
    struct iovec *big = NULL;
    if (done) {
        struct iovec *out = n <= 64 ? rest : (big = malloc((size_t)n * sizeof *big));
        if (!out) {
            errno = ENOMEM;
            return -1;
        }
        n = hook_iov_advance(iov, n, done, out);
        iov = out;
    }
    ssize_t r = pipe_nowait(x, iov, n);
#ifdef HOOK_TSAN
    /* ThreadSanitizer does not see preadv2/pwritev2; a read or write of nothing through the
     * calls it intercepts tells it of the order the pipe gives. */
    if (r > 0) {
        int err = errno;
        if (x->input)
            REAL(read)(x->fd, NULL, 0);
        else
            REAL(write)(x->fd, NULL, 0);
        errno = err;
    }
#endif
    free(big);
    return r;
}

static ssize_t recv_attempt(xfer *x, size_t done, bool nosig)
{
    (void)nosig;
    int flags = x->flags | MSG_DONTWAIT;
    if (x->peek_all)
        done = 0;
    if (x->from)
        return REAL(recvfrom)(x->fd, (char *)x->buf + done, x->len - done, flags, x->from,
                              x->fromlen);
    return REAL(recv)(x->fd, (char *)x->buf + done, x->len - done, flags);
}

static ssize_t send_attempt(xfer *x, size_t done, bool nosig)
{
    int flags = x->flags | MSG_DONTWAIT | (nosig ? MSG_NOSIGNAL : 0);
    if (x->to)
        return REAL(sendto)(x->fd, (const char *)x->buf + done, x->len - done, flags, x->to,
                            x->tolen);
    return REAL(send)(x->fd, (const char *)x->buf + done, x->len - done, flags);
}

/* recvmsg/sendmsg, also for readv/writev on sockets: the iovecs advanced past done; control
 * data only with the first part (it travels with the first byte). */
static ssize_t msg_attempt(xfer *x, size_t done, bool nosig)
{
    struct msghdr m = *x->msg;
    struct iovec rest[64], *big = NULL;
    if (done) {
        int n = (int)m.msg_iovlen;
        struct iovec *out = n <= 64 ? rest : (big = malloc((size_t)n * sizeof *big));
        if (!out) {
            errno = ENOMEM;
            return -1;
        }
        m.msg_iovlen = (size_t)hook_iov_advance(m.msg_iov, n, done, out);
        m.msg_iov = out;
        m.msg_control = NULL;
        m.msg_controllen = 0;
        m.msg_name = NULL;
        m.msg_namelen = 0;
    }
    int flags = x->flags | MSG_DONTWAIT | (nosig && !x->input ? MSG_NOSIGNAL : 0);
    ssize_t r = x->input ? REAL(recvmsg)(x->fd, &m, flags) : REAL(sendmsg)(x->fd, &m, flags);
    if (r >= 0 && x->input && !done) { /* what the kernel writes back */
        x->msg->msg_namelen = m.msg_namelen;
        x->msg->msg_controllen = m.msg_controllen;
        x->msg->msg_flags = m.msg_flags;
    }
    free(big);
    return r;
}

/* ---- Setting up ---- */

static void xfer_init(xfer *x, hook_fd *e, int fd, bool input)
{
    memset(x, 0, sizeof *x);
    x->e = e;
    x->fd = fd;
    x->input = input;
    x->pipe = atomic_load_explicit(&e->kind, memory_order_relaxed) == HOOK_PIPE;
    x->all = !input; /* a blocking write returns when all of it went */
}

static unsigned sock_flags(const hook_fd *e)
{
    return atomic_load_explicit(&e->flags, memory_order_relaxed);
}

/* After transfer() said the descriptor is not what the table said: look again, then do
 * what the real call does. */
#define FALL_BACK(fd, call)                                                                \
    do {                                                                                   \
        hook_fd_reclassify(fd);                                                            \
        return call;                                                                       \
    } while (0)

/* ---- The hooks ---- */

HOOK_API ssize_t read(int fd, void *buf, size_t n)
{
    hook_fd *e;
    if (!hook_in_coroutine() || n == 0 || !(e = hook_fd_managed(fd)))
        return REAL(read)(fd, buf, n);
    xfer x;
    xfer_init(&x, e, fd, true);
    x.buf = buf;
    x.len = n;
    x.attempt = x.pipe ? pipe_attempt : recv_attempt;
    ssize_t r = transfer(&x);
    if (r == -2)
        FALL_BACK(fd, REAL(read)(fd, buf, n));
    return r;
}

HOOK_API ssize_t readv(int fd, const struct iovec *iov, int iovcnt)
{
    hook_fd *e;
    size_t len;
    if (!hook_in_coroutine() || iovcnt <= 0 || iovcnt > 1024 ||
        (len = hook_iov_len(iov, iovcnt)) == 0 || !(e = hook_fd_managed(fd)))
        return REAL(readv)(fd, iov, iovcnt);
    xfer x;
    xfer_init(&x, e, fd, true);
    x.len = len;
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
    x.iov = iov;
    x.iovcnt = iovcnt;
    x.msg = &m;
    x.attempt = x.pipe ? pipe_attempt : msg_attempt;
    ssize_t r = transfer(&x);
    if (r == -2)
        FALL_BACK(fd, REAL(readv)(fd, iov, iovcnt));
    return r;
}

HOOK_API ssize_t write(int fd, const void *buf, size_t n)
{
    hook_fd *e;
    if (!hook_in_coroutine() || n == 0 || !(e = hook_fd_managed(fd)))
        return REAL(write)(fd, buf, n);
    xfer x;
    xfer_init(&x, e, fd, false);
    x.buf = (void *)buf;
    x.len = n;
    x.flags = sock_flags(e) & HOOK_SEQPACKET ? MSG_EOR : 0;
    x.attempt = x.pipe ? pipe_attempt : send_attempt;
    ssize_t r = transfer(&x);
    if (r == -2)
        FALL_BACK(fd, REAL(write)(fd, buf, n));
    return r;
}

HOOK_API ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    hook_fd *e;
    size_t len;
    if (!hook_in_coroutine() || iovcnt <= 0 || iovcnt > 1024 ||
        (len = hook_iov_len(iov, iovcnt)) == 0 || !(e = hook_fd_managed(fd)))
        return REAL(writev)(fd, iov, iovcnt);
    xfer x;
    xfer_init(&x, e, fd, false);
    x.len = len;
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
    x.iov = iov;
    x.iovcnt = iovcnt;
    x.msg = &m;
    x.flags = sock_flags(e) & HOOK_SEQPACKET ? MSG_EOR : 0;
    x.attempt = x.pipe ? pipe_attempt : msg_attempt;
    ssize_t r = transfer(&x);
    if (r == -2)
        FALL_BACK(fd, REAL(writev)(fd, iov, iovcnt));
    return r;
}

/* A receive the hook takes over: a socket its caller believes blocking, asked to wait. */
static hook_fd *sock_managed(int fd, int flags)
{
    if (!hook_in_coroutine() || (flags & MSG_DONTWAIT))
        return NULL;
    hook_fd *e = hook_fd_managed(fd);
    return e && atomic_load_explicit(&e->kind, memory_order_relaxed) == HOOK_SOCKET ? e : NULL;
}

static void recv_mode(xfer *x, int flags)
{
    bool waitall = (flags & MSG_WAITALL) && (sock_flags(x->e) & HOOK_STREAM);
    x->all = waitall && !(flags & MSG_PEEK);
    x->peek_all = waitall && (flags & MSG_PEEK);
}

HOOK_API ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *from,
                          socklen_t *fromlen)
{
    hook_fd *e;
    if (n == 0 || !(e = sock_managed(fd, flags)))
        return REAL(recvfrom)(fd, buf, n, flags, from, fromlen);
    xfer x;
    xfer_init(&x, e, fd, true);
    x.buf = buf;
    x.len = n;
    x.flags = flags;
    x.from = from;
    x.fromlen = fromlen;
    recv_mode(&x, flags);
    x.attempt = recv_attempt;
    ssize_t r = transfer(&x);
    if (r == -2)
        FALL_BACK(fd, REAL(recvfrom)(fd, buf, n, flags, from, fromlen));
    return r;
}

HOOK_API ssize_t recv(int fd, void *buf, size_t n, int flags)
{
    hook_fd *e;
    if (n == 0 || !(e = sock_managed(fd, flags)))
        return REAL(recv)(fd, buf, n, flags);
    xfer x;
    xfer_init(&x, e, fd, true);
    x.buf = buf;
    x.len = n;
    x.flags = flags;
    recv_mode(&x, flags);
    x.attempt = recv_attempt;
    ssize_t r = transfer(&x);
    if (r == -2)
        FALL_BACK(fd, REAL(recv)(fd, buf, n, flags));
    return r;
}

HOOK_API ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    hook_fd *e;
    size_t len;
    if (!(e = sock_managed(fd, flags)) || msg->msg_iovlen > 1024 ||
        (len = hook_iov_len(msg->msg_iov, (int)msg->msg_iovlen)) == 0)
        return REAL(recvmsg)(fd, msg, flags);
    xfer x;
    xfer_init(&x, e, fd, true);
    x.len = len;
    x.msg = msg;
    x.flags = flags;
    recv_mode(&x, flags);
    x.peek_all = false; /* (a peek over iovecs: as much as is there) */
    x.attempt = msg_attempt;
    ssize_t r = transfer(&x);
    if (r == -2)
        FALL_BACK(fd, REAL(recvmsg)(fd, msg, flags));
    return r;
}

HOOK_API ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to,
                        socklen_t tolen)
{
    hook_fd *e;
    if (n == 0 || !(e = sock_managed(fd, flags)))
        return REAL(sendto)(fd, buf, n, flags, to, tolen);
    xfer x;
    xfer_init(&x, e, fd, false);
    x.buf = (void *)buf;
    x.len = n;
    x.flags = flags;
    x.to = to;
    x.tolen = tolen;
    x.attempt = send_attempt;
    ssize_t r = transfer(&x);
    if (r == -2)
        FALL_BACK(fd, REAL(sendto)(fd, buf, n, flags, to, tolen));
    return r;
}

HOOK_API ssize_t send(int fd, const void *buf, size_t n, int flags)
{
    hook_fd *e;
    if (n == 0 || !(e = sock_managed(fd, flags)))
        return REAL(send)(fd, buf, n, flags);
    xfer x;
    xfer_init(&x, e, fd, false);
    x.buf = (void *)buf;
    x.len = n;
    x.flags = flags;
    x.attempt = send_attempt;
    ssize_t r = transfer(&x);
    if (r == -2)
        FALL_BACK(fd, REAL(send)(fd, buf, n, flags));
    return r;
}

HOOK_API ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    hook_fd *e;
    size_t len;
    if (!(e = sock_managed(fd, flags)) || msg->msg_iovlen > 1024 ||
        (len = hook_iov_len(msg->msg_iov, (int)msg->msg_iovlen)) == 0)
        return REAL(sendmsg)(fd, msg, flags);
    xfer x;
    xfer_init(&x, e, fd, false);
    x.len = len;
    x.msg = (struct msghdr *)msg;
    x.flags = flags;
    x.attempt = msg_attempt;
    ssize_t r = transfer(&x);
    if (r == -2)
        FALL_BACK(fd, REAL(sendmsg)(fd, msg, flags));
    return r;
}
