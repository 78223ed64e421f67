/* examples/httpd against curl: bodies byte for byte (text, binary, several MB, empty), the
 * header fields, byte ranges, conditional requests, HEAD, keep-alive and HTTP/1.0, index
 * files and 404s, threads and a clean exit. httpd is started on a free loopback port with a
 * temporary directory as its root, and stopped by PID; it must exit 0 (so a sanitizer
 * report fails the test). */
#include "harness.h"
#include "httpdtest.h"

#include <string.h>
#include <time.h>
#include <unistd.h>

#define MTIME 1000000000 /* Sun, 09 Sep 2001 01:46:40 GMT */
#define MTIME_TEXT "Sun, 09 Sep 2001 01:46:40 GMT"

static bool skip_without_curl(void)
{
    if (have_program("curl"))
        return false;
    printf("  skipped: curl not installed (Debian package curl)\n");
    return true;
}

/* The tree most tests serve: text, binary, a large file, an empty one, an index. */
static char *big; /* BIG_SIZE bytes of big.bin */
#define BIG_SIZE (8u * 1024u * 1024u + 123u)

static void standard_tree(struct tree *t)
{
    tree_new(t);
    tree_file(t, "hello.txt", "hello, world\n", 13);
    unsigned char all[256 * 4];
    for (size_t i = 0; i < sizeof all; i++)
        all[i] = (unsigned char)(i * 7 + i / 256); /* every byte value, CR LF NUL included */
    tree_file(t, "bytes.bin", all, sizeof all);
    static char mid[100000];
    fill_random(mid, sizeof mid, 7);
    tree_file(t, "mid.dat", mid, sizeof mid);
    big = malloc(BIG_SIZE);
    CHECK(big);
    fill_random(big, BIG_SIZE, 42);
    tree_file(t, "big.bin", big, BIG_SIZE);
    tree_file(t, "empty.txt", "", 0);
    tree_file(t, "index.html", "<h1>home</h1>\n", 14);
    tree_file(t, "sub dir/a b.txt", "spaced\n", 7);
    tree_file(t, "sub dir/index.html", "<p>sub</p>\n", 11);
    tree_mtime(t, "hello.txt", MTIME);
}

static void fetch_equals(int port, const struct tree *t, const char *path, const char *file,
                         const char *extra)
{
    size_t n;
    char *body = curl((const char *[]){url(port, path), extra ? extra : "-f", NULL}, &n);
    if (!same_as_file(tree_path(t, file), body, n))
        fprintf(stderr, "  %s: %zu bytes differ from %s\n", path, n, file);
    CHECK(same_as_file(tree_path(t, file), body, n));
    free(body);
}

static void check_bodies(const char *const *flags)
{
    struct tree t;
    standard_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, flags);
    static const char *const files[] = {"hello.txt", "bytes.bin", "mid.dat", "big.bin",
                                        "empty.txt", "index.html"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[64];
        snprintf(path, sizeof path, "/%s", files[i]);
        fetch_equals(h.port, &t, path, files[i], NULL);
        fetch_equals(h.port, &t, path, files[i], "-0"); /* HTTP/1.0 */
    }
    fetch_equals(h.port, &t, "/", "index.html", NULL);
    fetch_equals(h.port, &t, "/sub%20dir/a%20b.txt", "sub dir/a b.txt", NULL);
    fetch_equals(h.port, &t, "/sub%20dir/", "sub dir/index.html", NULL);
    fetch_equals(h.port, &t, "/sub%20dir", "sub dir/index.html", NULL);
    fetch_equals(h.port, &t, "/./hello.txt?query=1", "hello.txt", "--path-as-is");
    fetch_equals(h.port, &t, "//sub%20dir//a%20b.txt", "sub dir/a b.txt", "--path-as-is");
    httpd_stop(&h);
    tree_remove(&t);
    free(big);
}

static void bodies_are_byte_identical(void)
{
    if (!skip_without_curl())
        check_bodies(NULL);
}

/* The other paths: every body by sendfile (--read-max 0), and no file kept open. */
static void bodies_without_cache_or_reads(void)
{
    if (!skip_without_curl())
        check_bodies((const char *[]){"--read-max", "0", "--fd-cache", "0", NULL});
}

/* Every body read with the headers (--read-max past the largest file). */
static void bodies_all_read(void)
{
    if (!skip_without_curl())
        check_bodies((const char *[]){"--read-max", "20000000", NULL});
}

