/* examples/kv against bad input: every protocol violation gets "-ERR Protocol error: ..."
 * and a closed connection (or, where Redis is silent, just the close), the server never
 * crashes, and what a client makes it hold is bounded by what the client actually sent and
 * by the limits -- never by what it claims. Memory bounds are asserted where resident memory
 * measures kv (memory_is_measurable), and printed everywhere. */
#include "harness.h"
#include "kvtest.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Send without failing the test: the server may close on us half-way (that is the point). */
static void send_some(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* A connection that ends with a reset, not a FIN: what a crashed client looks like. */
static void reset_close(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* The server still answers, on a fresh connection. */
static void still_serving(int port)
{
    struct resp_conn c;
    resp_open(&c, port);
    resp_expect(&c, "+PONG\r\n", "PING", NULL);
    resp_close(&c);
}

/* Send data, expect exactly `reply` (may be "") and then the close. */
static void expect_close(int port, const char *data, size_t n, const char *reply)
{
    int fd = tcp_connect_loopback(port);
    send_some(fd, data, n);
    size_t want = strlen(reply), got = 0;
    char buf[512];
    while (got < want) {
        CHECK(readable_within(fd, 20000));
        ssize_t r = read(fd, buf + got, want - got);
        CHECK(r > 0);
        got += (size_t)r;
    }
    buf[got] = '\0';
    if (strcmp(buf, reply) != 0)
        fprintf(stderr, "  sent %.40s...: want %s got %s\n", data, reply, buf);
    CHECK(strcmp(buf, reply) == 0);
    CHECK(readable_within(fd, 20000));
    ssize_t r = read(fd, buf, sizeof buf);
    CHECK(r == 0 || (r < 0 && errno == ECONNRESET));
    close(fd);
}

#define EXPECT_CLOSE(port, lit, reply) expect_close(port, lit, sizeof lit - 1, reply)
#define PROTO(msg) "-ERR Protocol error: " msg "\r\n"

static long rss_kib(pid_t pid)
{
    return proc_status_kib(pid, "VmRSS:");
}

static void check_growth(const char *what, long before, long after, long limit_kib)
{
    printf("  %s: %ld -> %ld KiB (limit +%ld KiB%s)\n", what, before, after, limit_kib,
           memory_is_measurable() ? "" : ", not asserted here");
    if (memory_is_measurable())
        CHECK(after - before < limit_kib);
}

static void bad_multibulk_counts(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    EXPECT_CLOSE(kv.port, "*abc\r\n", PROTO("invalid multibulk length"));
    EXPECT_CLOSE(kv.port, "*\r\n", PROTO("invalid multibulk length"));
    EXPECT_CLOSE(kv.port, "*1x\r\n", PROTO("invalid multibulk length"));
    EXPECT_CLOSE(kv.port, "*+1\r\n", PROTO("invalid multibulk length"));
    EXPECT_CLOSE(kv.port, "*3\n", PROTO("invalid multibulk length")); /* no CR */
    EXPECT_CLOSE(kv.port, "*99999999999999999999\r\n", PROTO("invalid multibulk length"));
    EXPECT_CLOSE(kv.port, "*2000000\r\n", PROTO("invalid multibulk length")); /* > --max-args */
    /* Replies before the bad request still go out, in order. */
    EXPECT_CLOSE(kv.port, "*1\r\n$4\r\nPING\r\n*x\r\n*1\r\n$4\r\nPING\r\n",
                 "+PONG\r\n" PROTO("invalid multibulk length"));
    /* *0 and *-1 are empty requests, as in Redis: no reply, the connection goes on. */
    struct resp_conn c;
    resp_open(&c, kv.port);
    write_all(c.fd, "*0\r\n*-1\r\n\r\n", 11);
    resp_expect(&c, "+PONG\r\n", "PING", NULL);
    resp_close(&c);
    still_serving(kv.port);
    kv_stop(&kv);
}

static void bad_bulk_lengths(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    EXPECT_CLOSE(kv.port, "*1\r\n$-1\r\n", PROTO("invalid bulk length"));
    EXPECT_CLOSE(kv.port, "*1\r\n$abc\r\n", PROTO("invalid bulk length"));
    EXPECT_CLOSE(kv.port, "*1\r\n$1e3\r\n", PROTO("invalid bulk length"));
    EXPECT_CLOSE(kv.port, "*1\r\n$\r\n", PROTO("invalid bulk length"));
    EXPECT_CLOSE(kv.port, "*1\r\n$536870913\r\n", PROTO("invalid bulk length")); /* > 512 MiB */
    EXPECT_CLOSE(kv.port, "*1\r\n$99999999999999999999999\r\n", PROTO("invalid bulk length"));
    EXPECT_CLOSE(kv.port, "*1\r\n+4\r\n", PROTO("expected '$', got '+'"));
    EXPECT_CLOSE(kv.port, "*1\r\n\r\n", PROTO("expected '$', got ' '"));
    EXPECT_CLOSE(kv.port, "*1\r\n$4\r\nPINGxx", PROTO("expected CRLF after bulk data"));
    EXPECT_CLOSE(kv.port, "*1\r\n$4\r\nPING\n\r", PROTO("expected CRLF after bulk data"));
    EXPECT_CLOSE(kv.port, "PING \"unbalanced\r\n", PROTO("unbalanced quotes in request"));
    EXPECT_CLOSE(kv.port, "PING 'a'b\r\n", PROTO("unbalanced quotes in request"));
    /* What looks like HTTP is dropped without a word, as Redis drops it. */
    EXPECT_CLOSE(kv.port, "POST / HTTP/1.1\r\nHost: x\r\n\r\n", "");
    still_serving(kv.port);
    kv_stop(&kv);
}

/* A request cut anywhere (here: one byte per send) is simply waited for. */
static void request_cut_anywhere(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    static const char req[] = "*3\r\n$3\r\nSET\r\n$2\r\nk\n\r\n$5\r\nv\r\n\0x\r\n"
                              "GET \"k\\n\"\r\n";
    int fd = tcp_connect_loopback(kv.port);
    for (size_t i = 0; i < sizeof req - 1; i++) {
        write_all(fd, req + i, 1);
        usleep(500);
    }
    char buf[32];
    read_exact_timeout(fd, buf, 16, 20000);
    CHECK(memcmp(buf, "+OK\r\n$5\r\nv\r\n\0x\r\n", 16) == 0);
    close(fd);
    kv_stop(&kv);
}

/* Bulks cut off by a reset, again and again: nothing stored, nothing kept. */
static void bulk_cut_off_by_reset(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    static char data[50000];
    memset(data, 'x', sizeof data);
    long before = rss_kib(kv.pid);
    for (int i = 0; i < test_scale(50); i++) {
        int fd = tcp_connect_loopback(kv.port);
        static const char head[] = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$100000\r\n";
        write_all(fd, head, sizeof head - 1);
        write_all(fd, data, sizeof data);
        reset_close(fd);
    }
    struct resp_conn c;
    resp_open(&c, kv.port);
    resp_expect(&c, ":0\r\n", "EXISTS", "key", NULL);
    resp_expect(&c, ":0\r\n", "DBSIZE", NULL);
    resp_close(&c);
    check_growth("50 cut-off bulks: RSS", before, rss_kib(kv.pid), 8 * 1024);
    kv_stop(&kv);
}

/* Clients announcing 500 MB bulks cost what they send (storage grows as bytes arrive). */
static void huge_claims_cost_what_is_sent(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    enum { CONNS = 16, SENT = 512 * 1024 };
    static char data[SENT];
    memset(data, 'y', sizeof data);
    long before = rss_kib(kv.pid), data_before = proc_status_kib(kv.pid, "VmData:");
    int fds[CONNS];
    for (int i = 0; i < CONNS; i++) {
        fds[i] = tcp_connect_loopback(kv.port);
        static const char head[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$500000000\r\n";
        write_all(fds[i], head, sizeof head - 1);
        write_all(fds[i], data, sizeof data); /* returns once kv has taken most of it */
    }
    still_serving(kv.port);
    long during = rss_kib(kv.pid), data_during = proc_status_kib(kv.pid, "VmData:");
    for (int i = 0; i < CONNS; i++)
        close(fds[i]); /* a FIN mid-bulk: kv drops the half request */
    /* 16 x 500 MB claimed; at most twice what arrived is held, plus buffers. */
    check_growth("16 claims of 500 MB with 512 KiB sent each: RSS", before, during,
                 CONNS * 2 * SENT / 1024 + 16 * 1024);
    /* Not even reserved: untouched memory costs no RSS, but address space all the same. */
    check_growth("  the same, address space (VmData)", data_before, data_during, 64 * 1024);
    still_serving(kv.port);
    kv_stop(&kv);
}

/* A line longer than --max-inline (64 KiB by default): error and close, memory bounded. */
static void huge_inline_line(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    long before = rss_kib(kv.pid);
    size_t n = 4u << 20; /* 4 MiB without a newline */
    char *line = malloc(n);
    CHECK(line);
    memset(line, 'a', n);
    for (int i = 0; i < 4; i++) {
        int fd = tcp_connect_loopback(kv.port);
        send_some(fd, line, n);
        char buf[64];
        const char *want = PROTO("too big inline request");
        read_exact_timeout(fd, buf, strlen(want), 20000);
        CHECK(memcmp(buf, want, strlen(want)) == 0);
        close(fd);
    }
    /* The same for a *N line and a $LEN line that never end. */
    int fd = tcp_connect_loopback(kv.port);
    send_some(fd, "*1\r\n$", 5);
    send_some(fd, line, n);
    char buf[64];
    const char *want = PROTO("too big bulk count string");
    read_exact_timeout(fd, buf, strlen(want), 20000);
    CHECK(memcmp(buf, want, strlen(want)) == 0);
    close(fd);
    free(line);
    check_growth("5 lines of 4 MiB: RSS", before, rss_kib(kv.pid), 4 * 1024);
    still_serving(kv.port);
    kv_stop(&kv);
}

/* The limits' flags: --max-args, --max-bulk, --max-request, --max-inline. */
static void limits_have_flags(void)
{
    struct kv_proc kv;
    kv_start(&kv, (const char *[]){"--max-args", "4", "--max-bulk", "100", "--max-request",
                                   "300", "--max-inline", "64", NULL});
    EXPECT_CLOSE(kv.port, "*5\r\n", PROTO("invalid multibulk length"));
    EXPECT_CLOSE(kv.port, "a b c d e\r\n", PROTO("too many arguments"));
    EXPECT_CLOSE(kv.port, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$101\r\n", PROTO("invalid bulk length"));
    /* Four bulks of 100 bytes: each is allowed, together they pass --max-request. */
    char big[600];
    size_t n = (size_t)snprintf(big, sizeof big, "*4\r\n");
    for (int i = 0; i < 4; i++) {
        n += (size_t)snprintf(big + n, sizeof big - n, "$100\r\n");
        memset(big + n, 'x', 100);
        memcpy(big + n + 100, "\r\n", 2);
        n += 102;
    }
    expect_close(kv.port, big, n, PROTO("request too large"));
    memset(big, 'q', 100);
    expect_close(kv.port, big, 100, PROTO("too big inline request"));
    /* Values cannot grow past --max-bulk either. */
    struct resp_conn c;
    resp_open(&c, kv.port);
    char v[61];
    memset(v, 'v', 60);
    v[60] = '\0';
    resp_expect(&c, ":60\r\n", "APPEND", "k", v, NULL);
    resp_expect(&c, "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n",
                "APPEND", "k", v, NULL);
    resp_close(&c);
    kv_stop(&kv);
}

/* A client that pipelines reads of a large value and never reads the replies: kv parks on
 * its full socket instead of buffering replies without bound. */
static void client_that_never_reads(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    struct resp_conn c;
    resp_open(&c, kv.port);
    size_t vn = 1u << 20;
    char *v = malloc(vn + 1);
    CHECK(v);
    memset(v, 'w', vn);
    v[vn] = '\0';
    resp_expect(&c, "+OK\r\n", "SET", "big", v, NULL);
    free(v);
    long before = rss_kib(kv.pid);
    int fd = tcp_connect_loopback(kv.port);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    static const char get[] = "*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n";
    for (int i = 0; i < 200; i++) /* 200 MB of replies asked for */
        send_some(fd, get, sizeof get - 1);
    resp_expect(&c, "+PONG\r\n", "PING", NULL); /* others are served meanwhile */
    check_growth("200 unread GETs of 1 MiB: RSS", before, rss_kib(kv.pid), 16 * 1024);
    reset_close(fd);
    resp_close(&c);
    still_serving(kv.port);
    kv_stop(&kv);
}

static uint32_t rnd(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* Random bytes, and random mutations of valid requests, on many connections. */
static void garbage_never_crashes(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    uint32_t seed = 20261206u;
    long before = rss_kib(kv.pid);
    static const char valid[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"
                                "*2\r\n$3\r\nGET\r\n$1\r\nk\r\nINCR n\r\nKEYS *\r\n"
                                "*3\r\n$6\r\nEXPIRE\r\n$1\r\nk\r\n$2\r\n10\r\n";
    char buf[4096];
    for (int i = 0; i < test_scale(300); i++) {
        size_t n = rnd(&seed) % sizeof buf;
        if (i % 2) {
            for (size_t j = 0; j < n; j++)
                buf[j] = (char)rnd(&seed);
        } else {
            for (size_t j = 0; j < n; j++)
                buf[j] = valid[j % (sizeof valid - 1)];
            for (int m = 0; m < 4; m++)
                if (n)
                    buf[rnd(&seed) % n] = "*$\r\n-0123456789x\0"[rnd(&seed) % 17];
        }
        int fd = tcp_connect_loopback(kv.port);
        send_some(fd, buf, n);
        if (rnd(&seed) % 2)
            reset_close(fd);
        else
            close(fd);
    }
    still_serving(kv.port);
    check_growth("300 connections of garbage: RSS", before, rss_kib(kv.pid), 8 * 1024);
    kv_stop(&kv); /* exit 0: no sanitizer report either */
}

const struct test tests[] = {
    {"bad_multibulk_counts", bad_multibulk_counts, 0},
    {"bad_bulk_lengths", bad_bulk_lengths, 0},
    {"request_cut_anywhere", request_cut_anywhere, 0},
    {"bulk_cut_off_by_reset", bulk_cut_off_by_reset, 0},
    {"huge_claims_cost_what_is_sent", huge_claims_cost_what_is_sent, 0},
    {"huge_inline_line", huge_inline_line, 0},
    {"limits_have_flags", limits_have_flags, 0},
    {"client_that_never_reads", client_that_never_reads, 0},
    {"garbage_never_crashes", garbage_never_crashes, 120},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
