/* HTTP/1.1 requests as examples/httpd reads them: the request line and the header lines each
 * come from weft_gets, the fields the server acts on are parsed as their lines arrive, and a
 * request body (rare for a file server) is read and dropped, so the next pipelined request
 * starts where it should. Every limit costs only the offending connection: it gets the
 * status owed (408, 413, 414, 431, 400, ...) and is closed. */
#ifndef HTTPD_HTTP_H
#define HTTPD_HTTP_H

#include <weft.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* Limits and timeouts, each with a default and a flag (main.c). */
struct http_limits {
    size_t max_line;          /* longest request line, bytes: 414 past it (--max-line) */
    size_t max_headers;       /* all header lines of a request, bytes: 431 (--max-headers) */
    size_t max_body;          /* request body read and dropped, bytes: 413 (--max-body) */
    int64_t idle_timeout_ms;  /* for the next request, and for all of one request's header
                                 lines: 408 then close (--idle-timeout) */
    int64_t write_timeout_ms; /* a client that takes nothing for this long is dropped */
};

#define HTTP_MAX_LINE_DEFAULT 8192u
#define HTTP_MAX_HEADERS_DEFAULT 16384u
#define HTTP_MAX_HEADER_COUNT 100 /* header lines per request: 431 past it */
#define HTTP_MAX_BODY_DEFAULT (1024u * 1024u)
#define HTTP_IDLE_TIMEOUT_DEFAULT 60000
#define HTTP_WRITE_TIMEOUT_DEFAULT 60000

enum http_method { HTTP_GET, HTTP_HEAD, HTTP_OTHER };

/* A byte range as the client asked for it (bytes=first-last, first-, -suffix). */
enum http_range_kind {
    RANGE_NONE,   /* no Range field, or one we ignore (not bytes=, several ranges, bad) */
    RANGE_FROM,   /* first- or first-last */
    RANGE_SUFFIX, /* -n: the last n bytes */
};

/* Small paths live in the struct (on the client coroutine's stack); longer ones on the heap,
 * given back after the request. */
#define HTTP_PATH_SMALL 256

struct http_request {
    enum http_method method;
    char method_name[16];   /* for the log; cut */
    int minor;              /* HTTP/1.minor */
    char *path;             /* percent-decoded, starts with '/', no NUL, no ".." segment */
    size_t path_len;
    bool keep_alive;        /* the connection goes on after the response */
    bool has_host;
    /* Conditions and range */
    bool has_ims;
    time_t ims;             /* If-Modified-Since */
    bool has_inm, inm_star; /* If-None-Match (we send no ETags: only "*" can match) */
    enum http_range_kind range;
    uint64_t range_first, range_last; /* RANGE_FROM: last UINT64_MAX if open */
    bool has_if_range, if_range_date;
    time_t if_range;        /* If-Range with a date; an entity-tag never matches */
    /* After a failed read: the status owed before closing (0: none, the client is gone). */
    int status;
    /* storage */
    char small_path[HTTP_PATH_SMALL];
};

void http_request_init(struct http_request *r);
/* Give back heap storage. */
void http_request_release(struct http_request *r);

/* Read the next request from c, its header lines and body included. 1: a request to answer;
 * 0: the client closed (or reset) between requests; -1: the connection is over, with
 * r->status set to what is owed first (400, 408, 413, 414, 431, 501, 505) or 0 when nothing
 * is (I/O error, client gone mid-request). */
int http_request_read(weft_chan *c, struct http_request *r, const struct http_limits *lim);

/* ---- Parsing pieces (parse.c), also used by the fuzz target ---- */

/* Percent-decode the path of a request target (up to '?' or '#') into out (room for n + 1
 * bytes: decoding never lengthens). Origin form "/a/b" or absolute form "http://host/a/b".
 * The decoded length, or -1 if the target is not one of those, has a bad escape, a NUL,
 * or a ".." segment after decoding ("/%2e%2e/", "/..%2f" included). */
ssize_t http_decode_path(const char *target, size_t n, char *out);
/* A header's name (case-insensitive) against a lower-case literal. */
bool http_name_is(const char *name, size_t n, const char *lower);
/* Whether the comma-separated token list v[0..n) holds token (case-insensitive). */
bool http_has_token(const char *v, size_t n, const char *lower);
/* Parse a Range value into r (RANGE_NONE when absent, not "bytes=", several ranges, or bad). */
void http_parse_range(const char *v, size_t n, struct http_request *r);
/* Content-Length: digits only, within 2^53. -1 if bad. */
int64_t http_parse_length(const char *v, size_t n);

/* The monotonic clock (weft_now's) at the kernel tick's resolution, a few milliseconds: no
 * time stamp counter read, cheap enough for every header line's deadline. */
int64_t http_coarse_ms(void);

/* HTTP dates (date.c): IMF-fixdate, RFC 850 and asctime forms read, IMF-fixdate written. */
bool http_parse_date(const char *v, size_t n, time_t *t);
/* "Sun, 06 Nov 1994 08:49:37 GMT" into out (room for HTTP_DATE_LEN + 1 bytes). */
#define HTTP_DATE_LEN 29
void http_format_date(time_t t, char *out);

#endif
