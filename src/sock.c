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
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* What the last read of a TCP socket told of its input. A short read means the queue was
 * empty unless it stopped at urgent data, which epoll's edges report (IO_PRI) and io_uring's
 * poll completions do not; a recv that reports zero bytes left (TCP_INQ) means it for sure. */
enum drained { NOT_DRAINED, DRAINED_SHORT, DRAINED_EMPTY };

/* Receive and send structures whose transport is gone while an operation of theirs is in
 * flight wait for its completion in a list of the thread's, where the kernel's reference
 * (the operation's user data in the ring) is not the only one: leak checkers see them, and
 * a scheduler that ends with them pending frees them through its backend's last reaping. */
typedef struct olink {
    struct olink *prev, *next;
} olink;

static _Thread_local olink *orphans;
/* This thread's multishot receives in flight whose transport is alive, linked through the
 * same link (a receive is in one list or the other): a fork pauses them (fork_prepare). */
static _Thread_local olink *armed_rx;

static void olist_add(olink **head, olink *l)
{
    l->prev = NULL;
    l->next = *head;
    if (*head)
        (*head)->prev = l;
    *head = l;
}

static void olist_remove(olink **head, olink *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else
        *head = l->next;
    if (l->next)
        l->next->prev = l->prev;
}

static void orphan_add(olink *l) { olist_add(&orphans, l); }
static void orphan_remove(olink *l) { olist_remove(&orphans, l); }

/* Small output in ring mode is copied into slabs the thread's connections share, so that a
 * reply in flight holds a few bytes of a slab rather than a whole write buffer (ten thousand
 * connections answering at once would hold 40 MB of buffers). Medium gives, up to a
 * buffer's size, are copied too while the thread's slabs stay within SLAB_MAX: the writer
 * keeps its buffer, rather than each send in flight taking one that it must replace (with
 * malloc, and free at the completion, once the pool runs dry: a TLS handshake's flight, a
 * record of 16 pipelined replies; a loop turn's completions then free so many at once that
 * the heap's top is trimmed, and grown again with fresh pages the next turn). Beyond
 * SLAB_MAX, they are taken as before. A slab whose last send is done becomes a spare;
 * spares serve the next burst without mapping (and faulting in) new slabs, and go when the
 * thread's loop is quiet (sched_on_quiet). */
#define SLAB_BYTES (64 * 1024) /* a slab in all, header included */
#define SLAB_SMALL 1024 /* gives up to this size are always copied */
#define SLAB_MEDIUM BUF_SIZE /* and up to this size while slabs stay within SLAB_MAX */
#define SLAB_MAX 32 /* slabs a thread maps for medium gives, or keeps in all: 2 MiB */

typedef struct slab {
    unsigned used, refs;
    bool orphan;        /* its thread ended with sends still in it: the last one frees it */
    struct slab *next;  /* in the spares */
    char data[SLAB_BYTES - 64]; /* (the header's bytes, rounded up, left out) */
} slab;
_Static_assert(sizeof(slab) <= SLAB_BYTES, "a slab maps 64 KiB in all");

#define SLAB_SIZE sizeof(((slab *)0)->data)

/* Slabs are mapped, not taken from the heap: a slab freed in the middle of the heap while
 * connections are being made (their OpenSSL state, say, around it) would leave a hole that
 * smaller allocations split, and the heap would stay larger than what it holds. */
static slab *slab_map(void);
static void slab_unmap(slab *sb);

static _Thread_local slab *slab_cur, *slab_spares;
static _Thread_local unsigned slab_count; /* mapped, spares included */
static pthread_key_t slab_key;
static pthread_once_t slab_once = PTHREAD_ONCE_INIT;

static void send_pool_drain(void);

