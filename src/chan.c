/* Channels: buffered streams over a non-blocking fd, the C form of a Tcl channel.
 * Input: rbuf holds [rstart, rend) unread bytes; rscan marks how far a newline was already
 * searched for, so a long line arriving in many pieces is scanned once. Output: wbuf holds
 * [wstart, wlen) unsent bytes and never grows past wmax; a writer that would need more
 * waits for the peer instead. Buffers are allocated on first use and grow on demand, so an
 * idle connection costs little. Every wait goes through chan_wait, which also handles a close
 * from another coroutine: whoever is inside the channel when it is closed wakes with EBADF,
 * and the last one out frees it. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define RBUF_INITIAL BUF_SIZE
#define WBUF_INITIAL BUF_SIZE
#define READ_AGAIN (-3) /* read_some gave the read buffer back while it waited: take another */
/* What the last read of a TCP socket told of its input. A short read means the queue was
 * empty unless it stopped at urgent data, which epoll's edges report (EPOLLPRI) and io_uring's
 * poll completions do not; a recv that reports zero bytes left (TCP_INQ) means it for sure. */
#define DRAINED_SHORT 1
#define DRAINED_EMPTY 2

/* Laid out for the hot path: the first two cache lines hold what gets and putln touch, so
 * with thousands of connections a round trip misses on two lines of its channel. */
struct weft_chan {
    int fd;
    bool is_socket;
    bool stream;       /* TCP: a short read means its input is drained for now */
    bool inq;          /* TCP_INQ is on: each recv says how much input it left queued */
    bool inq_tried;    /* asked for TCP_INQ already (whether or not the kernel agreed) */
    uint8_t drained;   /* TCP: DRAINED_SHORT, DRAINED_EMPTY, or 0 when input may be queued */
    bool eof;          /* a read returned end of file */
    bool skipping;     /* discarding the rest of an over-long line */
    bool closed;       /* weft_close ran while others were inside */
    bool input_stopped; /* reads take what has arrived but no longer wait (shutdown) */
    bool sending;      /* a writer is inside a send (take_turn): wbuf must stay */
    uint8_t buffering; /* a weft_buffering, narrowed to keep the hot fields in two lines */
    int users;         /* coroutines parked inside a call on this channel */
    int reading;       /* reads in flight into rbuf (io_uring): rbuf must stay */
    int werr;          /* sticky EPIPE/ECONNRESET: the peer is gone */
    uint32_t rwant;    /* capacity the read buffer last had (saturated): where a new one starts */
    weft_co *holder;    /* coroutine holding back this channel's line output, if any */
    size_t maxline;
    char *rbuf;
    size_t rstart;
    /* line 2 */
    size_t rend, rscan, rcap;
    char *wbuf;
    size_t wcap, wstart, wlen;
    size_t wmax;
    /* cold */
    int64_t read_timeout, write_timeout;
    wait_list turns;   /* writers waiting for their turn to send */
    char peer[64];
};
_Static_assert(offsetof(struct weft_chan, read_timeout) <= 128, "hot fields in two lines");

/* A deadline made from a timeout when first needed, so that only a call that has to wait
 * reads the clock: a gets served from the buffer or a write the socket takes at once cost no
 * clock_gettime. The timeout counts from that first wait. */
typedef struct lazy_deadline {
    const int64_t *timeout_ms; /* the channel's, read only when needed; -1: none */
    int64_t at;         /* DEADLINE_UNSET until computed */
} lazy_deadline;
#define DEADLINE_UNSET INT64_MIN
#define LAZY(timeout) {&(timeout), DEADLINE_UNSET}

static int64_t deadline_of(lazy_deadline *dl)
{
    if (dl->at == DEADLINE_UNSET)
        dl->at = deadline_after(*dl->timeout_ms);
    return dl->at;
}

weft_chan *chan_new(int fd, bool is_socket, bool tcp, const char *peer)
{
    weft_chan *c = aligned_alloc(64, (sizeof *c + 63) / 64 * 64);
    if (!c)
        return NULL;
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->is_socket = is_socket;
    c->stream = tcp;
    c->buffering = is_socket ? WEFT_BUF_LINE : WEFT_BUF_FULL;
    c->maxline = WEFT_MAXLINE_DEFAULT;
    c->wmax = WEFT_WBUF_DEFAULT;
    c->read_timeout = c->write_timeout = -1;
    if (peer)
        snprintf(c->peer, sizeof c->peer, "%s", peer);
    if (!is_socket)
        ignore_sigpipe(); /* writes to a closed pipe must fail with EPIPE, not kill us */
    return c;
}

