/* loadgen_tls.c: loadgen's TLS connections (--tls) and its handshake mode (-H), on the same
 * edge-triggered loop as the plain ones (loadgen.h). Each connection is a non-blocking OpenSSL
 * client on its socket: SSL_ERROR_WANT_READ waits for the next EPOLLIN edge, WANT_WRITE for
 * EPOLLOUT, and a blocked SSL_write is repeated with the same bytes (the stream is a function
 * of the offset, so they are made again) and no fewer of them. Every echoed byte is verified
 * as on plain connections; the server's certificate is not (the certificates are made for the
 * run, and the loadgen's CPU should go to the load). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "loadgen.h"

#ifdef WEFT_HAVE_TLS

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define TXBUF (16 * 1024)    /* plaintext of one record: what one SSL_write is given, most */
#define SECOND 1000000000LL

static SSL_CTX *ctx;
/* -R: tickets not used yet. OpenSSL makes a TLS 1.3 session unresumable once a connection
 * has resumed it (tickets are for one use), so each connection takes its own; each resumed
 * one brings one back (the server sends one ticket after a resumption, two after a full
 * handshake), so the pool stays as full as the warm-up made it. */
#define POOL_MAX 4096
static SSL_SESSION *pool[POOL_MAX];
static int pool_n;
static int hs_active;        /* connections in their handshake */
static int cycling;          /* -H: a connection that ends starts again */
static long long hs_done, hs_resumed, conns_done; /* while measuring */
static char txbuf[TXBUF], rxbuf[64 * 1024];

static void conn_start(int ci);

static void __attribute__((noreturn)) tls_die(int ci, const char *what, int e)
{
    char why[256];
    unsigned long err = ERR_get_error();
    if (err)
        ERR_error_string_n(err, why, sizeof why);
    else if (e == SSL_ERROR_SYSCALL)
        snprintf(why, sizeof why, "%s", errno ? strerror(errno) : "the server closed");
    else if (e == SSL_ERROR_ZERO_RETURN)
        snprintf(why, sizeof why, "the server sent close_notify");
    else
        snprintf(why, sizeof why, "SSL error %d", e);
    die("conn %d: TLS %s: %s (after %llu of %llu bytes)", ci, what, why,
        (unsigned long long)g.c[ci].rcvd, (unsigned long long)g.c[ci].sent);
}

/* A ticket came (TLS 1.3: after the handshake, read with the echo): into the pool. */
static int on_new_session(SSL *ssl, SSL_SESSION *s)
{
    (void)ssl;
    if (!g.resume || pool_n == POOL_MAX)
        return 0;
    pool[pool_n++] = s;
    return 1; /* (it is ours now) */
}

void tls_init(void)
{
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        die("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    /* 10,000 idle clients hold no record buffers; a blocked write is retried from txbuf,
     * which is made again (the buffer "moves"), and a write returns after each record. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_ENABLE_PARTIAL_WRITE);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
}

/* Read and verify until OpenSSL wants more input (edge-triggered: drain it all). */
static void tls_read(int ci, int64_t *nowp)
{
    struct conn *c = &g.c[ci];
    c->read_wants_out = 0;
    for (;;) {
        size_t r;
        if (!SSL_read_ex(c->ssl, rxbuf, sizeof rxbuf, &r)) {
            int e = SSL_get_error(c->ssl, 0);
            if (e == SSL_ERROR_WANT_READ)
                return;
            if (e == SSL_ERROR_WANT_WRITE) {
                c->read_wants_out = 1;
                return;
            }
            tls_die(ci, "read", e);
        }
        *nowp = now_ns();
        consume(ci, rxbuf, r, *nowp);
    }
}

