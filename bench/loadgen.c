/* loadgen: a verifying, pipelining load generator for line echo servers (bench/README.md).
 *
 * One process, one thread, one edge-triggered epoll loop, pinned to its own CPU. Opens N
 * connections to 127.0.0.1:PORT; on each keeps up to P lines of S bytes (the last one '\n')
 * in flight; checks every echoed byte against what was sent, in order, and exits 1 at the
 * first difference. Each line's latency is taken from the send() that started it to the
 * recv() that completed its echo.
 *
 * Phases: connect every connection; warm up (one verified round trip on each, so the server
 * has accepted them all); measure for -t seconds (round trips completed, latencies, the
 * server's CPU time from /proc/PID/stat); drain (stop sending, wait for every line in flight,
 * still verified); close.
 *
 * With -I (idle mode) it only connects and warms up, then prints the server's RSS growth per
 * connection (VmRSS of /proc/PID/status before connecting and after), holding the connections
 * open for -t seconds first so the server settles.
 *
 * With --tls the connections speak TLS (loadgen_tls.c): opened with a window of handshakes in
 * progress at once, then the same lines, verification and figures. With --tls -H it measures
 * handshakes instead: each of N connections in turn connects, does a full handshake (or with
 * -R a resumed one), sends one line and verifies its echo, sends close_notify and waits for
 * the server's close, over and over.
 *
 * Output: one line of key=value pairs on stdout (see usage()). Exit 0 only if every byte was
 * verified; 1 on a mismatch, an unexpected close or error, or no progress for 10 s.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "loadgen.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RBUF (256 * 1024)    /* shared receive buffer */
#define MAX_IOV 64

static long server_rss_kib(void)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)g.server);
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot read %s: %s", path, strerror(errno));
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* Send what the window allows: lines up to limit, at most depth in flight. */
static void pump_out(int ci, int64_t now)
{
    struct conn *c = &g.c[ci];
    if (c->want_out)
        return;
    for (int rounds = 0; rounds < 64; rounds++) {
        uint64_t want_end = window_end(c);
        if (want_end <= c->sent)
            return;
        struct iovec iov[MAX_IOV];
        int n = 0;
        uint64_t off = c->sent;
        while (off < want_end && n < MAX_IOV) {
            size_t avail;
            const char *p = stream_at(ci, off, &avail);
            if (avail > want_end - off)
                avail = (size_t)(want_end - off);
            iov[n].iov_base = (void *)p;
            iov[n].iov_len = avail;
            n++;
            off += avail;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->want_out = 1;
                return;
            }
            die("conn %d: send: %s", ci, strerror(errno));
        }
        note_sent(ci, (size_t)w, now);
        if (c->sent < want_end) {
            c->want_out = 1; /* short write: the socket buffer is full */
            return;
        }
    }
}

static char rbuf[RBUF];

static void handle_in(int ci, int64_t *nowp)
{
    struct conn *c = &g.c[ci];
    for (int rounds = 0; rounds < 16; rounds++) {
        size_t room = sizeof rbuf;
        ssize_t r = recv(c->fd, rbuf, room, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            die("conn %d: recv: %s (after %llu bytes)", ci, strerror(errno),
                (unsigned long long)c->rcvd);
        }
        if (r == 0)
            die("conn %d: server closed the connection after %llu of %llu bytes", ci,
                (unsigned long long)c->rcvd, (unsigned long long)c->sent);
        *nowp = now_ns();
        consume(ci, rbuf, (size_t)r, *nowp);
        if ((size_t)r < room)
            return; /* drained: edge-triggered epoll reports the next arrival */
    }
}

static void plain_open_all(void)
{
    for (int i = 0; i < g.nconns; i++) {
        struct conn *c = &g.c[i];
        c->fd = tcp_connect(i);
        c->state = C_OPEN;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = (uint32_t)i};
        if (epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
            die("epoll_ctl: %s", strerror(errno));
    }
}

/* An event of plain connection ci (g.on_event without --tls). */
static void plain_event(int ci, uint32_t events, int64_t *nowp)
{
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        handle_in(ci, nowp);
    if (events & EPOLLOUT)
        g.c[ci].want_out = 0;
    if (events & (EPOLLIN | EPOLLOUT))
        pump_out(ci, *nowp);
}

static void start_sending(int ci, int64_t now)
{
    if (g.tls)
        tls_pump_out(ci, now);
    else
        pump_out(ci, now);
}

static int all_idle(void)
{
    for (int i = 0; i < g.nconns; i++)
        if (g.c[i].rcvd < g.c[i].sent || (g.c[i].limit && g.c[i].sent < g.c[i].limit))
            return 0;
    return 1;
}