static slab *slab_map(void)
{
    void *p = mmap(NULL, sizeof(slab), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    slab_count++;
    return p;
}

static void slab_unmap(slab *sb)
{
    if (!sb)
        return;
    if (!sb->orphan) /* (an orphan's thread, and its count, are gone) */
        slab_count--;
    munmap(sb, sizeof *sb);
}

static void slab_spares_drop(void)
{
    while (slab_spares) {
        slab *sb = slab_spares;
        slab_spares = sb->next;
        slab_unmap(sb);
    }
}

static void slab_exit(void *unused)
{
    (void)unused;
    send_pool_drain();
    slab_spares_drop();
    if (slab_cur && slab_cur->refs)
        slab_cur->orphan = true;
    else
        slab_unmap(slab_cur);
    slab_cur = NULL;
}

static void slab_init_key(void)
{
    pthread_key_create(&slab_key, slab_exit);
}

unsigned sock_slabs_mapped(void)
{
    return slab_count;
}

/* The loop is quiet: the spares go, and the current slab too if nothing is in it. */
static void slab_quiet(void)
{
    slab_spares_drop();
    if (slab_cur && !slab_cur->refs) {
        slab_unmap(slab_cur);
        slab_cur = NULL;
    }
}

/* An empty slab: kept as a spare while the thread has no more than SLAB_MAX slabs (the loop
 * will say when it is quiet), else unmapped; always unmapped while the thread ends, whose
 * last completions may come after slab_exit. */
static void slab_retire(slab *sb)
{
    if (sb->orphan || slab_count > SLAB_MAX || !sched_peek() || sched_exiting() ||
        sched_on_quiet(slab_quiet) != 0) {
        slab_unmap(sb);
        return;
    }
    sb->next = slab_spares;
    slab_spares = sb;
}

/* Whether a medium give of n bytes is copied: the current slab has room for it (once
 * emptied, it starts again at its start), or a spare does, or another slab may be mapped. */
static bool slab_takes_medium(size_t n)
{
    return (slab_cur && (!slab_cur->refs || slab_cur->used + n <= SLAB_SIZE)) || slab_spares ||
           slab_count < SLAB_MAX;
}

/* n (<= SLAB_MEDIUM) bytes of slab, counted in *sb until slab_put. NULL/ENOMEM. */
static char *slab_alloc(size_t n, slab **sb)
{
    if (slab_cur && !slab_cur->refs)
        slab_cur->used = 0; /* nothing in flight: reuse the pages already touched, in cache */
    if (!slab_cur || slab_cur->used + n > SLAB_SIZE) {
        /* (The slab replaced has sends in flight: the last one's slab_put retires it.) */
        slab *fresh = slab_spares;
        if (fresh)
            slab_spares = fresh->next;
        else if (!(fresh = slab_map()))
            return NULL; /* ENOMEM */
        /* Every slab is mapped under a scheduler that knows to call slab_quiet (a released
         * one calls it first, leaving none). If all its places are taken, they stay till
         * the thread ends. */
        sched_on_quiet(slab_quiet);
        fresh->used = fresh->refs = 0; /* (only the header: its pages are touched as filled) */
        fresh->orphan = false;
        slab_cur = fresh;
        pthread_once(&slab_once, slab_init_key);
        pthread_setspecific(slab_key, slab_cur); /* (any non-NULL value: slab_exit runs) */
    }
    char *p = slab_cur->data + slab_cur->used;
    slab_cur->used += (unsigned)n;
    slab_cur->refs++;
    *sb = slab_cur;
    return p;
}

static void slab_put(slab *sb)
{
    if (--sb->refs > 0 || sb == slab_cur)
        return;
    slab_retire(sb);
}

typedef struct qbuf {
    struct qbuf *next;
    char *base;
    size_t cap, off, len; /* [off, off + len) of base still to send */
    slab *sb;             /* base is in this slab (ring mode), not a buffer of ours */
} qbuf;

/* ---- The io_uring data path (ring mode) ----
 * On a backend with multishot receives and provided buffers, a socket's input comes without a
 * system call: one multishot receive, armed at the first read, puts each arrival in a buffer
 * the backend provides, and the transport keeps those buffers in a small queue until the
 * channel has consumed them (adopting the first one as its read buffer, without a copy). Its
 * output goes as send operations the loop owns, one at a time in order, submitted with the
 * loop's one io_uring_enter per turn. The kernel may complete an operation after the
 * transport is closed, so neither structure is part of the transport: the last completion
 * frees them (owner NULL). A receive structure is on the heap, or, for a transport made in
 * its maker's room (a server's client), in the room just after it, where an idle connection
 * costs no heap for it: the room's owner then waits in sock_room_settle for that last
 * completion before the room goes. */
#define RXQ_PAUSE 16  /* arrivals a connection holds before its receive is paused (those
                       * already on their way when the pause is asked are kept too) */

#define RXQ_INLINE 1  /* held arrivals kept in the receive structure itself */

typedef struct rxbuf {
    char *data;        /* the arrival's slice of provided buffer bid */
    uint32_t len;
    uint16_t bid;
} rxbuf;

