/* The same random command sequence against redis-server 7 and examples/kv, replies compared
 * byte for byte over raw sockets. The sequence (seeded, so a failure replays) mixes valid
 * commands with wrong arity, wrong argument types, syntax errors, unknown commands, binary
 * keys and values, large values and inline requests, sent in pipelined batches of 1 to 16.
 *
 * Two things cannot be equal and are compared loosely: TTL and PTTL replies, which depend on
 * when each server ran the command (within 1 s and 1000 ms), and KEYS, whose order is each
 * server's hash table's (compared sorted). To keep everything else deterministic, every time
 * to live the sequence sets is at least 1000 s away or already past (then the key is deleted
 * at once), and SELECT is never given 1..15 (kv has one database, like --databases 1). */
#include "harness.h"
#include "kvtest.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MAXARGS 24

struct cmd {
    int argc;
    const char *argv[MAXARGS];
    size_t len[MAXARGS];
    char store[MAXARGS][48]; /* room for generated arguments */
    bool inline_form;
};

static uint32_t seed;

static uint32_t rnd(void)
{
    uint32_t x = seed;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return seed = x;
}

static uint32_t below(uint32_t n)
{
    return rnd() % n;
}

static void add(struct cmd *c, const char *p, size_t n)
{
    if (c->argc < MAXARGS) {
        c->argv[c->argc] = p;
        c->len[c->argc++] = n;
    }
}

static void add_str(struct cmd *c, const char *s)
{
    add(c, s, strlen(s));
}

/* Add a formatted argument, kept in the command's own storage. */
static void add_fmt(struct cmd *c, const char *fmt, long long v)
{
    if (c->argc >= MAXARGS)
        return;
    char *s = c->store[c->argc];
    snprintf(s, sizeof c->store[0], fmt, v);
    add_str(c, s);
}

static const struct {
    const char *p;
    size_t n;
} keys[] = {
    {"k0", 2}, {"k1", 2}, {"k2", 2}, {"n0", 2}, {"n1", 2}, {"s p", 3}, {"bin\0ary", 7},
    {"\r\n", 2}, {"", 0}, {"user:1", 6}, {"user:2", 6}, {"user:10", 7}, {"K0", 2},
};
#define NKEYS (sizeof keys / sizeof keys[0])

static void add_key(struct cmd *c)
{
    uint32_t i = below(NKEYS);
    add(c, keys[i].p, keys[i].n);
}

static char large[20000]; /* past kv's by-reference threshold (16 KiB) */

static void add_value(struct cmd *c)
{
    static const char *const words[] = {"abc", "1.5", " 1", "01", "-0", "+1", "",
                                        "a\0b\r\nc", "9223372036854775806",
                                        "-9223372036854775807", "hello world", "\xff\xfe"};
    uint32_t r = below(100);
    if (r < 40)
        add_fmt(c, "%lld", (long long)below(41) - 20);
    else if (r < 98) {
        uint32_t w = below(sizeof words / sizeof words[0]);
        add(c, words[w], w == 7 ? 7 : strlen(words[w]));
    } else
        add(c, large, 1 + below(sizeof large));
}

/* An integer argument: mostly fine, sometimes not a number or out of range. */
static void add_int(struct cmd *c, long long lo, long long hi)
{
    static const char *const bad[] = {"x", "1.0", "", " 5", "0x10", "99999999999999999999",
                                      "9223372036854775807", "-9223372036854775808", "0", "-1"};
    if (below(8) == 0)
        add_str(c, bad[below(sizeof bad / sizeof bad[0])]);
    else
        add_fmt(c, "%lld", lo + (long long)(rnd() % (uint32_t)(hi - lo + 1)));
}

static long long unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void gen_set(struct cmd *c)
{
    add_str(c, "SET");
    add_key(c);
    add_value(c);
    static const char *const opts[] = {"NX", "XX", "GET", "KEEPTTL", "EX", "PX", "EXAT", "PXAT",
                                       "nx", "get", "FOO", "ex"};
    for (uint32_t n = below(4); n > 0; n--) {
        const char *o = opts[below(sizeof opts / sizeof opts[0])];
        add_str(c, o);
        if (strcasecmp(o, "EX") == 0 && below(10))
            add_int(c, 1000, 1000000);
        else if (strcasecmp(o, "PX") == 0 && below(10))
            add_int(c, 1000000, 1000000000);
        else if (strcasecmp(o, "EXAT") == 0 && below(10))
            add_fmt(c, "%lld", unix_ms() / 1000 + 1000 + below(100000));
        else if (strcasecmp(o, "PXAT") == 0 && below(10))
            add_fmt(c, "%lld", unix_ms() + 1000000 + below(100000000));
    }
}

