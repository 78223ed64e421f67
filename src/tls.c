/* TLS: a transport layered over another (the socket's), with OpenSSL doing the records. The
 * channel above does not know it is there. OpenSSL talks to the transport below through a
 * BIO of ours: its reads are the lower transport's non-blocking recv (EAGAIN becomes a retry,
 * so SSL_read says WANT_READ and we wait for the lower transport's input); its writes are
 * collected in a buffer that, once an SSL call returns, is given to the lower transport,
 * which sends it now or as the peer reads. So a TLS write never waits inside OpenSSL, and
 * every wait is the lower transport's. A context (weft_tls) wraps an SSL_CTX with its settings
 * and is counted by the connections and servers that use it.
 *
 * Since no call into OpenSSL waits, every one that goes deep (handshakes, records, making and
 * freeing an SSL, loading certificates, formatting errors) runs on the thread's deep-call
 * stack (deep_call, src/deep.c), not on the coroutine's own: OpenSSL's frames would otherwise
 * leave two or three more pages touched in every connection's stack. Each such call is a
 * small function of this file taking its arguments in a struct; cheap accessors
 * (SSL_has_pending, SSL_get_shutdown, SSL_get_version) are called directly. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#ifdef WEFT_HAVE_TLS

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

/* Plaintext one send takes at most, and output waiting below past which it takes none: a
 * large write is encrypted as the peer reads, not all at once into memory. */
#define SEND_CHUNK (16 * 1024)
#define QUEUE_LIMIT (64 * 1024)

struct weft_tls {
    SSL_CTX *ctx;
    bool server;
    atomic_int refs;
    unsigned char *alpn;   /* wire format: length-prefixed names */
    unsigned alpn_len;
};

typedef struct tls {
    transport t;
    SSL *ssl;
    weft_tls *owner;       /* the context, counted */
    bool handshaken;       /* the handshake finished */
    bool in_room;          /* lives in memory its maker owns (a handler's room): not freed */
    bool failed;           /* a fatal error: only close is left */
    bool want_below;       /* the last read needs more from below: what OpenSSL holds is
                              part of a record, not something to read now */
    int read_err;          /* sticky: reads fail with it (the peer ended without close_notify,
                              a protocol error) */
    char *out;             /* records OpenSSL wrote, not yet given below */
    size_t out_len, out_cap;
    char *pre;             /* bytes from below read before we were layered (preload) */
    size_t pre_off, pre_len;
    int lower_errno;       /* the lower transport's error behind a failed BIO call */
    /* The last failure, kept as what makes its text (weft_tls_error makes it when asked):
     * err_kind says which of err_num (an errno, a verification result, SSL_get_error's
     * answer) and err_code (OpenSSL's packed error code) it is. */
    uint8_t err_kind;
    int err_num;
    unsigned long err_code;
    char *error;           /* its text, once asked for (ERROR_TEXT bytes, reused) */
    char *alpn;            /* the protocol agreed, once asked for */
    char *subject;         /* the peer certificate's subject, once asked for */
} tls;

enum { FAIL_NONE, FAIL_ERRNO, FAIL_VERIFY, FAIL_REASON, FAIL_EOF, FAIL_OTHER };
#define ERROR_TEXT 160

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

/* ---- Contexts ---- */

static weft_tls *ctx_new(bool server)
{
    weft_tls *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!w->ctx) {
        free(w);
        errno = ENOMEM;
        return NULL;
    }
    w->server = server;
    atomic_init(&w->refs, 1);
    SSL_CTX_set_min_proto_version(w->ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(w->ctx, SSL_OP_NO_RENEGOTIATION);
    /* Read what the socket has, not a record's header and then its body: one recv for
     * several records, and a read that takes every record that came (pipelined requests,
     * each its own record, are then all buffered and their replies leave together). */
    SSL_CTX_set_read_ahead(w->ctx, 1);
    /* Idle connections keep no record buffers (measured in docs/tls.md). */
    SSL_CTX_set_mode(w->ctx, SSL_MODE_RELEASE_BUFFERS);
    return w;
}