typedef struct ring_rx {
    io_op op;          /* the multishot receive */
    olink link;        /* in orphans, once owner is NULL */
    struct sock *owner;
    uint64_t be_gen;   /* the backend it runs on (sched->be_gen) */
    rxbuf *q;          /* held arrivals, a circular queue of cap entries: q_inline, or (past
                        * RXQ_INLINE, until the queue is empty again) the heap */
    uint16_t cap, head, count;
    uint16_t stale;    /* held arrivals at the head from a backend since gone (in a forked
                        * child: the parent's): read, but not given back to any ring */
    uint32_t head_off; /* consumed bytes of the first buffer */
    bool armed;        /* op in flight */
    bool pausing;      /* cancelled because the queue is full, or input stopped: no error */
    bool ready;        /* something to read (data, end of file, error): for outside waits */
    bool eof;
    bool in_room;      /* in its transport's room (sock_room_settle), not on the heap */
    int err;
    weft_co *settler;  /* (in_room) parked in sock_room_settle until the last completion */
    rxbuf q_inline[RXQ_INLINE];
} ring_rx;

/* Room for one more held arrival (the queue doubles as needed). -1/ENOMEM. */
static int rxq_room(ring_rx *rx)
{
    if (rx->count < rx->cap)
        return 0;
    unsigned cap = rx->cap * 2u;
    if (cap > UINT16_MAX) {
        errno = ENOMEM;
        return -1;
    }
    rxbuf *q = malloc(cap * sizeof *q);
    if (!q)
        return -1;
    for (unsigned i = 0; i < rx->count; i++)
        q[i] = rx->q[(rx->head + i) % rx->cap];
    if (rx->q != rx->q_inline)
        free(rx->q);
    rx->q = q;
    rx->cap = (uint16_t)cap;
    rx->head = 0;
    return 0;
}

/* The first held arrival is out of the queue; an emptied heap queue goes back inline. */
static void rxq_shift(ring_rx *rx)
{
    rx->head = (uint16_t)((rx->head + 1) % rx->cap);
    rx->count--;
    rx->head_off = 0;
    if (rx->count == 0 && rx->q != rx->q_inline) {
        free(rx->q);
        rx->q = rx->q_inline;
        rx->cap = RXQ_INLINE;
        rx->head = 0;
    }
    rx->ready = rx->count > 0 || rx->eof || rx->err;
}

/* Whether the first held arrival is from a backend since gone (a forked child's copy of the
 * parent's): its buffer is read as it is, and given back to no ring. */
static bool rx_head_stale(const ring_rx *rx)
{
    sched *sc = sched_peek();
    return rx->stale > 0 || !sc || rx->be_gen != sc->be_gen;
}

#define TOKEN_STALE (1u << 16) /* an adopted buffer's token: rx_head_stale held */

static ring_rx *room_rx(struct sock *s);

static ring_rx *rx_new(struct sock *owner)
{
    ring_rx *room = room_rx(owner);
    ring_rx *rx = room ? memset(room, 0, sizeof *room) : calloc(1, sizeof *rx);
    if (rx) {
        rx->in_room = room != NULL;
        rx->owner = owner;
        rx->q = rx->q_inline;
        rx->cap = RXQ_INLINE;
    }
    return rx;
}

/* The receive is over: its memory goes (or, in a room, its owner may let the room go). */
static void rx_free(ring_rx *rx)
{
    if (rx->q != rx->q_inline)
        free(rx->q);
    if (!rx->in_room) {
        free(rx);
        return;
    }
    rx->armed = false;
    if (rx->settler)
        sched_wake(rx->settler, 0);
}

/* A send in flight: the loop owns it from submission to completion. Idle connections hold
 * none: they come from a per-thread pool as sends start and go back as they complete. */
typedef struct send_op {
    io_op op;
    olink link;        /* in orphans once owner is NULL; in the pool, link.next chains it */
    struct sock *owner;
    char *base;        /* the buffer being sent: [off, off + len) still to go */
    size_t cap, off, len;
    slab *sb;          /* base is in this slab, not a buffer of ours */
} send_op;

#define SEND_POOL_MAX 256 /* idle send operations a thread keeps */

static _Thread_local olink *send_pool;
static _Thread_local unsigned send_pool_n;

static void send_pool_drain(void)
{
    while (send_pool) {
        olink *l = send_pool;
        send_pool = l->next;
        free((char *)l - offsetof(send_op, link));
    }
    send_pool_n = 0;
}

static send_op *send_op_take(void)
{
    if (send_pool) {
        send_op *o = (send_op *)((char *)send_pool - offsetof(send_op, link));
        send_pool = send_pool->next;
        send_pool_n--;
        return o;
    }
    pthread_once(&slab_once, slab_init_key);
    pthread_setspecific(slab_key, &send_pool); /* (non-NULL: the exit destructor runs) */
    return malloc(sizeof(send_op));
}