static int flush_dl(weft_chan *c, lazy_deadline *dl);
static void release_hold(weft_chan *c);
static ssize_t chan_op(weft_chan *c, bool is_read, void *buf, size_t n, lazy_deadline *dl);

/* Buffers go back to this thread's pool only while it has a scheduler, whose release drains
 * the pool; otherwise nothing would ever free them. */
static void give_buf(char *p, size_t size)
{
    if (p && sched_peek())
        buf_give(p, size);
    else
        free(p);
}

/* A buffer of cap bytes: a new one (pooled if BUF_SIZE) when p is NULL, else p grown. */
static char *grow_buf(char *p, size_t cap)
{
    char *b = !p && cap == BUF_SIZE ? buf_take() : realloc(p, cap);
    if (!b)
        errno = ENOMEM;
    return b;
}

/* Waiting for input with nothing buffered either way: give both buffers back, so an idle
 * connection holds none; the read buffer only if no read into it is pending (io_uring's).
 * Never while a write is in progress (wlen > wstart). */
static void chan_go_idle(weft_chan *c, bool keep_rbuf)
{
    if (c->rbuf && c->rstart == c->rend && !keep_rbuf && !c->reading) {
        c->rwant = c->rcap > UINT32_MAX ? UINT32_MAX : (uint32_t)c->rcap;
        give_buf(c->rbuf, c->rcap);
        c->rbuf = NULL;
        c->rcap = c->rstart = c->rend = c->rscan = 0;
    }
    if (c->wbuf && c->wlen == c->wstart) {
        give_buf(c->wbuf, c->wcap);
        c->wbuf = NULL;
        c->wcap = c->wstart = c->wlen = 0;
    }
}

static void chan_free(weft_chan *c)
{
    release_hold(c);
    give_buf(c->rbuf, c->rcap);
    give_buf(c->wbuf, c->wcap);
    free(c);
}

/* After a stay in c (a wait or a budget yield): if c was closed meanwhile, free it if we are
 * the last one out and fail with EBADF; the caller must then return at once without
 * touching c. Else pass rc on. */
static int chan_leave(weft_chan *c, int rc)
{
    c->users--;
    if (c->closed) {
        if (c->users == 0)
            chan_free(c);
        errno = EBADF;
        return -1;
    }
    return rc;
}

/* Park until fd is ready (see chan_leave for a close meanwhile). */
static int chan_wait(weft_chan *c, int events, lazy_deadline *dl)
{
    c->users++;
    sched_resume_hint(c);
    return chan_leave(c, fd_wait(c->fd, events, deadline_of(dl)));
}

weft_chan *weft_chan_open(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || fd_set_nonblock(fd) != 0) {
        errno = EBADF;
        return NULL;
    }
    char peer[64] = "";
    bool is_socket = S_ISSOCK(st.st_mode);
    int type = 0, proto = 0;
    if (is_socket) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0)
            sockaddr_format(&ss, len, peer, sizeof peer);
        len = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
            type = 0;
        len = sizeof proto;
        if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) != 0)
            proto = 0;
    }
    return chan_new(fd, is_socket, type == SOCK_STREAM && proto == IPPROTO_TCP, peer);
}

int weft_chan_fd(const weft_chan *c) { return c->fd; }
const char *weft_chan_peer(const weft_chan *c) { return c->peer; }

int weft_chan_set_buffering(weft_chan *c, weft_buffering mode)
{
    if (mode != WEFT_BUF_NONE && mode != WEFT_BUF_LINE && mode != WEFT_BUF_FULL) {
        errno = EINVAL;
        return -1;
    }
    c->buffering = mode;
    return 0;
}

int weft_chan_set_maxline(weft_chan *c, size_t max)
{
    if (max == 0 || max > SIZE_MAX / 4) {
        errno = EINVAL;
        return -1;
    }
    c->maxline = max;
    return 0;
}

int weft_chan_set_wbuf(weft_chan *c, size_t max)
{
    if (max == 0) {
        errno = EINVAL;
        return -1;
    }
    c->wmax = max;
    return 0;
}

int weft_chan_set_timeouts(weft_chan *c, int64_t read_ms, int64_t write_ms)
{
    c->read_timeout = read_ms < 0 ? -1 : read_ms;
    c->write_timeout = write_ms < 0 ? -1 : write_ms;
    return 0;
}

/* ---- Input ---- */

/* The I/O budget's yield, counted as a stay in the channel like a wait: a close meanwhile
 * leaves c for us to free and fails with EBADF. */
static int chan_spend(weft_chan *c)
{
    c->users++;
    sched_spend_io();
    return chan_leave(c, 0);
}