static void ctx_unref(weft_tls *w)
{
    if (atomic_fetch_sub(&w->refs, 1) == 1) {
        SSL_CTX_free(w->ctx);
        free(w->alpn);
        free(w);
    }
}

/* A file OpenSSL could not load: ENOENT/EACCES when the file is the reason, else EPROTO. */
static int load_errno(const char *path)
{
    FILE *f = path ? fopen(path, "r") : NULL;
    int err = f ? EPROTO : errno;
    if (f)
        fclose(f);
    ERR_clear_error();
    return err;
}

/* A context being made from files, on the deep-call stack (loading and checking keys and
 * certificates goes deep): two paths in, the context or the errno out. */
struct ctx_call {
    const char *a, *b;
    weft_tls *w;
    int err;
};

/* OpenSSL's default for an encrypted key is to ask for its passphrase on the terminal, which
 * would block the thread (every coroutine with it): no passphrase is given, and the key is
 * refused (EPROTO). */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    (void)buf, (void)size, (void)rwflag, (void)arg;
    return 0;
}

static void make_server(void *p)
{
    struct ctx_call *c = p;
    weft_tls *w = ctx_new(true);
    if (!w) {
        c->err = errno;
        return;
    }
    SSL_CTX_set_default_passwd_cb(w->ctx, no_passphrase);
    int err = 0;
    if (SSL_CTX_use_certificate_chain_file(w->ctx, c->a) != 1)
        err = load_errno(c->a);
    else if (SSL_CTX_use_PrivateKey_file(w->ctx, c->b, SSL_FILETYPE_PEM) != 1)
        err = load_errno(c->b);
    else if (SSL_CTX_check_private_key(w->ctx) != 1)
        err = EPROTO;
    if (err) {
        ERR_clear_error();
        ctx_unref(w);
        c->err = err;
        return;
    }
    c->w = w;
}

weft_tls *weft_tls_server(const char *cert_file, const char *key_file)
{
    if (!cert_file || !key_file) {
        errno = EINVAL;
        return NULL;
    }
    struct ctx_call c = {cert_file, key_file, NULL, 0};
    deep_call(make_server, &c);
    if (!c.w)
        errno = c.err;
    return c.w;
}

static void make_client(void *p)
{
    struct ctx_call *c = p;
    weft_tls *w = ctx_new(false);
    if (!w) {
        c->err = errno;
        return;
    }
    int ok = c->a || c->b ? SSL_CTX_load_verify_locations(w->ctx, c->a, c->b)
                          : SSL_CTX_set_default_verify_paths(w->ctx);
    if (ok != 1) {
        c->err = load_errno(c->a ? c->a : c->b);
        ctx_unref(w);
        return;
    }
    SSL_CTX_set_verify(w->ctx, SSL_VERIFY_PEER, NULL);
    c->w = w;
}

weft_tls *weft_tls_client(const char *ca_file, const char *ca_dir)
{
    /* OpenSSL looks in a CA directory only during handshakes, and takes a missing one for an
     * empty one: every handshake would then fail as an unknown issuer. */
    struct stat st;
    if (ca_dir && stat(ca_dir, &st) != 0)
        return NULL; /* (ENOENT, EACCES, ...) */
    if (ca_dir && !S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return NULL;
    }
    if (ca_dir && access(ca_dir, R_OK | X_OK) != 0)
        return NULL; /* (EACCES) */
    struct ctx_call c = {ca_file, ca_dir, NULL, 0};
    deep_call(make_client, &c);
    if (!c.w)
        errno = c.err;
    return c.w;
}

int weft_tls_set_verify(weft_tls *w, int verify)
{
    if (w->server) {
        errno = EINVAL;
        return -1;
    }
    SSL_CTX_set_verify(w->ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return 0;
}

/* Server: pick the first of our protocols the client offers. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    weft_tls *w = arg;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, w->alpn, w->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no common protocol: go on without one */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

int weft_tls_set_alpn(weft_tls *w, const char *const *protocols, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = protocols[i] ? strlen(protocols[i]) : 0;
        if (k == 0 || k > 255) {
            errno = EINVAL;
            return -1;
        }
        len += 1 + k;
    }
    if (n == 0 || len > 65535) {
        errno = EINVAL;
        return -1;
    }
    unsigned char *wire = malloc(len);
    if (!wire) {
        errno = ENOMEM;
        return -1;
    }
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = strlen(protocols[i]);
        wire[at++] = (unsigned char)k;
        memcpy(wire + at, protocols[i], k);
        at += k;
    }
    free(w->alpn);
    w->alpn = wire;
    w->alpn_len = (unsigned)len;
    if (w->server)
        SSL_CTX_set_alpn_select_cb(w->ctx, select_alpn, w);
    else if (SSL_CTX_set_alpn_protos(w->ctx, wire, (unsigned)len) != 0) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

