/* Channels: buffered line and byte streams over a transport, the C form of a Tcl channel.
 * This file keeps lines, limits, turns, coalescing, deadlines and the channel's lifetime; the
 * transport (transport.h) moves the bytes and makes every system call. Buffers are taken on
 * first use and given back when idle, so an idle connection costs little. Every wait is a
 * stay inside the channel (ref_enter/ref_leave): whoever is inside when it is closed wakes
 * with EBADF, and the last one out frees it. */
#include "chan.h"
#include "sys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RBUF_INITIAL BUF_SIZE
#define WBUF_INITIAL BUF_SIZE

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

size_t chan_size(const char *peer)
{
    size_t peer_len = peer ? strlen(peer) : 0;
    return (sizeof(weft_chan) + peer_len + 1 + 63) / 64 * 64; /* whole cache lines */
}

weft_chan *chan_new(transport *t, const char *peer, bool line_buffered)
{
    return chan_new_in(NULL, t, peer, line_buffered);
}

weft_chan *chan_new_in(void *mem, transport *t, const char *peer, bool line_buffered)
{
    size_t peer_len = peer ? strlen(peer) : 0;
    weft_chan *c = mem ? mem : aligned_alloc(64, chan_size(peer));
    if (!c) {
        t->ops->close(t);
        t->ops->free(t);
        errno = ENOMEM;
        return NULL;
    }
    memset(c, 0, sizeof *c);
    memcpy(c->peer, peer ? peer : "", peer_len + 1);
    c->in_room = mem != NULL;
    c->fork_gen = sched_fork_gen();
    c->t = t;
    c->buffering = line_buffered ? WEFT_BUF_LINE : WEFT_BUF_FULL;
    c->maxline = WEFT_MAXLINE_DEFAULT;
    c->wmax = WEFT_WBUF_DEFAULT;
    c->read_timeout = c->write_timeout = -1;
    return c;
}

static int flush_dl(weft_chan *c, lazy_deadline *dl);
static int send_held(weft_chan *c, lazy_deadline *dl);
static int await_arrived(weft_chan *c, lazy_deadline *dl);

/* A buffer of cap bytes: a new one (pooled if BUF_SIZE) when p is NULL, else p grown. */
static char *grow_buf(char *p, size_t cap)
{
    char *b = !p && cap == BUF_SIZE ? buf_take() : realloc(p, cap);
    if (!b)
        errno = ENOMEM;
    return b;
}

/* Let go of the read buffer: to the pool, or back to the transport that lent it. */
static void rbuf_drop(weft_chan *c)
{
    if (c->adopted)
        c->t->ops->release(c->t, c->rtoken);
    else if (c->rbuf) {
        c->rwant = c->rcap > UINT32_MAX ? UINT32_MAX : (uint32_t)c->rcap;
        buf_give(c->rbuf, c->rcap);
    }
    c->adopted = false;
    c->rbuf = NULL;
    c->rcap = c->rstart = c->rend = c->rscan = 0;
}

/* A read buffer of our own with room for cap bytes, keeping what it holds (a lent one is
 * copied out and given back: it cannot grow). -1/ENOMEM. */
static int rbuf_grow(weft_chan *c, size_t cap)
{
    if (!c->adopted) {
        char *p = grow_buf(c->rbuf, cap);
        if (!p)
            return -1;
        c->rbuf = p;
        c->rcap = cap;
        return 0;
    }
    char *p = cap == BUF_SIZE ? buf_take() : malloc(cap);
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    size_t have = c->rend - c->rstart; /* (only what is unread: the slice may be shared) */
    memcpy(p, c->rbuf + c->rstart, have);
    c->t->ops->release(c->t, c->rtoken);
    c->adopted = false;
    c->rscan -= c->rstart;
    c->rstart = 0;
    c->rend = have;
    c->rbuf = p;
    c->rcap = cap;
    return 0;
}

/* Waiting for input with nothing buffered either way: give both buffers back, so an idle
 * connection holds none. Never while a write is in progress (wlen > wstart). */
static void chan_go_idle(weft_chan *c)
{
    if (c->rbuf && c->rstart == c->rend)
        rbuf_drop(c);
    if (c->wbuf && c->wlen == c->wstart) {
        buf_give(c->wbuf, c->wcap);
        c->wbuf = NULL;
        c->wcap = c->wstart = c->wlen = 0;
    }
}