/* A TCP socket's reads ask the kernel how much input they left (TCP_INQ), at the cost of one
 * setsockopt per connection and a recvmsg in place of each recv, where that saves a recv
 * that would fail with EAGAIN before a wait: on a backend whose edges cannot show urgent data
 * (io_uring), before every wait; on any, after a read that filled the buffer. */
static void want_inq(weft_chan *c)
{
    c->inq_tried = true;
#ifdef TCP_CM_INQ
    int one = 1;
    c->inq = setsockopt(c->fd, IPPROTO_TCP, TCP_INQ, &one, sizeof one) == 0;
#endif
}

/* Whether a read now may find input. A TCP socket whose last read left it drained has none
 * until the backend sees an edge, so the read that would only say EAGAIN is skipped; the
 * hint is asked before every read so that each edge is consumed by the read after it. */
static bool worth_reading(weft_chan *c)
{
    sched *s = sched_peek();
    if (!s || !s->current)
        return true; /* blocking use: poll() decides, not the backend */
    backend *b = s->be;
    if (b->ops->hint_needs_empty && c->stream && !c->inq_tried)
        want_inq(c);
    bool hint = !b->ops->input_hint || b->ops->input_hint(b, c->fd); /* none: no edges known */
    bool drained = c->drained == DRAINED_EMPTY ||
                   (c->drained == DRAINED_SHORT && !b->ops->hint_needs_empty);
    return !drained || hint;
}

