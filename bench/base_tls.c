/* base_tls: the hand-written TLS line echo server weft's TLS is measured against.
 *
 * One thread, edge-triggered epoll, non-blocking sockets, OpenSSL 3 reading and writing the
 * socket itself (SSL_set_fd). Each connection is a small state machine: the handshake
 * (SSL_do_handshake until it stops asking for input or output), then SSL_read/SSL_write, where
 * SSL_ERROR_WANT_READ means "wait for the next EPOLLIN edge" and SSL_ERROR_WANT_WRITE "wait
 * for EPOLLOUT, then repeat the same write". Records are decrypted into one shared scratch
 * buffer (those OpenSSL already holds are taken too, so lines pipelined over several records
 * go back in one write); the complete lines go back with one SSL_write, and only what cannot
 * go out now -- a partial last line, or output the socket would not take -- is kept in a
 * per-connection buffer, allocated on demand and freed once empty. OpenSSL releases its
 * record buffers while a connection is idle (SSL_MODE_RELEASE_BUFFERS), so an idle connection
 * costs its struct and OpenSSL's SSL object with its session.
 *
 * The context is set up as weft's (src/tls.c): TLS 1.2 at least, renegotiation off, session
 * tickets on (OpenSSL's default), records released while idle. It also reads ahead (one
 * recv takes what the socket holds, rather than a record header and then its body); -n turns
 * that off.
 *
 * Protocol (as examples/echo): every '\n'-terminated line comes back unchanged; a partial last
 * line at close_notify gets a '\n' added; then the server sends its close_notify and closes. A
 * peer that closes without close_notify (truncation) or breaks the protocol is dropped.
 * Lines longer than MAX_PENDING close the connection. While output is blocked the connection
 * is not read (backpressure).
 *
 * Usage: base_tls --cert FILE --key FILE [-p PORT] [-n]   (port 0: any free one); prints
 * "listening on 127.0.0.1:PORT". SIGTERM/SIGINT end it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define RECORD (16 * 1024)      /* plaintext of one TLS record, at most */
#define SCRATCH (64 * 1024)
#define MAX_PENDING (4 * 1024 * 1024)
#define READ_BUDGET 16          /* records per connection per turn */
#define MAX_EVENTS 512

struct conn {
    int fd;
    SSL *ssl;
    unsigned ready : 1,    /* handshake done */
        readable : 1,      /* input may be there: SSL_read has not said WANT_READ since */
        blocked : 1,       /* waiting for EPOLLOUT: a write (or the handshake) said WANT_WRITE */
        eof : 1,           /* close_notify received */
        queued : 1;        /* on the run list */
    char *buf;   /* pending bytes: buf[0, out) unsent complete lines, buf[out, len) partial line */
    size_t out, len, cap;
    struct conn *next; /* run list: budget ran out with input left */
};

static char scratch[SCRATCH];
static int ep;
static SSL_CTX *ctx;
static struct conn *runq;
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void conn_free(struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    SSL_free(c->ssl);
    ERR_clear_error(); /* (the error that brought us here, if any: not the next one's) */
    close(c->fd);
    free(c->buf);
    c->buf = NULL;
    c->ssl = NULL;
    c->fd = -1;
    if (!c->queued)
        free(c);
    /* a queued conn is freed when the run list reaches it (fd == -1) */
}

static int reserve(struct conn *c, size_t extra)
{
    if (c->len + extra <= c->cap)
        return 0;
    size_t cap = c->cap ? c->cap : 4096;
    while (cap < c->len + extra)
        cap *= 2;
    if (cap > MAX_PENDING + SCRATCH + RECORD)
        return -1;
    char *b = realloc(c->buf, cap);
    if (!b)
        return -1;
    c->buf = b;
    c->cap = cap;
    return 0;
}

static void drop_buf_if_empty(struct conn *c)
{
    if (c->len == 0) {
        free(c->buf);
        c->buf = NULL;
        c->cap = 0;
    }
}

/* SSL_write [p + *done, p + n). 0: all written; 1: WANT_WRITE (the next try must start at
 * p + *done, with at least the rest: OpenSSL holds the record it began); -1: error. */
static int write_tls(struct conn *c, const char *p, size_t n, size_t *done)
{
    while (*done < n) {
        size_t w;
        if (SSL_write_ex(c->ssl, p + *done, n - *done, &w)) {
            *done += w;
            continue;
        }
        return SSL_get_error(c->ssl, 0) == SSL_ERROR_WANT_WRITE ? 1 : -1;
    }
    return 0;
}