static void send_op_give(send_op *o)
{
    if (send_pool_n >= SEND_POOL_MAX) {
        free(o);
        return;
    }
    o->link.next = send_pool;
    send_pool = &o->link;
    send_pool_n++;
}

/* The buffer the send was from goes back (to the pool, or its slab). */
static void tx_release(send_op *o)
{
    if (o->sb)
        slab_put(o->sb);
    else
        buf_give(o->base, o->cap);
    o->base = NULL;
    o->sb = NULL;
}

typedef struct sock {
    transport t;
    int fd;
    bool is_socket;
    bool stream;       /* TCP: a short read means its input is drained for now */
    bool inq;          /* TCP_INQ is on: each recv says how much input it left queued */
    bool inq_tried;    /* asked for TCP_INQ already (whether or not the kernel agreed) */
    uint8_t drained;   /* enum drained */
    bool owning;       /* registered as the fd's owner (its queue is not empty) */
    fd_owner own;      /* how fd.c calls it back then (sock_on_event) */
    bool input_stopped; /* (ring mode) read what the socket holds directly: arm nothing */
    bool in_room;      /* lives in memory its maker owns (a handler's room): not freed here */
    uint64_t owner_gen; /* the backend it was registered with */
    qbuf *head, *tail; /* output given and not yet sent, oldest first */
    qbuf first;        /* the node of a queue's first buffer: no allocation for it */
    bool tx_progress;  /* (ring mode) a send completed since an outside waiter looked */
    uint64_t tx_gen;   /* the backend the send in flight went to (sched->be_gen) */
    uint64_t adopt_gen; /* the backend whose buffer the channel adopted last */
    ring_rx *rx;       /* ring mode: the receive side, NULL until armed */
    send_op *tx;       /* ring mode: the send in flight, if any */
} sock;

/* The backend a ring-mode call may use: the running coroutine's (or, outside coroutines, the
 * thread's) if it has multishot receives and provided buffers, else NULL. */
static backend *ring_backend(const sock *s)
{
    if (!s->is_socket)
        return NULL;
    sched *sc = sched_peek();
    backend *b = sc ? sc->be : NULL;
    return b && b->multishot_rx ? b : NULL;
}

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

/* -- ring mode: input -- */

/* Wake the reader when there is something for it, or (ended) when the receive stopped. */
static void rx_wake(ring_rx *rx, bool ended)
{
    rx->ready = rx->count > 0 || rx->eof || rx->err;
    if ((rx->ready || ended) && rx->owner)
        fd_cancel_wait(rx->owner->fd, WEFT_READABLE, 0);
}

/* Callback from the backend: an arrival, or the end of the multishot receive. */
static void rx_done(io_op *op)
{
    ring_rx *rx = op->data;
    backend *b = sched_peek()->be;
    if (op->res > 0) {
        if (!rx->owner) {
            b->ops->pbuf_put(b, op->bid);
        } else if (rxq_room(rx) != 0) { /* no memory to hold it: the stream is broken */
            b->ops->pbuf_put(b, op->bid);
            rx->err = ENOMEM;
        } else {
            unsigned i = (rx->head + rx->count++) % rx->cap;
            rx->q[i] = (rxbuf){op->buf, (uint32_t)op->res, op->bid};
            sched_peek()->io_owned++; /* a provided buffer held */
            if (rx->count >= RXQ_PAUSE && op->more && !rx->pausing) {
                rx->pausing = true; /* enough held: stop until the channel takes some */
                b->ops->cancel(b, op);
            }
        }
    } else if (op->res == 0) {
        rx->eof = true;
    } else if (op->res != -ECANCELED || !rx->pausing) {
        rx->err = op->res == -ECANCELED ? EBADF : -op->res;
    }
    if (op->more) {
        rx_wake(rx, false);
        return;
    }
    rx->armed = rx->pausing = false;
    sched_peek()->io_owned--;
    if (!rx->owner) { /* the transport is gone: this was the last completion */
        orphan_remove(&rx->link);
        rx_free(rx);
    } else {
        olist_remove(&armed_rx, &rx->link);
        rx_wake(rx, true);
    }
}

/* A fork: the receives this thread has in flight would go on taking what arrives, in the
 * parent, on sockets the child may read (weft.h: fork). Pause them first, as a full queue
 * does (their completions say -ECANCELED, no error); the parent's next read starts its
 * receive again. (Other threads' receives are not paused.) */
