/* libFuzzer target: examples/httpd's request reader, fed an arbitrary byte stream through a
 * real channel (a socketpair read outside any coroutine), and every request it accepts
 * answered by the real responder from a small directory tree (so the path walk, ranges,
 * conditions and both body paths run on fuzzed input too), each response checked.
 * What must hold: no crash or sanitizer report; an accepted request's path starts with '/',
 * holds no NUL and no ".." segment, and is no longer than the stream; a failed read owes one
 * of the statuses httpd sends; every response is a status line, header fields, and exactly
 * as many body bytes as its Content-Length says (none for HEAD and 304).
 *
 * Input layout: byte 0 bit 0: small limits (line 64, headers 128, body 64 bytes), so the
 * limit paths are reached with short inputs; bit 1: no file cache; bit 2: every body by
 * sendfile (--read-max 0); the rest is the stream.
 */
#include "httpd.h"

#include <weft.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                          \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz_httpd: %s failed at line %d\n", #cond, __LINE__);            \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

static int rootfd = -1;
static char root_dir[] = "/tmp/fuzz-httpd-XXXXXX";

/* The tree goes when the fuzzer exits (libFuzzer has no teardown hook). */
static void remove_root(void)
{
    static const char *const names[] = {"a", "b.html", "c.bin", "e", "index.html",
                                        "d/index.html", "l", "d"};
    char path[300];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", root_dir, names[i]);
        if (unlink(path) != 0)
            rmdir(path);
    }
    rmdir(root_dir);
}

static void put_file(const char *dir, const char *name, size_t n)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    char buf[4096];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (char)('a' + i % 26);
    for (size_t at = 0; at < n;) {
        size_t k = n - at < sizeof buf ? n - at : sizeof buf;
        REQUIRE(write(fd, buf, k) == (ssize_t)k);
        at += k;
    }
    close(fd);
}

/* The served tree, made once: files of a few sizes, a directory with an index, a link. */
static void make_root(void)
{
    char *dir = root_dir, path[300];
    REQUIRE(mkdtemp(dir));
    atexit(remove_root);
    snprintf(path, sizeof path, "%s/d", dir);
    REQUIRE(mkdir(path, 0755) == 0);
    put_file(dir, "a", 13);
    put_file(dir, "b.html", 5000);
    put_file(dir, "c.bin", 70000);
    put_file(dir, "e", 0);
    put_file(dir, "index.html", 20);
    put_file(dir, "d/index.html", 3);
    snprintf(path, sizeof path, "%s/l", dir);
    REQUIRE(symlink("a", path) == 0);
    rootfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    REQUIRE(rootfd >= 0);
}

/* The decoded path's promises. */
static void check_request(const struct http_request *r, size_t stream)
{
    REQUIRE(r->minor >= 0 && r->minor <= 9);
    if (r->method == HTTP_OTHER)
        return;
    REQUIRE(r->path_len >= 1 && r->path[0] == '/' && r->path_len <= stream);
    REQUIRE(r->path[r->path_len] == '\0' && memchr(r->path, '\0', r->path_len) == NULL);
    for (size_t i = 0; i < r->path_len; i++) {
        bool seg_start = i == 0 || r->path[i - 1] == '/';
        bool dotdot = seg_start && i + 1 < r->path_len && r->path[i] == '.' &&
                      r->path[i + 1] == '.' && (i + 2 == r->path_len || r->path[i + 2] == '/');
        REQUIRE(!dotdot);
    }
    if (r->range == RANGE_FROM)
        REQUIRE(r->range_first <= r->range_last);
}

/* Length of the one response at p[0..n), or 0 if it is not one. */
static size_t response_len(const char *p, size_t n, bool head)
{
    if (n < 16 || memcmp(p, "HTTP/1.1 ", 9) != 0)
        return 0;
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end)
        return 0;
    size_t hlen = (size_t)(end - p) + 4, body = 0;
    int status = atoi(p + 9);
    const char *cl = memmem(p, hlen, "\r\nContent-Length: ", 18);
    if (cl && !head && status != 304)
        body = strtoull(cl + 18, NULL, 10);
    return hlen + body <= n ? hlen + body : 0;
}

/* Everything the responses sent so far, checked: whole responses, one after another. */
static void drain_responses(int fd, const struct http_request *r, int count)
{
    static char buf[1 << 20];
    size_t n = 0;
    for (;;) {
        ssize_t k = recv(fd, buf + n, sizeof buf - n, MSG_DONTWAIT);
        if (k <= 0)
            break;
        n += (size_t)k;
        REQUIRE(n < sizeof buf);
    }
    size_t at = 0;
    for (int i = 0; i < count; i++) {
        size_t k = response_len(buf + at, n - at, r->method == HTTP_HEAD);
        REQUIRE(k > 0);
        at += k;
    }
    REQUIRE(at == n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (rootfd < 0)
        make_root();
    struct httpd_config cfg = {.rootfd = rootfd, .quiet = true};
    cfg.limits = (data[0] & 1) ? (struct http_limits){64, 128, 64, -1, 5000}
                               : (struct http_limits){HTTP_MAX_LINE_DEFAULT,
                                                      HTTP_MAX_HEADERS_DEFAULT,
                                                      HTTP_MAX_BODY_DEFAULT, -1, 5000};
    cfg.fd_cache = (data[0] & 2) ? 0 : 16;
    cfg.read_max = (data[0] & 4) ? 0 : HTTPD_READ_MAX_DEFAULT;
    struct site site = {.cfg = &cfg, .files = fcache_new(rootfd, cfg.fd_cache)};
    REQUIRE(site.files);
    data++;
    size--;

    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    int big = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    REQUIRE(size == 0 || write(sv[1], data, size) == (ssize_t)size);
    shutdown(sv[1], SHUT_WR);
    weft_chan *c = weft_chan_open(sv[0]);
    REQUIRE(c);

    struct http_request rq;
    http_request_init(&rq);
    for (;;) {
        int rc = http_request_read(c, &rq, &cfg.limits);
        if (rc < 0) {
            static const int owed[] = {0, 400, 408, 413, 414, 431, 503, 505};
            bool known = false;
            for (size_t i = 0; i < sizeof owed / sizeof owed[0]; i++)
                known |= rq.status == owed[i];
            REQUIRE(known);
            REQUIRE(rq.status != 408); /* everything is there: nothing can time out */
            if (rq.status) {
                http_respond_error(c, &rq, &site);
                REQUIRE(weft_flush(c) == 0);
                drain_responses(sv[1], &rq, 1);
            }
        }
        if (rc <= 0)
            break;
        check_request(&rq, size);
        REQUIRE(http_respond(c, &rq, &site) == 0);
        REQUIRE(weft_flush(c) == 0);
        drain_responses(sv[1], &rq, 1);
        if (!rq.keep_alive)
            break;
    }
    http_request_release(&rq);
    weft_close(c);
    close(sv[1]);
    fcache_free(site.files);
    return 0;
}