/* curl -D - -o /dev/null: the response's header block. */
static char *head_of(int port, const char *path, const char *const *more)
{
    const char *args[16] = {"-D", "-", "-o", "/dev/null", url(port, path)};
    int n = 5;
    for (; more && *more; more++)
        args[n++] = *more;
    args[n] = NULL;
    return curl(args, NULL);
}

static void expect_field(const char *head, const char *field)
{
    if (!strstr(head, field))
        fprintf(stderr, "  want \"%s\" in:\n%s", field, head);
    CHECK(strstr(head, field) != NULL);
}

static void header_fields(void)
{
    if (skip_without_curl())
        return;
    struct tree t;
    tree_new(&t);
    static const struct {
        const char *name, *type;
    } types[] = {
        {"a.html", "text/html"}, {"a.HTM", "text/html"},     {"a.css", "text/css"},
        {"a.js", "text/javascript"}, {"a.json", "application/json"}, {"a.png", "image/png"},
        {"a.jpg", "image/jpeg"}, {"a.svg", "image/svg+xml"}, {"a.txt", "text/plain"},
        {"a.wasm", "application/wasm"}, {"a.xyz", "application/octet-stream"},
        {"noext", "application/octet-stream"}, {"dot.", "application/octet-stream"},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        tree_file(&t, types[i].name, "12345", 5);
        tree_mtime(&t, types[i].name, MTIME);
    }
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char path[64], want[128];
        snprintf(path, sizeof path, "/%s", types[i].name);
        char *head = head_of(h.port, path, NULL);
        CHECK(strncmp(head, "HTTP/1.1 200 OK\r\n", 17) == 0);
        snprintf(want, sizeof want, "\r\nContent-Type: %s\r\n", types[i].type);
        expect_field(head, want);
        expect_field(head, "\r\nContent-Length: 5\r\n");
        expect_field(head, "\r\nLast-Modified: " MTIME_TEXT "\r\n");
        expect_field(head, "\r\nAccept-Ranges: bytes\r\n");
        expect_field(head, "\r\nServer: weft-httpd\r\n");
        /* Date: now, in IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"). */
        const char *date = strstr(head, "\r\nDate: ");
        CHECK(date);
        struct tm tm = {0};
        const char *end = strptime(date + 8, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        CHECK(end && end[0] == '\r');
        time_t when = timegm(&tm), now = time(NULL);
        CHECK(when <= now + 1 && when >= now - 60);
        CHECK(!strstr(head, "Connection:")); /* HTTP/1.1: kept alive by default */
        free(head);
    }
    /* HTTP/1.0 is closed after the response unless it asks to keep it. */
    char *head = head_of(h.port, "/a.txt", (const char *[]){"-0", NULL});
    expect_field(head, "\r\nConnection: close\r\n");
    free(head);
    head = head_of(h.port, "/a.txt", (const char *[]){"-0", "-H", "Connection: keep-alive", NULL});
    expect_field(head, "\r\nConnection: keep-alive\r\n");
    free(head);
    head = head_of(h.port, "/a.txt", (const char *[]){"-H", "Connection: close", NULL});
    expect_field(head, "\r\nConnection: close\r\n");
    free(head);
    head = head_of(h.port, "/missing.txt", NULL);
    CHECK(strncmp(head, "HTTP/1.1 404 Not Found\r\n", 24) == 0);
    free(head);
    httpd_stop(&h);
    tree_remove(&t);
}

/* HEAD: the same fields as GET, no body (the next response on the connection starts right
 * after the header block). */