/* Write buf[0, out). 0: all written; 1: blocked; -1: error. */
static int flush_pending(struct conn *c)
{
    size_t done = 0;
    int rc = write_tls(c, c->buf, c->out, &done);
    if (rc < 0)
        return -1;
    memmove(c->buf, c->buf + done, c->len - done);
    c->len -= done;
    c->out -= done;
    drop_buf_if_empty(c);
    c->blocked = rc == 1;
    return rc;
}

/* The handshake, until it is done (0), waits (1) or fails (-1). */
static int handshake(struct conn *c)
{
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        /* Reading ahead, it may have taken the records after it off the socket, and their
         * EPOLLIN edge has passed: try to read. */
        c->ready = 1;
        c->readable = 1;
        return 0;
    }
    switch (SSL_get_error(c->ssl, rc)) {
    case SSL_ERROR_WANT_READ: c->readable = 0; return 1;
    case SSL_ERROR_WANT_WRITE: c->blocked = 1; return 1;
    default: return -1;
    }
}

/* Decrypt one record, and those OpenSSL already holds, into [dst, dst + room): the count, 0
 * if none came now (or close_notify: eof), -1 on an error or a truncated stream. */
static ssize_t read_records(struct conn *c, char *dst, size_t room)
{
    size_t got = 0, n;
    do {
        if (!SSL_read_ex(c->ssl, dst + got, room - got, &n)) {
            int e = SSL_get_error(c->ssl, 0);
            if (e == SSL_ERROR_WANT_READ)
                c->readable = 0;
            else if (e == SSL_ERROR_ZERO_RETURN)
                c->eof = 1;
            else if (e == SSL_ERROR_WANT_WRITE) /* (a key update's answer) */
                c->blocked = 1;
            else
                return -1;
            break;
        }
        got += n;
    } while (room - got >= RECORD && SSL_has_pending(c->ssl));
    return (ssize_t)got;
}

/* Echo the complete lines of r bytes read into scratch; keep the rest. 0, or -1: drop c. */
static int echo_scratch(struct conn *c, size_t r)
{
    char *nl = memrchr(scratch, '\n', r);
    size_t whole = nl ? (size_t)(nl - scratch) + 1 : 0, sent = 0;
    int rc = write_tls(c, scratch, whole, &sent);
    if (rc < 0 || reserve(c, r - sent) != 0)
        return -1;
    /* what did not go out (retried from its first byte) and the partial line */
    if (r > sent)
        memcpy(c->buf, scratch + sent, r - sent);
    c->len = r - sent;
    c->out = whole - sent;
    c->blocked = rc == 1;
    drop_buf_if_empty(c);
    return 0;
}

/* Echo the complete lines of r bytes read behind a partial line in c->buf. 0, or -1. */
static int echo_pending(struct conn *c, size_t r)
{
    size_t old = c->len;
    c->len += r;
    char *nl = memrchr(c->buf + old, '\n', r);
    if (nl) {
        c->out = (size_t)(nl - c->buf) + 1;
        return flush_pending(c) < 0 ? -1 : 0;
    }
    return c->len > MAX_PENDING ? -1 : 0; /* line too long */
}

/* close_notify came: a partial last line gets its '\n', what is left goes, then ours and the
 * close (unless the output is blocked: EPOLLOUT brings us back). */
static void finish(struct conn *c)
{
    if (c->len > c->out) {
        if (reserve(c, 1) != 0) {
            conn_free(c);
            return;
        }
        c->buf[c->len++] = '\n';
        c->out = c->len;
    }
    int f = c->out ? flush_pending(c) : 0;
    if (f == 1)
        return;
    if (f == 0)
        SSL_shutdown(c->ssl); /* our close_notify; we do not wait for the peer's */
    conn_free(c);
}

