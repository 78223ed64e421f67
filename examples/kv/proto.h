/* RESP2, the Redis protocol: reading one request from a channel (multi-bulk or inline), and
 * building the reply to it. Requests are read in straight-line code on the channel --
 * weft_gets for the "*N" and "$LEN" lines and inline commands, weft_read_exact for bulk
 * payloads -- so a request cut anywhere by the network simply waits for the rest. */
#ifndef KV_PROTO_H
#define KV_PROTO_H

#include <weft.h>

#include <stddef.h>
#include <stdint.h>

/* Limits on what one request may make the server hold. Every one has a default and a flag;
 * a request past one gets "-ERR Protocol error: ..." and its connection is closed. */
struct kv_limits {
    size_t max_bulk;    /* longest bulk argument (and value), bytes (--max-bulk) */
    size_t max_args;    /* most arguments in one request (--max-args) */
    size_t max_inline;  /* longest inline request and "*N"/"$LEN" line, bytes (--max-inline) */
    size_t max_request; /* most bytes of arguments in one request (--max-request) */
};

#define KV_MAX_BULK_DEFAULT (512u * 1024u * 1024u)  /* Redis's proto-max-bulk-len */
#define KV_MAX_ARGS_DEFAULT (1024u * 1024u)
#define KV_MAX_INLINE_DEFAULT (64u * 1024u)         /* Redis's PROTO_INLINE_MAX_SIZE */
#define KV_MAX_REQUEST_DEFAULT (1024u * 1024u * 1024u) /* Redis's client-query-buffer-limit */

/* Small requests live in the struct itself (which sits on the client coroutine's stack); a
 * larger one spills to the heap, given back after the request. */
#define KV_REQ_SMALL_ARGS 16
#define KV_REQ_SMALL_BYTES 1024

/* One request: argc arguments, each argv[i] of argl[i] bytes, NUL-terminated after them (Redis
 * compares options as C strings, so "nx\0..." is NX there and here). */
struct kv_request {
    size_t argc;
    char **argv;
    size_t *argl;
    const char *error;  /* after a protocol error: the message to send before closing */
    /* storage */
    size_t cap;         /* slots in argv/argl */
    char *bytes;        /* argument bytes, each followed by a NUL */
    size_t used, size;  /* bytes used / allocated */
    char *small_argv[KV_REQ_SMALL_ARGS];
    size_t small_argl[KV_REQ_SMALL_ARGS];
    char small_bytes[KV_REQ_SMALL_BYTES];
    char errbuf[64];
};

void kv_request_init(struct kv_request *r);
/* Give back heap storage (kept only while a request needs it). */
void kv_request_release(struct kv_request *r);

/* Read the next request from c. 1: a request (argc may be 0: an empty line or "*0", which
 * gets no reply); 0: the client closed between requests; -1: the connection is over, with
 * r->error set to the reply owed for a protocol error, or NULL for an I/O error or a client
 * that closed mid-request. */
int kv_request_read(weft_chan *c, struct kv_request *r, const struct kv_limits *lim);

/* ---- Replies ---- */

struct kv_value;

/* A reply is built whole (under the store's lock when there is one), then sent with one
 * write. Bulk values of KV_REPLY_BY_REF bytes or more are not copied: the reply keeps a
 * reference and sends them from the value itself. */
#define KV_REPLY_BY_REF (16u * 1024u)
#define KV_REPLY_SMALL 1024

struct kv_reply_ref {
    size_t at;              /* position in buf where the value's bytes go */
    struct kv_value *value; /* referenced; released after sending */
};

struct kv_reply {
    char *buf;
    size_t len, cap;
    struct kv_reply_ref *refs;
    size_t nrefs, refcap;
    int oom;                /* an allocation failed: the connection is closed */
    char small[KV_REPLY_SMALL];
};

void kv_reply_init(struct kv_reply *rp);
void kv_reply_release(struct kv_reply *rp);
void kv_reply_raw(struct kv_reply *rp, const void *p, size_t n);
void kv_reply_status(struct kv_reply *rp, const char *s);           /* +s */
/* An error, "-ERR msg" unless msg starts with its own "-CODE". \r and \n become spaces. */
void kv_reply_error(struct kv_reply *rp, const char *msg);
/* printf-style error, cut at a NUL byte as Redis's sds formatting cuts it, with the \r\n
 * trimmed off its ends and the others turned into spaces. */
void kv_reply_errorf(struct kv_reply *rp, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void kv_reply_int(struct kv_reply *rp, long long v);                /* :v */
void kv_reply_bulk(struct kv_reply *rp, const void *p, size_t n);   /* $n p */
void kv_reply_bulk_str(struct kv_reply *rp, const char *s);
void kv_reply_value(struct kv_reply *rp, struct kv_value *v);       /* $n, copied or by ref */
void kv_reply_nil(struct kv_reply *rp);                             /* $-1 */
void kv_reply_array(struct kv_reply *rp, long long n);              /* *n */
/* Send the reply on c and empty it. 0, or -1 when the connection failed. */
int kv_reply_send(weft_chan *c, struct kv_reply *rp);

/* Write v in decimal to buf (room for 20 bytes), return its length. */
size_t kv_format_ll(char *buf, long long v);

/* Redis's integer syntax: optional '-', no '+', no leading zeros, no spaces, fits in 64
 * bits. 1 if s[0..n) is one (stored in *v), else 0. */
int kv_parse_ll(const char *s, size_t n, long long *v);

#endif