static void unref_call(void *w)
{
    ctx_unref(w);
}

void weft_tls_free(weft_tls *w)
{
    if (w)
        deep_call(unref_call, w); /* (SSL_CTX_free, when it is the last) */
}

weft_tls *tls_ref(weft_tls *w)
{
    if (w)
        atomic_fetch_add(&w->refs, 1);
    return w;
}

/* ---- The BIO between OpenSSL and the lower transport ---- */

static int bio_write(BIO *b, const char *buf, int len)
{
    tls *s = BIO_get_data(b);
    size_t need = s->out_len + (size_t)len;
    if (need > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : BUF_SIZE;
        while (cap < need)
            cap *= 2;
        char *p = !s->out && cap == BUF_SIZE ? buf_take() : realloc(s->out, cap);
        if (!p)
            return -1;
        s->out = p;
        s->out_cap = cap;
    }
    memcpy(s->out + s->out_len, buf, (size_t)len);
    s->out_len += (size_t)len;
    return len; /* all of it, always: the lower transport queues what the peer does not take */
}

static int bio_read(BIO *b, char *buf, int len)
{
    tls *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (s->pre_len > 0) {
        size_t k = s->pre_len < (size_t)len ? s->pre_len : (size_t)len;
        memcpy(buf, s->pre + s->pre_off, k);
        s->pre_off += k;
        s->pre_len -= k;
        if (s->pre_len == 0) {
            free(s->pre);
            s->pre = NULL;
        }
        return (int)k;
    }
    transport *below = s->t.below;
    ssize_t r = below->ops->recv(below, buf, (size_t)len);
    if (r >= 0)
        return (int)r; /* (0: end of file) */
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        BIO_set_retry_read(b);
    else
        s->lower_errno = errno;
    return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void make_bio_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "weft transport");
    if (m && BIO_meth_set_write(m, bio_write) && BIO_meth_set_read(m, bio_read) &&
        BIO_meth_set_ctrl(m, bio_ctrl) && BIO_meth_set_create(m, bio_create))
        bio_method = m;
}

/* ---- Errors ---- */

/* The connection is broken for good: only a close is left. Writes fail at once with err (the
 * transport's sticky error), and a close does not try to flush into it. */
static void fail(tls *s, int err)
{
    s->failed = true;
    if (!s->t.err)
        s->t.err = err;
}

/* Empty this thread's OpenSSL error queue before a read or write, so that SSL_get_error
 * speaks of that call. The queue is empty but after a failure, and ERR_clear_error costs
 * about 32 calls of CRYPTO_free even then: look first. */
static void clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* Note why OpenSSL failed (its reason, or the verification's: what weft_tls_error words when
 * asked), and the errno it means. On the deep-call stack. */
static int failure(tls *s, int ssl_err)
{
    unsigned long e = ERR_peek_last_error();
    long verify = SSL_get_verify_result(s->ssl);
    int err = EPROTO;
    s->err_code = 0;
    s->err_num = 0;
    if (ssl_err == SSL_ERROR_SYSCALL && s->lower_errno) {
        err = s->lower_errno;
        s->err_kind = FAIL_ERRNO;
        s->err_num = err;
    } else if (verify != X509_V_OK && !s->handshaken &&
               (SSL_get_verify_mode(s->ssl) & SSL_VERIFY_PEER)) {
        s->err_kind = FAIL_VERIFY;
        s->err_num = (int)verify;
    } else if (e) {
        s->err_kind = FAIL_REASON;
        s->err_code = e;
        if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            err = ECONNRESET; /* the peer closed without close_notify */
    } else if (ssl_err == SSL_ERROR_SYSCALL) {
        s->err_kind = FAIL_EOF;
        err = ECONNRESET;
    } else {
        s->err_kind = FAIL_OTHER;
        s->err_num = ssl_err;
    }
    ERR_clear_error();
    s->lower_errno = 0;
    if (err == EPROTO)
        fail(s, EPROTO);
    return err;
}