static int never(void) { return 0; }

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen -p PORT -S SERVER_PID [-c CONNS] [-P DEPTH] [-s LINE_BYTES] [-t SECONDS]\n"
            "               [-a CPU] [-I] [--tls [-w WINDOW] [-H [-R]]]\n"
            "  prints: status=OK conns= depth= size= secs= rt= rt_per_s= p50_us= p99_us= p999_us=\n"
            "          server_cpu_s= rt_per_cpu_s=        (-I: rss_before_kib= rss_after_kib= bytes_per_conn=)\n"
            "  --tls -H: status=OK conns= secs= hs= resumed= hs_per_s= p50_us= p99_us= p999_us=\n"
            "          server_cpu_s= hs_per_cpu_s=        (latencies: connect to handshake done)\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"tls", no_argument, NULL, 'T'},
        {NULL, 0, NULL, 0},
    };
    g.nconns = 1;
    g.depth = 1;
    g.size = 64;
    g.secs = 5;
    g.cpu = 1;
    g.window = 64;
    int opt;
    while ((opt = getopt_long(argc, argv, "p:S:c:P:s:t:a:IHRw:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p': g.port = atoi(optarg); break;
        case 'S': g.server = (pid_t)atoi(optarg); break;
        case 'c': g.nconns = atoi(optarg); break;
        case 'P': g.depth = atoi(optarg); break;
        case 's': g.size = (size_t)atol(optarg); break;
        case 't': g.secs = atof(optarg); break;
        case 'a': g.cpu = atoi(optarg); break;
        case 'I': g.idle = 1; break;
        case 'T': g.tls = 1; break;
        case 'H': g.handshakes = 1; break;
        case 'R': g.resume = 1; break;
        case 'w': g.window = atoi(optarg); break;
        default: usage();
        }
    }
    if (g.port <= 0 || g.server <= 0 || g.nconns < 1 || g.depth < 1 || g.size < 2 ||
        g.size > (1u << 24) || g.secs <= 0 || g.secs > 3600 || g.window < 1 ||
        (g.handshakes && (!g.tls || g.idle)) || (g.resume && !g.handshakes))
        usage();
}

static void setup(void)
{
    if (g.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(g.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0)
            fprintf(stderr, "loadgen: cannot pin to CPU %d: %s (going on unpinned)\n", g.cpu,
                    strerror(errno));
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN); /* (OpenSSL writes with write(2), not send with MSG_NOSIGNAL) */

    /* line contents: random bytes other than '\n', NUL and '\r' included, then '\n' */
    g.pattern = malloc((size_t)NPATTERN * g.size);
    if (!g.pattern)
        die("out of memory");
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < (size_t)NPATTERN * g.size; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        char b = (char)(x >> 24);
        if (b == '\n')
            b = 0;
        g.pattern[i] = (i % g.size == g.size - 1) ? '\n' : b;
    }

    g.c = calloc((size_t)g.nconns, sizeof *g.c);
    g.ts = calloc((size_t)g.nconns * (size_t)g.depth, sizeof *g.ts);
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (!g.c || !g.ts || g.ep < 0)
        die("setup: %s", strerror(errno));
    for (int i = 0; i < g.nconns; i++) {
        g.c[i].fd = -1;
        g.c[i].ts = g.ts + (size_t)i * (size_t)g.depth;
    }
    g.on_event = g.tls ? tls_event : plain_event;
    if (g.tls)
        tls_init();
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    setup();
    if (g.handshakes) {
        tls_handshakes();
        return 0;
    }
    long rss_before = g.idle ? server_rss_kib() : 0;
    int64_t t_conn = now_ns();
    if (g.tls)
        tls_open_all();
    else
        plain_open_all();
    double conn_secs = (double)(now_ns() - t_conn) / 1e9;

    /* warm-up: one verified round trip per connection */
    g.sending = 1;
    for (int i = 0; i < g.nconns; i++) {
        g.c[i].limit = g.size;
        start_sending(i, now_ns());
    }
    run_loop(all_idle, now_ns() + 60LL * 1000000000LL);
    if (!all_idle())
        die("warm-up did not finish in 60 s");

    if (g.idle) {
        /* hold the connections, let the server settle, then sample its RSS */
        struct timespec ts2 = {.tv_sec = (time_t)g.secs, .tv_nsec = (long)((g.secs - (double)(time_t)g.secs) * 1e9)};
        nanosleep(&ts2, NULL);
        long rss_after = server_rss_kib();
        printf("status=OK conns=%d rss_before_kib=%ld rss_after_kib=%ld bytes_per_conn=%.0f connect_s=%.2f\n",
               g.nconns, rss_before, rss_after,
               (double)(rss_after - rss_before) * 1024.0 / g.nconns, conn_secs);
        return 0;
    }

    /* measure */
    for (int i = 0; i < g.nconns; i++)
        g.c[i].limit = 0;
    double cpu0 = server_cpu();
    int64_t t0 = now_ns();
    g.measuring = 1;
    for (int i = 0; i < g.nconns; i++)
        start_sending(i, t0);
    run_loop(never, t0 + (int64_t)(g.secs * 1e9));
    int64_t t1 = now_ns();
    double cpu1 = server_cpu();
    g.measuring = 0;

    /* drain: finish and verify every line in flight */
    g.sending = 0;
    for (int i = 0; i < g.nconns; i++) {
        g.c[i].want_out = 0;
        start_sending(i, t1);
    }
    run_loop(all_idle, now_ns() + 30LL * 1000000000LL);
    if (!all_idle())
        die("drain did not finish in 30 s");
    if (g.tls)
        tls_close_all();
    else
        for (int i = 0; i < g.nconns; i++)
            close(g.c[i].fd);

    double el = (double)(t1 - t0) / 1e9, cpu = cpu1 - cpu0;
    printf("status=OK conns=%d depth=%d size=%zu secs=%.3f rt=%lld rt_per_s=%.0f p50_us=%.1f "
           "p99_us=%.1f p999_us=%.1f server_cpu_s=%.3f rt_per_cpu_s=%.0f connect_s=%.2f\n",
           g.nconns, g.depth, g.size, el, g.rt_measured, (double)g.rt_measured / el,
           percentile_us(0.50), percentile_us(0.99), percentile_us(0.999), cpu,
           cpu > 0 ? (double)g.rt_measured / cpu : 0.0, conn_secs);
    return 0;
}
