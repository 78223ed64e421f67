/* Responses: the header block built in a buffer on the coroutine's stack and written with one
 * weft_write; a small body read into the same buffer behind it, so headers and body leave in
 * one send (and, for pipelined requests, the channel's line mode holds it back until the
 * requests already in are answered too); a larger body by weft_sendfile, straight from the
 * page cache, after the headers. */
#include "httpd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HEAD_MAX 640           /* the longest header block (a 206's) with room to spare */
#define INLINE_BODY 512        /* bodies up to this go in the stack buffer; up to read_max, a
                                  heap one (a larger frame would keep another page of every
                                  connection's stack resident) */
#define SENDFILE_STEP (1u << 20) /* bytes per weft_sendfile: its write timeout counts per call,
                                    so a client must take a MiB per timeout, not the file */

/* The response being built: appends past cap are dropped (HEAD_MAX leaves room for all). */
struct out {
    char *buf;
    size_t len, cap;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->len + n <= o->cap) {
        memcpy(o->buf + o->len, s, n);
        o->len += n;
    }
}

static void put_str(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_u64(struct out *o, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + i, sizeof tmp - i);
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 206: return "Partial Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

/* The Date field's text, formatted again only when the second changes. */
static const char *date_now(struct site *s)
{
    time_t t = time(NULL);
    if (t != s->date_at) {
        s->date_at = t;
        http_format_date(t, s->date);
    }
    return s->date;
}

static void status_line(struct out *o, int status, struct site *s)
{
    put_str(o, "HTTP/1.1 ");
    put_u64(o, (uint64_t)status);
    put(o, " ", 1);
    put_str(o, reason(status));
    put_str(o, "\r\nServer: weft-httpd\r\nDate: ");
    put(o, date_now(s), HTTP_DATE_LEN);
    put(o, "\r\n", 2);
}

/* The Connection field, where the default (HTTP/1.1: open; 1.0: closed) is not meant. */
static void connection_end(struct out *o, const struct http_request *r, bool keep)
{
    if (!keep)
        put_str(o, "Connection: close\r\n");
    else if (r->minor == 0)
        put_str(o, "Connection: keep-alive\r\n");
    put(o, "\r\n", 2);
}

static int write_out(weft_chan *c, const struct out *o)
{
    return weft_write(c, o->buf, o->len) < 0 ? -1 : 0;
}

/* A status with a one-line text body ("404 Not Found\n"), none for HEAD. */
static int send_status(weft_chan *c, const struct http_request *r, struct site *s, int status,
                       bool keep, const char *extra)
{
    char buf[HEAD_MAX];
    struct out o = {buf, 0, sizeof buf};
    const char *why = reason(status);
    status_line(&o, status, s);
    put_str(&o, "Content-Type: text/plain\r\nContent-Length: ");
    put_u64(&o, strlen(why) + 5);
    put(&o, "\r\n", 2);
    if (extra)
        put_str(&o, extra);
    connection_end(&o, r, keep);
    if (r->method != HTTP_HEAD) {
        put_u64(&o, (uint64_t)status);
        put(&o, " ", 1);
        put_str(&o, why);
        put(&o, "\n", 1);
    }
    return write_out(c, &o);
}

void http_respond_error(weft_chan *c, const struct http_request *r, struct site *s)
{
    if (r->status)
        send_status(c, r, s, r->status, false, NULL);
}

/* ---- Files ---- */

static bool not_modified(const struct http_request *r, const struct file *f)
{
    if (r->has_inm)
        return r->inm_star; /* we send no ETag: only "*" matches, and If-Modified-Since is
                               then ignored (RFC 9110, 13.1.3) */
    return r->has_ims && f->mtime <= r->ims;
}

/* Which bytes to send: 200 (all), 206 (*first and *len set), or 416. A Range that is not
 * a single byte range, or whose If-Range does not match, gets the whole file. */
static int choose_range(const struct http_request *r, const struct file *f, uint64_t *first,
                        uint64_t *len)
{
    uint64_t size = (uint64_t)f->size;
    *first = 0;
    *len = size;
    if (r->range == RANGE_NONE)
        return 200;
    if (r->has_if_range && !(r->if_range_date && r->if_range == f->mtime))
        return 200; /* changed since (or an entity-tag: we send none, so none matches) */
    if (r->range == RANGE_SUFFIX) {
        if (r->range_last == 0 || size == 0)
            return 416;
        *len = r->range_last < size ? r->range_last : size;
        *first = size - *len;
        return 206;
    }
    if (r->range_first >= size)
        return 416;
    uint64_t last = r->range_last < size - 1 ? r->range_last : size - 1;
    *first = r->range_first;
    *len = last - *first + 1;
    return 206;
}

/* pread all of [first, first + len) into p. False if the file is shorter now. */
static bool read_all(int fd, char *p, uint64_t first, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, p + got, len - got, (off_t)(first + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

/* The header block in o, then len bytes of f from first. */
static int send_body(weft_chan *c, struct out *o, size_t room, const struct file *f,
                     uint64_t first, uint64_t len, size_t read_max)
{
    if (len <= read_max) {
        /* Small: read behind the headers, one write. */
        char *p = len <= room ? o->buf : malloc(o->len + len);
        if (!p)
            return -1;
        if (p != o->buf)
            memcpy(p, o->buf, o->len);
        int rc = -1;
        if (read_all(f->fd, p + o->len, first, len))
            rc = weft_write(c, p, o->len + len) < 0 ? -1 : 0;
        else
            errno = EIO; /* shorter than its Content-Length said: end the connection */
        if (p != o->buf)
            free(p);
        return rc;
    }
    if (write_out(c, o) != 0)
        return -1;
    off_t off = (off_t)first;
    while (len > 0) {
        size_t step = len < SENDFILE_STEP ? (size_t)len : SENDFILE_STEP;
        ssize_t w = weft_sendfile(c, f->fd, &off, step);
        if (w != (ssize_t)step) {
            if (w >= 0)
                errno = EIO; /* the file shrank */
            return -1;
        }
        len -= step;
    }
    return 0;
}

static int send_file(weft_chan *c, const struct http_request *r, struct site *s,
                     const struct file *f)
{
    char buf[HEAD_MAX + INLINE_BODY];
    struct out o = {buf, 0, HEAD_MAX};
    if (not_modified(r, f)) {
        status_line(&o, 304, s);
        put_str(&o, "Last-Modified: ");
        put_str(&o, f->last_modified);
        put(&o, "\r\n", 2);
        connection_end(&o, r, r->keep_alive);
        return write_out(c, &o);
    }
    uint64_t first, len;
    int status = choose_range(r, f, &first, &len);
    status_line(&o, status, s);
    if (status == 416) {
        put_str(&o, "Content-Range: bytes */");
        put_u64(&o, (uint64_t)f->size);
        put_str(&o, "\r\nContent-Length: 0\r\n");
        connection_end(&o, r, r->keep_alive);
        return write_out(c, &o);
    }
    put_str(&o, "Content-Type: ");
    put_str(&o, f->type);
    put_str(&o, "\r\nContent-Length: ");
    put_u64(&o, len);
    put_str(&o, "\r\nLast-Modified: ");
    put_str(&o, f->last_modified);
    put_str(&o, "\r\nAccept-Ranges: bytes\r\n");
    if (status == 206) {
        put_str(&o, "Content-Range: bytes ");
        put_u64(&o, first);
        put(&o, "-", 1);
        put_u64(&o, first + len - 1);
        put(&o, "/", 1);
        put_u64(&o, (uint64_t)f->size);
        put(&o, "\r\n", 2);
    }
    connection_end(&o, r, r->keep_alive);
    if (r->method == HTTP_HEAD || len == 0)
        return write_out(c, &o);
    return send_body(c, &o, sizeof buf - o.len, f, first, len, s->cfg->read_max);
}

int http_respond(weft_chan *c, const struct http_request *r, struct site *s)
{
    if (r->method == HTTP_OTHER)
        return send_status(c, r, s, 405, r->keep_alive, "Allow: GET, HEAD\r\n");
    struct file *f = fcache_get(s->files, r->path, r->path_len);
    if (!f) {
        int e = errno;
        int status = e == EACCES ? 403 : e == EMFILE || e == ENFILE || e == ENOMEM ? 503 : 404;
        return send_status(c, r, s, status, r->keep_alive, NULL);
    }
    int rc = send_file(c, r, s, f);
    int e = errno;
    fcache_put(s->files, f);
    errno = e;
    return rc;
}