/* ---- The transport ---- */

/* Give what OpenSSL wrote to the lower transport (it sends it now or as the peer reads). */
static int push_out(tls *s)
{
    if (s->out_len == 0)
        return 0;
    transport *below = s->t.below;
    int r = below->ops->give(below, s->out, s->out_cap, 0, s->out_len);
    if (r < 0)
        return -1;
    if (r == 1) { /* it owns the buffer now */
        s->out = NULL;
        s->out_cap = 0;
    }
    s->out_len = 0;
    if (s->out && s->out_cap == BUF_SIZE) { /* idle connections hold no buffer */
        buf_give(s->out, s->out_cap);
        s->out = NULL;
        s->out_cap = 0;
    }
    return 0;
}

/* A read failed for good: reads fail with err from now on (a peer that ended without
 * close_notify may have been cut short: its end must not look like a clean one). */
static ssize_t read_failed(tls *s, int err)
{
    s->read_err = err;
    errno = err;
    return -1;
}

/* A read: every record already here, as far as the buffer goes (replies to pipelined
 * requests that came as records of their own can then leave together: line coalescing). */
struct read_call {
    tls *s;
    char *buf;
    size_t n, total;
    int e;
};

static void read_records(void *p)
{
    struct read_call *r = p;
    SSL *ssl = r->s->ssl;
    clear_errors();
    while (r->total < r->n) {
        size_t got = 0;
        if (!SSL_read_ex(ssl, r->buf + r->total, r->n - r->total, &got)) {
            r->e = SSL_get_error(ssl, 0);
            return;
        }
        r->total += got;
        if (!SSL_has_pending(ssl))
            return;
    }
}

static void read_failure(void *p)
{
    struct read_call *r = p;
    r->s->read_err = failure(r->s, r->e);
}

static ssize_t tls_recv(transport *t, void *buf, size_t n)
{
    tls *s = (tls *)t;
    if (s->read_err)
        return read_failed(s, s->read_err);
    if (s->failed || !s->handshaken) {
        errno = EPROTO;
        return -1;
    }
    struct read_call r = {s, buf, n, 0, SSL_ERROR_NONE};
    deep_call(read_records, &r);
    size_t total = r.total;
    int e = r.e;
    s->want_below = e == SSL_ERROR_WANT_READ;
    if (push_out(s) != 0) /* (a TLS 1.3 key update's reply, say) */
        return total > 0 ? (ssize_t)total : -1;
    if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE &&
        e != SSL_ERROR_ZERO_RETURN)
        deep_call(read_failure, &r); /* (after the data before it, if any) */
    if (total > 0)
        return (ssize_t)total;
    switch (e) {
    case SSL_ERROR_ZERO_RETURN:
        return 0; /* close_notify: the end of the stream */
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    default:
        return read_failed(s, s->read_err);
    }
}

/* Bytes OpenSSL holds that a read can use now: not part of a record whose rest is still to
 * come (after a read that wanted more, what it holds is that part). */
static bool holds_input(tls *s)
{
    return s->pre_len > 0 || s->read_err || (!s->want_below && SSL_has_pending(s->ssl));
}

static bool tls_may_have_input(transport *t)
{
    transport *below = t->below;
    return holds_input((tls *)t) || below->ops->may_have_input(below);
}

static int tls_wait_input(transport *t, int64_t deadline)
{
    if (holds_input((tls *)t))
        return 0;
    return t->below->ops->wait_input(t->below, deadline);
}

static void tls_wake_reader(transport *t, int err)
{
    t->below->ops->wake_reader(t->below, err);
}

static void tls_stop_input(transport *t)
{
    if (t->below->ops->stop_input)
        t->below->ops->stop_input(t->below);
}

