/* Reading one RESP2 request from a channel, the way Redis 7 reads it: a line starting with
 * '*' opens a multi-bulk request ("*N\r\n" then N times "$LEN\r\n" + LEN bytes + "\r\n");
 * any other line is an inline command split on blanks with Redis's quoting rules. The
 * arguments are copied into the request's own storage: small ones into the struct, larger
 * ones into heap memory that grows only as bytes actually arrive, so a client announcing a
 * huge length costs what it sends, never what it claims. */
#include "proto.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A bulk announced larger than this is read in pieces, its storage doubling as they come. */
#define BULK_STEP (64u * 1024u)

void kv_request_init(struct kv_request *r)
{
    r->argc = 0;
    r->argv = r->small_argv;
    r->argl = r->small_argl;
    r->cap = KV_REQ_SMALL_ARGS;
    r->bytes = r->small_bytes;
    r->used = 0;
    r->size = KV_REQ_SMALL_BYTES;
    r->error = NULL;
}

void kv_request_release(struct kv_request *r)
{
    if (r->argv != r->small_argv) {
        free(r->argv);
        free(r->argl);
    }
    if (r->bytes != r->small_bytes)
        free(r->bytes);
    kv_request_init(r);
}

static int fail(struct kv_request *r, const char *msg)
{
    r->error = msg;
    return -1;
}

/* Room for one more argument. */
static int reserve_arg(struct kv_request *r)
{
    if (r->argc < r->cap)
        return 0;
    size_t cap = r->cap * 2;
    char **argv = malloc(cap * sizeof *argv);
    size_t *argl = malloc(cap * sizeof *argl);
    if (!argv || !argl) {
        free(argv);
        free(argl);
        return -1;
    }
    memcpy(argl, r->argl, r->argc * sizeof *argl);
    if (r->argv != r->small_argv) {
        free(r->argv);
        free(r->argl);
    }
    r->argv = argv; /* filled in by finish(): bytes may still move */
    r->argl = argl;
    r->cap = cap;
    return 0;
}

/* Whether n more bytes of arguments stay within the request limit (used counts a NUL per
 * argument, and n may include a bulk's CRLF: that much slack). */
static bool fits(const struct kv_request *r, size_t n, const struct kv_limits *lim)
{
    return n <= lim->max_request + 2 && r->used <= lim->max_request + 2 - n + r->argc;
}

/* Room for n more bytes of arguments, within the request limit. */
static int reserve_bytes(struct kv_request *r, size_t n, const struct kv_limits *lim)
{
    if (!fits(r, n, lim))
        return fail(r, "Protocol error: request too large");
    if (r->used + n <= r->size)
        return 0;
    size_t size = r->size * 2 > r->used + n ? r->size * 2 : r->used + n;
    char *p = r->bytes == r->small_bytes ? malloc(size) : realloc(r->bytes, size);
    if (!p)
        return fail(r, "Protocol error: out of memory for the request");
    if (r->bytes == r->small_bytes)
        memcpy(p, r->small_bytes, r->used);
    r->bytes = p;
    r->size = size;
    return 0;
}

/* Point argv at the arguments once they are all in (each is followed by its NUL). */
static void finish(struct kv_request *r)
{
    size_t off = 0;
    for (size_t i = 0; i < r->argc; i++) {
        r->argv[i] = r->bytes + off;
        off += r->argl[i] + 1;
    }
}

int kv_parse_ll(const char *s, size_t n, long long *v)
{
    if (n == 0 || n > 20)
        return 0;
    bool neg = s[0] == '-';
    size_t i = neg;
    if (i == n || s[i] < '0' || s[i] > '9' || (s[i] == '0' && n > 1))
        return 0; /* "", "-", "+1", " 1", "01", "-0" */
    unsigned long long u = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        unsigned d = (unsigned)(s[i] - '0');
        if (u > (~0ull - d) / 10)
            return 0;
        u = u * 10 + d;
    }
    if (neg ? u > (unsigned long long)INT64_MAX + 1 : u > (unsigned long long)INT64_MAX)
        return 0;
    *v = neg ? (long long)(0 - u) : (long long)u;
    return 1;
}

/* The number of a "*N\r" or "$LEN\r" line (weft_gets leaves the \r): the digits between
 * the marker and a \r that must end the line (kv_parse_ll refuses any other byte). */
static int line_number(const char *line, size_t len, long long *v)
{
    return len >= 2 && line[len - 1] == '\r' && kv_parse_ll(line + 1, len - 2, v);
}

/* True if the line came without its newline: the client closed in the middle of it. */
static bool cut_off(weft_chan *c)
{
    return weft_eof(c);
}

