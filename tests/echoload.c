/* echoload: verifying multi-connection echo client. See echoload.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "echoload.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_MAX   16384           /* largest single send(), and the send buffer size */
#define RECV_SIZE   65536
#define MAX_EVENTS  256
#define MAX_LINE_LEN (1u << 30)     /* sanity bound on max_len */

/* ---- deterministic bytes ------------------------------------------------------------ */

/* splitmix64: tiny, fast, and any 64-bit state is a valid seed. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* One connection's byte stream, reproducible from its seed. The sender runs one copy to
 * produce bytes and the verifier a second copy to predict them, so nothing that was sent
 * needs to be kept. The bytes produced do not depend on how the stream is cut into calls. */
struct stream {
    uint64_t rng;
    uint64_t word;          /* random bytes not handed out yet, low byte first */
    unsigned wbytes;
    long lines_left;        /* lines not begun */
    size_t rem;             /* content bytes left in the current line */
    int in_line;            /* current line begun, its '\n' not produced yet */
    int cr_end;             /* current line's last content byte is forced to '\r' */
    size_t max_len;
};

static void stream_init(struct stream *st, uint64_t seed, long lines, size_t max_len)
{
    memset(st, 0, sizeof *st);
    st->rng = seed;
    st->lines_left = lines;
    st->max_len = max_len;
}

static int stream_done(const struct stream *st)
{
    return st->lines_left == 0 && !st->in_line;
}

/* k random content bytes. '\n' becomes NUL, which doubles NUL's frequency as a bonus. */
static void fill_random(struct stream *st, unsigned char *p, size_t k)
{
    size_t i = 0;

    while (i < k && st->wbytes > 0) {
        p[i++] = (unsigned char)st->word;
        st->word >>= 8;
        st->wbytes--;
    }
    for (; k - i >= 8; i += 8) {       /* whole words: same byte order as the path above */
        uint64_t w = rng_next(&st->rng);
        for (unsigned j = 0; j < 8; j++)
            p[i + j] = (unsigned char)(w >> (8 * j));
    }
    if (i < k) {
        st->word = rng_next(&st->rng);
        st->wbytes = 8;
        while (i < k) {
            p[i++] = (unsigned char)st->word;
            st->word >>= 8;
            st->wbytes--;
        }
    }
    for (i = 0; i < k; i++)
        if (p[i] == '\n')
            p[i] = '\0';
}

/* Produce up to n bytes of the stream into p, beginning at most max_new new lines.
 * Returns the count produced; *ended gets the number of lines completed. */
static size_t stream_gen(struct stream *st, unsigned char *p, size_t n, long max_new,
                         long *ended)
{
    size_t done = 0;

    *ended = 0;
    while (done < n) {
        if (!st->in_line) {
            if (st->lines_left == 0 || max_new <= 0)
                break;
            uint64_t r = rng_next(&st->rng);
            st->rem = (size_t)((r >> 2) % ((uint64_t)st->max_len + 1));
            st->cr_end = (r & 3) == 0;      /* a quarter of the lines end in "\r\n" */
            st->in_line = 1;
            st->lines_left--;
            max_new--;
        }
        if (st->rem > 0) {
            size_t k = n - done < st->rem ? n - done : st->rem;
            fill_random(st, p + done, k);
            st->rem -= k;
            done += k;
            if (st->rem == 0 && st->cr_end)
                p[done - 1] = '\r';
        } else {
            p[done++] = '\n';
            st->in_line = 0;
            (*ended)++;
        }
    }
    return done;
}

/* ---- connections -------------------------------------------------------------------- */

enum cstate { C_CONNECTING, C_RUNNING, C_AWAIT_EOF, C_DONE, C_FAILED };

struct econn {
    int fd, idx;
    enum cstate state;
    int writable;           /* edge-triggered: set by EPOLLOUT, cleared by EAGAIN */
    struct stream tx, rx;   /* sender's and verifier's copies of the same stream */
    uint64_t chunk_rng;     /* sizes of the send() calls */
    unsigned char *sbuf;    /* bytes generated, not yet accepted by send() */
    size_t soff, slen;
    long lines_ok;
    long long out;          /* bytes sent so far */
    long long in;           /* stream offset verified so far */
};