static void head_requests(void)
{
    if (skip_without_curl())
        return;
    struct tree t;
    standard_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    size_t n;
    char *out = curl((const char *[]){"-I", url(h.port, "/big.bin"), NULL}, &n);
    CHECK(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0);
    expect_field(out, "\r\nContent-Length: 8388731\r\n");
    CHECK(n >= 4 && memcmp(out + n - 4, "\r\n\r\n", 4) == 0); /* and nothing after */
    free(out);
    struct http_conn c;
    http_open(&c, h.port);
    http_send(&c, "HEAD /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
                  "HEAD /nothere HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    struct http_resp r;
    http_read(&c, &r, true, 20000);
    CHECK(r.status == 200);
    char *cl = http_header(&r, "Content-Length");
    CHECK(cl && strcmp(cl, "13") == 0);
    free(cl);
    http_resp_free(&r);
    http_read(&c, &r, false, 20000);
    CHECK(r.status == 200 && r.body_len == 13 && memcmp(r.body, "hello, world\n", 13) == 0);
    http_resp_free(&r);
    http_read(&c, &r, true, 20000);
    CHECK(r.status == 404);
    http_resp_free(&r);
    http_read(&c, &r, false, 20000);
    CHECK(r.status == 200 && r.body_len == 13);
    http_resp_free(&r);
    http_close(&c);
    httpd_stop(&h);
    tree_remove(&t);
    free(big);
}

/* curl -r FROM-TO: status, Content-Range, and the bytes of the file. */
static void expect_range(int port, const char *range, size_t size, size_t first, size_t last)
{
    size_t n;
    char *body = curl((const char *[]){"-r", range, url(port, "/big.bin"), NULL}, &n);
    if (n != last - first + 1 || memcmp(body, big + first, n) != 0)
        fprintf(stderr, "  range %s: got %zu bytes, want %zu from %zu\n", range, n,
                last - first + 1, first);
    CHECK(n == last - first + 1 && memcmp(body, big + first, n) == 0);
    free(body);
    char *head = head_of(port, "/big.bin", (const char *[]){"-r", range, NULL});
    char want[128];
    snprintf(want, sizeof want, "\r\nContent-Range: bytes %zu-%zu/%zu\r\n", first, last, size);
    CHECK(strncmp(head, "HTTP/1.1 206 Partial Content\r\n", 30) == 0);
    expect_field(head, want);
    free(head);
}

static void byte_ranges(void)
{
    if (skip_without_curl())
        return;
    struct tree t;
    standard_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    size_t size = BIG_SIZE;
    expect_range(h.port, "0-99", size, 0, 99);
    expect_range(h.port, "0-0", size, 0, 0);
    expect_range(h.port, "100-", size, 100, size - 1);            /* sendfile from 100 */
    expect_range(h.port, "-500", size, size - 500, size - 1);     /* suffix */
    expect_range(h.port, "-99999999999", size, 0, size - 1);      /* suffix past the start */
    expect_range(h.port, "5000000-99999999999", size, 5000000, size - 1); /* end clamped */
    expect_range(h.port, "1000-1000", size, 1000, 1000);
    /* Nothing of the file: 416 with its size. */
    char want[80];
    snprintf(want, sizeof want, "\r\nContent-Range: bytes */%zu\r\n", size);
    static const char *const beyond[] = {"8388731-", "9000000-9000010", "-0"};
    for (size_t i = 0; i < sizeof beyond / sizeof beyond[0]; i++) {
        char *head = head_of(h.port, "/big.bin", (const char *[]){"-r", beyond[i], NULL});
        CHECK(strncmp(head, "HTTP/1.1 416 Range Not Satisfiable\r\n", 36) == 0);
        expect_field(head, want);
        free(head);
    }
    char *head = head_of(h.port, "/empty.txt", (const char *[]){"-r", "0-", NULL});
    CHECK(strncmp(head, "HTTP/1.1 416 ", 13) == 0);
    free(head);
    /* Several ranges, or a Range that is not bytes=: the whole file. */
    static const char *const whole[] = {"Range: bytes=0-1,5-6", "Range: lines=1-2",
                                        "Range: bytes=5-1", "Range: bytes=x-"};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
        size_t n;
        char *body = curl((const char *[]){"-H", whole[i], url(h.port, "/hello.txt"), NULL}, &n);
        CHECK(n == 13 && memcmp(body, "hello, world\n", 13) == 0);
        free(body);
    }
    /* If-Range: a range only while the file is the one the date names. */
    size_t n;
    char *body = curl((const char *[]){"-r", "0-4", "-H", "If-Range: " MTIME_TEXT,
                                       url(h.port, "/hello.txt"), NULL}, &n);
    CHECK(n == 5 && memcmp(body, "hello", 5) == 0);
    free(body);
    body = curl((const char *[]){"-r", "0-4", "-H", "If-Range: Sat, 01 Jan 2000 00:00:00 GMT",
                                 url(h.port, "/hello.txt"), NULL}, &n);
    CHECK(n == 13);
    free(body);
    body = curl((const char *[]){"-r", "0-4", "-H", "If-Range: \"some-etag\"",
                                 url(h.port, "/hello.txt"), NULL}, &n);
    CHECK(n == 13);
    free(body);
    httpd_stop(&h);
    tree_remove(&t);
    free(big);
}