static void rx_fork_prepare(void)
{
    sched *sc = sched_peek();
    backend *b = sc ? sc->be : NULL;
    if (!b || !b->multishot_rx || !armed_rx)
        return;
    for (olink *l = armed_rx; l; l = l->next) {
        ring_rx *rx = (ring_rx *)((char *)l - offsetof(ring_rx, link));
        if (rx->armed && !rx->pausing && rx->be_gen == sc->be_gen) {
            rx->pausing = true;
            b->ops->cancel(b, &rx->op);
        }
    }
    if (b->ops->flush)
        b->ops->flush(b); /* (before the child exists) */
}

static void rx_fork_child(void)
{
    armed_rx = NULL; /* (the parent's receives: their backend is not the child's) */
}

static pthread_once_t armed_once = PTHREAD_ONCE_INIT;

static void armed_atfork(void)
{
    pthread_atfork(rx_fork_prepare, NULL, rx_fork_child);
}

static void armed_watch_fork(void)
{
    pthread_once(&armed_once, armed_atfork);
}

/* Start the multishot receive if it is not running (on this thread's backend). */
static int rx_arm(sock *s, backend *b)
{
    ring_rx *rx = s->rx;
    sched *sc = sched_peek();
    if (!rx && !(rx = s->rx = rx_new(s)))
        return -1;
    if (rx->be_gen != sc->be_gen) {
        rx->armed = false; /* (a backend since gone: its operations ended with it) */
        rx->stale = rx->count; /* (and the buffers it filled are not this one's) */
    }
    if (rx->armed || rx->eof || rx->err || s->input_stopped || rx->count >= RXQ_PAUSE)
        return 0;
    rx->op = (io_op){.cb = rx_done, .kind = IO_OP_RECV_MULTI, .fd = s->fd, .data = rx};
    if (b->ops->submit(b, &rx->op) != 0)
        return -1;
    rx->armed = true;
    rx->be_gen = sc->be_gen;
    sc->io_owned++;
    armed_watch_fork();
    olist_add(&armed_rx, &rx->link);
    return 0;
}

/* The first held buffer is consumed: back to the backend, and the receive restarted if it
 * was paused. */
static void rx_pop(sock *s, backend *b)
{
    ring_rx *rx = s->rx;
    if (rx_head_stale(rx)) {
        if (rx->stale > 0)
            rx->stale--;
    } else {
        b->ops->pbuf_put(b, rx->q[rx->head].bid);
        sched_peek()->io_owned--;
    }
    rxq_shift(rx);
    if (!rx->armed && rx->count < RXQ_PAUSE / 2)
        rx_arm(s, b);
}

/* recv in ring mode: copy out of the held buffers. */
static ssize_t rx_recv(sock *s, backend *b, char *buf, size_t n)
{
    ring_rx *rx = s->rx;
    size_t got = 0;
    while (got < n && rx && rx->count > 0) {
        rxbuf *h = &rx->q[rx->head];
        const char *p = h->data + rx->head_off;
        size_t left = h->len - rx->head_off, k = left < n - got ? left : n - got;
        memcpy(buf + got, p, k);
        got += k;
        rx->head_off += (uint32_t)k;
        if (rx->head_off == h->len)
            rx_pop(s, b);
    }
    if (got > 0)
        return (ssize_t)got;
    if (rx && rx->err) {
        errno = rx->err;
        return -1;
    }
    if (rx && rx->eof)
        return 0;
    if (s->input_stopped) {
        if (rx && rx->armed) { /* its cancel has not completed: arrivals may be on their way */
            errno = EINPROGRESS;
            return -1;
        }
        if (n == 0) { /* (adopt asks) */
            errno = ENOTSUP;
            return -1;
        }
        ssize_t r = sys_recv(s->fd, buf, n, 0); /* nothing is armed: what the socket holds */
        return r < 0 && errno == EINTR ? (errno = EAGAIN, -1) : r;
    }
    if (rx_arm(s, b) != 0)
        return -1;
    errno = EAGAIN;
    return -1;
}

static void sock_stop_input(transport *t)
{
    sock *s = (sock *)t;
    s->input_stopped = true; /* (ring mode: no receive is armed from now on) */
    ring_rx *rx = s->rx;
    backend *b = ring_backend(s);
    if (!rx || !b)
        return;
    if (rx->armed && rx->be_gen == sched_peek()->be_gen && !rx->pausing) {
        rx->pausing = true; /* (its -ECANCELED end is no error) */
        b->ops->cancel(b, &rx->op);
    }
}