/* recv; with TCP_INQ on, *left is what the kernel still holds after it (else -1). */
static ssize_t sock_recv(weft_chan *c, void *dst, size_t n, int *left)
{
    *left = -1;
    if (!c->inq)
        return recv(c->fd, dst, n, 0);
    struct iovec iov = {dst, n};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1,
                       .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t r = recvmsg(c->fd, &m, 0);
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

/* What a read that returned r of n bytes, leaving left queued (-1: not known), tells: >0
 * data, 0 end of file. (After a FIN the kernel reports one byte left, so the read that
 * returns 0 is still made.) */
static ssize_t got(weft_chan *c, ssize_t r, size_t n, int left)
{
    if (r == 0) {
        c->eof = true;
        return 0;
    }
    if (!c->stream || left > 0) {
        c->drained = 0;
    } else if (left == 0) {
        c->drained = DRAINED_EMPTY;
    } else if ((size_t)r < n) {
        c->drained = DRAINED_SHORT;
    } else {
        c->drained = 0;
        if (!c->inq_tried)
            want_inq(c); /* large messages: from the next read on, know when none is left */
    }
    return r;
}

/* Before a read that may wait: our replies held back while input was buffered go first,
 * then the I/O budget is counted (it may yield). -1 with EBADF when c was closed meanwhile
 * (then c may be gone). Both may switch away: compute pointers into c's buffers after. */
static int before_read(weft_chan *c)
{
    if (c->holder && c->holder == weft_self() &&
        flush_dl(c, &(lazy_deadline)LAZY(c->write_timeout)) != 0 && errno == EBADF)
        return -1;
    return chan_spend(c);
}

/* Read once from the fd into dst, waiting while nothing is there; the caller has called
 * before_read. >0 bytes, 0 at end of file, -1 on error (EBADF: c may be gone). A wait with
 * nothing buffered gives the buffers back (chan_go_idle), and anything may happen to c's
 * buffers while we wait (another coroutine may read or close): if dst was in the read buffer
 * (in_rbuf), any wait returns READ_AGAIN, for the caller to find its target again. */
static ssize_t read_some(weft_chan *c, char *dst, size_t n, lazy_deadline *dl, bool in_rbuf)
{
    if (c->reading) {
        /* Another coroutine's read operation is filling the buffer: one reader waits at a
         * time, as epoll's fd slots also enforce. */
        errno = EBUSY;
        return -1;
    }
    for (;;) {
        /* Stopped input never waits, so it always tries: what has arrived is still owed. */
        if (c->input_stopped || worth_reading(c)) {
            /* recv, not read: read goes through the VFS (vfs_read, fdget_pos) first. */
            int left = -1;
            ssize_t r = c->is_socket ? sock_recv(c, dst, n, &left) : read(c->fd, dst, n);
            if (r >= 0)
                return got(c, r, n, left);
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -1;
        }
        if (c->input_stopped) {
            errno = ECANCELED;
            return -1;
        }
        /* About to wait. A socket with nothing buffered waits for readiness even where the
         * backend could read for us (io_uring): then it holds no buffer while idle, and the
         * data is copied just before it is scanned rather than when the loop reaps a whole
         * turn of completions, by which time it has left the cache (measured in
         * docs/performance.md, "What changed ... (evening)"). */
        bool by_op = io_ops_available() && !(c->is_socket && c->rstart == c->rend);
        chan_go_idle(c, in_rbuf && by_op); /* not the buffer an operation reads into */
        ssize_t r = by_op ? chan_op(c, true, dst, n, dl) : -2;
        /* -2: the backend only reports readiness. EAGAIN from the operation: a kernel that
         * honours O_NONBLOCK inside io_uring; wait for readiness rather than spin. */
        if (r == -2 || (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
            if (chan_wait(c, WEFT_READABLE, dl) != 0) {
                /* Input stopped under us: what arrived meanwhile is still owed; one more
                 * try (input_stopped forces it), then ECANCELED. */
                if (errno != ECANCELED || !c->input_stopped)
                    return -1;
            }
            c->drained = 0; /* woken: input came */
        } else if (r >= 0) {
            return got(c, r, n, -1);
        } else if (errno != EINTR && !(errno == ECANCELED && c->input_stopped)) {
            return -1; /* (EBADF: c may be gone, so input_stopped is read only otherwise) */
        }
        if (in_rbuf)
            return READ_AGAIN;
        if (chan_spend(c) != 0)
            return -1;
    }
}

void chan_stop_input(weft_chan *c)
{
    c->input_stopped = true;
    sched *s = sched_peek();
    if (s)
        backend_cancel_wait(s->be, c->fd, WEFT_READABLE, ECANCELED);
}

/* Make room for at least one more byte after rend: slide unread bytes to the front, grow up
 * to limit. -1/ENOMEM, or EMSGSIZE when limit is reached. */
static int rbuf_room(weft_chan *c, size_t limit)
{
    if (c->rend < c->rcap)
        return 0;
    if (c->rstart > 0) {
        size_t have = c->rend - c->rstart;
        memmove(c->rbuf, c->rbuf + c->rstart, have);
        c->rscan -= c->rstart;
        c->rend = have;
        c->rstart = 0;
        return 0;
    }
    if (c->rcap >= limit) {
        errno = EMSGSIZE;
        return -1;
    }
    size_t cap = c->rcap ? c->rcap * 2 : c->rwant > RBUF_INITIAL ? c->rwant : RBUF_INITIAL;
    if (cap > limit)
        cap = limit;
    char *p = grow_buf(c->rbuf, cap);
    if (!p)
        return -1;
    c->rbuf = p;
    c->rcap = cap;
    return 0;
}

/* Read more input into rbuf (the line limit bounds its size). */
static ssize_t fill(weft_chan *c, lazy_deadline *dl)
{
    for (;;) {
        if (before_read(c) != 0 || rbuf_room(c, c->maxline + 1) != 0)
            return -1;
        ssize_t r = read_some(c, c->rbuf + c->rend, c->rcap - c->rend, dl, true);
        if (r > 0)
            c->rend += (size_t)r;
        if (r != READ_AGAIN)
            return r;
    }
}

/* Drop buffered bytes up to and including the next newline. True once it was found. */
static bool skip_line(weft_chan *c)
{
    char *nl = c->rend > c->rstart ? memchr(c->rbuf + c->rstart, '\n', c->rend - c->rstart) : NULL;
    c->rstart = nl ? (size_t)(nl - c->rbuf) + 1 : c->rend;
    c->rscan = c->rstart;
    return nl != NULL;
}

/* Hand out [rstart, rstart + n) as a NUL-terminated line and consume `consumed` bytes. */
static const char *take_line(weft_chan *c, size_t n, size_t consumed, size_t *len)
{
    char *line = c->rbuf + c->rstart;
    line[n] = '\0';
    c->rstart += consumed;
    c->rscan = c->rstart;
    if (len)
        *len = n;
    return line;
}

/* The first newline at or after rscan. The coalescing check leaves rscan on it when it finds
 * one (input_line_buffered), so the common case costs no call. */
static char *find_newline(weft_chan *c)
{
    if (c->rend <= c->rscan)
        return NULL;
    char *p = c->rbuf + c->rscan;
    return *p == '\n' ? p : memchr(p, '\n', c->rend - c->rscan);
}

const char *weft_gets(weft_chan *c, size_t *len)
{
    lazy_deadline dl = LAZY(c->read_timeout);
    for (;;) {
        if (c->skipping && skip_line(c))
            c->skipping = false;
        if (!c->skipping) {
            char *nl = find_newline(c);
            if (nl) {
                size_t n = (size_t)(nl - (c->rbuf + c->rstart));
                if (n > c->maxline) { /* whole in a buffer grown before the limit was lowered */
                    c->rstart = c->rscan = (size_t)(nl - c->rbuf) + 1;
                    errno = EMSGSIZE;
                    return NULL;
                }
                return take_line(c, n, n + 1, len);
            }
            c->rscan = c->rend;
            if (c->rend - c->rstart > c->maxline) {
                c->skipping = true; /* the rest goes, up to its newline */
                c->rstart = c->rscan = c->rend;
                errno = EMSGSIZE;
                return NULL;
            }
        }
        if (c->eof) {
            size_t have = c->rend - c->rstart;
            if (have > 0 && !c->skipping) {
                if (rbuf_room(c, c->maxline + 1) != 0)
                    return NULL; /* ENOMEM: the line stays, a later call may return it */
                return take_line(c, have, have, len);
            }
            c->rstart = c->rend = c->rscan = 0;
            c->skipping = false;
            errno = 0;
            return NULL;
        }
        ssize_t r = fill(c, &dl);
        if (r < 0)
            return NULL;
    }
}

ssize_t weft_read(weft_chan *c, void *buf, size_t n)
{
    if (n == 0)
        return 0;
    c->skipping = false; /* raw reads see the stream as it is */
    size_t have = c->rend - c->rstart;
    if (have == 0) {
        if (c->eof)
            return 0;
        /* Large reads skip the buffer: no copy, and no buffer growth for bulk data. */
        if (n >= RBUF_INITIAL)
            return before_read(c) != 0
                       ? -1
                       : read_some(c, buf, n, &(lazy_deadline)LAZY(c->read_timeout), false);
        if (c->reading) {
            errno = EBUSY; /* another reader's operation fills the buffer where it stands */
            return -1;
        }
        c->rstart = c->rend = c->rscan = 0;
        ssize_t r = fill(c, &(lazy_deadline)LAZY(c->read_timeout));
        if (r <= 0)
            return r;
        have = c->rend - c->rstart;
    }
    size_t k = have < n ? have : n;
    memcpy(buf, c->rbuf + c->rstart, k);
    c->rstart += k;
    if (c->rscan < c->rstart)
        c->rscan = c->rstart;
    return (ssize_t)k;
}

/* Put [p, p + n) back in front of the buffered input, for the next read to take. -1/ENOMEM. */
static int unread(weft_chan *c, const char *p, size_t n)
{
    size_t have = c->rend - c->rstart;
    if (c->rstart < n) {
        if (have + n > c->rcap) {
            size_t cap = c->rcap ? c->rcap : RBUF_INITIAL;
            while (cap < have + n)
                cap *= 2;
            char *b = grow_buf(c->rbuf, cap);
            if (!b)
                return -1;
            c->rbuf = b;
            c->rcap = cap;
        }
        memmove(c->rbuf + n, c->rbuf + c->rstart, have);
        c->rstart = n;
        c->rend = n + have;
    }
    c->rstart -= n;
    memcpy(c->rbuf + c->rstart, p, n);
    c->rscan = c->rstart; /* not searched for a newline yet */
    return 0;
}

ssize_t weft_read_exact(weft_chan *c, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = weft_read(c, (char *)buf + got, n - got);
        if (r < 0) {
            /* A timeout or cancel midway must not lose what was read: it goes back in front
             * of the buffer for the next read. (EBADF: c is gone.) */
            int err = errno;
            if (got > 0 && err != EBADF && unread(c, buf, got) != 0)
                return -1; /* ENOMEM */
            errno = err;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

int weft_eof(const weft_chan *c)
{
    return c->eof && c->rend == c->rstart;
}

/* ---- Output ---- */

/* On a backend that performs I/O itself (io_uring), after EAGAIN: hand it the read or send
 * and park until done. -2 when the backend only reports readiness; -1 with EBADF when c was
 * closed meanwhile (then c may be gone). */
static ssize_t chan_op(weft_chan *c, bool is_read, void *buf, size_t n, lazy_deadline *dl)
{
    if (!io_ops_available())
        return -2;
    c->users++;
    c->reading += is_read;
    ssize_t r = is_read ? io_read(c->fd, buf, n, c->is_socket, deadline_of(dl))
                        : io_send(c->fd, buf, n, c->is_socket, deadline_of(dl));
    int err = errno;
    c->reading -= is_read;
    if (chan_leave(c, 0) != 0)
        return -1;
    errno = err;
    return r;
}

/* Send some of [p, p + n), waiting as needed: the count sent, or -1 (EPIPE and ECONNRESET
 * are made sticky; EBADF: c may be gone). */
static ssize_t send_some(weft_chan *c, const char *p, size_t n, lazy_deadline *dl)
{
    for (;;) {
        if (chan_spend(c) != 0)
            return -1;
        ssize_t w = c->is_socket ? send(c->fd, p, n, MSG_NOSIGNAL) : write(c->fd, p, n);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            w = chan_op(c, false, (void *)p, n, dl);
            if (w == -2 || (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
                if (chan_wait(c, WEFT_WRITABLE, dl) != 0)
                    return -1;
                continue;
            }
        }
        if (w > 0)
            return w;
        if (w < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            c->werr = errno;
        if (w == 0)
            errno = EIO; /* a send of n > 0 bytes that moved none */
        return -1;
    }
}

/* ---- Turns ----
 * Writers take turns: a write, flush or shutdown holds c's turn from its first byte to its
 * last, so that no other writer's bytes land inside it, even while it parks on a full socket
 * (and under io_uring the kernel reads from wbuf meanwhile, so wbuf must stay where it is).
 * A writer that finds the turn taken waits in c->turns, in order, and the turn is handed
 * straight to the first of them: the writer that gave it up cannot take it back first. The
 * turn counts as being inside c (users), so c stays until turn_give even if closed meanwhile.
 * Nobody waits for a turn while holding another channel's, so turns cannot deadlock. */

/* Take c's turn, waiting (until the write deadline) while another writer has it. -1 with
 * ETIMEDOUT, ECANCELED, or EBADF when c was closed meanwhile (then c may be gone). */
static int turn_take(weft_chan *c, lazy_deadline *dl)
{
    c->users++;
    if (!c->sending) {
        c->sending = true;
        return 0;
    }
    waiter w;
    waiter_init(&w);
    wait_list_push(&c->turns, &w);
    int rc = waiter_wait(&w, deadline_of(dl), true);
    if (rc != 0)
        wait_list_remove(&c->turns, &w);
    else if (w.err) { /* woken by a close: EBADF */
        errno = w.err;
        rc = -1;
    }
    if (rc == 0 && !c->closed)
        return 0; /* handed over: sending stayed true, and our users++ is the turn's now */
    if (rc == 0)
        c->sending = false; /* handed over, then closed before we ran: nobody else waits */
    return chan_leave(c, -1);
}

/* Hand the turn to the first waiting writer, or free it. If c was closed meanwhile and we
 * were the last inside, it is freed here: the caller must not touch c afterwards. errno is
 * kept. */
static void turn_give(weft_chan *c)
{
    int err = errno;
    /* A writer waiting for the turn is inside c (users), as is our turn: with nobody else
     * inside, leave the list (in the channel's cold line) untouched. */
    waiter *w = c->users > 1 ? wait_list_pop(&c->turns) : NULL;
    if (w)
        waiter_done(w, 0);
    else
        c->sending = false;
    chan_leave(c, 0);
    errno = err;
}

/* With the turn: send [p, p + n) straight to the fd, waiting as needed. 0, or -1 with errno
 * (EBADF: closed meanwhile; c stays until turn_give). */
static int send_all(weft_chan *c, const char *p, size_t n, lazy_deadline *dl)
{
    while (n > 0) {
        ssize_t w = send_some(c, p, n, dl);
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Stop holding c's output back (it is being flushed). */
static void release_hold(weft_chan *c)
{
    if (c->holder) {
        if (c->holder->held_output == c)
            c->holder->held_output = NULL;
        c->holder = NULL;
    }
}

/* With the turn: send everything buffered, waiting as needed. */
static int flush_turn(weft_chan *c, lazy_deadline *dl)
{
    release_hold(c);
    while (c->wstart < c->wlen) {
        ssize_t w = send_some(c, c->wbuf + c->wstart, c->wlen - c->wstart, dl);
        if (w < 0) {
            if (errno == EPIPE || errno == ECONNRESET)
                c->wstart = c->wlen = 0; /* undeliverable: the peer is gone */
            return -1;
        }
        c->wstart += (size_t)w;
    }
    c->wstart = c->wlen = 0;
    return 0;
}

/* Send everything buffered, after any writer now inside a send (its bytes came first). */
static int flush_dl(weft_chan *c, lazy_deadline *dl)
{
    release_hold(c);
    if (c->wstart == c->wlen && !c->sending) {
        c->wstart = c->wlen = 0;
        return 0;
    }
    if (turn_take(c, dl) != 0)
        return -1;
    int rc = flush_turn(c, dl);
    turn_give(c);
    return rc;
}

/* Send what the socket takes now, without waiting. 0 when all went. */
static int flush_nowait(weft_chan *c)
{
    if (c->sending)
        return -1; /* another writer is at it: what is left goes with its send */
    while (c->wstart < c->wlen) {
        ssize_t w = c->is_socket
                        ? send(c->fd, c->wbuf + c->wstart, c->wlen - c->wstart, MSG_NOSIGNAL)
                        : write(c->fd, c->wbuf + c->wstart, c->wlen - c->wstart);
        if (w > 0) {
            c->wstart += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else {
            if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) {
                c->werr = errno;
                c->wstart = c->wlen = 0;
            }
            return -1;
        }
    }
    c->wstart = c->wlen = 0;
    return 0;
}

static void flush_held_output(weft_co *co, bool may_wait)
{
    weft_chan *c = co->held_output;
    if (may_wait) {
        flush_dl(c, &(lazy_deadline)LAZY(c->write_timeout)); /* errors stay sticky or buffered */
    } else if (flush_nowait(c) == 0 || c->werr) {
        release_hold(c);
    }
}

/* Line coalescing: in line mode a coroutine that has more complete lines of input buffered
 * on the same channel holds its reply back, so replies to pipelined requests leave in one
 * send. The hold ends when it reads past the buffered lines, writes with nothing buffered,
 * parks, ends, or writes to another channel. */
static bool input_line_buffered(weft_chan *c)
{
    const char *nl = find_newline(c);
    /* Nothing before nl is a newline: the next weft_gets finds it at rscan without a search,
     * so each line is searched for once, not twice (memchr was 2 % of the CPU at P = 16). */
    if (nl)
        c->rscan = (size_t)(nl - c->rbuf);
    return nl != NULL;
}

static void install_hook(void)
{
    sched_held_output_hook = flush_held_output;
}

/* With the turn: hold what was just written back (see input_line_buffered). */
static int hold_output(weft_chan *c, lazy_deadline *dl)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT; /* threads may get here together */
    pthread_once(&once, install_hook);
    weft_co *co = weft_self();
    if (c->holder && c->holder != co)
        return flush_turn(c, dl); /* another coroutine's hold: no sharing, send it all */
    /* (write_begin sent any other channel this coroutine held.) */
    co->held_output = c;
    c->holder = co;
    return 0;
}

/* With the turn: copy [p, p + n) into the write buffer, flushing whenever it reaches wmax. */
static int put(weft_chan *c, const char *p, size_t n, lazy_deadline *dl)
{
    while (n > 0) {
        if (c->wlen == c->wstart && n >= c->wmax) {
            c->wstart = c->wlen = 0;
            return send_all(c, p, n, dl);
        }
        if (c->wlen >= c->wmax) {
            if (flush_turn(c, dl) != 0)
                return -1;
            continue; /* empty now: a large remainder may go straight out */
        }
        size_t room = c->wmax - c->wlen;
        size_t k = n < room ? n : room;
        if (c->wlen + k > c->wcap) {
            size_t cap = c->wcap ? c->wcap : WBUF_INITIAL;
            while (cap < c->wlen + k)
                cap *= 2;
            if (cap > c->wmax)
                cap = c->wmax;
            char *b = grow_buf(c->wbuf, cap);
            if (!b)
                return -1;
            c->wbuf = b;
            c->wcap = cap;
        }
        memcpy(c->wbuf + c->wlen, p, k);
        c->wlen += k;
        p += k;
        n -= k;
    }
    return 0;
}

/* With the turn: apply the buffering mode once a whole write is in the buffer. */
static int settle(weft_chan *c, bool has_newline, lazy_deadline *dl)
{
    if (c->buffering == WEFT_BUF_LINE && has_newline && weft_self() && input_line_buffered(c))
        return hold_output(c, dl);
    if (c->buffering == WEFT_BUF_NONE || (c->buffering == WEFT_BUF_LINE && has_newline))
        return flush_turn(c, dl);
    return 0;
}

/* Start a write: fail at once on a vanished peer, send what this coroutine holds back on
 * another channel (its bytes came first, and we must not wait for that channel's turn while
 * holding c's), then take c's turn. -1 with errno (EBADF: c may be gone). */
static int write_begin(weft_chan *c, lazy_deadline *dl)
{
    if (c->werr) {
        errno = c->werr;
        return -1;
    }
    weft_co *co = weft_self();
    if (co && co->held_output && co->held_output != c) {
        c->users++; /* that may wait: a close of c meanwhile is seen (EBADF, c gone) */
        flush_held_output(co, true);
        if (chan_leave(c, 0) != 0)
            return -1;
    }
    return turn_take(c, dl);
}

ssize_t weft_write(weft_chan *c, const void *buf, size_t n)
{
    lazy_deadline dl = LAZY(c->write_timeout);
    if (write_begin(c, &dl) != 0)
        return -1;
    bool nl = c->buffering == WEFT_BUF_LINE && memchr(buf, '\n', n) != NULL;
    int rc = put(c, buf, n, &dl);
    if (rc == 0)
        rc = settle(c, nl, &dl);
    turn_give(c);
    return rc == 0 ? (ssize_t)n : -1;
}

/* With the turn, nothing buffered: a long line on a socket in line or no buffering is sent
 * with its newline straight from the caller's memory (often the read buffer, for an echo)
 * instead of being copied into the write buffer first. What the socket does not take goes
 * through the buffer as usual. */
static int putln_direct(weft_chan *c, const char *line, size_t n, lazy_deadline *dl)
{
    struct iovec iov[2] = {{(void *)line, n}, {"\n", 1}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
    ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
    /* On an error nothing went: the flush below meets it again and reports it as any send
     * does (send_some: a vanished peer's error stays sticky). */
    size_t sent = w > 0 ? (size_t)w : 0;
    if (sent == n + 1)
        return 0;
    if (sent < n && put(c, line + sent, n - sent, dl) != 0)
        return -1;
    if (put(c, "\n", 1, dl) != 0)
        return -1;
    return flush_turn(c, dl);
}

/* With the turn: the body of weft_putln. */
static int putln_turn(weft_chan *c, const char *line, size_t n, lazy_deadline *dl)
{
    if (n >= BUF_SIZE && c->is_socket && c->buffering != WEFT_BUF_FULL && c->wlen == c->wstart) {
        if (chan_spend(c) != 0)
            return -1;
        return putln_direct(c, line, n, dl); /* (the turn kept others from buffering) */
    }
    if (c->wlen + n < c->wcap && c->wlen + n < c->wmax) {
        /* The common case, a line that fits: one copy and the newline, no put loop. */
        memcpy(c->wbuf + c->wlen, line, n);
        c->wbuf[c->wlen + n] = '\n';
        c->wlen += n + 1;
    } else if (put(c, line, n, dl) != 0 || put(c, "\n", 1, dl) != 0) {
        return -1;
    }
    return settle(c, true, dl);
}

int weft_putln(weft_chan *c, const void *line, size_t n)
{
    lazy_deadline dl = LAZY(c->write_timeout);
    if (write_begin(c, &dl) != 0)
        return -1;
    int rc = putln_turn(c, line, n, &dl);
    turn_give(c);
    return rc;
}

int weft_puts(weft_chan *c, const char *s)
{
    return weft_putln(c, s, strlen(s));
}

int weft_vprintf(weft_chan *c, const char *fmt, va_list ap)
{
    char small[512];
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    if (n < 0) {
        va_end(ap2);
        errno = EOVERFLOW;
        return -1;
    }
    char *text = small;
    if ((size_t)n >= sizeof small) {
        text = malloc((size_t)n + 1);
        if (!text) {
            va_end(ap2);
            errno = ENOMEM;
            return -1;
        }
        vsnprintf(text, (size_t)n + 1, fmt, ap2);
    }
    va_end(ap2);
    ssize_t w = weft_write(c, text, (size_t)n);
    if (text != small)
        free(text);
    return w < 0 ? -1 : n;
}

int weft_printf(weft_chan *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = weft_vprintf(c, fmt, ap);
    va_end(ap);
    return n;
}

int weft_flush(weft_chan *c)
{
    if (c->werr) {
        errno = c->werr;
        return -1;
    }
    return flush_dl(c, &(lazy_deadline)LAZY(c->write_timeout));
}

int weft_shutdown(weft_chan *c)
{
    lazy_deadline dl = LAZY(c->write_timeout);
    if (write_begin(c, &dl) != 0)
        return -1;
    int rc = flush_turn(c, &dl);
    if (rc == 0)
        rc = shutdown(c->fd, SHUT_WR);
    turn_give(c);
    return rc;
}

int weft_close(weft_chan *c)
{
    int err = 0;
    if (c->sending) {
        /* Another coroutine is inside a send on c, parked (on a full socket, or on another
         * channel while it holds c's turn): waiting for it could take forever, so its send
         * ends now with EBADF and what is still buffered is dropped. */
        if (c->wlen > c->wstart && !c->werr)
            err = EBUSY;
    } else if (c->wlen > c->wstart && !c->werr && weft_flush(c) != 0) {
        if (errno == EBADF)
            return -1; /* closed by someone else while we flushed: c is gone */
        err = errno;
    }
    c->closed = true;
    release_hold(c); /* nothing may send on the fd number once it is closed */
    waiter *w;
    while ((w = wait_list_pop(&c->turns)))
        waiter_done(w, EBADF); /* writers waiting for their turn: EBADF via chan_leave */
    if (weft_fd_close(c->fd) != 0 && !err)
        err = errno;
    if (c->users == 0)
        chan_free(c);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}