static void chan_free(weft_chan *c)
{
    chan_unhold(c);
    rbuf_drop(c);
    buf_give(c->wbuf, c->wcap);
    c->t->ops->free(c->t);
    if (!c->in_room) {
        free(c);
        return;
    }
    c->gone = true; /* (its memory stays until its room's owner has seen this) */
    if (c->gone_waiter)
        sched_wake(c->gone_waiter, 0);
}

bool chan_closed(const weft_chan *c)
{
    return c->ref.closed;
}

void chan_wait_gone(weft_chan *c)
{
    while (!c->gone) {
        /* Coroutines still inside a call on c were woken with EBADF by the close: each
         * leaves at its next run, the last one frees c and wakes us. */
        c->gone_waiter = weft_self();
        sched_park_on(WAIT_OTHER, c, -1, false);
        c->gone_waiter = NULL;
    }
}

/* After a stay in c (a wait or a budget yield): if c was closed meanwhile, free it if we are
 * the last one out and fail with EBADF; the caller must then return at once without
 * touching c. Else pass rc on. */
static int chan_leave(weft_chan *c, int rc)
{
    bool last;
    if (ref_leave(&c->ref, &last)) {
        if (last)
            chan_free(c);
        errno = EBADF;
        return -1;
    }
    return rc;
}

/* Park until input may have come (see chan_leave for a close meanwhile). */
static int chan_wait_input(weft_chan *c, lazy_deadline *dl)
{
    ref_enter(&c->ref);
    sched_resume_hint(c);
    return chan_leave(c, c->t->ops->wait_input(c->t, deadline_of(dl)));
}

/* Park until output may go on. */
static int chan_wait_output(weft_chan *c, lazy_deadline *dl)
{
    ref_enter(&c->ref);
    return chan_leave(c, c->t->ops->wait_output(c->t, deadline_of(dl)));
}

/* The I/O budget's yield, counted as a stay in the channel like a wait: a close meanwhile
 * leaves c for us to free and fails with EBADF. */
static int chan_spend(weft_chan *c)
{
    ref_enter(&c->ref);
    sched_spend_io();
    return chan_leave(c, 0);
}

weft_chan *weft_chan_open(int fd)
{
    char peer[64];
    bool is_socket;
    transport *t = sock_transport_open(fd, peer, sizeof peer, &is_socket);
    return t ? chan_new(t, peer, is_socket) : NULL; /* (sockets are line-buffered) */
}

int weft_chan_fd(const weft_chan *c) { return c->t->ops->fd(c->t); }
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

/* What read_some found. */
enum rd {
    RD_NOADOPT, /* (adopt_some) the transport cannot lend its buffer now: read with recv */
    RD_DATA,  /* *got bytes */
    RD_EOF,   /* end of file */
    RD_FAIL,  /* -1 with errno (EBADF: c may be gone) */
    RD_MOVED, /* it waited, and the read buffer may have moved: find the target again */
};

/* Before a read that may wait: our replies held back while input was buffered go first,
 * then the I/O budget is counted (it may yield). -1 with EBADF when c was closed meanwhile
 * (then c may be gone). Both may switch away: compute pointers into c's buffers after. */
static int before_read(weft_chan *c)
{
    if (c->holder && c->holder == weft_self() &&
        send_held(c, &(lazy_deadline)LAZY(c->write_timeout)) != 0 && errno == EBADF)
        return -1;
    return chan_spend(c);
}

/* Read once from the transport into dst, waiting while nothing is there; the caller has
 * called before_read. A wait with nothing buffered gives the buffers back (chan_go_idle),
 * and anything may happen to c's buffers while we wait (another coroutine may read or
 * close): if dst was in the read buffer (in_rbuf), any wait ends in RD_MOVED. */