struct run {
    const struct echoload_opts *o;
    struct echoload_result *r;
    int epfd, active;
    unsigned char *rbuf, *vbuf;     /* shared: received bytes, and the expected ones */
};

static const char *state_name(enum cstate s)
{
    static const char *names[] = { "connecting", "running", "awaiting EOF", "done", "failed" };
    return names[s];
}

static void conn_end(struct run *run, struct econn *c, enum cstate st)
{
    close(c->fd);
    c->fd = -1;
    free(c->sbuf);
    c->sbuf = NULL;
    c->state = st;
    run->active--;
}

static void conn_fail(struct run *run, struct econn *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_fail(struct run *run, struct econn *c, const char *fmt, ...)
{
    struct echoload_result *r = run->r;
    if (r->error[0] == '\0') {
        char msg[200];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        snprintf(r->error, sizeof r->error, "conn %d: %s", c->idx, msg);
    }
    r->conns_failed++;
    conn_end(run, c, C_FAILED);
}

/* All lines echoed: say we are done and wait for the server to close. */
static void conn_finish_sending(struct run *run, struct econn *c)
{
    if (shutdown(c->fd, SHUT_WR) < 0) {
        conn_fail(run, c, "shutdown: %s", strerror(errno));
        return;
    }
    free(c->sbuf);
    c->sbuf = NULL;
    c->state = C_AWAIT_EOF;
}

static size_t chunk_size(struct econn *c)
{
    uint64_t r = rng_next(&c->chunk_rng);
    /* Mostly large writes to keep throughput up, plus plenty of tiny ones so that lines get
     * split at every kind of place, including right before or after the '\n'. */
    if ((r & 3) == 0)
        return 1 + (size_t)((r >> 2) % 64);
    return 1 + (size_t)((r >> 2) % CHUNK_MAX);
}

/* Send as much as the socket, the stream and the pipeline window allow. */
static void conn_send(struct run *run, struct econn *c)
{
    const struct echoload_opts *o = run->o;

    while (c->state == C_RUNNING && c->writable) {
        if (c->soff == c->slen) {
            long max_new = LONG_MAX, ended;
            if (o->pipeline > 0) {
                long begun = o->lines - c->tx.lines_left;
                max_new = o->pipeline - (begun - c->lines_ok);
            }
            size_t want = o->random_chunks ? chunk_size(c) : CHUNK_MAX;
            c->soff = 0;
            c->slen = stream_gen(&c->tx, c->sbuf, want, max_new, &ended);
            if (c->slen == 0)
                return;         /* all sent, or the window is full */
        }
        ssize_t n = send(c->fd, c->sbuf + c->soff, c->slen - c->soff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                c->writable = 0;
            else if (errno != EINTR)
                conn_fail(run, c, "send: %s after %lld bytes sent, %ld of %d lines echoed",
                          strerror(errno), c->out, c->lines_ok, o->lines);
            continue;
        }
        c->soff += (size_t)n;
        c->out += n;
        run->r->bytes_out += n;
    }
}

/* Compare n received bytes with what the stream says must come next. 0 if all match. */
static int conn_verify(struct run *run, struct econn *c, const unsigned char *p, size_t n)
{
    size_t pos = 0;

    while (pos < n) {
        long ended;
        size_t want = n - pos < RECV_SIZE ? n - pos : RECV_SIZE;
        size_t k = stream_gen(&c->rx, run->vbuf, want, LONG_MAX, &ended);
        if (k == 0) {
            conn_fail(run, c, "%zu extra bytes after the complete echo (offset %lld)",
                      n - pos, c->in);
            return -1;
        }
        if (memcmp(p + pos, run->vbuf, k) != 0) {
            size_t i = 0;
            while (p[pos + i] == run->vbuf[i])
                i++;
            conn_fail(run, c, "mismatch at stream offset %lld (line %ld): got 0x%02x, "
                      "expected 0x%02x", c->in + (long long)i, c->lines_ok + 1,
                      p[pos + i], run->vbuf[i]);
            return -1;
        }
        /* Count only what has been compared, so lines_ok stays exact. */
        pos += k;
        c->in += (long long)k;
        c->lines_ok += ended;
        run->r->lines_ok += ended;
    }
    return 0;
}

/* Read until EAGAIN, verifying as we go. */
static void conn_recv(struct run *run, struct econn *c)
{
    const struct echoload_opts *o = run->o;

    while (c->state == C_RUNNING || c->state == C_AWAIT_EOF) {
        ssize_t n = recv(c->fd, run->rbuf, RECV_SIZE, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno != EINTR)
                conn_fail(run, c, "recv: %s at stream offset %lld (line %ld of %d)",
                          strerror(errno), c->in, c->lines_ok + 1, o->lines);
            continue;
        }
        if (n == 0) {
            if (c->state == C_AWAIT_EOF)
                conn_end(run, c, C_DONE);
            else
                conn_fail(run, c, "premature EOF at stream offset %lld (line %ld of %d)",
                          c->in, c->lines_ok + 1, o->lines);
            return;
        }
        run->r->bytes_in += n;
        if (c->state == C_AWAIT_EOF) {
            conn_fail(run, c, "%zd extra bytes after the complete echo", n);
            return;
        }
        if (conn_verify(run, c, run->rbuf, (size_t)n) < 0)
            return;
        if (stream_done(&c->rx))
            conn_finish_sending(run, c);
    }
}