static int tls_preload(transport *t, const void *buf, size_t n)
{
    tls *s = (tls *)t;
    char *p = malloc(s->pre_len + n);
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    if (s->pre_len)
        memcpy(p, s->pre + s->pre_off, s->pre_len);
    memcpy(p + s->pre_len, buf, n);
    free(s->pre);
    s->pre = p;
    s->pre_off = 0;
    s->pre_len += n;
    return 0;
}

struct write_call {
    tls *s;
    const char *p;
    size_t k, done;
    int err; /* 0, or the errno of a failure */
};

static void write_records(void *p)
{
    struct write_call *w = p;
    clear_errors();
    if (!SSL_write_ex(w->s->ssl, w->p, w->k, &w->done))
        w->err = failure(w->s, SSL_get_error(w->s->ssl, 0));
}

/* Encrypt up to SEND_CHUNK bytes of [p, p + n) and give the records below: the count taken. */
static ssize_t encrypt(tls *s, const char *p, size_t n)
{
    if (s->failed || !s->handshaken) {
        errno = EPROTO;
        return -1;
    }
    if (SSL_get_shutdown(s->ssl) & SSL_SENT_SHUTDOWN) {
        errno = EPIPE; /* after weft_shutdown, as on a socket shut down for writing */
        return -1;
    }
    struct write_call w = {s, p, n < SEND_CHUNK ? n : SEND_CHUNK, 0, 0};
    deep_call(write_records, &w);
    if (w.err) {
        errno = w.err;
        return -1;
    }
    if (push_out(s) != 0)
        return -1;
    return (ssize_t)w.done;
}

static ssize_t tls_send(transport *t, const struct iovec *iov, int iovcnt)
{
    tls *s = (tls *)t;
    if (transport_queued(t->below) >= QUEUE_LIMIT) {
        errno = EAGAIN; /* the peer reads slower than we write: wait for it below */
        return -1;
    }
    ssize_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        ssize_t w = encrypt(s, iov[i].iov_base, iov[i].iov_len);
        if (w < 0)
            return total > 0 ? total : -1;
        total += w;
        if ((size_t)w < iov[i].iov_len)
            break;
    }
    return total;
}

static int tls_give(transport *t, char *base, size_t cap, size_t off, size_t len)
{
    (void)cap;
    tls *s = (tls *)t;
    while (len > 0) { /* the records go below; the plaintext buffer stays the caller's */
        ssize_t w = encrypt(s, base + off, len);
        if (w < 0)
            return -1;
        off += (size_t)w;
        len -= (size_t)w;
    }
    return 0;
}

static int tls_wait_output(transport *t, int64_t deadline)
{
    return t->below->ops->wait_output(t->below, deadline);
}

static size_t tls_drop(transport *t)
{
    tls *s = (tls *)t;
    size_t n = s->out_len;
    s->out_len = 0;
    return n + t->below->ops->drop(t->below);
}

static void shutdown_call(void *ssl)
{
    ERR_clear_error();
    SSL_shutdown(ssl); /* (1 or 0: sent; we do not wait for the peer's) */
    ERR_clear_error();
}

/* close_notify, once: into the output, for the channel to wait for. */
static int tls_finish(transport *t)
{
    tls *s = (tls *)t;
    if (!s->handshaken || s->failed || (SSL_get_shutdown(s->ssl) & SSL_SENT_SHUTDOWN))
        return 0;
    deep_call(shutdown_call, s->ssl);
    return push_out(s);
}

static int tls_shutdown(transport *t)
{
    return t->below->ops->shutdown(t->below);
}

/* Take in what the peer has already sent, without waiting and within bounds, before the
 * descriptor closes: a socket closed with unread input makes the kernel reset the connection
 * instead of ending it, and a TLS 1.3 client that only wrote has unread input for sure (the
 * server's session tickets, which come after the handshake). Application data in it goes,
 * as a close drops it anyway. */
static void take_pending_input(void *ssl)
{
    char scratch[2048];
    size_t got;
    for (int i = 0; i < 32 && SSL_read_ex(ssl, scratch, sizeof scratch, &got); i++) {
    }
    ERR_clear_error();
}

