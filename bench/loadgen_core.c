/* loadgen_core.c: what loadgen.c (plain connections, the phases, main) and loadgen_tls.c
 * share: the state, the streams and their verification, the latency histogram, the server's
 * CPU time, the event loop (which hands each event to g.on_event) and connecting. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "loadgen.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct loadgen g;

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    printf("status=FAIL\n");
    fflush(stdout);
    exit(1);
}

int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static unsigned hist_index(uint64_t v)
{
    if (v < 64)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v); /* >= 6 */
    unsigned sub = (unsigned)(v >> (msb - 6)) & 63u;
    unsigned idx = (msb - 5) * 64 + sub;
    return idx < 64 * 64 ? idx : 64 * 64 - 1;
}

static uint64_t hist_value(unsigned idx)
{
    if (idx < 64)
        return idx;
    unsigned msb = idx / 64 + 5, sub = idx % 64;
    return ((uint64_t)(64 + sub) << (msb - 6)) + ((1ULL << (msb - 6)) >> 1); /* bucket middle */
}

void hist_add(int64_t ns)
{
    g.hist[hist_index(ns > 0 ? (uint64_t)ns : 0)]++;
    g.hist_n++;
}

double percentile_us(double q)
{
    if (g.hist_n == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)g.hist_n), seen = 0;
    if (want >= g.hist_n)
        want = g.hist_n - 1;
    for (unsigned i = 0; i < 64 * 64; i++) {
        seen += g.hist[i];
        if (seen > want)
            return (double)hist_value(i) / 1000.0;
    }
    return 0;
}

/* The byte at stream offset off of connection ci. */
const char *stream_at(int ci, uint64_t off, size_t *avail)
{
    uint64_t line = off / g.size;
    size_t in = (size_t)(off % g.size);
    const char *p = g.pattern + ((line + (uint64_t)ci * 7u) % NPATTERN) * g.size;
    *avail = g.size - in;
    return p + in;
}

double server_cpu(void)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)g.server);
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot read %s: %s", path, strerror(errno));
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        die("bad %s", path);
    unsigned long long ut = 0, st = 0;
    /* after ") ": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        die("bad %s", path);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

uint64_t window_end(const struct conn *c)
{
    if (!g.sending && c->sent % g.size == 0)
        return c->sent;
    uint64_t lines_started = (c->sent + g.size - 1) / g.size;
    uint64_t lines_done = c->rcvd / g.size;
    uint64_t allow = lines_done + (uint64_t)g.depth;
    if (!g.sending)
        allow = lines_started; /* draining: only finish a started line */
    if (c->limit && allow * g.size > c->limit)
        allow = c->limit / g.size;
    return allow * g.size;
}

void note_sent(int ci, size_t w, int64_t now)
{
    struct conn *c = &g.c[ci];
    /* time-stamp every line whose first byte just left */
    uint64_t first_new_line = (c->sent + g.size - 1) / g.size;
    uint64_t end = c->sent + (uint64_t)w;
    for (uint64_t l = first_new_line; l * g.size < end; l++) {
        unsigned slot = (c->ts_head + (unsigned)c->inflight) % (unsigned)g.depth;
        c->ts[slot] = now;
        c->inflight++;
    }
    c->sent = end;
}

void consume(int ci, const char *buf, size_t r, int64_t now)
{
    struct conn *c = &g.c[ci];
    if (c->rcvd + (uint64_t)r > c->sent)
        die("conn %d: received %llu bytes more than were sent", ci,
            (unsigned long long)(c->rcvd + (uint64_t)r - c->sent));
    size_t done = 0;
    while (done < r) {
        size_t avail;
        const char *exp = stream_at(ci, c->rcvd, &avail);
        size_t k = r - done < avail ? r - done : avail;
        if (memcmp(buf + done, exp, k) != 0) {
            size_t i = 0;
            while (i < k && buf[done + i] == exp[i])
                i++;
            die("conn %d: MISMATCH at stream byte %llu (line %llu, column %zu): "
                "expected 0x%02x, got 0x%02x", ci, (unsigned long long)(c->rcvd + i),
                (unsigned long long)((c->rcvd + i) / g.size),
                (size_t)((c->rcvd + i) % g.size), (unsigned char)exp[i],
                (unsigned char)buf[done + i]);
        }
        done += k;
        c->rcvd += k;
        if (k == avail) { /* a line completed */
            int64_t lat = now - c->ts[c->ts_head];
            c->ts_head = (c->ts_head + 1) % (unsigned)g.depth;
            c->inflight--;
            if (g.measuring && !g.handshakes) {
                g.rt_measured++;
                hist_add(lat);
            }
        }
    }
    g.last_progress = now;
}

/* No progress for STALL_NS: say where the connections are, then fail. */
static void __attribute__((noreturn)) stalled(void)
{
    int n[4] = {0}, waiting = 0;
    for (int i = 0; i < g.nconns; i++) {
        n[g.c[i].state]++;
        waiting += g.c[i].state == C_OPEN && g.c[i].rcvd < g.c[i].sent;
    }
    die("no progress for %lld s (server stuck?): connections free %d, in handshake %d, open %d "
        "(%d waiting for an echo), closing %d", STALL_NS / 1000000000LL, n[C_FREE],
        n[C_HANDSHAKE], n[C_OPEN], waiting, n[C_CLOSING]);
}

void run_loop(int (*done)(void), int64_t deadline)
{
    static struct epoll_event evs[1024];
    int maxev = g.nconns < 1024 ? g.nconns : 1024;
    int64_t now = now_ns();
    g.last_progress = now;
    while (!done()) {
        if (deadline && now >= deadline)
            return;
        int timeout = 100;
        int n = epoll_wait(g.ep, evs, maxev, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        now = now_ns();
        for (int i = 0; i < n; i++) {
            g.on_event((int)evs[i].data.u32, evs[i].events, &now);
        }
        if (now - g.last_progress > STALL_NS)
            stalled();
    }
}

int tcp_connect(int ci)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket %d: %s", ci, strerror(errno));
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int tries = 0;
    while (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        if ((errno == EINTR || errno == EAGAIN || errno == ECONNREFUSED) && ++tries < 50) {
            usleep(20000);
            continue;
        }
        die("connect %d: %s", ci, strerror(errno));
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}
