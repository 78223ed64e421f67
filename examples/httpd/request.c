/* Reading one HTTP/1.x request from a channel, straight-line: weft_gets for the request line,
 * then for each header line until the empty one, then the body (if any) read and dropped.
 * The fields the server acts on are parsed as their lines come, so nothing of a line needs to
 * outlive the next read. Limits come from the channel: maxline is set to what is left of the
 * budget before each line, so an over-long line or header block ends as EMSGSIZE (414/431)
 * without weft ever buffering more; and the whole request after its first line must arrive
 * within the idle timeout (408), so a client dribbling header lines cannot hold a connection
 * for long. */
#include "http.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void http_request_init(struct http_request *r)
{
    memset(r, 0, offsetof(struct http_request, small_path));
    r->path = r->small_path;
    r->small_path[0] = '\0';
}

void http_request_release(struct http_request *r)
{
    if (r->path != r->small_path)
        free(r->path);
    r->path = r->small_path;
}

/* What the header lines said about framing, needed only while reading. */
struct framing {
    bool close, keep_alive;
    bool has_length, te, chunked;
    int64_t length;
};

static int fail(struct http_request *r, int status)
{
    r->status = status;
    return -1;
}

/* The status owed after a failed read: 408 on the timeout, `too_big` past the line limit,
 * none when the client went away or the read failed otherwise. */
static int read_failed(struct http_request *r, int too_big)
{
    return fail(r, errno == ETIMEDOUT ? 408 : errno == EMSGSIZE ? too_big : 0);
}

/* A line's length without the CR before its newline (bare LF is accepted, as RFC 9112
 * allows). */
static size_t strip_cr(const char *line, size_t len)
{
    return len > 0 && line[len - 1] == '\r' ? len - 1 : len;
}

static bool is_tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Before each read after the request line: the time left of the request's deadline as the
 * channel's read timeout. False once it has passed. */
static bool time_left(weft_chan *c, int64_t deadline, const struct http_limits *lim)
{
    if (deadline < 0)
        return true;
    int64_t left = deadline - http_coarse_ms();
    if (left <= 0)
        return false;
    weft_chan_set_timeouts(c, left, lim->write_timeout_ms);
    return true;
}

/* ---- The request line ---- */

static int set_method(struct http_request *r, const char *m, size_t n)
{
    if (n == 0)
        return fail(r, 400);
    for (size_t i = 0; i < n; i++)
        if (!is_tchar(m[i]))
            return fail(r, 400);
    size_t k = n < sizeof r->method_name - 1 ? n : sizeof r->method_name - 1;
    memcpy(r->method_name, m, k);
    r->method_name[k] = '\0';
    r->method = n == 3 && memcmp(m, "GET", 3) == 0    ? HTTP_GET
                : n == 4 && memcmp(m, "HEAD", 4) == 0 ? HTTP_HEAD
                                                      : HTTP_OTHER;
    return 0;
}

/* "HTTP/1.1": 0 and the minor version; 505 for another major version, 400 if malformed. */
static int set_version(struct http_request *r, const char *v, size_t n)
{
    if (n != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9')
        return fail(r, 400);
    if (v[5] != '1')
        return fail(r, 505);
    r->minor = v[7] - '0';
    return 0;
}

static int set_path(struct http_request *r, const char *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] <= ' ' || t[i] == 0x7f)
            return fail(r, 400);
    if (r->method == HTTP_OTHER)
        return 0; /* answered 405 whatever its target ("OPTIONS *" included) */
    if (n + 1 > sizeof r->small_path && !(r->path = malloc(n + 1))) {
        r->path = r->small_path;
        return fail(r, 503);
    }
    ssize_t len = http_decode_path(t, n, r->path);
    if (len < 0)
        return fail(r, 400);
    r->path_len = (size_t)len;
    return 0;
}

/* METHOD SP request-target SP HTTP-version, single spaces. */
static int request_line(struct http_request *r, const char *line, size_t len)
{
    const char *sp1 = memchr(line, ' ', len);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - line)) : NULL;
    if (!sp2 || sp2 == sp1 + 1)
        return fail(r, 400);
    const char *target = sp1 + 1, *version = sp2 + 1;
    if (set_method(r, line, (size_t)(sp1 - line)) != 0 ||
        set_version(r, version, len - (size_t)(version - line)) != 0 ||
        set_path(r, target, (size_t)(sp2 - target)) != 0)
        return -1;
    return 0;
}