static int tls_close(transport *t)
{
    tls *s = (tls *)t;
    tls_drop(t);
    if (s->handshaken && !s->failed && !s->read_err)
        deep_call(take_pending_input, s->ssl);
    tls_drop(t); /* (what reading it made OpenSSL write: not sent on a closing socket) */
    return t->below->ops->close(t->below);
}

static void free_ssl(void *p)
{
    tls *s = p;
    SSL_free(s->ssl); /* (and our BIO with it) */
    ctx_unref(s->owner);
}

static void tls_free(transport *t)
{
    tls *s = (tls *)t;
    if (t->below) /* (NULL when layering it failed: below is still the channel's) */
        t->below->ops->free(t->below);
    deep_call(free_ssl, s);
    free(s->subject);
    free(s->alpn);
    free(s->error);
    if (s->out)
        buf_give(s->out, s->out_cap);
    free(s->pre);
    if (!s->in_room)
        free(s);
}

static int tls_fd(const transport *t)
{
    return t->below->ops->fd(t->below);
}

static const transport_ops tls_ops = {
    .recv = tls_recv,
    .may_have_input = tls_may_have_input,
    .wait_input = tls_wait_input,
    .wake_reader = tls_wake_reader,
    .stop_input = tls_stop_input,
    .preload = tls_preload,
    .send = tls_send,
    .give = tls_give,
    .wait_output = tls_wait_output,
    .drop = tls_drop,
    .finish = tls_finish,
    .shutdown = tls_shutdown,
    .close = tls_close,
    .free = tls_free,
    .fd = tls_fd,
};

/* ---- Handshakes ---- */

static bool is_ip_literal(const char *name)
{
    unsigned char addr[16];
    return inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
}

struct new_call {
    tls *s;
    weft_tls *w;
    const char *servername;
    bool ok;
};

/* s's SSL and BIO, for the context and server name of c (on the deep-call stack). */
static void new_ssl(void *p)
{
    struct new_call *c = p;
    tls *s = c->s;
    s->ssl = SSL_new(c->w->ctx);
    BIO *bio = s->ssl ? BIO_new(bio_method) : NULL;
    if (!bio)
        goto fail;
    BIO_set_data(bio, s);
    SSL_set_bio(s->ssl, bio, bio);
    if (c->w->server) {
        SSL_set_accept_state(s->ssl);
    } else {
        SSL_set_connect_state(s->ssl);
        const char *name = c->servername;
        if (name && *name) {
            bool ip = is_ip_literal(name);
            if ((!ip && !SSL_set_tlsext_host_name(s->ssl, name)) ||
                (ip ? !X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), name)
                    : !SSL_set1_host(s->ssl, name)))
                goto fail;
        }
    }
    c->ok = true;
    return;
fail:
    SSL_free(s->ssl);
    ERR_clear_error();
}

/* A TLS transport over below for ctx, not yet handshaken, in mem (NULL: on the heap).
 * NULL/errno. */
static tls *tls_new(weft_tls *w, transport *below, const char *servername, void *mem)
{
    pthread_once(&bio_once, make_bio_method);
    tls *s = mem ? memset(mem, 0, sizeof(tls)) : calloc(1, sizeof(tls));
    if (!s || !bio_method) {
        if (!mem)
            free(s);
        errno = ENOMEM;
        return NULL;
    }
    s->in_room = mem != NULL;
    s->t.ops = &tls_ops;
    s->t.below = below;
    struct new_call c = {s, w, servername, false};
    deep_call(new_ssl, &c);
    if (!c.ok) {
        if (!mem)
            free(s);
        errno = ENOMEM;
        return NULL;
    }
    atomic_fetch_add(&w->refs, 1);
    s->owner = w;
    return s;
}

/* Wait until what the handshake wrote is sent: the peer answers a flight only once it has
 * all of it. (In a coroutine the loop would send it as the peer reads; outside one nothing
 * does while we wait for input.) 0, or -1 with errno. */