void tls_pump_out(int ci, int64_t now)
{
    struct conn *c = &g.c[ci];
    if (c->want_out || c->state != C_OPEN)
        return;
    for (int rounds = 0; rounds < 64; rounds++) {
        uint64_t want_end = window_end(c);
        if (want_end < c->sent + c->wretry)
            want_end = c->sent + c->wretry; /* a repeated write gives no fewer bytes */
        if (want_end <= c->sent)
            return;
        size_t len = want_end - c->sent > TXBUF ? TXBUF : (size_t)(want_end - c->sent);
        for (size_t k = 0; k < len;) {
            size_t avail;
            const char *p = stream_at(ci, c->sent + k, &avail);
            if (avail > len - k)
                avail = len - k;
            memcpy(txbuf + k, p, avail);
            k += avail;
        }
        size_t w;
        if (!SSL_write_ex(c->ssl, txbuf, len, &w)) {
            int e = SSL_get_error(c->ssl, 0);
            if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ)
                tls_die(ci, "write", e);
            c->want_out = e == SSL_ERROR_WANT_WRITE ? 1 : 2; /* wait for EPOLLOUT / EPOLLIN */
            c->wretry = len;
            return;
        }
        c->wretry = 0;
        note_sent(ci, w, now);
    }
}

/* -H: the line is back; send close_notify and wait for the server's. */
static void close_step(int ci);

static void conn_end(int ci)
{
    struct conn *c = &g.c[ci];
    SSL_free(c->ssl);
    c->ssl = NULL;
    close(c->fd); /* (and out of the epoll set) */
    c->fd = -1;
    c->state = C_FREE;
    g.last_progress = now_ns();
    if (g.measuring)
        conns_done++;
    if (cycling)
        conn_start(ci);
}

static void close_step(int ci)
{
    struct conn *c = &g.c[ci];
    for (int i = 0; i < 2; i++) { /* 0: ours is sent; then read theirs */
        int rc = SSL_shutdown(c->ssl);
        if (rc == 1) {
            conn_end(ci);
            return;
        }
        if (rc < 0) {
            int e = SSL_get_error(c->ssl, rc);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            tls_die(ci, "close (waiting for the server's close_notify)", e);
        }
    }
}

/* After any I/O in C_OPEN: -H ends a connection once its line is back. */
static void after_io(int ci)
{
    struct conn *c = &g.c[ci];
    if (g.handshakes && c->state == C_OPEN && c->rcvd == g.size) {
        c->state = C_CLOSING;
        close_step(ci);
    }
}

static void handshake_step(int ci, int64_t *nowp)
{
    struct conn *c = &g.c[ci];
    int rc = SSL_connect(c->ssl);
    if (rc != 1) {
        int e = SSL_get_error(c->ssl, rc);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return;
        tls_die(ci, "handshake", e);
    }
    hs_active--;
    c->state = C_OPEN;
    *nowp = now_ns();
    g.last_progress = *nowp;
    if (g.handshakes) {
        if (g.measuring) {
            hs_done++;
            hs_resumed += SSL_session_reused(c->ssl);
            hist_add(*nowp - c->t_start);
        }
        c->limit = g.size; /* one line */
        tls_pump_out(ci, *nowp);
    }
    tls_read(ci, nowp); /* what came with the server's last flight: no edge will say so */
    after_io(ci);
}

void tls_event(int ci, uint32_t events, int64_t *nowp)
{
    struct conn *c = &g.c[ci];
    switch (c->state) {
    case C_HANDSHAKE:
        handshake_step(ci, nowp);
        break;
    case C_OPEN:
        if ((c->want_out == 1 && (events & EPOLLOUT)) || (c->want_out == 2 && (events & EPOLLIN)))
            c->want_out = 0;
        if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) || (c->read_wants_out && (events & EPOLLOUT)))
            tls_read(ci, nowp);
        tls_pump_out(ci, *nowp);
        after_io(ci);
        break;
    case C_CLOSING:
        close_step(ci);
        break;
    }
}