/* One "$LEN\r\n" + payload + "\r\n" of a multi-bulk request. */
static int read_bulk(weft_chan *c, struct kv_request *r, const struct kv_limits *lim)
{
    size_t len;
    const char *line = weft_gets(c, &len);
    if (!line)
        return errno == EMSGSIZE ? fail(r, "Protocol error: too big bulk count string") : -1;
    if (cut_off(c))
        return -1;
    if (len == 0 || line[0] != '$') {
        /* Redis shows the byte it found, a newline as a space; %c of a NUL ends its text. */
        char got = len ? line[0] : ' ';
        if (got == '\r' || got == '\n')
            got = ' ';
        snprintf(r->errbuf, sizeof r->errbuf, "Protocol error: expected '$', got '%c'", got);
        return fail(r, r->errbuf);
    }
    long long n;
    if (!line_number(line, len, &n) || n < 0 || (unsigned long long)n > lim->max_bulk)
        return fail(r, "Protocol error: invalid bulk length");
    if (!fits(r, (size_t)n + 2, lim))
        return fail(r, "Protocol error: request too large");
    if (reserve_arg(r) != 0)
        return fail(r, "Protocol error: out of memory for the request");
    /* The payload and its CRLF go straight into the argument storage; the CR becomes the
     * argument's NUL. A large one grows the storage step by step, as the bytes come. */
    size_t want = (size_t)n + 2, got = 0;
    while (got < want) {
        size_t step = want - got;
        if (step > BULK_STEP && step > r->used + got)
            step = r->used + got > BULK_STEP ? r->used + got : BULK_STEP;
        if (reserve_bytes(r, got + step, lim) != 0)
            return -1;
        ssize_t k = weft_read_exact(c, r->bytes + r->used + got, step);
        if (k != (ssize_t)step)
            return -1; /* closed mid-bulk, or a read error */
        got += step;
    }
    char *p = r->bytes + r->used;
    if (p[n] != '\r' || p[n + 1] != '\n')
        return fail(r, "Protocol error: expected CRLF after bulk data");
    p[n] = '\0';
    r->used += (size_t)n + 1;
    r->argl[r->argc++] = (size_t)n;
    return 0;
}

static int read_multibulk(weft_chan *c, struct kv_request *r, const char *line, size_t len,
                          const struct kv_limits *lim)
{
    long long n;
    if (!line_number(line, len, &n) || (n > 0 && (unsigned long long)n > lim->max_args))
        return fail(r, "Protocol error: invalid multibulk length");
    for (long long i = 0; i < n; i++)
        if (read_bulk(c, r, lim) != 0)
            return -1;
    finish(r);
    return 1;
}

static bool is_space(char ch) /* C's isspace, without the locale */
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\v' || ch == '\f' || ch == '\r';
}

static int hex_value(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* One token of an inline command starting at *pp, written to out (at most as long as the
 * rest of the line). Quoting as redis-cli and Redis do it: "..." with \n \r \t \b \a \xHH
 * and \<any> escapes, '...' with \' only; a closing quote must be followed by a blank or the
 * end. Returns the token's length, or -1 for unbalanced quotes. */
static ssize_t inline_token(const char **pp, char *out)
{
    const char *p = *pp;
    size_t n = 0;
    bool dq = false, sq = false;
    for (;;) {
        if (dq) {
            if (!*p)
                return -1;
            if (p[0] == '\\' && p[1] == 'x' && hex_value(p[2]) >= 0 && hex_value(p[3]) >= 0) {
                out[n++] = (char)(hex_value(p[2]) * 16 + hex_value(p[3]));
                p += 4;
            } else if (p[0] == '\\' && p[1]) {
                char e = p[1];
                out[n++] = e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e == 'b' ? '\b'
                         : e == 'a' ? '\a' : e;
                p += 2;
            } else if (*p == '"') {
                if (p[1] && !is_space(p[1]))
                    return -1;
                p++;
                break;
            } else {
                out[n++] = *p++;
            }
        } else if (sq) {
            if (!*p)
                return -1;
            if (p[0] == '\\' && p[1] == '\'') {
                out[n++] = '\'';
                p += 2;
            } else if (*p == '\'') {
                if (p[1] && !is_space(p[1]))
                    return -1;
                p++;
                break;
            } else {
                out[n++] = *p++;
            }
        } else if (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t' || *p == '\0') {
            break;
        } else if (*p == '"') {
            dq = true;
            p++;
        } else if (*p == '\'') {
            sq = true;
            p++;
        } else {
            out[n++] = *p++;
        }
    }
    *pp = p;
    return (ssize_t)n;
}

/* An inline command: the line split into arguments. Like Redis, the line is read as a C
 * string (weft_gets ends it with a NUL; one inside it ends it sooner). Redis drops a final
 * \r first; here it is a blank outside quotes and makes no difference inside them (an
 * unterminated quote either way). The tokens are decoded straight into the argument
 * storage: together with their NULs they never take more than the line and one byte. */
static int read_inline(struct kv_request *r, const char *line, size_t len,
                       const struct kv_limits *lim)
{
    if (reserve_bytes(r, len + 1, lim) != 0)
        return -1;
    const char *p = line;
    for (;;) {
        while (*p && is_space(*p))
            p++;
        if (!*p)
            break;
        if (r->argc >= lim->max_args)
            return fail(r, "Protocol error: too many arguments");
        if (reserve_arg(r) != 0)
            return fail(r, "Protocol error: out of memory for the request");
        ssize_t n = inline_token(&p, r->bytes + r->used);
        if (n < 0)
            return fail(r, "Protocol error: unbalanced quotes in request");
        r->bytes[r->used + (size_t)n] = '\0';
        r->used += (size_t)n + 1;
        r->argl[r->argc++] = (size_t)n;
    }
    finish(r);
    return 1;
}

int kv_request_read(weft_chan *c, struct kv_request *r, const struct kv_limits *lim)
{
    r->argc = 0;
    r->used = 0;
    r->error = NULL;
    size_t len;
    const char *line = weft_gets(c, &len);
    if (!line) {
        if (errno == EMSGSIZE)
            return fail(r, "Protocol error: too big inline request");
        return weft_eof(c) && errno == 0 ? 0 : -1;
    }
    if (cut_off(c))
        return -1; /* a last line without its newline: Redis would wait for the rest */
    if (len > 0 && line[0] == '*')
        return read_multibulk(c, r, line, len, lim);
    return read_inline(r, line, len, lim);
}