static int send_flight(weft_chan *c, tls *s, int64_t deadline)
{
    transport *below = s->t.below;
    while (transport_queued(below) > 0 && !transport_err(below))
        if (chan_wait_transport(c, WEFT_WRITABLE, deadline) != 0)
            return -1;
    return 0; /* (a peer gone: the next SSL call finds out and says why) */
}

/* One step of a handshake, on the deep-call stack: done, or e says why not (for a failure,
 * err is its errno, noted by failure()). */
struct hs_call {
    tls *s;
    bool done;
    int e, err;
};

static void handshake_step(void *p)
{
    struct hs_call *h = p;
    SSL *ssl = h->s->ssl;
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl);
    h->done = rc == 1;
    h->e = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl, rc);
    if (!h->done && h->e != SSL_ERROR_WANT_READ && h->e != SSL_ERROR_WANT_WRITE)
        h->err = failure(h->s, h->e);
}

static int handshake(weft_chan *c, weft_tls *w, const char *servername, int64_t deadline,
                     void *mem)
{
    transport *below = chan_transport(c);
    tls *s = tls_new(w, below, servername, mem);
    if (!s)
        return -1;
    if (chan_push_transport(c, &s->t, deadline) != 0)
        return -1; /* (s is freed) */
    for (;;) {
        struct hs_call h = {s, false, 0, 0};
        deep_call(handshake_step, &h);
        /* (a failure's alert goes out too, as far as the peer takes it) */
        if (push_out(s) != 0 || send_flight(c, s, deadline) != 0)
            return -1; /* (EBADF: c may be gone) */
        if (h.done) {
            s->handshaken = true;
            s->want_below = false; /* (what came with the peer's last flight is to be read) */
            return 0;
        }
        if (h.err) {
            fail(s, h.err);
            errno = h.err;
            return -1;
        }
        /* Wait for the peer's flight; a part of a record OpenSSL holds is no input yet. */
        s->want_below = true;
        if (chan_wait_transport(c, WEFT_READABLE, deadline) != 0)
            return -1; /* (EBADF: c may be gone) */
    }
}

int weft_tls_accept(weft_chan *c, weft_tls *w, int64_t deadline)
{
    if (!w->server) {
        errno = EINVAL;
        return -1;
    }
    return handshake(c, w, NULL, deadline, NULL);
}

size_t tls_transport_size(void)
{
    return sizeof(tls);
}

int tls_accept_in(weft_chan *c, weft_tls *w, int64_t deadline, void *mem)
{
    if (!w->server) {
        errno = EINVAL;
        return -1;
    }
    return handshake(c, w, NULL, deadline, mem);
}

int weft_tls_connect(weft_chan *c, weft_tls *w, const char *servername, int64_t deadline)
{
    if (w->server) {
        errno = EINVAL;
        return -1;
    }
    return handshake(c, w, servername, deadline, NULL);
}

/* c's TLS transport, or NULL. */
static tls *tls_of(const weft_chan *c)
{
    transport *t = chan_transport(c);
    return t->ops == &tls_ops ? (tls *)t : NULL;
}

const char *weft_tls_version(const weft_chan *c)
{
    tls *s = tls_of(c);
    return s && s->handshaken ? SSL_get_version(s->ssl) : NULL;
}

const char *weft_tls_cipher(const weft_chan *c)
{
    tls *s = tls_of(c);
    return s && s->handshaken ? SSL_get_cipher_name(s->ssl) : NULL;
}

/* The answers below are made when first asked for, not kept for every connection, and then
 * stay valid until c is closed. */
const char *weft_tls_alpn(const weft_chan *c)
{
    tls *s = tls_of(c);
    if (!s || !s->handshaken)
        return NULL;
    if (!s->alpn) {
        const unsigned char *p;
        unsigned len;
        SSL_get0_alpn_selected(s->ssl, &p, &len); /* (not a string: its bytes) */
        if (len == 0 || !(s->alpn = malloc(len + 1)))
            return NULL;
        memcpy(s->alpn, p, len);
        s->alpn[len] = '\0';
    }
    return s->alpn;
}