static void gen_expire(struct cmd *c, bool ms)
{
    add_str(c, ms ? "PEXPIRE" : "EXPIRE");
    add_key(c);
    uint32_t r = below(10);
    if (r == 0)
        add_str(c, below(2) ? "-1" : "0"); /* past: the key goes at once */
    else if (ms)
        add_int(c, 1000000, 1000000000);
    else
        add_int(c, 1000, 1000000);
    static const char *const opts[] = {"NX", "XX", "GT", "LT", "gt", "bogus"};
    for (uint32_t n = below(5) == 0 ? 1 + below(2) : 0; n > 0; n--)
        add_str(c, opts[below(sizeof opts / sizeof opts[0])]);
}

static void gen_keys_pattern(struct cmd *c)
{
    static const char alphabet[] = "*?[]^-\\ku0s:12n ";
    add_str(c, "KEYS");
    if (below(3) == 0) {
        add_str(c, "*");
        return;
    }
    char *s = c->store[c->argc];
    size_t n = below(7);
    for (size_t i = 0; i < n; i++)
        s[i] = alphabet[below(sizeof alphabet - 1)];
    s[n] = '\0';
    add(c, s, n);
}

/* Commands redis-server also knows: a random one with random arguments (arity errors and
 * type errors come from here too). */
static const char *const known[] = {
    "GET", "SET", "GETSET", "DEL", "EXISTS", "INCR", "INCRBY", "DECR", "DECRBY", "APPEND",
    "STRLEN", "MGET", "MSET", "EXPIRE", "PEXPIRE", "TTL", "PTTL", "PERSIST", "DBSIZE", "PING",
    "ECHO", "get", "Incr",
};

static void gen_random_args(struct cmd *c)
{
    add_str(c, known[below(sizeof known / sizeof known[0])]);
    for (uint32_t n = below(5); n > 0; n--) {
        /* No positive numbers: as a time to live they would expire during the replay, at
         * different moments in the two servers. */
        static const char *const words[] = {"abc", "1.5", "", "a\0b", "NX", "GT", "-0", "x y"};
        uint32_t w = below(8);
        switch (below(3)) {
        case 0: add_key(c); break;
        case 1: add(c, words[w], w == 3 ? 3 : strlen(words[w])); break;
        default: add_int(c, -5, 0); break;
        }
    }
}

static void gen(struct cmd *c)
{
    memset(c, 0, sizeof *c);
    uint32_t r = below(100);
    if (r < 16) {
        gen_set(c);
    } else if (r < 26) {
        add_str(c, "GET");
        add_key(c);
    } else if (r < 32) {
        add_str(c, below(2) ? "INCR" : "DECR");
        add_key(c);
    } else if (r < 37) {
        add_str(c, below(2) ? "INCRBY" : "DECRBY");
        add_key(c);
        add_int(c, -1000, 1000);
    } else if (r < 41) {
        add_str(c, "APPEND");
        add_key(c);
        add_value(c);
    } else if (r < 45) {
        add_str(c, below(2) ? "MSET" : "MGET");
        for (uint32_t n = 1 + below(6); n > 0; n--) {
            add_key(c);
            if (strcmp(c->argv[0], "MSET") == 0 && below(8))
                add_value(c);
        }
    } else if (r < 50) {
        add_str(c, below(2) ? "DEL" : "EXISTS");
        for (uint32_t n = 1 + below(3); n > 0; n--)
            add_key(c);
    } else if (r < 58) {
        gen_expire(c, below(2));
    } else if (r < 66) {
        static const char *const q[] = {"TTL", "PTTL", "PERSIST", "STRLEN", "GETSET"};
        add_str(c, q[below(5)]);
        add_key(c);
        if (strcmp(c->argv[0], "GETSET") == 0)
            add_value(c);
    } else if (r < 70) {
        gen_keys_pattern(c);
    } else if (r < 73) {
        add_str(c, "DBSIZE");
    } else if (r < 76) {
        add_str(c, below(2) ? "PING" : "ECHO");
        for (uint32_t n = below(3); n > 0; n--)
            add_value(c);
    } else if (r < 78) {
        static const char *const sel[] = {"0", "16", "-1", "x", "2147483648", "00"};
        add_str(c, "SELECT");
        add_str(c, sel[below(6)]);
    } else if (r < 80) {
        static const char *const cfg[] = {"save", "appendonly", "nosuch", "SAVE"};
        add_str(c, "CONFIG");
        add_str(c, below(5) ? "GET" : "bogus");
        if (below(6)) /* one name: with several, redis-server answers in its dict's order */
            add_str(c, cfg[below(4)]);
    } else if (r < 82) {
        static const char *const names[] = {"a", "b-1", "with space", "", "x\ny"};
        add_str(c, "CLIENT");
        if (below(2)) {
            add_str(c, "SETNAME");
            add_str(c, names[below(5)]);
        } else {
            add_str(c, below(4) ? "GETNAME" : "nosuch");
        }
    } else if (r < 85) {
        static const char *const unknown[] = {"FOO", "getx", "sett", "x y", "\r\n", "",
                                              "getset2"};
        add_str(c, unknown[below(7)]);
        for (uint32_t n = below(4); n > 0; n--)
            add_value(c);
    } else if (r < 86) {
        add_str(c, "FLUSHALL");
        if (below(3) == 0)
            add_str(c, below(2) ? "ASYNC" : "bogus");
    } else {
        gen_random_args(c);
    }
    /* Some go as inline commands: quoted, with \xHH escapes, so any byte gets through. */
    size_t total = 0;
    for (int i = 0; i < c->argc; i++)
        total += c->len[i] * 4 + 3;
    c->inline_form = total < 4096 && below(5) == 0;
}

