/* libFuzzer target: examples/kv's request parser and commands, fed an arbitrary byte stream
 * through a real channel (a socketpair read outside any coroutine), every request run
 * against a store, every reply checked to be well-formed RESP, the sweep run now and then.
 * What must hold: no crash or sanitizer report, requests are NUL-terminated arguments no
 * longer than the stream, a protocol error is a "Protocol error: ..." message, and every
 * reply parses as exactly one RESP value.
 *
 * Input layout: byte 0 bit 0: small limits (bulk 64, 8 arguments, lines 32, request 200
 * bytes), so the limit paths are reached with short inputs; the rest is the stream.
 */
#include "commands.h"

#include <weft.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                          \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz_kv: %s failed at line %d\n", #cond, __LINE__);               \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

/* Length of the one RESP value at p, or 0 if it is not one (incomplete or malformed). */
static size_t resp_value(const char *p, size_t n, int depth)
{
    const char *nl = n > 0 ? memchr(p, '\n', n) : NULL;
    if (!nl || nl == p || nl[-1] != '\r' || depth > 64)
        return 0;
    size_t line = (size_t)(nl - p) + 1;
    long long v = 0;
    if (p[0] == ':' || p[0] == '$' || p[0] == '*') {
        if (!kv_parse_ll(p + 1, line - 3, &v))
            return 0;
    } else if (p[0] != '+' && p[0] != '-') {
        return 0;
    } else if (memchr(p, '\r', line - 2)) {
        return 0; /* a status or error line holds no CR */
    }
    if (p[0] == '$' && v >= 0) {
        if (n - line < (size_t)v + 2 || p[line + v] != '\r' || p[line + v + 1] != '\n')
            return 0;
        return line + (size_t)v + 2;
    }
    if (p[0] == '*') {
        size_t at = line;
        for (long long i = 0; i < v; i++) {
            size_t k = resp_value(p + at, n - at, depth + 1);
            if (!k)
                return 0;
            at += k;
        }
        return at;
    }
    return line;
}

/* The reply as it would go out (values sent by reference put in place), checked. */
static void check_reply(const struct kv_reply *rp)
{
    size_t total = rp->len;
    for (size_t i = 0; i < rp->nrefs; i++)
        total += rp->refs[i].value->len;
    char *all = malloc(total + 1);
    REQUIRE(all);
    size_t from = 0, o = 0;
    for (size_t i = 0; i < rp->nrefs; i++) {
        memcpy(all + o, rp->buf + from, rp->refs[i].at - from);
        o += rp->refs[i].at - from;
        memcpy(all + o, rp->refs[i].value->data, rp->refs[i].value->len);
        o += rp->refs[i].value->len;
        from = rp->refs[i].at;
    }
    memcpy(all + o, rp->buf + from, rp->len - from);
    REQUIRE(resp_value(all, total, 0) == total);
    free(all);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct kv_server srv = {.bind = "127.0.0.1", .port = 6379, .threads = 1, .max_conns = 10};
    srv.limits = (data[0] & 1) ? (struct kv_limits){64, 8, 32, 200}
                               : (struct kv_limits){KV_MAX_BULK_DEFAULT, KV_MAX_ARGS_DEFAULT,
                                                    KV_MAX_INLINE_DEFAULT, KV_MAX_REQUEST_DEFAULT};
    srv.store = kv_store_new(false);
    REQUIRE(srv.store);
    data++;
    size--;

    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    int big = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    REQUIRE(size == 0 || write(sv[1], data, size) == (ssize_t)size);
    shutdown(sv[1], SHUT_WR);
    weft_chan *c = weft_chan_open(sv[0]);
    REQUIRE(c);
    weft_chan_set_maxline(c, srv.limits.max_inline);
    weft_chan_set_timeouts(c, 5000, 5000); /* everything is there: a wait would be a bug */

    struct kv_request rq;
    struct kv_reply rp;
    struct kv_client cl;
    kv_request_init(&rq);
    kv_reply_init(&rp);
    kv_client_init(&cl, &srv);
    for (int n = 0;; n++) {
        int rc = kv_request_read(c, &rq, &srv.limits);
        if (rc <= 0) {
            REQUIRE(!rq.error || strncmp(rq.error, "Protocol error: ", 16) == 0);
            break;
        }
        size_t bytes = 0;
        for (size_t i = 0; i < rq.argc; i++) {
            REQUIRE(rq.argv[i][rq.argl[i]] == '\0');
            bytes += rq.argl[i];
        }
        REQUIRE(bytes <= size && rq.argc <= srv.limits.max_args);
        if (rq.argc == 0)
            continue;
        enum kv_after after = kv_command_run(&cl, &rq, &rp);
        if (after == KV_DROP)
            break;
        check_reply(&rp);
        kv_reply_release(&rp); /* (what sending does, without a reader on the other side) */
        if (after == KV_CLOSE)
            break;
        if (n % 16 == 15) {
            size_t looked;
            kv_store_sweep(srv.store, kv_unix_ms(), 20, &looked);
        }
    }
    kv_request_release(&rq);
    kv_reply_release(&rp);
    kv_client_free(&cl);
    weft_close(c);
    close(sv[1]);
    kv_store_free(srv.store);
    return 0;
}