/* ---- Header lines ---- */

/* The last of a comma-separated list, e.g. Transfer-Encoding's final coding. */
static bool last_token_is(const char *v, size_t n, const char *lit)
{
    const char *comma = v + n;
    while (comma > v && comma[-1] != ',')
        comma--;
    return http_has_token(comma, (size_t)(v + n - comma), lit);
}

static int field(struct http_request *r, struct framing *f, const char *name, size_t nlen,
                 const char *v, size_t vlen)
{
    switch (name[0] | 0x20) { /* (lower-cases letters; others then match no case) */
    case 'c':
        if (http_name_is(name, nlen, "connection")) {
            f->close |= http_has_token(v, vlen, "close");
            f->keep_alive |= http_has_token(v, vlen, "keep-alive");
        } else if (http_name_is(name, nlen, "content-length")) {
            int64_t k = http_parse_length(v, vlen);
            if (k < 0 || (f->has_length && k != f->length))
                return fail(r, 400);
            f->has_length = true;
            f->length = k;
        }
        break;
    case 'h':
        if (http_name_is(name, nlen, "host")) {
            if (r->has_host)
                return fail(r, 400); /* two Host fields: which site? */
            r->has_host = true;
        }
        break;
    case 'i':
        if (http_name_is(name, nlen, "if-modified-since")) {
            r->has_ims = http_parse_date(v, vlen, &r->ims); /* an invalid date is ignored */
        } else if (http_name_is(name, nlen, "if-none-match")) {
            r->has_inm = true;
            r->inm_star = vlen == 1 && v[0] == '*';
        } else if (http_name_is(name, nlen, "if-range")) {
            r->has_if_range = true;
            r->if_range_date = http_parse_date(v, vlen, &r->if_range);
        }
        break;
    case 'r':
        if (http_name_is(name, nlen, "range"))
            http_parse_range(v, vlen, r);
        break;
    case 't':
        if (http_name_is(name, nlen, "transfer-encoding")) {
            f->te = true;
            f->chunked = last_token_is(v, vlen, "chunked");
        }
        break;
    }
    return 0;
}

/* One "name: value" line (without its line end). */
static int header_line(struct http_request *r, struct framing *f, const char *line, size_t len)
{
    if (line[0] == ' ' || line[0] == '\t')
        return fail(r, 400); /* obs-fold: RFC 9112 lets a server reject it */
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line)
        return fail(r, 400);
    size_t nlen = (size_t)(colon - line);
    for (size_t i = 0; i < nlen; i++)
        if (!is_tchar(line[i]))
            return fail(r, 400); /* "Host :" included: no space before the colon */
    const char *v = colon + 1, *e = line + len;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    for (const char *p = v; p < e; p++)
        if (((unsigned char)*p < ' ' && *p != '\t') || *p == 0x7f)
            return fail(r, 400); /* NUL, a bare CR, ... */
    return f ? field(r, f, line, nlen, v, (size_t)(e - v)) : 0;
}

/* Header lines until the empty one, all of them within max_headers bytes and
 * HTTP_MAX_HEADER_COUNT lines (431 past either), by the deadline (408). Also reads a chunked
 * body's trailer section (f NULL: checked, not acted on). */
static int header_lines(weft_chan *c, struct http_request *r, struct framing *f,
                        size_t *budget, int64_t deadline, const struct http_limits *lim)
{
    for (int count = 0;; count++) {
        if (*budget == 0 || count > HTTP_MAX_HEADER_COUNT)
            return fail(r, 431);
        weft_chan_set_maxline(c, *budget);
        if (!time_left(c, deadline, lim))
            return fail(r, 408);
        size_t len;
        const char *line = weft_gets(c, &len);
        if (!line)
            return read_failed(r, 431);
        *budget -= len < *budget ? len + 1 : *budget;
        len = strip_cr(line, len);
        if (len == 0)
            return 0;
        if (header_line(r, f, line, len) != 0)
            return -1;
    }
}

/* ---- The body, read and dropped ---- */

static int drop_bytes(weft_chan *c, struct http_request *r, uint64_t n, int64_t deadline,
                      const struct http_limits *lim)
{
    char sink[512]; /* (small: every connection's stack keeps what its deepest call touched) */
    while (n > 0) {
        if (!time_left(c, deadline, lim))
            return fail(r, 408);
        ssize_t got = weft_read(c, sink, n < sizeof sink ? (size_t)n : sizeof sink);
        if (got <= 0)
            return got == 0 ? fail(r, 0) : read_failed(r, 0);
        n -= (uint64_t)got;
    }
    return 0;
}