/* curl -w %{http_code} with the given extra arguments. */
static int status_of(int port, const char *path, const char *const *more)
{
    const char *args[16] = {"-o", "/dev/null", "-w", "%{http_code}", url(port, path)};
    int n = 5;
    for (; more && *more; more++)
        args[n++] = *more;
    args[n] = NULL;
    char *out = curl(args, NULL);
    int code = atoi(out);
    free(out);
    return code;
}

static void conditional_requests(void)
{
    if (skip_without_curl())
        return;
    struct tree t;
    standard_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    int p = h.port;
    /* curl -z DATE sends If-Modified-Since: DATE (and reads a 200 for a file no newer than
     * DATE as 304 by itself: the cases where the server must say 200 use -H). */
    CHECK(status_of(p, "/hello.txt", (const char *[]){"-z", MTIME_TEXT, NULL}) == 304);
    CHECK(status_of(p, "/hello.txt", (const char *[]){"-z", "Sun, 09 Sep 2001 01:46:41 GMT",
                                                      NULL}) == 304);
    CHECK(status_of(p, "/hello.txt", (const char *[]){"-z", "Sun, 09 Sep 2001 01:46:39 GMT",
                                                      NULL}) == 200);
    /* The two obsolete date forms, which a server must read too. */
    CHECK(status_of(p, "/hello.txt", (const char *[]){"-H",
        "If-Modified-Since: Sunday, 09-Sep-01 01:46:40 GMT", NULL}) == 304);
    CHECK(status_of(p, "/hello.txt", (const char *[]){"-H",
        "If-Modified-Since: Sun Sep  9 01:46:40 2001", NULL}) == 304);
    CHECK(status_of(p, "/hello.txt", (const char *[]){"-H",
        "If-Modified-Since: Sun Sep  9 01:46:39 2001", NULL}) == 200);
    /* An invalid date is ignored. */
    CHECK(status_of(p, "/hello.txt", (const char *[]){"-H", "If-Modified-Since: yesterday",
                                                      NULL}) == 200);
    /* If-None-Match: no ETag is sent, so only "*" matches, and it overrides the date. */
    CHECK(status_of(p, "/hello.txt", (const char *[]){"-H", "If-None-Match: *", NULL}) == 304);
    CHECK(status_of(p, "/hello.txt", (const char *[]){"-H", "If-None-Match: \"x\"", "-H",
                                                      "If-Modified-Since: " MTIME_TEXT,
                                                      NULL}) == 200);
    /* A 304 has no body and keeps the fields that describe the file. */
    char *head = head_of(p, "/hello.txt", (const char *[]){"-z", MTIME_TEXT, NULL});
    CHECK(strncmp(head, "HTTP/1.1 304 Not Modified\r\n", 27) == 0);
    expect_field(head, "\r\nLast-Modified: " MTIME_TEXT "\r\n");
    free(head);
    size_t n;
    char *body = curl((const char *[]){"-z", MTIME_TEXT, url(p, "/hello.txt"), NULL}, &n);
    CHECK(n == 0);
    free(body);
    httpd_stop(&h);
    tree_remove(&t);
    free(big);
}

