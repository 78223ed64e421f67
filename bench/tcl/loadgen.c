/*
 * loadgen.c -- line-echo load generator / verifier for the weft Tcl tests
 * and benchmark (loopback only).
 *
 *   loadgen -p PORT [-h 127.0.0.1] [-c CONNS] [-l LINES] [-w WINDOW]
 *           [-s SIZE] [-e lf|crlf] [-T TIMEOUT_S] [-d DURATION_S]
 *
 * Opens CONNS connections and waits until all are established.  Barrier:
 * every connection sends one line and all echoes must come back before the
 * run continues (so all CONNS are served at the same time).  Then each
 * connection sends LINES lines in total, at most WINDOW unanswered, and
 * checks every echoed byte (the line followed by the -e end of line).
 * With -d, runs for DURATION_S seconds after the barrier instead of a line
 * count and prints the rate.  Exits 0 and prints "ok ..." on success,
 * 1 on a verification or socket error, 2 on TIMEOUT_S expiry.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct Conn {
    int fd;
    int connected;
    long sent, recvd;           /* lines */
    char *rbuf;
    size_t rlen, rcap;
    char *wbuf;
    size_t wlen, woff, wcap;
    int wantOut;
    int done;
} Conn;

static int nconn = 1, window = 8, size = 40, crlf = 0;
static long lines = 100;
static double duration = 0, tmo = 60;
static int ep;
static Conn *conns;
static long phaseLimit;         /* lines each conn may send in this phase */

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(code);
}

/* The deterministic content of line `seq` of connection `c` (no EOL). */
static size_t
genline(char *buf, int c, long seq)
{
    static const char alpha[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.,";
    int n = snprintf(buf, 64, "c%d l%ld ", c, seq);
    unsigned x = (unsigned) (c * 2654435761u) ^ (unsigned) (seq * 40503u + 7);
    int len = size / 2 + (int) (x % (unsigned) (size + 1));
    int i;

    for (i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        buf[n + i] = alpha[(x >> 16) % (sizeof alpha - 1)];
    }
    return (size_t) (n + len);
}

static void
arm(Conn *k, int idx)
{
    struct epoll_event ev;
    int want = k->wlen > k->woff || !k->connected;

    if (want == k->wantOut) {
        return;
    }
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | (want ? EPOLLOUT : 0);
    ev.data.u32 = (unsigned) idx;
    epoll_ctl(ep, EPOLL_CTL_MOD, k->fd, &ev);
    k->wantOut = want;
}

static void
flushout(Conn *k, int idx)
{
    while (k->woff < k->wlen) {
        ssize_t r = write(k->fd, k->wbuf + k->woff, k->wlen - k->woff);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                break;
            }
            die(1, "conn %d: write: %s", idx, strerror(errno));
        }
        k->woff += (size_t) r;
    }
    if (k->woff == k->wlen) {
        k->woff = k->wlen = 0;
    }
    arm(k, idx);
}

static void
queue_lines(Conn *k, int idx)
{
    char line[4096];

    while (k->connected && k->sent < phaseLimit
            && k->sent - k->recvd < window) {
        size_t n = genline(line, idx, k->sent);
        if (k->wlen + n + 1 > k->wcap) {
            k->wcap = (k->wlen + n + 1) * 2;
            k->wbuf = realloc(k->wbuf, k->wcap);
        }
        memcpy(k->wbuf + k->wlen, line, n);
        k->wbuf[k->wlen + n] = '\n';
        k->wlen += n + 1;
        k->sent++;
    }
    flushout(k, idx);
}

static long totalRecvd;

static void
readin(Conn *k, int idx)
{
    char line[4096];

    for (;;) {
        ssize_t r;
        char *p, *start;

        if (k->rcap - k->rlen < 65536) {
            k->rcap = k->rcap * 2 + 65536;
            k->rbuf = realloc(k->rbuf, k->rcap);
        }
        r = read(k->fd, k->rbuf + k->rlen, k->rcap - k->rlen);
        if (r == 0) {
            die(1, "conn %d: unexpected EOF after %ld lines", idx, k->recvd);
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                break;
            }
            die(1, "conn %d: read: %s", idx, strerror(errno));
        }
        k->rlen += (size_t) r;
        start = k->rbuf;
        while ((p = memchr(start, '\n', k->rlen - (size_t) (start - k->rbuf)))) {
            size_t got = (size_t) (p - start) + 1;
            size_t n = genline(line, idx, k->recvd);
            if (crlf) {
                line[n++] = '\r';
            }
            line[n++] = '\n';
            if (k->recvd >= k->sent || got != n || memcmp(start, line, n)) {
                die(1, "conn %d line %ld: echo mismatch: got %zu bytes "
                        "\"%.*s\", want \"%.*s\"", idx, k->recvd, got,
                        (int) (got > 80 ? 80 : got), start,
                        (int) (n > 80 ? 80 : n), line);
            }
            k->recvd++;
            totalRecvd++;
            start = p + 1;
        }
        memmove(k->rbuf, start, k->rlen - (size_t) (start - k->rbuf));
        k->rlen -= (size_t) (start - k->rbuf);
    }
    queue_lines(k, idx);
}