static ssize_t sock_adopt(transport *t, char **base, size_t *start, size_t *cap,
                          unsigned *token)
{
    sock *s = (sock *)t;
    backend *b = ring_backend(s);
    ring_rx *rx = s->rx;
    if (!b) {
        errno = ENOTSUP; /* not in ring mode: read with recv */
        return -1;
    }
    if (!rx || rx->count == 0)
        return rx_recv(s, b, NULL, 0); /* (0 at end of file, errors, else arm and EAGAIN) */
    /* The slice only: the rest of the buffer may be other connections' bytes. */
    rxbuf *h = &rx->q[rx->head];
    *base = h->data;
    *start = rx->head_off;
    *cap = h->len;
    *token = h->bid;
    if (rx_head_stale(rx)) {
        *token |= TOKEN_STALE;
        if (rx->stale > 0)
            rx->stale--;
    }
    s->adopt_gen = sched_peek()->be_gen;
    ssize_t len = (ssize_t)(h->len - rx->head_off);
    /* The buffer is the caller's now: out of the queue, still held (io_owned) until release. */
    rxq_shift(rx);
    return len;
}

static void sock_release(transport *t, unsigned token)
{
    sock *s = (sock *)t;
    sched *sc = sched_peek();
    backend *b = sc ? sc->be : NULL;
    if (!b || !b->ops->pbuf || (token & TOKEN_STALE) || s->adopt_gen != sc->be_gen)
        return; /* (its backend is gone, and its buffers with it) */
    b->ops->pbuf_put(b, (uint16_t)token);
    sc->io_owned--;
    if (s->rx && !s->rx->armed && s->rx->count < RXQ_PAUSE / 2)
        rx_arm(s, b);
}

/* Outside any coroutine, in ring mode: run the loop until the receive has news. */
static int rx_wait_outside(sock *s, backend *b, int64_t deadline)
{
    if (rx_arm(s, b) != 0)
        return -1;
    ring_rx *rx = s->rx;
    rx->ready = rx->count > 0 || rx->eof || rx->err;
    return sched_drive_io(&rx->ready, deadline);
}

static ssize_t sock_recv(transport *t, void *buf, size_t n)
{
    sock *s = (sock *)t;
    backend *rb = ring_backend(s);
    if (rb)
        return rx_recv(s, rb, buf, n);
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
    if (ring_backend(s)) /* what the receive brought, or (not armed yet) let recv arm it */
        return !s->rx || !s->rx->armed || s->rx->ready;
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
    backend *rb = ring_backend(s);
    if (rb) {
        if (s->rx && s->rx->ready)
            return 0;
        if (!sched_backend())
            return rx_wait_outside(s, rb, deadline);
        if (rx_arm(s, rb) != 0)
            return -1;
        return fd_park(s->fd, WEFT_READABLE, deadline); /* rx_done wakes us */
    }
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
            if (w < 0 && (errno == EPIPE || errno == ECONNRESET) && !s->t.err)
                s->t.err = errno; /* the peer is gone: every later send fails the same way */
            return w;
        }
    }
}

static ssize_t sock_send(transport *t, const struct iovec *iov, int iovcnt)
{
    return send_now((sock *)t, iov, iovcnt);
}

static ssize_t sock_sendfile(transport *t, int fd, off_t *off, size_t n)
{
    sock *s = (sock *)t;
    for (;;) {
        ssize_t w = sys_sendfile(s->fd, fd, off, n);
        if (w >= 0 || errno != EINTR) {
            if (w < 0 && (errno == EPIPE || errno == ECONNRESET) && !t->err)
                t->err = errno;
            if (w < 0 && errno == EINVAL)
                errno = ENOTSUP; /* (a file sendfile cannot read from: copy it) */
            return w;
        }
    }
}

static void qbuf_free(sock *s, qbuf *q)
{
    if (q->sb)
        slab_put(q->sb);
    else
        buf_give(q->base, q->cap);
    if (q != &s->first)
        free(q);
}

