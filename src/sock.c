/* The plain descriptor transport: sockets, pipes, ttys, files. Every system call a channel's
 * bytes need is here, and so is every decision to skip one: a TCP socket whose last read left
 * it drained has nothing to read until its backend reports input, so a reader parks without
 * the recv that would only say EAGAIN. Output it is given and cannot send at once waits in a
 * queue it owns; the loop sends more whenever the fd has room (this transport is the fd's
 * owner in fd.c while the queue is not empty), so it flows to a reading peer whatever the
 * channel's coroutines are doing. */
#include "internal.h"
#include "sys.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* What the last read of a TCP socket told of its input. A short read means the queue was
 * empty unless it stopped at urgent data, which epoll's edges report (IO_PRI) and io_uring's
 * poll completions do not; a recv that reports zero bytes left (TCP_INQ) means it for sure. */
enum drained { NOT_DRAINED, DRAINED_SHORT, DRAINED_EMPTY };

typedef struct qbuf {
    struct qbuf *next;
    char *base;
    size_t cap, off, len; /* [off, off + len) of base still to send */
} qbuf;

typedef struct sock {
    transport t;
    int fd;
    bool is_socket;
    bool stream;       /* TCP: a short read means its input is drained for now */
    bool inq;          /* TCP_INQ is on: each recv says how much input it left queued */
    bool inq_tried;    /* asked for TCP_INQ already (whether or not the kernel agreed) */
    uint8_t drained;   /* enum drained */
    bool owning;       /* registered as the fd's owner (its queue is not empty) */
    qbuf *head, *tail; /* output given and not yet sent, oldest first */
    qbuf first;        /* the node of a queue's first buffer: no allocation for it */
} sock;

/* ---- Input ---- */

/* A TCP socket's reads ask the kernel how much input they left (TCP_INQ), at the cost of one
 * setsockopt per connection and a recvmsg in place of each recv, where that saves a recv
 * that would fail with EAGAIN before a wait: on a backend whose edges cannot show urgent data
 * (io_uring), before every wait; on any, after a read that filled the buffer. */
static void want_inq(sock *s)
{
    s->inq_tried = true;
#ifdef TCP_CM_INQ
    int one = 1;
    s->inq = sys_setsockopt(s->fd, IPPROTO_TCP, TCP_INQ, &one, sizeof one) == 0;
#endif
}

/* recv; with TCP_INQ on, *left is what the kernel still holds after it (else -1). */
static ssize_t recv_inq(sock *s, void *dst, size_t n, int *left)
{
    *left = -1;
    if (!s->inq)
        return sys_recv(s->fd, dst, n, 0);
    struct iovec iov = {dst, n};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1,
                       .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t r = sys_recvmsg(s->fd, &m, 0);
    if (r < 0)
        return r;
#ifdef TCP_CM_INQ
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h))
        if (h->cmsg_level == IPPROTO_TCP && h->cmsg_type == TCP_CM_INQ &&
            h->cmsg_len >= CMSG_LEN(sizeof(int)))
            memcpy(left, CMSG_DATA(h), sizeof *left);
#endif
    return r;
}

/* Note what a read that returned r (> 0) of n bytes, leaving left queued (-1: not known),
 * tells of the input. (After a FIN the kernel reports one byte left, so the read that
 * returns 0 is still made.) */
static void note_read(sock *s, ssize_t r, size_t n, int left)
{
    if (!s->stream || left > 0) {
        s->drained = NOT_DRAINED;
    } else if (left == 0) {
        s->drained = DRAINED_EMPTY;
    } else if ((size_t)r < n) {
        s->drained = DRAINED_SHORT;
    } else {
        s->drained = NOT_DRAINED;
        if (!s->inq_tried)
            want_inq(s); /* large messages: from the next read on, know when none is left */
    }
}