static int
all_reached(long target)
{
    int i;
    for (i = 0; i < nconn; i++) {
        if (conns[i].recvd < target) {
            return 0;
        }
    }
    return 1;
}

static long stoppedRecvd = -1;   /* lines counted when -d time ran out */
static double stoppedAt;

static int
all_answered(void)
{
    int i;
    for (i = 0; i < nconn; i++) {
        if (conns[i].recvd < conns[i].sent) {
            return 0;
        }
    }
    return 1;
}

static void
run(long target, double deadline, double stopAt)
{
    static struct epoll_event evs[1024];
    int i;

    phaseLimit = target;
    for (i = 0; i < nconn; i++) {
        queue_lines(&conns[i], i);
    }
    for (;;) {
        int n;
        if (stopAt > 0 && stoppedRecvd < 0 && now() >= stopAt) {
            /* Time is up: count, stop sending, let the echoes drain so the
             * connections close cleanly. */
            stoppedRecvd = totalRecvd;
            stoppedAt = now();
            phaseLimit = 0;
        }
        if (stopAt > 0 ? (stoppedRecvd >= 0 && all_answered())
                : all_reached(target)) {
            return;
        }
        if (now() > deadline) {
            long lo = 0;
            for (i = 0; i < nconn; i++) {
                lo += conns[i].recvd;
            }
            die(2, "timeout: %ld lines echoed so far", lo);
        }
        n = epoll_wait(ep, evs, 1024, 100);
        for (i = 0; i < n; i++) {
            int idx = (int) evs[i].data.u32;
            Conn *k = &conns[idx];
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                readin(k, idx);
            }
            if (evs[i].events & EPOLLOUT) {
                flushout(k, idx);
            }
        }
    }
}

int
main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0, opt, i, pending;
    struct sockaddr_in sa;
    struct rlimit rl;
    double t0, deadline, t1;
    static struct epoll_event evs[1024];

    while ((opt = getopt(argc, argv, "h:p:c:l:w:s:e:T:d:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': nconn = atoi(optarg); break;
        case 'l': lines = atol(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 's': size = atoi(optarg); break;
        case 'e': crlf = strcmp(optarg, "crlf") == 0; break;
        case 'T': tmo = atof(optarg); break;
        case 'd': duration = atof(optarg); break;
        default: die(1, "bad option");
        }
    }
    if (port <= 0 || nconn <= 0 || window <= 0 || size < 0 || size > 2000
            || lines < 1) {
        die(1, "usage: loadgen -p PORT [-c CONNS] [-l LINES] [-w WINDOW] "
                "[-s SIZE] [-e lf|crlf] [-T TIMEOUT] [-d DURATION]");
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short) port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        die(1, "bad host %s", host);
    }
    t0 = now();
    deadline = t0 + tmo;
    ep = epoll_create1(0);
    conns = calloc((size_t) nconn, sizeof(Conn));
    for (i = 0; i < nconn; i++) {
        Conn *k = &conns[i];
        struct epoll_event ev;
        int one = 1;

        k->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (k->fd < 0) {
            die(1, "socket %d: %s", i, strerror(errno));
        }
        setsockopt(k->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(k->fd, (struct sockaddr *) &sa, sizeof sa) < 0
                && errno != EINPROGRESS) {
            die(1, "connect %d: %s", i, strerror(errno));
        }
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLOUT | EPOLLIN;
        ev.data.u32 = (unsigned) i;
        epoll_ctl(ep, EPOLL_CTL_ADD, k->fd, &ev);
        k->wantOut = 1;
    }
    /* Wait for every connection to be established. */
    for (pending = nconn; pending > 0;) {
        int n = epoll_wait(ep, evs, 1024, 100);
        if (now() > deadline) {
            die(2, "timeout: %d connections still pending", pending);
        }
        for (i = 0; i < n; i++) {
            int idx = (int) evs[i].data.u32, err = 0;
            socklen_t len = sizeof err;
            Conn *k = &conns[idx];
            if (k->connected) {
                continue;
            }
            getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                die(1, "connect %d: %s", idx, strerror(err));
            }
            k->connected = 1;
            pending--;
            arm(k, idx);
        }
    }
    /* Barrier: one round trip on every connection while all are open. */
    run(1, deadline, 0);
    fprintf(stderr, "loadgen: barrier: %d connections open and echoing "
            "(%.2fs)\n", nconn, now() - t0);
    t1 = now();
    totalRecvd = 0;
    if (duration > 0) {
        run(1L << 60, deadline + duration, t1 + duration);
    } else {
        run(lines, deadline, 0);
    }
    if (stoppedRecvd >= 0) {
        totalRecvd = stoppedRecvd;
        t1 = stoppedAt - t1;
    } else {
        t1 = now() - t1;
    }
    for (i = 0; i < nconn; i++) {
        close(conns[i].fd);
    }
    printf("ok conns=%d lines=%ld seconds=%.3f lines_per_sec=%.0f\n", nconn,
            totalRecvd, t1, t1 > 0 ? totalRecvd / t1 : 0.0);
    return 0;
}