static void disown(sock *s)
{
    if (s->owning) {
        fd_set_owner(s->fd, NULL);
        s->owning = false;
        sched *sc = sched_peek();
        if (sc && sc->be_gen == s->owner_gen)
            sc->io_owned--;
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
static void sock_on_event(fd_owner *self, unsigned events)
{
    if (events & (IO_OUT | IO_HUP))
        push((sock *)((char *)self - offsetof(sock, own)));
}

/* -- ring mode: output -- */

static void tx_start(sock *s);
static void tx_done(io_op *op);
static size_t sock_drop(transport *t);

static void tx_submit(sock *s, send_op *o)
{
    backend *b = sched_peek()->be;
    s->tx_gen = sched_peek()->be_gen;
    o->op = (io_op){.cb = tx_done, .kind = IO_OP_SEND, .fd = s->fd, .buf = o->base + o->off,
                    .len = (unsigned)(o->len > UINT32_MAX ? UINT32_MAX : o->len), .data = o};
    sched_peek()->io_owned++;
    if (b->ops->submit(b, &o->op) != 0) { /* no room for it: fail it as a send would */
        o->op.res = -errno;
        tx_done(&o->op);
    }
}

/* A send failed: it and everything queued behind it are undeliverable. */
static void tx_failed(sock *s, send_op *o, int err)
{
    if (!s->t.err)
        s->t.err = err == ECANCELED ? EBADF : err;
    s->t.queued -= o->len;
    tx_release(o);
    s->tx = NULL;
    send_op_give(o);
    sock_drop(&s->t);
}

/* Callback from the backend: the send in flight is done (res bytes, or -errno). */
static void tx_done(io_op *op)
{
    send_op *o = op->data;
    sock *s = o->owner;
    sched_peek()->io_owned--;
    if (!s) { /* the transport is gone: this was the last of its sends */
        orphan_remove(&o->link);
        tx_release(o);
        send_op_give(o);
        return;
    }
    s->tx_progress = true;
    if (op->res <= 0) {
        tx_failed(s, o, op->res == 0 ? EIO : -op->res);
    } else {
        o->off += (size_t)op->res;
        o->len -= (size_t)op->res;
        s->t.queued -= (size_t)op->res;
        if (o->len > 0) { /* a short send: the rest, at once, ahead of the queue */
            tx_submit(s, o);
            return;
        }
        tx_release(o);
        s->tx = NULL;
        send_op_give(o);
        tx_start(s);
    }
    fd_cancel_wait(s->fd, WEFT_WRITABLE, 0);
}

/* A send in flight on a backend since gone: in a forked child, the parent's, which the
 * parent completes; the child forgets its copy. */
static void tx_forget_stale(sock *s)
{
    sched *sc = sched_peek();
    send_op *o = s->tx;
    if (!o || (sc && s->tx_gen == sc->be_gen))
        return;
    s->t.queued -= o->len;
    tx_release(o);
    send_op_give(o);
    s->tx = NULL;
}

/* If no send is in flight, send the first queued buffer. */
static void tx_start(sock *s)
{
    qbuf *q = s->head;
    if (s->tx || !q)
        return;
    send_op *o = send_op_take();
    if (!o) { /* (ENOMEM) the queue cannot go: as a failed send */
        if (!s->t.err)
            s->t.err = ENOMEM;
        sock_drop(&s->t);
        return;
    }
    s->head = q->next;
    if (!s->head)
        s->tail = NULL;
    *o = (send_op){.owner = s, .base = q->base, .cap = q->cap, .off = q->off, .len = q->len,
                   .sb = q->sb};
    if (q != &s->first)
        free(q);
    s->tx = o;
    tx_submit(s, o);
}

/* give in ring mode: queued for the loop, which sends it with its next io_uring_enter. A
 * small give (or a medium one the slabs take) is copied into a slab (the caller keeps its
 * buffer: 0), and follows the last queued slice in one send when it lands right after it;
 * a large one is taken (1). */
static int tx_give(sock *s, char *base, size_t cap, size_t off, size_t len)
{
    slab *sb = NULL;
    if (len <= SLAB_SMALL || (len <= SLAB_MEDIUM && slab_takes_medium(len))) {
        char *p = slab_alloc(len, &sb);
        if (!p)
            return -1;
        memcpy(p, base + off, len);
        qbuf *tail = s->tail;
        if (tail && tail->sb == sb && tail->base + tail->off + tail->len == p) {
            tail->len += len; /* (one slab reference per slice: drop ours) */
            sb->refs--;
            s->t.queued += len;
            return 0;
        }
        base = p;
        cap = off = 0;
    }
    qbuf *q = s->head || s->tx ? malloc(sizeof *q) : &s->first;
    if (!q) {
        if (sb)
            slab_put(sb);
        return -1;
    }
    *q = (qbuf){NULL, base, cap, off, len, sb};
    if (s->tail)
        s->tail->next = q;
    else
        s->head = q;
    s->tail = q;
    s->t.queued += len;
    tx_start(s);
    return sb ? 0 : 1;
}

static int sock_give(transport *t, char *base, size_t cap, size_t off, size_t len)
{
    sock *s = (sock *)t;
    if (t->err) {
        errno = t->err;
        return -1;
    }
    if (ring_backend(s)) {
        tx_forget_stale(s);
        return tx_give(s, base, cap, off, len);
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
    *q = (qbuf){NULL, base, cap, off, len, NULL};
    if (s->tail)
        s->tail->next = q;
    else
        s->head = q;
    s->tail = q;
    t->queued += len;
    s->own.fn = sock_on_event;
    if (!s->owning && fd_set_owner(s->fd, &s->own) == 0 && sched_peek()) {
        s->owning = true; /* the loop must poll for our room (sched->io_owned) */
        s->owner_gen = sched_peek()->be_gen;
        sched_peek()->io_owned++;
    }
    fd_watch_output(s->fd);
    return 1;
}

static int sock_wait_output(transport *t, int64_t deadline)
{
    sock *s = (sock *)t;
    tx_forget_stale(s);
    if (s->tx) { /* ring mode, a send in flight: tx_done wakes us */
        if (sched_backend())
            return fd_park(s->fd, WEFT_WRITABLE, deadline);
        s->tx_progress = false;
        return sched_drive_io(&s->tx_progress, deadline);
    }
    int rc = fd_wait(s->fd, WEFT_WRITABLE, deadline);
    if (rc == 0 && s->head && !sched_backend())
        push(s); /* outside a coroutine no loop runs to do it */
    return rc;
}

static size_t sock_drop(transport *t)
{
    sock *s = (sock *)t;
    tx_forget_stale(s);
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

/* Ring mode: let go of the receive and send structures; an operation still in flight frees
 * its own when it completes (closing the fd cancels it). */
static void ring_let_go(sock *s)
{
    ring_rx *rx = s->rx;
    if (rx) {
        backend *b = ring_backend(s);
        while (rx->count > 0 && b) /* held buffers go back */
            rx_pop(s, b);
        rx->owner = NULL;
        if (!rx->armed || (b && rx->be_gen != sched_peek()->be_gen)) {
            rx_free(rx); /* (an armed one of a backend since gone is in no list here) */
        } else {
            olist_remove(&armed_rx, &rx->link);
            orphan_add(&rx->link);
        }
        s->rx = NULL;
    }
    tx_forget_stale(s);
    send_op *o = s->tx;
    if (o) { /* in flight: its completion gives it back */
        o->owner = NULL;
        orphan_add(&o->link);
        s->tx = NULL;
    }
}

static int sock_close(transport *t)
{
    sock *s = (sock *)t;
    sock_drop(t);
    ring_let_go(s);
    int rc = fd_close(s->fd);
    s->fd = -1;
    return rc;
}

static void sock_free(transport *t)
{
    sock_drop(t); /* (never closed: a channel whose making failed) */
    ring_let_go((sock *)t);
    if (!((sock *)t)->in_room)
        free(t);
}

static int sock_fd(const transport *t)
{
    return ((const sock *)t)->fd;
}

static const transport_ops sock_ops = {
    .recv = sock_recv,
    .adopt = sock_adopt,
    .release = sock_release,
    .may_have_input = sock_may_have_input,
    .wait_input = sock_wait_input,
    .wake_reader = sock_wake_reader,
    .stop_input = sock_stop_input,
    .send = sock_send,
    .give = sock_give,
    .sendfile = sock_sendfile,
    .wait_output = sock_wait_output,
    .drop = sock_drop,
    .shutdown = sock_shutdown,
    .close = sock_close,
    .free = sock_free,
    .fd = sock_fd,
};

transport *sock_transport_new(int fd, bool is_socket, bool tcp)
{
    return sock_transport_in(NULL, fd, is_socket, tcp);
}

/* A transport in a room keeps its receive structure just after it (rx_new). */
#define ROOM_RX_OFF ((sizeof(sock) + 15) / 16 * 16)

static ring_rx *room_rx(sock *s)
{
    return s->in_room ? (ring_rx *)((char *)s + ROOM_RX_OFF) : NULL;
}

size_t sock_transport_size(void)
{
    return ROOM_RX_OFF + sizeof(ring_rx);
}

void sock_room_settle(void *mem)
{
    ring_rx *rx = room_rx(mem);
    sched *sc = sched_peek();
    /* (In a forked child the parent's receive is in no ring of ours: nothing comes.) */
    while (rx->armed && sc && rx->be_gen == sc->be_gen) {
        rx->settler = weft_self();
        sched_park_io(WAIT_OP, (wait_on){.obj = &rx->op}, -1, false); /* (the ring ends it) */
        rx->settler = NULL;
    }
}

transport *sock_transport_in(void *mem, int fd, bool is_socket, bool tcp)
{
    sock *s = mem ? memset(mem, 0, sizeof(sock)) : calloc(1, sizeof(sock));
    if (!s)
        return NULL;
    s->in_room = mem != NULL;
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