static ssize_t sock_recv(transport *t, void *buf, size_t n)
{
    sock *s = (sock *)t;
    for (;;) {
        /* recv, not read: read goes through the VFS (vfs_read, fdget_pos) first. */
        int left = -1;
        ssize_t r = s->is_socket ? recv_inq(s, buf, n, &left) : sys_read(s->fd, buf, n);
        if (r > 0)
            note_read(s, r, n, left);
        if (r >= 0 || errno != EINTR)
            return r;
    }
}

/* Whether a read now may find input. A TCP socket whose last read left it drained has none
 * until the backend reports an arrival, so the read that would only say EAGAIN is skipped;
 * the hint is asked before every read so that each arrival is consumed by the read after it. */
static bool sock_may_have_input(transport *t)
{
    sock *s = (sock *)t;
    if (!sched_backend())
        return true; /* blocking use: poll() decides, not the backend */
    bool urgent_apart = fd_edges_show_urgent();
    if (!urgent_apart && s->stream && !s->inq_tried)
        want_inq(s);
    bool hint = fd_input_hint(s->fd); /* (no edges known: always true) */
    bool drained = s->drained == DRAINED_EMPTY || (s->drained == DRAINED_SHORT && urgent_apart);
    return !drained || hint;
}

static int sock_wait_input(transport *t, int64_t deadline)
{
    sock *s = (sock *)t;
    int rc = fd_wait(s->fd, WEFT_READABLE, deadline);
    if (rc == 0)
        s->drained = NOT_DRAINED; /* woken: input came */
    return rc;
}

static void sock_wake_reader(transport *t, int err)
{
    fd_cancel_wait(((sock *)t)->fd, WEFT_READABLE, err);
}

/* ---- Output ---- */

/* One system call: what the fd takes of iov now. */
static ssize_t send_now(sock *s, const struct iovec *iov, int iovcnt)
{
    for (;;) {
        ssize_t w;
        if (s->is_socket && iovcnt == 1) {
            w = sys_send(s->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        } else if (s->is_socket) {
            struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
            w = sys_sendmsg(s->fd, &m, MSG_NOSIGNAL);
        } else {
            w = iovcnt == 1 ? sys_write(s->fd, iov[0].iov_base, iov[0].iov_len)
                            : sys_writev(s->fd, iov, iovcnt);
        }
        if (w >= 0 || errno != EINTR) {
            if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
                s->t.err = errno; /* the peer is gone: every later send fails the same way */
            return w;
        }
    }
}

static ssize_t sock_send(transport *t, const struct iovec *iov, int iovcnt)
{
    return send_now((sock *)t, iov, iovcnt);
}

static void qbuf_free(sock *s, qbuf *q)
{
    buf_give(q->base, q->cap);
    if (q != &s->first)
        free(q);
}

static void disown(sock *s)
{
    if (s->owning) {
        fd_set_owner(s->fd, NULL, NULL);
        s->owning = false;
    }
}

/* Send what the fd takes of the queue now. On EAGAIN the fd is watched for room (the loop
 * calls back); on a vanished peer the queue is dropped (t->err says why). */
static void push(sock *s)
{
    while (s->head) {
        qbuf *q = s->head;
        struct iovec iov = {q->base + q->off, q->len};
        ssize_t w = send_now(s, &iov, 1);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            fd_watch_output(s->fd);
            return;
        }
        if (w <= 0) { /* an error, kept in t->err if it means the peer is gone */
            if (!s->t.err)
                s->t.err = w < 0 ? errno : EIO;
            while (s->head) {
                q = s->head;
                s->head = q->next;
                qbuf_free(s, q);
            }
            s->tail = NULL;
            s->t.queued = 0;
            break;
        }
        q->off += (size_t)w;
        q->len -= (size_t)w;
        s->t.queued -= (size_t)w;
        if (q->len == 0) {
            s->head = q->next;
            if (!s->head)
                s->tail = NULL;
            qbuf_free(s, q);
        }
    }
    disown(s);
}