static void conn_connected(struct run *run, struct econn *c)
{
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err != 0) {
        conn_fail(run, c, "connect: %s", strerror(err));
        return;
    }
    c->sbuf = malloc(CHUNK_MAX);
    if (!c->sbuf) {
        conn_fail(run, c, "out of memory");
        return;
    }
    c->state = C_RUNNING;
    if (stream_done(&c->rx))        /* lines == 0: nothing to echo */
        conn_finish_sending(run, c);
}

static void conn_event(struct run *run, struct econn *c, uint32_t ev)
{
    if (c->state == C_CONNECTING) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        conn_connected(run, c);
    }
    /* Read first: verified lines open the pipeline window for the send below. */
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        conn_recv(run, c);
    if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        c->writable = 1;
    conn_send(run, c);
}

static int conn_start(struct run *run, struct econn *c, const struct addrinfo *ai)
{
    c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                   ai->ai_protocol);
    if (c->fd < 0)
        return -1;
    run->active++;
    /* Random chunks leave small tails; Nagle would hold them for the server's delayed ACK
     * and the run would measure TCP timers instead of the server. */
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)
        return -1;
    /* Registered once for both directions; the first EPOLLOUT means connected (or not). */
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                              .data.ptr = c };
    return epoll_ctl(run->epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

/* ---- the run ------------------------------------------------------------------------ */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fail_unfinished(struct run *run, struct econn *conns, int timeout_ms)
{
    const struct echoload_opts *o = run->o;
    struct econn *first = NULL;
    int left = 0;

    for (int i = 0; i < o->conns; i++) {
        if (conns[i].state == C_DONE || conns[i].state == C_FAILED)
            continue;
        if (!first)
            first = &conns[i];
        left++;
    }
    if (!first)
        return;
    if (run->r->error[0] == '\0')
        snprintf(run->r->error, sizeof run->r->error,
                 "timeout after %d ms: %d of %d connections unfinished "
                 "(first: conn %d %s, %ld of %d lines echoed)",
                 timeout_ms, left, o->conns, first->idx, state_name(first->state),
                 first->lines_ok, o->lines);
    for (int i = 0; i < o->conns; i++) {
        struct econn *c = &conns[i];
        if (c->state != C_DONE && c->state != C_FAILED) {
            run->r->conns_failed++;
            conn_end(run, c, C_FAILED);
        }
    }
}

static void event_loop(struct run *run, struct econn *conns, int timeout_ms)
{
    struct epoll_event evs[MAX_EVENTS];
    long long deadline = now_ms() + timeout_ms;

    while (run->active > 0) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            fail_unfinished(run, conns, timeout_ms);
            return;
        }
        int n = epoll_wait(run->epfd, evs, MAX_EVENTS, (int)left);
        if (n < 0 && errno != EINTR) {
            snprintf(run->r->error, sizeof run->r->error, "epoll_wait: %s", strerror(errno));
            fail_unfinished(run, conns, timeout_ms);
            return;
        }
        for (int i = 0; i < n; i++)
            conn_event(run, evs[i].data.ptr, evs[i].events);
    }
}