/* A chunk's size line: hex digits, then an extension (";...") we ignore. */
static int chunk_size(const char *line, size_t len, uint64_t *size)
{
    uint64_t v = 0;
    size_t i = 0;
    for (; i < len; i++) {
        char ch = line[i] | 0x20;
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0)
            break;
        if (v >> 60)
            return 413; /* more than any limit */
        v = v * 16 + (uint64_t)d;
    }
    if (i == 0 || (i < len && line[i] != ';' && line[i] != ' ' && line[i] != '\t'))
        return 400;
    *size = v;
    return 0;
}

static int chunked_body(weft_chan *c, struct http_request *r, size_t *budget, int64_t deadline,
                        const struct http_limits *lim)
{
    uint64_t total = 0;
    for (;;) {
        weft_chan_set_maxline(c, lim->max_line);
        if (!time_left(c, deadline, lim))
            return fail(r, 408);
        size_t len;
        const char *line = weft_gets(c, &len);
        if (!line)
            return read_failed(r, 400);
        uint64_t size;
        int st = chunk_size(line, strip_cr(line, len), &size);
        if (st != 0)
            return fail(r, st);
        if (size == 0)
            return header_lines(c, r, NULL, budget, deadline, lim); /* the trailers */
        if (size > lim->max_body || (total += size) > lim->max_body)
            return fail(r, 413);
        if (drop_bytes(c, r, size, deadline, lim) != 0)
            return -1;
        if (!time_left(c, deadline, lim))
            return fail(r, 408);
        if (!(line = weft_gets(c, &len)))
            return read_failed(r, 400);
        if (strip_cr(line, len) != 0)
            return fail(r, 400); /* a chunk ends with CRLF */
    }
}

static int body(weft_chan *c, struct http_request *r, struct framing *f, size_t *budget,
                int64_t deadline, const struct http_limits *lim)
{
    if (f->te) {
        /* Both framings (request smuggling's favourite), a body whose end cannot be found,
         * or one an HTTP/1.0 client cannot mean (RFC 9112, 6.1 and 6.3). */
        if (f->has_length || !f->chunked || r->minor == 0)
            return fail(r, 400);
        return chunked_body(c, r, budget, deadline, lim);
    }
    if (!f->has_length || f->length == 0)
        return 0;
    if ((uint64_t)f->length > lim->max_body)
        return fail(r, 413);
    return drop_bytes(c, r, (uint64_t)f->length, deadline, lim);
}

/* ---- One request ---- */

/* The request line, skipping empty lines before it (RFC 9112, 2.2), waiting for it as long
 * as the idle timeout allows. 1, 0 at end of file, -1. */
static int first_line(weft_chan *c, struct http_request *r, const struct http_limits *lim)
{
    weft_chan_set_maxline(c, lim->max_line);
    weft_chan_set_timeouts(c, lim->idle_timeout_ms, lim->write_timeout_ms);
    for (int blank = 0; blank <= 8; blank++) { /* up to 8 empty lines skipped */
        size_t len;
        const char *line = weft_gets(c, &len);
        if (!line && (errno == 0 || errno == ECONNRESET))
            return 0;
        if (!line)
            return read_failed(r, 414);
        len = strip_cr(line, len);
        if (len > 0)
            return request_line(r, line, len) == 0 ? 1 : -1;
    }
    return fail(r, 400);
}

int http_request_read(weft_chan *c, struct http_request *r, const struct http_limits *lim)
{
    http_request_release(r);
    http_request_init(r);
    r->method = HTTP_OTHER;
    int rc = first_line(c, r, lim);
    if (rc <= 0)
        return rc;
    int64_t deadline = lim->idle_timeout_ms >= 0 ? http_coarse_ms() + lim->idle_timeout_ms : -1;
    struct framing f = {0};
    size_t budget = lim->max_headers;
    if (header_lines(c, r, &f, &budget, deadline, lim) != 0)
        return -1;
    if (r->minor >= 1 && !r->has_host)
        return fail(r, 400); /* RFC 9112, 3.2: an HTTP/1.1 request without Host */
    if (body(c, r, &f, &budget, deadline, lim) != 0)
        return -1;
    r->keep_alive = r->minor >= 1 ? !f.close : f.keep_alive && !f.close;
    return 1;
}