/* Callback from fd.c: events of our fd while we own queued output. */
static void sock_on_event(void *owner, unsigned events)
{
    if (events & (IO_OUT | IO_HUP))
        push(owner);
}

static int sock_give(transport *t, char *base, size_t cap, size_t off, size_t len)
{
    sock *s = (sock *)t;
    if (t->err) {
        errno = t->err;
        return -1;
    }
    qbuf *q = &s->first;
    if (!s->head) { /* nothing queued: what the fd takes now goes now */
        struct iovec iov = {base + off, len};
        ssize_t w = send_now(s, &iov, 1);
        if (w == (ssize_t)len)
            return 0;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        if (w > 0) {
            off += (size_t)w;
            len -= (size_t)w;
        }
    } else if (!(q = malloc(sizeof *q))) {
        return -1; /* ENOMEM, with nothing sent: it goes behind what is queued */
    }
    *q = (qbuf){NULL, base, cap, off, len};
    if (s->tail)
        s->tail->next = q;
    else
        s->head = q;
    s->tail = q;
    t->queued += len;
    if (!s->owning && fd_set_owner(s->fd, sock_on_event, s) == 0)
        s->owning = true;
    fd_watch_output(s->fd);
    return 1;
}

static int sock_wait_output(transport *t, int64_t deadline)
{
    sock *s = (sock *)t;
    int rc = fd_wait(s->fd, WEFT_WRITABLE, deadline);
    if (rc == 0 && s->head && !sched_backend())
        push(s); /* outside a coroutine no loop runs to do it */
    return rc;
}

static size_t sock_drop(transport *t)
{
    sock *s = (sock *)t;
    size_t n = t->queued;
    while (s->head) {
        qbuf *q = s->head;
        s->head = q->next;
        qbuf_free(s, q);
    }
    s->tail = NULL;
    t->queued = 0;
    disown(s);
    return n;
}

static int sock_shutdown(transport *t)
{
    return shutdown(((sock *)t)->fd, SHUT_WR);
}

static int sock_close(transport *t)
{
    sock *s = (sock *)t;
    sock_drop(t);
    int rc = fd_close(s->fd);
    s->fd = -1;
    return rc;
}

static void sock_free(transport *t)
{
    sock_drop(t); /* (never closed: a channel whose making failed) */
    free(t);
}

static int sock_fd(const transport *t)
{
    return ((const sock *)t)->fd;
}

static const transport_ops sock_ops = {
    .recv = sock_recv,
    .may_have_input = sock_may_have_input,
    .wait_input = sock_wait_input,
    .wake_reader = sock_wake_reader,
    .send = sock_send,
    .give = sock_give,
    .wait_output = sock_wait_output,
    .drop = sock_drop,
    .shutdown = sock_shutdown,
    .close = sock_close,
    .free = sock_free,
    .fd = sock_fd,
};

transport *sock_transport_new(int fd, bool is_socket, bool tcp)
{
    sock *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->t.ops = &sock_ops;
    s->fd = fd;
    s->is_socket = is_socket;
    s->stream = tcp;
    if (!is_socket)
        ignore_sigpipe(); /* writes to a closed pipe must fail with EPIPE, not kill us */
    return &s->t;
}

/* For weft_chan_open: what kind of descriptor fd is, and its peer's name. */
transport *sock_transport_open(int fd, char *peer, size_t peerlen, bool *is_socket_out)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || fd_set_nonblock(fd) != 0) {
        errno = EBADF;
        return NULL;
    }
    peer[0] = '\0';
    bool is_socket = S_ISSOCK(st.st_mode);
    *is_socket_out = is_socket;
    int type = 0, proto = 0;
    if (is_socket) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0)
            sockaddr_format(&ss, len, peer, peerlen);
        len = sizeof type;
        if (sys_getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
            type = 0;
        len = sizeof proto;
        if (sys_getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) != 0)
            proto = 0;
    }
    return sock_transport_new(fd, is_socket, type == SOCK_STREAM && proto == IPPROTO_TCP);
}