static size_t encode(const struct cmd *c, char *out, size_t cap)
{
    if (!c->inline_form)
        return resp_encode(out, cap, c->argc, c->argv, c->len);
    size_t n = 0;
    for (int i = 0; i < c->argc; i++) {
        out[n++] = '"';
        for (size_t j = 0; j < c->len[i]; j++) {
            unsigned char b = (unsigned char)c->argv[i][j];
            if (b == '"' || b == '\\' || b < 0x20 || b >= 0x7f)
                n += (size_t)snprintf(out + n, cap - n, "\\x%02x", b);
            else
                out[n++] = (char)b;
        }
        out[n++] = '"';
        out[n++] = i + 1 < c->argc ? ' ' : '\r';
    }
    out[n++] = '\n';
    CHECK(n < cap);
    return n;
}

/* The elements of an array reply, as pointers into it. */
static size_t elements(const char *r, size_t n, const char **el, size_t *len, size_t max)
{
    size_t k = 0;
    const char *p = strstr(r, "\r\n") + 2;
    while (p < r + n && k < max) {
        long m = resp_complete(p, (size_t)(r + n - p));
        CHECK(m > 0);
        el[k] = p;
        len[k++] = (size_t)m;
        p += m;
    }
    return k;
}

struct el {
    const char *p;
    size_t n;
};

static int el_cmp(const void *a, const void *b)
{
    const struct el *x = a, *y = b;
    size_t m = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, m);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

static bool same_keys(const char *a, size_t an, const char *b, size_t bn)
{
    if (a[0] != '*' || b[0] != '*')
        return an == bn && memcmp(a, b, an) == 0;
    static struct el ea[64], eb[64];
    const char *pa[64], *pb[64];
    size_t la[64], lb[64];
    size_t na = elements(a, an, pa, la, 64), nb = elements(b, bn, pb, lb, 64);
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        ea[i] = (struct el){pa[i], la[i]};
        eb[i] = (struct el){pb[i], lb[i]};
    }
    qsort(ea, na, sizeof ea[0], el_cmp);
    qsort(eb, nb, sizeof eb[0], el_cmp);
    for (size_t i = 0; i < na; i++)
        if (el_cmp(&ea[i], &eb[i]) != 0)
            return false;
    return true;
}

static bool same_reply(const struct cmd *c, const char *a, size_t an, const char *b, size_t bn)
{
    if (an == bn && memcmp(a, b, an) == 0)
        return true;
    bool ttl = c->len[0] == 3 && strncasecmp(c->argv[0], "TTL", 3) == 0;
    bool pttl = c->len[0] == 4 && strncasecmp(c->argv[0], "PTTL", 4) == 0;
    if ((ttl || pttl) && c->argc == 2 && a[0] == ':' && b[0] == ':') {
        long long x = atoll(a + 1), y = atoll(b + 1);
        return x >= 0 && y >= 0 && llabs(x - y) <= (ttl ? 1 : 1000);
    }
    if (c->len[0] == 4 && strncasecmp(c->argv[0], "KEYS", 4) == 0 && c->argc == 2)
        return same_keys(a, an, b, bn);
    return false;
}

