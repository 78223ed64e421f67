/* Building a RESP2 reply in memory and sending it with one channel write, so the channel's
 * line buffering sends the replies to pipelined requests together (it holds a reply back
 * while more requests are already buffered). Large values are not copied in: the reply
 * keeps a reference and writes them from the value. */
#include "proto.h"
#include "store.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A reply that grew past this gives its memory back once sent. */
#define REPLY_KEEP (64u * 1024u)

void kv_reply_init(struct kv_reply *rp)
{
    rp->buf = rp->small;
    rp->len = 0;
    rp->cap = sizeof rp->small;
    rp->refs = NULL;
    rp->nrefs = rp->refcap = 0;
    rp->oom = 0;
}

static void drop_refs(struct kv_reply *rp)
{
    for (size_t i = 0; i < rp->nrefs; i++)
        kv_value_unref(rp->refs[i].value);
    rp->nrefs = 0;
}

void kv_reply_release(struct kv_reply *rp)
{
    drop_refs(rp);
    free(rp->refs);
    if (rp->buf != rp->small)
        free(rp->buf);
    kv_reply_init(rp);
}

/* Room for n more bytes. */
static int room(struct kv_reply *rp, size_t n)
{
    if (rp->oom)
        return -1;
    if (rp->len + n <= rp->cap)
        return 0;
    size_t cap = rp->cap * 2 > rp->len + n ? rp->cap * 2 : rp->len + n;
    char *p = rp->buf == rp->small ? malloc(cap) : realloc(rp->buf, cap);
    if (!p) {
        rp->oom = 1;
        return -1;
    }
    if (rp->buf == rp->small)
        memcpy(p, rp->small, rp->len);
    rp->buf = p;
    rp->cap = cap;
    return 0;
}

void kv_reply_raw(struct kv_reply *rp, const void *p, size_t n)
{
    if (room(rp, n) == 0) {
        memcpy(rp->buf + rp->len, p, n);
        rp->len += n;
    }
}

size_t kv_format_ll(char *buf, long long v)
{
    char tmp[24], *end = tmp + sizeof tmp, *q = end;
    unsigned long long u = v < 0 ? 0 - (unsigned long long)v : (unsigned long long)v;
    do {
        *--q = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--q = '-';
    memcpy(buf, q, (size_t)(end - q));
    return (size_t)(end - q);
}

/* A marker (':', '$', '*') and a decimal number, then CRLF. */
static void number_line(struct kv_reply *rp, char mark, long long v)
{
    if (room(rp, 24) != 0)
        return;
    char *o = rp->buf + rp->len;
    o[0] = mark;
    size_t n = kv_format_ll(o + 1, v);
    o[n + 1] = '\r';
    o[n + 2] = '\n';
    rp->len += n + 3;
}

void kv_reply_status(struct kv_reply *rp, const char *s)
{
    kv_reply_raw(rp, "+", 1);
    kv_reply_raw(rp, s, strlen(s));
    kv_reply_raw(rp, "\r\n", 2);
}

void kv_reply_error(struct kv_reply *rp, const char *msg)
{
    size_t n = strlen(msg);
    if (n == 0 || msg[0] != '-')
        kv_reply_raw(rp, "-ERR ", 5);
    size_t at = rp->len;
    kv_reply_raw(rp, msg, n);
    if (rp->oom)
        return;
    for (size_t i = at; i < rp->len; i++) /* a newline would end the error early */
        if (rp->buf[i] == '\r' || rp->buf[i] == '\n')
            rp->buf[i] = ' ';
    kv_reply_raw(rp, "\r\n", 2);
}

void kv_reply_errorf(struct kv_reply *rp, const char *fmt, ...)
{
    char small[512], *msg = small;
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    if (n >= (int)sizeof small) { /* an option quoted back may be long */
        msg = malloc((size_t)n + 1);
        if (msg)
            vsnprintf(msg, (size_t)n + 1, fmt, again);
    }
    va_end(again);
    va_end(ap);
    if (n < 0 || !msg) {
        rp->oom = 1;
        return;
    }
    /* Redis trims \r and \n off both ends of a formatted error (the rest become spaces);
     * its text ends at a NUL, as strlen sees it. */
    char *p = msg, *end = msg + strlen(msg);
    while (p < end && (*p == '\r' || *p == '\n'))
        p++;
    while (end > p && (end[-1] == '\r' || end[-1] == '\n'))
        *--end = '\0';
    kv_reply_error(rp, p);
    if (msg != small)
        free(msg);
}

void kv_reply_int(struct kv_reply *rp, long long v)
{
    number_line(rp, ':', v);
}

void kv_reply_array(struct kv_reply *rp, long long n)
{
    number_line(rp, '*', n);
}

void kv_reply_nil(struct kv_reply *rp)
{
    kv_reply_raw(rp, "$-1\r\n", 5);
}

void kv_reply_bulk(struct kv_reply *rp, const void *p, size_t n)
{
    number_line(rp, '$', (long long)n);
    if (room(rp, n + 2) == 0) {
        memcpy(rp->buf + rp->len, p, n);
        memcpy(rp->buf + rp->len + n, "\r\n", 2);
        rp->len += n + 2;
    }
}

void kv_reply_bulk_str(struct kv_reply *rp, const char *s)
{
    kv_reply_bulk(rp, s, strlen(s));
}

void kv_reply_value(struct kv_reply *rp, struct kv_value *v)
{
    if (v->len < KV_REPLY_BY_REF) {
        kv_reply_bulk(rp, v->data, v->len);
        return;
    }
    number_line(rp, '$', (long long)v->len);
    if (rp->oom)
        return;
    if (rp->nrefs == rp->refcap) {
        size_t cap = rp->refcap ? rp->refcap * 2 : 4;
        struct kv_reply_ref *r = realloc(rp->refs, cap * sizeof *r);
        if (!r) {
            rp->oom = 1;
            return;
        }
        rp->refs = r;
        rp->refcap = cap;
    }
    rp->refs[rp->nrefs].at = rp->len;
    rp->refs[rp->nrefs].value = kv_value_ref(v);
    rp->nrefs++;
    kv_reply_raw(rp, "\r\n", 2);
}

/* Empty rp; a buffer that grew large goes back to the heap. */
static void reset(struct kv_reply *rp)
{
    drop_refs(rp);
    rp->len = 0;
    if (rp->buf != rp->small && rp->cap > REPLY_KEEP) {
        free(rp->buf);
        rp->buf = rp->small;
        rp->cap = sizeof rp->small;
    }
}

int kv_reply_send(weft_chan *c, struct kv_reply *rp)
{
    if (rp->oom) {
        reset(rp);
        rp->oom = 0;
        return -1; /* a reply we could not build: the client cannot be answered in order */
    }
    size_t from = 0;
    int rc = 0;
    for (size_t i = 0; i < rp->nrefs && rc == 0; i++) {
        const struct kv_reply_ref *r = &rp->refs[i];
        if ((r->at > from && weft_write(c, rp->buf + from, r->at - from) < 0) ||
            weft_write(c, r->value->data, r->value->len) < 0)
            rc = -1;
        from = r->at;
    }
    if (rc == 0 && weft_write(c, rp->buf + from, rp->len - from) < 0)
        rc = -1;
    reset(rp);
    return rc;
}