/* Connect ci and send its ClientHello (with -R, resuming a ticket of the pool). */
static void conn_start(int ci)
{
    struct conn *c = &g.c[ci];
    c->t_start = now_ns();
    c->fd = tcp_connect(ci);
    c->ssl = SSL_new(ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd))
        die("conn %d: SSL_new failed", ci);
    if (g.resume && pool_n > 0) {
        SSL_SESSION *s = pool[--pool_n];
        SSL_set_session(c->ssl, s); /* (which takes its own reference) */
        SSL_SESSION_free(s);
    }
    SSL_set_connect_state(c->ssl);
    c->state = C_HANDSHAKE;
    c->sent = c->rcvd = c->limit = 0;
    c->inflight = 0;
    c->ts_head = 0;
    c->want_out = c->read_wants_out = 0;
    c->wretry = 0;
    hs_active++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)ci};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        die("epoll_ctl: %s", strerror(errno));
    int64_t now = c->t_start;
    handshake_step(ci, &now);
}

static int below_window(void) { return hs_active < g.window; }
static int none_in_handshake(void) { return hs_active == 0; }

static int all_free(void)
{
    for (int i = 0; i < g.nconns; i++)
        if (g.c[i].state != C_FREE)
            return 0;
    return 1;
}

static int never(void) { return 0; }

void tls_open_all(void)
{
    for (int i = 0; i < g.nconns; i++) {
        if (!below_window())
            run_loop(below_window, now_ns() + 60 * SECOND);
        if (!below_window())
            die("%d handshakes did not finish in 60 s", hs_active);
        conn_start(i);
    }
    run_loop(none_in_handshake, now_ns() + 60 * SECOND);
    if (hs_active)
        die("%d handshakes did not finish in 60 s", hs_active);
}

void tls_close_all(void)
{
    for (int i = 0; i < g.nconns; i++) {
        SSL_shutdown(g.c[i].ssl); /* (close_notify if the socket takes it; we do not wait) */
        close(g.c[i].fd);
    }
    ERR_clear_error();
}

void tls_handshakes(void)
{
    g.sending = 1;
    /* warm-up: each connection once, with a full handshake (-R: the tickets to resume) */
    for (int i = 0; i < g.nconns; i++)
        conn_start(i);
    run_loop(all_free, now_ns() + 30 * SECOND);
    if (!all_free())
        die("the warm-up connections did not end in 30 s");
    if (g.resume && pool_n < g.nconns)
        die("the server issued %d session tickets to %d connections", pool_n, g.nconns);

    cycling = 1;
    double cpu0 = server_cpu();
    int64_t t0 = now_ns();
    g.measuring = 1;
    for (int i = 0; i < g.nconns; i++)
        conn_start(i);
    run_loop(never, t0 + (int64_t)(g.secs * 1e9));
    int64_t t1 = now_ns();
    double cpu1 = server_cpu();
    g.measuring = 0;
    cycling = 0;
    run_loop(all_free, now_ns() + 30 * SECOND); /* the connections under way end */
    if (!all_free())
        die("the connections under way did not end in 30 s");

    double el = (double)(t1 - t0) / 1e9, cpu = cpu1 - cpu0;
    printf("status=OK conns=%d secs=%.3f hs=%lld resumed=%lld closed=%lld hs_per_s=%.0f "
           "p50_us=%.1f p99_us=%.1f p999_us=%.1f server_cpu_s=%.3f hs_per_cpu_s=%.0f\n",
           g.nconns, el, hs_done, hs_resumed, conns_done, (double)hs_done / el,
           percentile_us(0.50), percentile_us(0.99), percentile_us(0.999), cpu,
           cpu > 0 ? (double)hs_done / cpu : 0.0);
}

#else /* built without OpenSSL */

static void __attribute__((noreturn)) no_tls(void)
{
    die("built without OpenSSL: no --tls");
}

void tls_init(void) { no_tls(); }
void tls_open_all(void) { no_tls(); }
void tls_event(int ci, uint32_t events, int64_t *nowp) { (void)ci, (void)events, (void)nowp; no_tls(); }
void tls_pump_out(int ci, int64_t now) { (void)ci, (void)now; no_tls(); }
void tls_close_all(void) { no_tls(); }
void tls_handshakes(void) { no_tls(); }

#endif