static void make_subject(void *p)
{
    tls *s = p;
    X509 *cert = SSL_get0_peer_certificate(s->ssl);
    BIO *mem = cert ? BIO_new(BIO_s_mem()) : NULL;
    char *text;
    long n;
    if (mem && X509_NAME_print_ex(mem, X509_get_subject_name(cert), 0,
                                  XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0 &&
        (n = BIO_get_mem_data(mem, &text)) >= 0 && (s->subject = malloc((size_t)n + 1))) {
        memcpy(s->subject, text, (size_t)n);
        s->subject[n] = '\0';
    }
    BIO_free(mem);
    ERR_clear_error();
}

const char *weft_tls_peer_subject(const weft_chan *c)
{
    tls *s = tls_of(c);
    if (!s || !s->handshaken)
        return NULL;
    if (!s->subject)
        deep_call(make_subject, s);
    return s->subject;
}

/* The text of s's last failure, into s->error (on the deep-call stack: OpenSSL's strings). */
static void make_error(void *p)
{
    tls *s = p;
    char *b = s->error;
    const char *why;
    switch (s->err_kind) {
    case FAIL_ERRNO:
        snprintf(b, ERROR_TEXT, "%s", strerror(s->err_num));
        break;
    case FAIL_VERIFY:
        snprintf(b, ERROR_TEXT, "certificate verify failed: %s",
                 X509_verify_cert_error_string(s->err_num));
        break;
    case FAIL_REASON:
        why = ERR_reason_error_string(s->err_code);
        snprintf(b, ERROR_TEXT, "%s", why ? why : "TLS error");
        break;
    case FAIL_EOF:
        snprintf(b, ERROR_TEXT, "unexpected eof while reading");
        break;
    default:
        snprintf(b, ERROR_TEXT, "TLS error %d", s->err_num);
    }
}

const char *weft_tls_error(const weft_chan *c)
{
    tls *s = tls_of(c);
    if (!s || s->err_kind == FAIL_NONE)
        return "";
    /* Made at each ask (a later failure changes it), in a buffer kept until c is closed. */
    if (!s->error && !(s->error = malloc(ERROR_TEXT)))
        return "TLS error (no memory for its text)";
    deep_call(make_error, s);
    return s->error;
}

#else /* built without OpenSSL */

weft_tls *weft_tls_server(const char *cert_file, const char *key_file)
{
    (void)cert_file, (void)key_file;
    errno = ENOTSUP;
    return NULL;
}

weft_tls *weft_tls_client(const char *ca_file, const char *ca_dir)
{
    (void)ca_file, (void)ca_dir;
    errno = ENOTSUP;
    return NULL;
}

int weft_tls_set_verify(weft_tls *w, int verify)
{
    (void)w, (void)verify;
    errno = ENOTSUP;
    return -1;
}

int weft_tls_set_alpn(weft_tls *w, const char *const *protocols, size_t n)
{
    (void)w, (void)protocols, (void)n;
    errno = ENOTSUP;
    return -1;
}

void weft_tls_free(weft_tls *w)
{
    (void)w;
}

weft_tls *tls_ref(weft_tls *w)
{
    return w;
}

int weft_tls_accept(weft_chan *c, weft_tls *w, int64_t deadline)
{
    (void)c, (void)w, (void)deadline;
    errno = ENOTSUP;
    return -1;
}

int weft_tls_connect(weft_chan *c, weft_tls *w, const char *servername, int64_t deadline)
{
    (void)c, (void)w, (void)servername, (void)deadline;
    errno = ENOTSUP;
    return -1;
}

size_t tls_transport_size(void)
{
    return 0;
}

int tls_accept_in(weft_chan *c, weft_tls *w, int64_t deadline, void *mem)
{
    (void)c, (void)w, (void)deadline, (void)mem;
    errno = ENOTSUP;
    return -1;
}

const char *weft_tls_version(const weft_chan *c) { (void)c; return NULL; }
const char *weft_tls_cipher(const weft_chan *c) { (void)c; return NULL; }
const char *weft_tls_alpn(const weft_chan *c) { (void)c; return NULL; }
const char *weft_tls_peer_subject(const weft_chan *c) { (void)c; return NULL; }
const char *weft_tls_error(const weft_chan *c) { (void)c; return ""; }

#endif