static void show(const char *what, const char *p, size_t n)
{
    fprintf(stderr, "  %s (%zu bytes): ", what, n);
    for (size_t i = 0; i < n && i < 300; i++)
        fprintf(stderr, (unsigned char)p[i] >= 0x20 && (unsigned char)p[i] < 0x7f ? "%c" : "\\x%02x",
                (unsigned char)p[i]);
    fprintf(stderr, "\n");
}

/* The last requests, to show on a failure those that touched the same key. */
#define HISTORY 4096
static struct cmd history[HISTORY];

/* Copy a command; arguments kept in its own storage point into the copy's. */
static void copy_cmd(struct cmd *dst, const struct cmd *src)
{
    *dst = *src;
    for (int a = 0; a < src->argc; a++) {
        const char *p = src->argv[a];
        if (p >= src->store[0] && p < src->store[0] + sizeof src->store)
            dst->argv[a] = dst->store[0] + (p - src->store[0]);
    }
}

static bool names(const struct cmd *h, const struct cmd *bad)
{
    for (int a = 1; a < h->argc; a++)
        for (int b = 1; b < bad->argc; b++)
            if (h->len[a] == bad->len[b] && bad->len[b] < 16 &&
                memcmp(h->argv[a], bad->argv[b], h->len[a]) == 0)
                return true;
    return false;
}

static void show_history(int upto, const struct cmd *bad)
{
    struct cmd watch = {.argc = 2, .argv = {"", getenv("KV_REPLAY_WATCH")}};
    if (watch.argv[1]) { /* a key of one's choosing */
        watch.len[1] = strlen(watch.argv[1]);
        bad = &watch;
    }
    fprintf(stderr, "  earlier requests naming the same arguments:\n");
    static char tmp[65536];
    for (int i = upto > HISTORY ? upto - HISTORY : 0; i < upto; i++) {
        const struct cmd *h = &history[i % HISTORY];
        if (names(h, bad)) {
            char what[32];
            snprintf(what, sizeof what, "#%d", i);
            show(what, tmp, encode(h, tmp, sizeof tmp));
        }
    }
}

static void replay_random_sequence(void)
{
    if (!have_program("redis-server")) {
        printf("  skipped: redis-server not installed (Debian package redis-server)\n");
        return;
    }
    memset(large, 'L', sizeof large);
    seed = 20261206u;
    const char *env = getenv("KV_REPLAY_SEED"); /* to try other sequences */
    if (env && atol(env) != 0)
        seed = (uint32_t)atol(env);
    printf("  seed %u\n", seed);
    struct kv_proc redis, kv;
    redis_start(&redis);
    kv_start(&kv, NULL);
    struct resp_conn rc, kc;
    resp_open(&rc, redis.port);
    resp_open(&kc, kv.port);
    const int total = test_scale(getenv("KV_REPLAY_COUNT") ? atoi(getenv("KV_REPLAY_COUNT")) : 4000);
    static struct cmd batch[16];
    size_t cap = 1 << 20;
    char *out = malloc(cap);
    CHECK(out);
    int done = 0, errors = 0;
    while (done < total) {
        int n = 1 + (int)below(16);
        size_t len = 0;
        for (int i = 0; i < n; i++) {
            gen(&batch[i]);
            len += encode(&batch[i], out + len, cap - len);
        }
        write_all(rc.fd, out, len);
        char *ra[16], *ka[16];
        size_t rn[16], kn[16];
        for (int i = 0; i < n; i++)
            ra[i] = resp_read(&rc, &rn[i], 20000);
        write_all(kc.fd, out, len);
        for (int i = 0; i < n; i++)
            ka[i] = resp_read(&kc, &kn[i], 20000);
        for (int i = 0; i < n; i++) {
            if (!same_reply(&batch[i], ra[i], rn[i], ka[i], kn[i])) {
                fprintf(stderr, "  command %d differs:\n", done + i);
                static char tmp[65536];
                show("request", tmp, encode(&batch[i], tmp, sizeof tmp));
                show("redis-server", ra[i], rn[i]);
                show("kv", ka[i], kn[i]);
                show_history(done + i, &batch[i]);
                CHECK(!"replies differ");
            }
            errors += ra[i][0] == '-';
            copy_cmd(&history[(done + i) % HISTORY], &batch[i]);
            free(ra[i]);
            free(ka[i]);
        }
        done += n;
    }
    printf("  %d commands replayed (%d error replies), identical\n", done, errors);
    CHECK(errors > done / 20); /* the sequence does exercise the error paths */
    free(out);
    resp_close(&rc);
    resp_close(&kc);
    kv_stop(&kv);
    kv_stop(&redis);
}

const struct test tests[] = {
    {"replay_random_sequence", replay_random_sequence, 180},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