static enum rd read_some(weft_chan *c, char *dst, size_t n, lazy_deadline *dl, bool in_rbuf,
                         size_t *got)
{
    transport *t = c->t;
    for (;;) {
        /* Stopped input never waits, so it always tries: what has arrived is still owed. */
        if (c->input_stopped || t->ops->may_have_input(t)) {
            ssize_t r = t->ops->recv(t, dst, n);
            if (r > 0) {
                *got = (size_t)r;
                return RD_DATA;
            }
            if (r == 0) {
                c->eof = true;
                return RD_EOF;
            }
            if (errno == EINPROGRESS) {
                if (await_arrived(c, dl) != 0)
                    return RD_FAIL;
                if (in_rbuf)
                    return RD_MOVED;
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return RD_FAIL;
        }
        if (c->input_stopped) {
            errno = ECANCELED;
            return RD_FAIL;
        }
        chan_go_idle(c);
        if (chan_wait_input(c, dl) != 0) {
            /* Input stopped under us: what arrived meanwhile is still owed; one more try
             * (input_stopped forces it), then ECANCELED. (EBADF: c may be gone, so
             * input_stopped is read only otherwise.) */
            if (errno != ECANCELED || !c->input_stopped)
                return RD_FAIL;
        }
        if (in_rbuf)
            return RD_MOVED;
        if (chan_spend(c) != 0)
            return RD_FAIL;
    }
}

void chan_stop_input(weft_chan *c)
{
    c->input_stopped = true;
    if (c->t->ops->stop_input)
        c->t->ops->stop_input(c->t);
    c->t->ops->wake_reader(c->t, ECANCELED);
}

/* With input stopped, the transport says input that had arrived is still on its way up:
 * wait for it (not cancellable by the stop itself). 0 to try again, -1 on error. */
static int await_arrived(weft_chan *c, lazy_deadline *dl)
{
    int rc = chan_wait_input(c, dl);
    return rc != 0 && errno == ECANCELED && c->input_stopped ? 0 : rc;
}

/* Make room for at least one more byte after rend: slide unread bytes to the front, grow up
 * to limit. -1/ENOMEM, or EMSGSIZE when limit is reached. */
static int rbuf_room(weft_chan *c, size_t limit)
{
    if (c->rend < c->rcap)
        return 0;
    if (c->adopted) /* a lent slice: what is left of it (a partial line) is copied out */
        return rbuf_grow(c, c->rend - c->rstart < RBUF_INITIAL ? RBUF_INITIAL
                                                                : (c->rend - c->rstart) * 2);
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
    return rbuf_grow(c, cap);
}

/* Nothing is buffered: take the transport's next received bytes as the read buffer, without
 * a copy, waiting as needed (as read_some). */
static enum rd adopt_some(weft_chan *c, lazy_deadline *dl)
{
    transport *t = c->t;
    for (;;) {
        { /* (adopt itself knows whether anything came: no hint is asked, or spent) */
            char *base;
            size_t start, cap;
            unsigned token;
            ssize_t r = t->ops->adopt(t, &base, &start, &cap, &token);
            if (r > 0) {
                rbuf_drop(c);
                c->rbuf = base;
                c->rcap = cap;
                c->rstart = c->rscan = start;
                c->rend = start + (size_t)r;
                c->adopted = true;
                c->rtoken = token;
                return RD_DATA;
            }
            if (r == 0) {
                c->eof = true;
                return RD_EOF;
            }
            if (errno == ENOTSUP)
                return RD_NOADOPT;
            if (errno == EINPROGRESS) {
                if (await_arrived(c, dl) != 0)
                    return RD_FAIL;
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return RD_FAIL;
        }
        if (c->input_stopped) {
            errno = ECANCELED;
            return RD_FAIL;
        }
        chan_go_idle(c);
        if (chan_wait_input(c, dl) != 0 && (errno != ECANCELED || !c->input_stopped))
            return RD_FAIL;
        if (chan_spend(c) != 0)
            return RD_FAIL;
    }
}

/* Read more input into rbuf (the line limit bounds its size): > 0 bytes, 0 at end of file,
 * -1 on error. */
static ssize_t fill(weft_chan *c, lazy_deadline *dl)
{
    for (;;) {
        if (before_read(c) != 0)
            return -1;
        if (c->rstart == c->rend && c->t->ops->adopt) {
            switch (adopt_some(c, dl)) {
            case RD_DATA:
                return (ssize_t)(c->rend - c->rstart);
            case RD_EOF:
                return 0;
            case RD_NOADOPT:
                break; /* a copy, then */
            default:
                return -1;
            }
        }
        if (rbuf_room(c, c->maxline + 1) != 0)
            return -1;
        size_t got;
        switch (read_some(c, c->rbuf + c->rend, c->rcap - c->rend, dl, true, &got)) {
        case RD_DATA:
            c->rend += got;
            return (ssize_t)got;
        case RD_EOF:
            return 0;
        case RD_FAIL:
            return -1;
        case RD_MOVED:
        case RD_NOADOPT:
            break;
        }
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
        if (fill(c, &dl) < 0)
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
        lazy_deadline dl = LAZY(c->read_timeout);
        if (n >= RBUF_INITIAL) { /* large reads skip the buffer: no copy, no growth */
            if (before_read(c) != 0)
                return -1;
            size_t got = 0;
            enum rd r = read_some(c, buf, n, &dl, false, &got);
            return r == RD_DATA ? (ssize_t)got : r == RD_EOF ? 0 : -1;
        }
        c->rstart = c->rend = c->rscan = 0;
        ssize_t r = fill(c, &dl);
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
            if (rbuf_grow(c, cap) != 0)
                return -1;
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

/* ---- Turns ----
 * Writers take turns: a write, flush or shutdown holds c's turn from its first byte to its
 * last, so that no other writer's bytes land inside it, even while it parks for room. A
 * writer that finds the turn taken waits in c->turns, in order, and the turn is handed
 * straight to the first of them: the writer that gave it up cannot take it back first. The
 * turn counts as being inside c (ref), so c stays until turn_give even if closed meanwhile.
 * Nobody waits for a turn while holding another channel's, so turns cannot deadlock. A
 * writer parks only with wbuf empty (given to the transport): at a park, a coroutine's held
 * output can always go to the transport at once (chan_hold.c). */

/* Take c's turn, waiting (until the write deadline) while another writer has it. -1 with
 * ETIMEDOUT, ECANCELED, or EBADF when c was closed meanwhile (then c may be gone). */
static int turn_take(weft_chan *c, lazy_deadline *dl)
{
    chan_check_forked(c);
    ref_enter(&c->ref);
    if (!c->sending) {
        c->sending = true;
        return 0;
    }
    waiter w;
    waiter_init_as(&w, WAIT_TURN, c);
    wait_list_push(&c->turns, &w);
    int rc = waiter_wait(&w, deadline_of(dl), true);
    if (rc != 0)
        wait_list_remove(&c->turns, &w);
    else if (w.err) { /* woken by a close: EBADF */
        errno = w.err;
        rc = -1;
    }
    if (rc == 0 && !c->ref.closed)
        return 0; /* handed over: sending stayed true, and our ref is the turn's now */
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
    WEFT_ASSERT(c->sending);
    /* A writer waiting for the turn is inside c, as is our turn: with nobody else inside,
     * leave the list (in the channel's cold line) untouched. */
    waiter *w = c->ref.users > 1 ? wait_list_pop(&c->turns) : NULL;
    if (w)
        waiter_done(w, 0);
    else
        c->sending = false;
    chan_leave(c, 0);
    errno = err;
}

/* ---- Output ---- */

/* With the turn: wait until the transport has sent everything it was given. */
static int drain(weft_chan *c, lazy_deadline *dl)
{
    transport *t = c->t;
    while (transport_queued(t) > 0 && !transport_err(t))
        if (chan_wait_output(c, dl) != 0)
            return -1; /* (EBADF: closed meanwhile; c stays until turn_give) */
    if (transport_err(t)) {
        errno = transport_err(t);
        return -1;
    }
    return 0;
}

/* With the turn: wait while more than the write limit waits in the transport. */
static int wait_room(weft_chan *c, lazy_deadline *dl)
{
    transport *t = c->t;
    while (transport_queued(t) > c->wmax && !transport_err(t))
        if (chan_wait_output(c, dl) != 0)
            return -1;
    if (transport_err(t)) {
        errno = transport_err(t);
        return -1;
    }
    return 0;
}

/* With the turn: hand everything buffered to the transport, which sends it now or as the
 * peer reads (from the loop); wait only while more than the write limit is queued. What a
 * line (or no) buffering mode does after a write. */
static int send_turn(weft_chan *c, lazy_deadline *dl)
{
    chan_unhold(c);
    if (c->wlen > c->wstart && (chan_spend(c) != 0 || chan_give_output(c) != 0))
        return -1;
    /* Outside a coroutine no loop runs to send what is queued: a blocking write completes. */
    return weft_self() ? wait_room(c, dl) : drain(c, dl);
}

/* With the turn: send everything buffered, and wait until the transport has sent it all. */
static int flush_turn(weft_chan *c, lazy_deadline *dl)
{
    return send_turn(c, dl) != 0 ? -1 : drain(c, dl);
}

/* Before a read: hand our held replies to the transport (waiting only above the limit). */
static int send_held(weft_chan *c, lazy_deadline *dl)
{
    if (turn_take(c, dl) != 0)
        return -1;
    int rc = send_turn(c, dl);
    turn_give(c);
    return rc;
}

/* Send everything buffered, after any writer now inside a send (its bytes came first). */
static int flush_dl(weft_chan *c, lazy_deadline *dl)
{
    chan_check_forked(c);
    chan_unhold(c);
    if (c->wstart == c->wlen && !c->sending && !transport_queued(c->t)) {
        c->wstart = c->wlen = 0;
        return 0;
    }
    if (turn_take(c, dl) != 0)
        return -1;
    int rc = flush_turn(c, dl);
    turn_give(c);
    return rc;
}

/* With the turn, nothing buffered or queued: send iov straight from the caller's memory,
 * waiting as needed. 0, or -1 with errno. */
static int send_direct(weft_chan *c, struct iovec *iov, int iovcnt, lazy_deadline *dl)
{
    transport *t = c->t;
    while (iovcnt > 0) {
        if (chan_spend(c) != 0)
            return -1;
        ssize_t w = t->ops->send(t, iov, iovcnt);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (chan_wait_output(c, dl) != 0)
                return -1;
            continue;
        }
        if (w <= 0) {
            if (w == 0)
                errno = EIO; /* a send of more than 0 bytes that moved none */
            return -1;
        }
        while (iovcnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* Line coalescing: in line mode a coroutine that has more complete lines of input buffered
 * on the same channel holds its reply back, so replies to pipelined requests leave in one
 * send. The hold ends when it reads past the buffered lines, writes with nothing buffered,
 * parks, yields, ends, or writes to another channel. */
static bool input_line_buffered(weft_chan *c)
{
    const char *nl = find_newline(c);
    /* Nothing before nl is a newline: the next weft_gets finds it at rscan without a search,
     * so each line is searched for once, not twice (memchr was 2 % of the CPU at P = 16). */
    if (nl)
        c->rscan = (size_t)(nl - c->rbuf);
    return nl != NULL;
}

/* With the turn: hold what was just written back (see input_line_buffered). */
static int hold_output(weft_chan *c, lazy_deadline *dl)
{
    weft_co *co = weft_self();
    if (c->holder && c->holder != co)
        return send_turn(c, dl); /* another coroutine's hold: no sharing, send it all */
    /* (write_begin gave away any other channel this coroutine held.) */
    co->held_output = c;
    c->holder = co;
    return 0;
}

/* Room for k more bytes in the write buffer (wlen + k <= wmax). -1/ENOMEM. */
static int wbuf_reserve(weft_chan *c, size_t k)
{
    if (c->wlen + k <= c->wcap)
        return 0;
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
    return 0;
}

/* With the turn: copy [p, p + n) into the write buffer, sending whenever it reaches wmax. */
static int put(weft_chan *c, const char *p, size_t n, lazy_deadline *dl)
{
    while (n > 0) {
        if (c->wlen == c->wstart && n >= c->wmax) { /* large: straight out, no copy */
            c->wstart = c->wlen = 0;
            struct iovec iov = {(void *)p, n};
            return drain(c, dl) != 0 ? -1 : send_direct(c, &iov, 1, dl);
        }
        if (c->wlen >= c->wmax) {
            if (send_turn(c, dl) != 0)
                return -1;
            continue; /* empty now: a large remainder may go straight out */
        }
        size_t room = c->wmax - c->wlen;
        size_t k = n < room ? n : room;
        if (wbuf_reserve(c, k) != 0)
            return -1;
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
        return send_turn(c, dl);
    return 0;
}

/* Start a write: fail at once on a vanished peer, let go of what this coroutine holds back
 * on another channel (its bytes came first), then take c's turn. -1 with errno (EBADF: c may
 * be gone). */
static int write_begin(weft_chan *c, lazy_deadline *dl)
{
    int err = transport_err(c->t);
    if (err) {
        errno = err;
        return -1;
    }
    weft_co *co = weft_self();
    if (co && co->held_output && co->held_output != c)
        chan_release_held(co, sched_fork_gen()); /* to its transport, without waiting */
    if (turn_take(c, dl) != 0)
        return -1;
    if ((err = transport_err(c->t))) { /* the peer vanished while we waited for the turn */
        turn_give(c);
        errno = err;
        return -1;
    }
    return 0;
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

/* With the turn, nothing buffered: a long line in line or no buffering is sent with its
 * newline straight from the caller's memory (often the read buffer, for an echo) instead of
 * being copied into the write buffer first. What the peer does not take at once goes through
 * the buffer as usual (the caller's memory may be another reader's buffer, which may move
 * while we wait). */
static int putln_direct(weft_chan *c, const char *line, size_t n, lazy_deadline *dl)
{
    transport *t = c->t;
    size_t sent = 0;
    if (!transport_queued(t)) {
        struct iovec iov[2] = {{(void *)line, n}, {"\n", 1}};
        ssize_t w = t->ops->send(t, iov, 2);
        /* On an error nothing went: the flush below meets it again and reports it as any
         * send does (a vanished peer's error stays sticky). */
        sent = w > 0 ? (size_t)w : 0;
        if (sent == n + 1)
            return 0;
    }
    if (sent < n && put(c, line + sent, n - sent, dl) != 0)
        return -1;
    if (put(c, "\n", 1, dl) != 0)
        return -1;
    return send_turn(c, dl);
}

/* With the turn: the body of weft_putln. */
static int putln_turn(weft_chan *c, const char *line, size_t n, lazy_deadline *dl)
{
    if (n >= BUF_SIZE && c->buffering != WEFT_BUF_FULL && c->wlen == c->wstart) {
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

/* With the turn: the file's bytes read into the write buffer, which goes to the transport
 * each time it fills (TLS, or a file the kernel cannot send from). */
static ssize_t copy_file(weft_chan *c, int fd, off_t *off, size_t count, lazy_deadline *dl)
{
    size_t sent = 0;
    while (sent < count) {
        if (c->wlen >= c->wmax && send_turn(c, dl) != 0)
            return -1;
        size_t room = c->wmax - c->wlen, want = count - sent;
        size_t k = want < room ? want : room;
        if (wbuf_reserve(c, k) != 0)
            return -1;
        ssize_t r = sys_file_read(fd, c->wbuf + c->wlen, k, off);
        if (r < 0)
            return -1;
        if (r == 0)
            break; /* the file's end */
        c->wlen += (size_t)r;
        sent += (size_t)r;
    }
    return send_turn(c, dl) != 0 ? -1 : (ssize_t)sent;
}

/* With the turn, nothing buffered or queued: the kernel sends from the file. */
static ssize_t send_file(weft_chan *c, int fd, off_t *off, size_t count, lazy_deadline *dl)
{
    transport *t = c->t;
    size_t sent = 0;
    while (sent < count) {
        if (chan_spend(c) != 0)
            return -1;
        size_t want = count - sent;
        ssize_t w = t->ops->sendfile(t, fd, off, want < (1u << 30) ? want : (1u << 30));
        if (w > 0) {
            sent += (size_t)w;
        } else if (w == 0) {
            break; /* the file's end */
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (chan_wait_output(c, dl) != 0)
                return -1;
        } else if (errno == ENOTSUP && sent == 0) {
            ssize_t r = copy_file(c, fd, off, count, dl);
            return r;
        } else {
            return -1;
        }
    }
    return (ssize_t)sent;
}

ssize_t weft_sendfile(weft_chan *c, int fd, off_t *offset, size_t count)
{
    if (sys_file_check(fd) != 0)
        return -1; /* (a pipe's read would block the thread: refused before anything is sent) */
    lazy_deadline dl = LAZY(c->write_timeout);
    if (write_begin(c, &dl) != 0)
        return -1;
    ssize_t r;
    if (c->t->ops->sendfile)
        r = flush_turn(c, &dl) != 0 ? -1 : send_file(c, fd, offset, count, &dl);
    else
        r = copy_file(c, fd, offset, count, &dl);
    turn_give(c);
    return r;
}

int weft_flush(weft_chan *c)
{
    int err = transport_err(c->t);
    if (err) {
        errno = err;
        return -1;
    }
    return flush_dl(c, &(lazy_deadline)LAZY(c->write_timeout));
}

int weft_shutdown(weft_chan *c)
{
    lazy_deadline dl = LAZY(c->write_timeout);
    if (write_begin(c, &dl) != 0)
        return -1;
    transport *t = c->t;
    int rc = flush_turn(c, &dl);
    if (rc == 0 && t->ops->finish && (rc = t->ops->finish(t)) == 0)
        rc = drain(c, &dl);
    if (rc == 0)
        rc = t->ops->shutdown(t);
    turn_give(c);
    return rc;
}

/* ---- Layering ---- */

transport *chan_transport(const weft_chan *c)
{
    return c->t;
}

int chan_wait_transport(weft_chan *c, int events, int64_t deadline)
{
    if (events == WEFT_READABLE && c->input_stopped) {
        errno = ECANCELED; /* a graceful shutdown: no more waiting for input, as in reads */
        return -1;
    }
    ref_enter(&c->ref);
    transport *t = c->t;
    int rc = events == WEFT_READABLE ? t->ops->wait_input(t, deadline)
                                     : t->ops->wait_output(t, deadline);
    return chan_leave(c, rc);
}

int chan_push_transport(weft_chan *c, transport *upper, int64_t deadline)
{
    lazy_deadline dl = {&c->write_timeout, deadline};
    int rc = write_begin(c, &dl);
    if (rc == 0) {
        rc = flush_turn(c, &dl);
        size_t have = c->rend - c->rstart;
        if (rc == 0 && have > 0) { /* the peer's first bytes of the new layer came early */
            rc = upper->ops->preload(upper, c->rbuf + c->rstart, have);
        }
        if (rc == 0) {
            /* Emptied, and given back while c->t is still the transport that may have lent
             * it (the upper one has nothing of it to release). */
            rbuf_drop(c);
            WEFT_ASSERT(upper->below == c->t);
            c->t = upper;
        }
        turn_give(c); /* (EBADF: c may be gone) */
    }
    if (rc != 0) {
        int err = errno;
        upper->below = NULL; /* (still the channel's, if the channel still is) */
        upper->ops->free(upper);
        errno = err;
    }
    return rc;
}

/* ---- Closing ---- */

/* Flush, and let the transport end its stream (TLS's close_notify), within the write
 * timeout. 0, or -1 with errno (EBADF: c is gone). */
static int close_flush(weft_chan *c)
{
    lazy_deadline dl = LAZY(c->write_timeout);
    if (turn_take(c, &dl) != 0)
        return -1;
    transport *t = c->t;
    int rc = flush_turn(c, &dl);
    if (rc == 0 && t->ops->finish) {
        rc = t->ops->finish(t);
        if (rc == 0)
            rc = drain(c, &dl);
    }
    turn_give(c);
    return rc;
}

int weft_close(weft_chan *c)
{
    chan_check_forked(c);
    transport *t = c->t;
    int err = 0;
    if (c->sending) {
        /* Another coroutine is inside a write on c, parked (for room, or on another channel
         * while it holds c's turn): waiting for it could take forever, so its write ends now
         * with EBADF and what it had not sent yet (buffered, queued, or still in its own
         * memory for a direct send) is dropped. */
        t->ops->drop(t);
        c->wstart = c->wlen = 0;
        err = transport_err(t) ? transport_err(t) : EBUSY;
    } else if (transport_err(t) && (c->wlen > c->wstart || transport_queued(t))) {
        err = transport_err(t); /* output the vanished peer will never get */
    } else if ((c->wlen > c->wstart || transport_queued(t) || t->ops->finish) &&
               !transport_err(t) && close_flush(c) != 0) {
        if (errno == EBADF)
            return -1; /* closed by someone else while we flushed: c is gone */
        err = errno;
    }
    bool nobody_inside = ref_close(&c->ref);
    chan_unhold(c); /* nothing may send on the fd number once it is closed */
    waiter *w;
    while ((w = wait_list_pop(&c->turns)))
        waiter_done(w, EBADF); /* writers waiting for their turn: EBADF via chan_leave */
    if (t->ops->close(t) != 0 && !err)
        err = errno;
    if (nobody_inside)
        chan_free(c);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}