/* One curl, several URLs: one connection for all (HTTP/1.1, or 1.0 asking keep-alive). */
static void keep_alive_reuses_the_connection(void)
{
    if (skip_without_curl())
        return;
    struct tree t;
    standard_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    const char *u = url(h.port, "/hello.txt");
    char *out = curl((const char *[]){"-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                                      "-w", "%{num_connects} ", u, u, u, NULL}, NULL);
    CHECK(strcmp(out, "1 0 0 ") == 0);
    free(out);
    /* After a 404, a 206 and a HEAD too. */
    out = curl((const char *[]){"-o", "/dev/null", "-o", "/dev/null", "-w", "%{num_connects} ",
                                url(h.port, "/nothere"), url(h.port, "/big.bin"), NULL}, NULL);
    CHECK(strcmp(out, "1 0 ") == 0);
    free(out);
    out = curl((const char *[]){"-0", "-o", "/dev/null", "-o", "/dev/null", "-w",
                                "%{num_connects} ", u, u, NULL}, NULL);
    CHECK(strcmp(out, "1 1 ") == 0); /* HTTP/1.0: closed after each */
    free(out);
    out = curl((const char *[]){"-0", "-H", "Connection: keep-alive", "-o", "/dev/null", "-o",
                                "/dev/null", "-w", "%{num_connects} ", u, u, NULL}, NULL);
    CHECK(strcmp(out, "1 0 ") == 0);
    free(out);
    httpd_stop(&h);
    tree_remove(&t);
    free(big);
}

static void not_found_and_directories(void)
{
    if (skip_without_curl())
        return;
    struct tree t;
    tree_new(&t);
    tree_file(&t, "dir/file.txt", "x", 1);
    tree_file(&t, "noindex/file.txt", "y", 1);
    tree_file(&t, "weird/index.html/file", "z", 1); /* an index.html that is a directory */
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    CHECK(status_of(h.port, "/", NULL) == 404); /* no index.html: no listing either */
    CHECK(status_of(h.port, "/noindex/", NULL) == 404);
    CHECK(status_of(h.port, "/weird/", NULL) == 404);
    CHECK(status_of(h.port, "/missing", NULL) == 404);
    CHECK(status_of(h.port, "/dir/file.txt/more", NULL) == 404);
    CHECK(status_of(h.port, "/dir/missing/file.txt", NULL) == 404);
    CHECK(status_of(h.port, "/dir/file.txt", NULL) == 200);
    httpd_stop(&h);
    tree_remove(&t);
}

/* --threads 3: requests spread over three schedulers, each with its own file cache. */
static void threads_serve_too(void)
{
    if (skip_without_curl())
        return;
    struct tree t;
    standard_tree(&t);
    struct httpd_proc h;
    httpd_start(&h, &t, (const char *[]){"--threads", "3", NULL});
    for (int i = 0; i < test_scale(20); i++) {
        fetch_equals(h.port, &t, "/mid.dat", "mid.dat", NULL);
        fetch_equals(h.port, &t, "/hello.txt", "hello.txt", NULL);
    }
    httpd_stop(&h);
    tree_remove(&t);
    free(big);
}

/* A file replaced on disk is served anew once the cache's second is over. */
static void replaced_file_is_seen(void)
{
    if (skip_without_curl())
        return;
    struct tree t;
    tree_new(&t);
    tree_file(&t, "f.txt", "first\n", 6);
    struct httpd_proc h;
    httpd_start(&h, &t, NULL);
    fetch_equals(h.port, &t, "/f.txt", "f.txt", NULL);
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", tree_path(&t, "f.txt"));
    tree_file(&t, "g.txt", "the second, longer\n", 19);
    char from[512];
    snprintf(from, sizeof from, "%s", tree_path(&t, "g.txt"));
    CHECK(rename(from, tmp) == 0);
    bool seen = false;
    for (int i = 0; i < 100 && !seen; i++) { /* polled, up to 10 s */
        size_t n;
        char *body = curl((const char *[]){url(h.port, "/f.txt"), NULL}, &n);
        seen = n == 19 && memcmp(body, "the second, longer\n", 19) == 0;
        CHECK(seen || (n == 6 && memcmp(body, "first\n", 6) == 0)); /* old or new, whole */
        free(body);
        if (!seen)
            usleep(100000);
    }
    CHECK(seen);
    httpd_stop(&h);
    tree_remove(&t);
}

/* SIGTERM with a keep-alive client connected: exit 0. */
static void sigterm_with_a_client_connected(void)
{
    struct tree t;
    tree_new(&t);
    tree_file(&t, "a.txt", "a\n", 2);
    struct httpd_proc h;
    httpd_start(&h, &t, (const char *[]){"-g", "200", NULL});
    struct http_conn c;
    http_open(&c, h.port);
    http_send(&c, "GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    struct http_resp r;
    http_read(&c, &r, false, 20000);
    CHECK(r.status == 200);
    http_resp_free(&r);
    httpd_stop(&h);
    CHECK(http_closed(&c, 20000));
    http_close(&c);
    tree_remove(&t);
}

const struct test tests[] = {
    {"bodies_are_byte_identical", bodies_are_byte_identical, 120},
    {"bodies_without_cache_or_reads", bodies_without_cache_or_reads, 120},
    {"bodies_all_read", bodies_all_read, 120},
    {"header_fields", header_fields, 0},
    {"head_requests", head_requests, 0},
    {"byte_ranges", byte_ranges, 120},
    {"conditional_requests", conditional_requests, 0},
    {"keep_alive_reuses_the_connection", keep_alive_reuses_the_connection, 0},
    {"not_found_and_directories", not_found_and_directories, 0},
    {"threads_serve_too", threads_serve_too, 120},
    {"replaced_file_is_seen", replaced_file_is_seen, 0},
    {"sigterm_with_a_client_connected", sigterm_with_a_client_connected, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
