/* examples/httpd over raw sockets, against what curl would never send: pipelining, malformed
 * requests, the limits (414, 431, 413), every spelling of a way out of the root (encoded,
 * double-encoded, absolute form, symbolic links), a client too slow to finish its request
 * (408 at the idle timeout) and one that never reads a 100 MB response (dropped at the write
 * timeout, memory bounded, others served meanwhile), and garbage. The server never crashes,
 * and what a client makes it hold is bounded. Memory bounds are asserted where resident
 * memory measures httpd (memory_is_measurable), printed everywhere. */
#include "harness.h"
#include "httpdtest.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
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

static void reset_close(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static void small_tree(struct tree *t)
{
    tree_new(t);
    tree_file(t, "hello.txt", "hello, world\n", 13);
    tree_file(t, "sub/inner.txt", "inner\n", 6);
    static char mid[200000];
    fill_random(mid, sizeof mid, 3);
    tree_file(t, "mid.bin", mid, sizeof mid);
}

/* The server still answers, on a fresh connection. */
static void still_serving(int port)
{
    struct http_resp r;
    http_get(port, "GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    CHECK(r.status == 200 && r.body_len == 13);
    http_resp_free(&r);
}

/* Send the bytes, expect a response with this status, then the connection closed. */
static void expect_status_close(int port, const char *data, size_t n, int status)
{
    struct http_conn c;
    http_open(&c, port);
    send_some(c.fd, data, n);
    struct http_resp r;
    http_read(&c, &r, false, 20000);
    if (r.status != status)
        fprintf(stderr, "  sent \"%.60s\": want %d, got %d\n", data, status, r.status);
    CHECK(r.status == status);
    char *conn = http_header(&r, "Connection");
    CHECK(conn && strcmp(conn, "close") == 0);
    free(conn);
    http_resp_free(&r);
    CHECK(http_closed(&c, 20000));
    http_close(&c);
}

#define EXPECT(port, lit, status) expect_status_close(port, lit, sizeof lit - 1, status)

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

/* ---- Pipelining ---- */

struct expect {
    const char *request;
    int status;
    const char *body; /* NULL: don't compare; "" with len 0 */
    size_t len;
    bool head;
};

static void pipelined_requests(void)
{
    struct tree t;
    small_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    static char mid[200000];
    fill_random(mid, sizeof mid, 3);
    const struct expect kinds[] = {
        {"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", 200, "hello, world\n", 13, false},
        {"HEAD /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", 200, "", 0, true},
        {"GET /nothere HTTP/1.1\r\nHost: x\r\n\r\n", 404, NULL, 0, false},
        {"GET /hello.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=7-11\r\n\r\n", 206, "world", 5,
         false},
        {"GET /mid.bin HTTP/1.1\r\nHost: x\r\n\r\n", 200, mid, sizeof mid, false}, /* sendfile */
        {"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 405, NULL, 0,
         false},
        {"GET /sub/inner.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
         "3\r\nabc\r\n0\r\n\r\n", 200, "inner\n", 6, false},
        {"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200, "hello, world\n", 13,
         false},
        {"\r\nGET http://example.com/sub/inner.txt HTTP/1.1\r\nHost: example.com\r\n\r\n", 200,
         "inner\n", 6, false},
    };
    size_t nk = sizeof kinds / sizeof kinds[0], count = 300;
    size_t total = 0;
    for (size_t i = 0; i < count; i++)
        total += strlen(kinds[i % nk].request);
    char *all = malloc(total + 1), *p = all;
    CHECK(all);
    for (size_t i = 0; i < count; i++)
        p = stpcpy(p, kinds[i % nk].request);
    struct http_conn c;
    http_open(&c, h.port);
    /* In one write; then again cut into pieces of 1 to 97 bytes. */
    for (int round = 0; round < 2; round++) {
        if (round == 0) {
            write_all(c.fd, all, total);
        } else {
            for (size_t at = 0, k = 1; at < total; at += k, k = k % 97 + 1)
                write_all(c.fd, all + at, at + k <= total ? k : total - at);
        }
        for (size_t i = 0; i < count; i++) {
            const struct expect *e = &kinds[i % nk];
            struct http_resp r;
            http_read(&c, &r, e->head, 20000);
            if (r.status != e->status)
                fprintf(stderr, "  request %zu: want %d, got %d\n", i, e->status, r.status);
            CHECK(r.status == e->status);
            if (e->body)
                CHECK(r.body_len == e->len && memcmp(r.body, e->body, e->len) == 0);
            http_resp_free(&r);
        }
    }
    free(all);
    /* The connection is still open for more. */
    http_send(&c, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    struct http_resp r;
    http_read(&c, &r, false, 20000);
    CHECK(r.status == 200);
    http_resp_free(&r);
    CHECK(http_closed(&c, 20000));
    http_close(&c);
    httpd_stop(&h);
    tree_remove(&t);
}

/* ---- Malformed requests ---- */

static void malformed_requests(void)
{
    struct tree t;
    small_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    int p = h.port;
    EXPECT(p, "GET\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt\r\n\r\n", 400);                     /* HTTP/0.9 */
    EXPECT(p, "GET  /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", 400); /* two spaces */
    EXPECT(p, "GET /hello.txt HTTP/1.1 \r\nHost: x\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.10\r\nHost: x\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt http/1.1\r\nHost: x\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/2.0\r\nHost: x\r\n\r\n", 505);
    EXPECT(p, "G(T /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", 400);  /* not a token */
    EXPECT(p, "GET hello.txt HTTP/1.1\r\nHost: x\r\n\r\n", 400);   /* not origin form */
    EXPECT(p, "GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    EXPECT(p, "GET /a\x01z HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    EXPECT(p, "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400);        /* bad escapes */
    EXPECT(p, "GET /%4 HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt%00.png HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\n\r\n", 400);              /* 1.1 without Host */
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost : x\r\n\r\n", 400);  /* space before colon */
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\n: x\r\nHost: x\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nA: b\r\n folded\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n", 400); /* bare CR */
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
              "Content-Length: 2\r\n\r\nab", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
              "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);  /* smuggling's shape */
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              "zz\r\n", 400);
    EXPECT(p, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              "3\r\nabcX\r\n", 400);                                  /* no CRLF after data */
    EXPECT(p, "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n", 400);
    /* Other methods: 405 with Allow, and the connection goes on. */
    struct http_conn c;
    http_open(&c, p);
    static const char *const others[] = {"POST", "PUT", "DELETE", "OPTIONS", "get", "BREW"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        char req[128];
        snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\n\r\n", others[i],
                 strcmp(others[i], "OPTIONS") == 0 ? "*" : "/hello.txt");
        http_send(&c, req);
        struct http_resp r;
        http_read(&c, &r, false, 20000);
        CHECK(r.status == 405);
        char *allow = http_header(&r, "Allow");
        CHECK(allow && strcmp(allow, "GET, HEAD") == 0);
        free(allow);
        http_resp_free(&r);
    }
    http_close(&c);
    /* A request cut off by the client's close or reset: nothing owed, nothing kept. */
    for (int i = 0; i < 20; i++) {
        int fd = tcp_connect_loopback(p);
        send_some(fd, "GET /hello.txt HTTP/1.1\r\nHos", 28);
        i % 2 ? reset_close(fd) : close(fd);
    }
    still_serving(p);
    httpd_stop(&h);
    tree_remove(&t);
}

/* ---- Limits ---- */

static char *repeat(char ch, size_t n, const char *prefix, const char *suffix)
{
    size_t a = strlen(prefix), b = strlen(suffix);
    char *s = malloc(a + n + b + 1);
    CHECK(s);
    memcpy(s, prefix, a);
    memset(s + a, ch, n);
    memcpy(s + a + n, suffix, b + 1);
    return s;
}

static void limits(void)
{
    struct tree t;
    small_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, (const char *[]){"--max-line", "100", "--max-headers", "300",
                                          "--max-body", "1000", NULL});
    int p = h.port;
    /* The request line: 414 past --max-line, whether its end comes or not. */
    char *s = repeat('a', 200, "GET /", " HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_status_close(p, s, strlen(s), 414);
    free(s);
    s = repeat('a', 1000000, "GET /", ""); /* a line that never ends */
    expect_status_close(p, s, strlen(s), 414);
    free(s);
    /* Header lines: one too long, or too many bytes together, or too many lines: 431. */
    s = repeat('v', 400, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Long: ", "\r\n\r\n");
    expect_status_close(p, s, strlen(s), 431);
    free(s);
    s = repeat('v', 1000000, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Long: ", "");
    expect_status_close(p, s, strlen(s), 431);
    free(s);
    char many[4096] = "GET /hello.txt HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < 30; i++)
        strcat(many, "X-A: 1234567890\r\n"); /* 510 bytes in short lines */
    strcat(many, "\r\n");
    expect_status_close(p, many, strlen(many), 431);
    /* Within the limits, on one connection: fine. */
    struct http_conn c;
    http_open(&c, p);
    s = repeat('a', 60, "GET /hello.txt?", " HTTP/1.1\r\nHost: x\r\nX-1: 12345\r\n\r\n");
    http_send(&c, s);
    free(s);
    struct http_resp r;
    http_read(&c, &r, false, 20000);
    CHECK(r.status == 200);
    http_resp_free(&r);
    /* A body within --max-body is read and dropped; the next request follows it. */
    char body[2048];
    memset(body, 'b', sizeof body);
    http_send(&c, "POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    write_all(c.fd, body, 1000);
    http_send(&c, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "1f4\r\n");
    write_all(c.fd, body, 500);
    http_send(&c, "\r\n1F4;ext=1\r\n");
    write_all(c.fd, body, 500);
    http_send(&c, "\r\n0\r\nTrailer: x\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    http_read(&c, &r, false, 20000);
    CHECK(r.status == 405);
    http_resp_free(&r);
    http_read(&c, &r, false, 20000);
    CHECK(r.status == 200);
    http_resp_free(&r);
    http_read(&c, &r, false, 20000);
    CHECK(r.status == 200 && r.body_len == 13);
    http_resp_free(&r);
    http_close(&c);
    /* A body past --max-body: 413, announced or chunked, and the connection ends. */
    EXPECT(p, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n", 413);
    EXPECT(p, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
           413);
    s = repeat('b', 600, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "258\r\n", "\r\n258\r\n");
    expect_status_close(p, s, strlen(s), 413);
    free(s);
    EXPECT(p, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              "ffffffffffffffffffff\r\n", 413);
    still_serving(p);
    httpd_stop(&h);
    tree_remove(&t);
}

/* Lines of megabytes never cost megabytes. */
static void huge_lines_cost_little(void)
{
    struct tree t;
    small_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    long before = rss_kib(h.pid);
    char *s = repeat('a', 4u << 20, "GET /", "");
    for (int i = 0; i < 4; i++)
        expect_status_close(h.port, s, strlen(s), 414);
    free(s);
    s = repeat('h', 4u << 20, "GET / HTTP/1.1\r\nX: ", "");
    for (int i = 0; i < 4; i++)
        expect_status_close(h.port, s, strlen(s), 431);
    free(s);
    check_growth("8 lines of 4 MiB: RSS", before, rss_kib(h.pid), 4 * 1024);
    still_serving(h.port);
    httpd_stop(&h);
    tree_remove(&t);
}

/* ---- No way out of the root ---- */

static void traversal_is_refused(void)
{
    struct tree t;
    small_tree(&t);
    char secret[256];
    snprintf(secret, sizeof secret, "%s/secret.txt", t.dir); /* next to the root */
    FILE *f = fopen(secret, "w");
    CHECK(f && fputs("TOP SECRET\n", f) >= 0 && fclose(f) == 0);
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    static const char *const targets[] = {
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/%2e./secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/sub%2f..%2f..%2fsecret.txt",
        "/sub/..%2F..%2Fsecret.txt",
        "/%252e%252e/secret.txt",     /* double encoding: a name "%2e%2e", not ".." */
        "/%25%32%65%25%32%65/secret.txt",
        "/..\\secret.txt",
        "/..;/secret.txt",
        "/sub/../../../../../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "http://x/../secret.txt",
        "http://x/%2e%2e/secret.txt",
        "/..",
        "/%2e%2e",
        "/sub/%2e%2e/%2e%2e",
    };
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        char req[512];
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", targets[i]);
        struct http_resp r;
        http_get(h.port, req, &r);
        if (r.status != 400 && r.status != 404)
            fprintf(stderr, "  %s: %d\n", targets[i], r.status);
        CHECK(r.status == 400 || r.status == 404);
        CHECK(!memmem(r.body, r.body_len, "SECRET", 6) && !memmem(r.body, r.body_len, "root:", 5));
        http_resp_free(&r);
    }
    /* Inside the root, the same spellings are fine where they stay inside. */
    struct http_resp r;
    http_get(h.port, "GET /sub/%2e/inner.txt HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    CHECK(r.status == 200 && r.body_len == 6);
    http_resp_free(&r);
    http_get(h.port, "GET /sub%2finner.txt HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    CHECK(r.status == 200 && r.body_len == 6);
    http_resp_free(&r);
    httpd_stop(&h);
    tree_remove(&t);
}

static void symlinks_are_refused(void)
{
    struct tree t;
    small_tree(&t);
    char secret[256], link[300];
    snprintf(secret, sizeof secret, "%s/secret.txt", t.dir);
    FILE *f = fopen(secret, "w");
    CHECK(f && fputs("TOP SECRET\n", f) >= 0 && fclose(f) == 0);
    CHECK(symlink("../secret.txt", tree_path(&t, "rel")) == 0);         /* relative, out */
    CHECK(symlink(secret, tree_path(&t, "abs")) == 0);                  /* absolute, out */
    CHECK(symlink("..", tree_path(&t, "up")) == 0);                     /* a directory, out */
    CHECK(symlink("/etc", tree_path(&t, "etc")) == 0);
    CHECK(symlink("hello.txt", tree_path(&t, "inside")) == 0);          /* in: refused too */
    CHECK(symlink("sub", tree_path(&t, "subling")) == 0);
    snprintf(link, sizeof link, "%s", tree_path(&t, "sub/back"));
    CHECK(symlink("../../secret.txt", link) == 0);
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    static const char *const targets[] = {"/rel", "/abs", "/up/secret.txt", "/etc/passwd",
                                          "/inside", "/subling/inner.txt", "/sub/back",
                                          "/up/", "/up"};
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        char req[256];
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", targets[i]);
        struct http_resp r;
        http_get(h.port, req, &r);
        if (r.status != 404)
            fprintf(stderr, "  %s: %d\n", targets[i], r.status);
        CHECK(r.status == 404);
        http_resp_free(&r);
    }
    /* A FIFO, a socket-like special file: 404 at once, never waited on. */
    CHECK(mkfifo(tree_path(&t, "fifo"), 0644) == 0);
    struct http_resp r;
    http_get(h.port, "GET /fifo HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    CHECK(r.status == 404);
    http_resp_free(&r);
    still_serving(h.port);
    httpd_stop(&h);
    tree_remove(&t);
}

/* ---- Slow and stuck clients ---- */

/* A client that dribbles its header lines (a byte every 20 ms, never the end) gets 408 at
 * the idle timeout and is closed, however alive it looks; one that says nothing at all, the
 * same; others are served meanwhile. */
static void slowloris_dropped_at_the_timeout(void)
{
    struct tree t;
    small_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, (const char *[]){"--idle-timeout", "500", NULL});
    struct http_conn slow, silent;
    http_open(&slow, h.port);
    http_open(&silent, h.port);
    http_send(&slow, "GET /hello.txt HTTP/1.1\r\n");
    bool closed = false;
    for (int i = 0; i < 1500 && !closed; i++) { /* up to 30 s: the 408 comes at 0.5 s */
        char ch = "X-Slow: abcdefghij\r\n"[i % 20];
        if (send(slow.fd, &ch, 1, MSG_NOSIGNAL) != 1)
            break;
        if (i % 10 == 0)
            still_serving(h.port);
        closed = readable_within(slow.fd, 20);
    }
    CHECK(closed);
    struct http_resp r;
    http_read(&slow, &r, false, 20000);
    CHECK(r.status == 408);
    http_resp_free(&r);
    CHECK(http_closed(&slow, 20000));
    http_read(&silent, &r, false, 20000);
    CHECK(r.status == 408);
    http_resp_free(&r);
    CHECK(http_closed(&silent, 20000));
    http_close(&slow);
    http_close(&silent);
    /* A keep-alive connection idle after a response: 408 and closed too. */
    struct http_conn c;
    http_open(&c, h.port);
    http_send(&c, "GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    http_read(&c, &r, false, 20000);
    CHECK(r.status == 200);
    http_resp_free(&r);
    http_read(&c, &r, false, 20000);
    CHECK(r.status == 408);
    http_resp_free(&r);
    CHECK(http_closed(&c, 20000));
    http_close(&c);
    httpd_stop(&h);
    tree_remove(&t);
}

/* A client asks for 100 MB and never reads: httpd's memory stays put (sendfile holds
 * nothing in user space), others are served, and at the write timeout the client is
 * dropped: what it can still read is far less than the file, then the end. */
static void client_that_never_reads(void)
{
    struct tree t;
    small_tree(&t);
    int file = open(tree_path(&t, "huge.bin"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    CHECK(file >= 0 && ftruncate(file, 100l << 20) == 0 && close(file) == 0); /* 100 MB */
    struct httpd_proc h;
    httpd_start_logged(&h, &t, (const char *[]){"--write-timeout", "1000", NULL});
    long before = rss_kib(h.pid);
    /* A small receive buffer, set before connecting so that the window it advertises is
     * small from the start (set after, the kernel drops what the larger window let in, and
     * the reading below crawls through retransmission back-off). */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), small = 4096;
    CHECK(fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)h.port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
    write_all(fd, "GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n", 36);
    for (int i = 0; i < 5; i++)
        still_serving(h.port);
    CHECK(httpd_log_has(&h, "Connection timed out", 30000));
    for (int i = 0; i < 5; i++)
        still_serving(h.port);
    check_growth("a client not reading 100 MB: RSS", before, rss_kib(h.pid), 8 * 1024);
    size_t got = 0;
    char buf[65536];
    for (;;) {
        CHECK(readable_within(fd, 20000));
        ssize_t r = read(fd, buf, sizeof buf);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            break;
        CHECK(r > 0);
        got += (size_t)r;
    }
    printf("  the client got %zu bytes of 100 MB before the end\n", got);
    CHECK(got < (50u << 20));
    close(fd);
    httpd_stop(&h);
    tree_remove(&t);
}

/* ---- Garbage ---- */

static uint32_t rnd(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static void garbage_never_crashes(void)
{
    struct tree t;
    small_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, (const char *[]){"--idle-timeout", "2000", NULL});
    uint32_t seed = 20261207u;
    long before = rss_kib(h.pid);
    static const char valid[] = "GET /hello.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=1-3\r\n"
                                "If-Modified-Since: Sun, 09 Sep 2001 01:46:40 GMT\r\n\r\n"
                                "POST /mid.bin HTTP/1.1\r\nHost: y\r\nContent-Length: 4\r\n\r\n"
                                "abcdGET /sub/%2e%2e/mid.bin HTTP/1.0\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n2\r\nxx\r\n0\r\n\r\n";
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
                    buf[rnd(&seed) % n] = " \r\n:/%.-0123456789xX\0"[rnd(&seed) % 22];
        }
        int fd = tcp_connect_loopback(h.port);
        send_some(fd, buf, n);
        if (rnd(&seed) % 2)
            reset_close(fd);
        else
            close(fd);
    }
    still_serving(h.port);
    check_growth("300 connections of garbage: RSS", before, rss_kib(h.pid), 8 * 1024);
    httpd_stop(&h);
    tree_remove(&t);
}

const struct test tests[] = {
    {"pipelined_requests", pipelined_requests, 0},
    {"malformed_requests", malformed_requests, 0},
    {"limits", limits, 0},
    {"huge_lines_cost_little", huge_lines_cost_little, 0},
    {"traversal_is_refused", traversal_is_refused, 0},
    {"symlinks_are_refused", symlinks_are_refused, 0},
    {"slowloris_dropped_at_the_timeout", slowloris_dropped_at_the_timeout, 0},
    {"client_that_never_reads", client_that_never_reads, 120},
    {"garbage_never_crashes", garbage_never_crashes, 120},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