/* Serve c: handshake, flush, then read/echo until WANT_READ, budget, EOF or blocked output. */
static void serve(struct conn *c)
{
    if (!c->ready) {
        int h = handshake(c);
        if (h != 0) {
            if (h < 0)
                conn_free(c);
            return;
        }
    }
    if (c->out && flush_pending(c) != 0) {
        if (!c->blocked)
            conn_free(c);
        return;
    }
    for (int i = 0; c->readable && !c->eof && !c->blocked; i++) {
        if (i == READ_BUDGET) {
            if (!c->queued) {
                c->queued = 1;
                c->next = runq;
                runq = c;
            }
            return;
        }
        char *dst = scratch;
        size_t room = SCRATCH;
        if (c->len) { /* a partial line is pending: read behind it */
            if (reserve(c, RECORD) != 0) {
                conn_free(c);
                return;
            }
            dst = c->buf + c->len;
            room = c->cap - c->len;
        }
        ssize_t r = read_records(c, dst, room);
        if (r < 0 || (r > 0 && (dst == scratch ? echo_scratch(c, (size_t)r)
                                               : echo_pending(c, (size_t)r)) != 0)) {
            conn_free(c);
            return;
        }
    }
    if (c->eof && !c->blocked)
        finish(c);
}

static void accept_all(int lfd)
{
    int one = 1;
    for (int k = 0; k < 4096; k++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or EMFILE: the next connection retries */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *nc = calloc(1, sizeof *nc);
        SSL *ssl = nc ? SSL_new(ctx) : NULL;
        if (!ssl || !SSL_set_fd(ssl, fd)) {
            SSL_free(ssl);
            free(nc);
            close(fd);
            continue;
        }
        SSL_set_accept_state(ssl);
        nc->fd = fd;
        nc->ssl = ssl;
        /* (epoll reports the ClientHello if it is there already) */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.ptr = nc};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            SSL_free(ssl);
            free(nc);
            close(fd);
        }
    }
}

static SSL_CTX *make_ctx(const char *cert, const char *key, int read_ahead)
{
    SSL_CTX *x = SSL_CTX_new(TLS_server_method());
    if (!x)
        return NULL;
    SSL_CTX_set_min_proto_version(x, TLS1_2_VERSION);
    SSL_CTX_set_options(x, SSL_OP_NO_RENEGOTIATION);
    /* Release record buffers while idle; let a blocked write be retried from our own copy of
     * its bytes (the buffer moves) and return after each record written. */
    SSL_CTX_set_mode(x, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_ENABLE_PARTIAL_WRITE);
    SSL_CTX_set_read_ahead(x, read_ahead);
    if (SSL_CTX_use_certificate_chain_file(x, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(x, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(x) != 1) {
        ERR_print_errors_fp(stderr);
        SSL_CTX_free(x);
        return NULL;
    }
    return x;
}

static int listen_on(int port)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof addr;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(lfd, SOMAXCONN) != 0 || getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0) {
        perror("listen");
        return -1;
    }
    printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    return lfd;
}

int main(int argc, char **argv)
{
    int port = 1234, read_ahead = 1, opt;
    const char *cert = NULL, *key = NULL;
    static const struct option longopts[] = {
        {"cert", required_argument, NULL, 'C'},
        {"key", required_argument, NULL, 'K'},
        {NULL, 0, NULL, 0},
    };
    while ((opt = getopt_long(argc, argv, "p:qn", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'q': break;
        case 'n': read_ahead = 0; break;
        case 'C': cert = optarg; break;
        case 'K': key = optarg; break;
        default: cert = NULL; optind = argc; break;
        }
    }
    if (!cert || !key) {
        fprintf(stderr, "usage: %s --cert FILE --key FILE [-p PORT] [-n]\n", argv[0]);
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (!(ctx = make_ctx(cert, key, read_ahead)))
        return 1;
    int lfd = listen_on(port);
    if (lfd < 0)
        return 1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);

    static struct epoll_event evs[MAX_EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, runq ? 0 : 1000);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                accept_all(lfd);
                continue;
            }
            if (c->fd < 0)
                continue;
            uint32_t e = evs[i].events;
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                c->readable = 1;
            if (c->blocked && !(e & (EPOLLOUT | EPOLLHUP | EPOLLERR)))
                continue;
            c->blocked = 0; /* (set again if the retry says WANT_WRITE) */
            if (!c->readable && !c->out && c->ready)
                continue;
            serve(c);
        }
        /* connections whose read budget ran out */
        struct conn *q = runq;
        runq = NULL;
        while (q) {
            struct conn *c = q;
            q = q->next;
            c->queued = 0;
            if (c->fd < 0)
                free(c);
            else
                serve(c);
        }
    }
    SSL_CTX_free(ctx);
    return 0;
}