static int resolve(const struct echoload_opts *o, struct addrinfo **res, char *err, size_t len)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICSERV };
    char port[16];
    snprintf(port, sizeof port, "%d", o->port);
    int e = getaddrinfo(o->host ? o->host : "127.0.0.1", port, &hints, res);
    if (e != 0)
        snprintf(err, len, "%s: %s", o->host ? o->host : "127.0.0.1", gai_strerror(e));
    return e == 0 ? 0 : -1;
}

static const char *check_opts(const struct echoload_opts *o)
{
    if (o->conns <= 0)
        return "conns must be positive";
    if (o->lines < 0)
        return "lines must not be negative";
    if (o->max_len > MAX_LINE_LEN)
        return "max_len too large";
    if (o->pipeline < 0)
        return "pipeline must not be negative";
    if (o->port < 0 || o->port > 65535)
        return "bad port";
    return NULL;
}

int echoload_run(const struct echoload_opts *o, struct echoload_result *r)
{
    struct run run = { .o = o, .r = r, .epfd = -1 };
    struct econn *conns = NULL;
    struct addrinfo *ai = NULL;
    int timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 60000;
    const char *bad;

    memset(r, 0, sizeof *r);
    if ((bad = check_opts(o)) != NULL) {
        snprintf(r->error, sizeof r->error, "echoload: %s", bad);
        return -1;
    }
    if (resolve(o, &ai, r->error, sizeof r->error) < 0)
        return -1;
    run.epfd = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)o->conns, sizeof *conns);
    run.rbuf = malloc(RECV_SIZE);
    run.vbuf = malloc(RECV_SIZE);
    if (conns)
        for (int i = 0; i < o->conns; i++)
            conns[i].fd = -1;   /* so cleanup never closes a descriptor it did not open */
    if (run.epfd < 0 || !conns || !run.rbuf || !run.vbuf) {
        snprintf(r->error, sizeof r->error, "echoload setup: %s", strerror(errno));
        r->conns_failed = o->conns;
        goto out;
    }

    /* Connect everything up front so the server really holds `conns` at once. */
    for (int i = 0; i < o->conns; i++) {
        struct econn *c = &conns[i];
        uint64_t s = ((uint64_t)o->seed << 32) ^ (uint64_t)i;
        uint64_t stream_seed = rng_next(&s);
        c->idx = i;
        c->state = C_CONNECTING;
        c->chunk_rng = rng_next(&s);
        stream_init(&c->tx, stream_seed, o->lines, o->max_len);
        stream_init(&c->rx, stream_seed, o->lines, o->max_len);
        if (conn_start(&run, c, ai) < 0) {
            if (c->fd < 0) {            /* never opened: nothing to close */
                c->state = C_FAILED;
                r->conns_failed++;
                if (r->error[0] == '\0')
                    snprintf(r->error, sizeof r->error, "conn %d: socket: %s", i,
                             strerror(errno));
            } else {
                conn_fail(&run, c, "connect: %s", strerror(errno));
            }
        }
    }
    event_loop(&run, conns, timeout_ms);

out:
    if (conns)
        for (int i = 0; i < o->conns; i++)
            if (conns[i].fd >= 0)
                conn_end(&run, &conns[i], C_FAILED);
    free(conns);
    free(run.rbuf);
    free(run.vbuf);
    if (run.epfd >= 0)
        close(run.epfd);
    freeaddrinfo(ai);
    if (r->error[0] == '\0' && r->conns_failed == 0 &&
        r->lines_ok != (long long)o->conns * o->lines)
        snprintf(r->error, sizeof r->error, "only %lld of %lld lines verified", r->lines_ok,
                 (long long)o->conns * o->lines);
    return r->error[0] == '\0' && r->conns_failed == 0 ? 0 : -1;
}
