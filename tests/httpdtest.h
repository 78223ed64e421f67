/* Helpers for the tests of examples/httpd: a temporary directory tree to serve, httpd started
 * on a free loopback port and stopped by PID, HTTP/1.1 over plain sockets (responses read
 * one at a time, whole, so pipelined ones come apart), and curl. Everything fails the running
 * test (CHECK) rather than returning errors. */
#ifndef WEFT_TEST_HTTPDTEST_H
#define WEFT_TEST_HTTPDTEST_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

/* A temporary directory (/tmp/weft-httpd-XXXXXX) with the served root in DIR/root. */
struct tree {
    char dir[64];
    char root[80];
};
void tree_new(struct tree *t);
/* Write n bytes as DIR/root/name (name may hold '/': directories are made). */
void tree_file(struct tree *t, const char *name, const void *data, size_t n);
/* Path of name under the root, in a static buffer (overwritten by the next call). */
const char *tree_path(const struct tree *t, const char *name);
/* Set a file's modification time. */
void tree_mtime(struct tree *t, const char *name, time_t when);
void tree_remove(struct tree *t);

struct httpd_proc {
    pid_t pid;
    int port;
    int err_fd; /* its stderr (httpd_start_logged), else -1 */
};
/* Start build/examples/httpd -p 0 -q -r ROOT with the extra arguments (NULL-terminated). */
void httpd_start(struct httpd_proc *p, const struct tree *t, const char *const *extra);
/* The same without -q, its stderr (a line per connection) on p->err_fd. */
void httpd_start_logged(struct httpd_proc *p, const struct tree *t, const char *const *extra);
/* Wait (up to timeout_ms) for a line of its log containing text. */
bool httpd_log_has(struct httpd_proc *p, const char *text, int timeout_ms);
/* SIGTERM, reap, check it exited 0 (a sanitizer report or crash fails the test). */
void httpd_stop(struct httpd_proc *p);

/* An HTTP connection with its own read buffer. */
struct http_conn {
    int fd;
    char *buf;
    size_t len, cap;
};
struct http_resp {
    int status;
    char *head;      /* status line and header lines, NUL-terminated */
    char *body;      /* body bytes (NUL-terminated for convenience) */
    size_t body_len;
};
void http_open(struct http_conn *c, int port);
void http_close(struct http_conn *c);
void http_send(struct http_conn *c, const char *data);
/* Read one whole response (no body for a HEAD request or a 304, else Content-Length bytes);
 * fails the test if none comes within timeout_ms. */
void http_read(struct http_conn *c, struct http_resp *r, bool head_request, int timeout_ms);
/* A header's value (the first with that name, any case), copied; NULL if absent. */
char *http_header(const struct http_resp *r, const char *name);
void http_resp_free(struct http_resp *r);
/* Send a request on a new connection, read its response, close. */
void http_get(int port, const char *request, struct http_resp *r);
/* Whether the server closed the connection (end of file or reset) within timeout_ms; what
 * it sent first is kept in c->buf. */
bool http_closed(struct http_conn *c, int timeout_ms);

/* Run curl with the arguments (NULL-terminated); return its standard output (malloc'd, its
 * length in *n) and check it exits 0. */
char *curl(const char *const *args, size_t *n);
/* "http://127.0.0.1:PORT/path" in a static buffer (one of four, in turn). */
const char *url(int port, const char *path);

/* Whether n bytes at p equal the file's content. */
bool same_as_file(const char *path, const void *p, size_t n);
/* Deterministic pseudo-random bytes. */
void fill_random(void *p, size_t n, unsigned seed);

#endif
