/* examples/kv against clients nobody here wrote: redis-cli and redis-benchmark (Debian's
 * redis-tools) and hiredis, for every command; then pipelining, expiry (on access and by the
 * sweep coroutine), --threads, QUIT and a clean SIGTERM. A test whose client is not
 * installed says "skipped: ..." and passes. */
#include "harness.h"
#include "kvtest.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef KV_TEST_HIREDIS
#include <hiredis/hiredis.h>
#endif

static bool skip_without(const char *program, const char *package)
{
    if (have_program(program))
        return false;
    printf("  skipped: %s not installed (Debian package %s)\n", program, package);
    return true;
}

/* ---- The program itself ---- */

static void usage_and_bad_flags(void)
{
    char *help[] = {"examples/kv", "--help", NULL};
    int out;
    pid_t pid = spawn_program(help, &out, NULL);
    char text[4096];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof text - 1 && readable_within(out, 20000) &&
           (r = read(out, text + n, sizeof text - 1 - n)) > 0)
        n += (size_t)r;
    text[n] = '\0';
    close(out);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(strstr(text, "usage: kv") && strstr(text, "--threads N") && strstr(text, "--max-bulk"));

    char *bad[] = {"examples/kv", "--max-args", "zero", NULL};
    pid = spawn_program(bad, &out, NULL);
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 2);
    close(out);
}

/* ---- redis-cli: every command, as a user types it ---- */

struct cli_case {
    const char *args[10];
    const char *out; /* redis-cli's output (raw mode: not a terminal) */
};

static const struct cli_case cli_cases[] = {
    {{"FLUSHALL"}, "OK\n"},
    {{"PING"}, "PONG\n"},
    {{"PING", "hello there"}, "hello there\n"},
    {{"ECHO", "a b"}, "a b\n"},
    {{"SET", "k", "v"}, "OK\n"},
    {{"GET", "k"}, "v\n"},
    {{"GET", "missing"}, "\n"},
    {{"SET", "k", "v2", "NX"}, "\n"},
    {{"SET", "k", "v2", "XX", "GET"}, "v\n"},
    {{"SET", "k", "x", "EX", "0"}, "ERR invalid expire time in 'set' command\n\n"},
    {{"SET", "k", "x", "NX", "XX"}, "ERR syntax error\n\n"},
    {{"SET", "n", "10", "EX", "100"}, "OK\n"},
    {{"TTL", "n"}, "100\n"},
    {{"SET", "p", "1", "PX", "100000"}, "OK\n"},
    {{"TTL", "p"}, "100\n"},
    {{"SET", "n", "10", "KEEPTTL"}, "OK\n"},
    {{"TTL", "n"}, "100\n"},
    {{"GETSET", "k", "v3"}, "v2\n"},
    {{"STRLEN", "k"}, "2\n"},
    {{"APPEND", "k", "xyz"}, "5\n"},
    {{"GET", "k"}, "v3xyz\n"},
    {{"APPEND", "fresh", "abc"}, "3\n"},
    {{"INCR", "n"}, "11\n"},
    {{"INCRBY", "n", "5"}, "16\n"},
    {{"DECR", "n"}, "15\n"},
    {{"DECRBY", "n", "20"}, "-5\n"},
    {{"TTL", "n"}, "100\n"},
    {{"INCR", "k"}, "ERR value is not an integer or out of range\n\n"},
    {{"INCRBY", "n", "9223372036854775807"}, "9223372036854775802\n"},
    {{"INCR", "n"}, "9223372036854775803\n"},
    {{"INCRBY", "n", "5"}, "ERR increment or decrement would overflow\n\n"},
    {{"DECRBY", "n", "-9223372036854775808"}, "ERR decrement would overflow\n\n"},
    {{"INCR", "counter"}, "1\n"},
    {{"MSET", "a", "1", "b", "2", "c", "3"}, "OK\n"},
    {{"MSET", "a", "1", "b"}, "ERR wrong number of arguments for 'mset' command\n\n"},
    {{"MGET", "a", "missing", "c"}, "1\n\n3\n"},
    {{"EXISTS", "a", "a", "missing"}, "2\n"},
    {{"DEL", "a", "b", "missing"}, "2\n"},
    {{"EXISTS", "a"}, "0\n"},
    {{"EXPIRE", "c", "100"}, "1\n"},
    {{"TTL", "c"}, "100\n"},
    {{"EXPIRE", "c", "200", "LT"}, "0\n"},
    {{"EXPIRE", "c", "200", "GT"}, "1\n"},
    {{"EXPIRE", "c", "50", "NX"}, "0\n"},
    {{"EXPIRE", "c", "50", "XX"}, "1\n"},
    {{"EXPIRE", "c", "5", "NX", "XX"},
     "ERR NX and XX, GT or LT options at the same time are not compatible\n\n"},
    {{"EXPIRE", "c", "5", "SOON"}, "ERR Unsupported option SOON\n\n"},
    {{"PEXPIRE", "c", "300000"}, "1\n"},
    {{"TTL", "c"}, "300\n"},
    {{"PERSIST", "c"}, "1\n"},
    {{"PERSIST", "c"}, "0\n"},
    {{"TTL", "c"}, "-1\n"},
    {{"TTL", "missing"}, "-2\n"},
    {{"PTTL", "c"}, "-1\n"},
    {{"PTTL", "missing"}, "-2\n"},
    {{"EXPIRE", "c", "-1"}, "1\n"},
    {{"EXISTS", "c"}, "0\n"},
    {{"EXPIRE", "missing", "10"}, "0\n"},
    {{"FLUSHALL"}, "OK\n"},
    {{"MSET", "user:1", "a", "user:2", "b", "user:10", "c", "other", "d"}, "OK\n"},
    {{"KEYS", "user:?"}, NULL}, /* order is the hash table's: checked sorted below */
    {{"DBSIZE"}, "4\n"},
    {{"SELECT", "0"}, "OK\n"},
    {{"SELECT", "1"}, "ERR DB index is out of range\n\n"},
    {{"FLUSHALL", "ASYNC"}, "OK\n"},
    {{"DBSIZE"}, "0\n"},
    {{"CONFIG", "GET", "save"}, "save\n\n"},
    {{"CONFIG", "GET", "appendonly"}, "appendonly\nno\n"},
    {{"CONFIG", "GET", "databases"}, "databases\n1\n"},
    {{"CONFIG", "SET", "save", ""}, "ERR unknown subcommand 'SET'. Try CONFIG HELP.\n\n"},
    {{"CLIENT", "GETNAME"}, "\n"},
    {{"CLIENT", "SETNAME", "a b"},
     "ERR Client names cannot contain spaces, newlines or special characters.\n\n"},
    {{"CLIENT", "SETNAME", "cli"}, "OK\n"},
    {{"COMMAND", "COUNT"}, "29\n"},
    {{"COMMAND", "INFO", "get"}, NULL},
    {{"HELLO", "2", "SETNAME", "me"}, NULL},
    {{"HELLO", "3"}, "NOPROTO unsupported protocol version\n\n"},
    {{"FOO", "bar"}, "ERR unknown command 'FOO', with args beginning with: 'bar' \n\n"},
    {{"GET"}, "ERR wrong number of arguments for 'get' command\n\n"},
    {{"QUIT"}, "OK\n"},
};

static bool has_lines(const char *out, const char *const *lines)
{
    for (; *lines; lines++) {
        char want[128];
        snprintf(want, sizeof want, "%s\n", *lines);
        if (!strstr(out, want))
            return false;
    }
    return true;
}

static void redis_cli_every_command(void)
{
    if (skip_without("redis-cli", "redis-tools"))
        return;
    struct kv_proc kv;
    kv_start(&kv, NULL);
    for (size_t i = 0; i < sizeof cli_cases / sizeof cli_cases[0]; i++) {
        const struct cli_case *c = &cli_cases[i];
        char *out = redis_cli(kv.port, c->args, NULL);
        bool ok;
        if (c->out) {
            ok = strcmp(out, c->out) == 0;
        } else if (strcmp(c->args[0], "KEYS") == 0) {
            ok = strlen(out) == strlen("user:1\nuser:2\n") &&
                 has_lines(out, (const char *[]){"user:1", "user:2", NULL});
        } else if (strcmp(c->args[0], "HELLO") == 0) {
            ok = has_lines(out, (const char *[]){"server", "redis", "proto", "2", "id", "mode",
                                                 "standalone", "role", "master", "modules", NULL});
        } else { /* COMMAND INFO get */
            ok = has_lines(out, (const char *[]){"get", "2", "readonly", "fast", "@read",
                                                 "@string", "RO", "access", NULL});
        }
        if (!ok)
            fprintf(stderr, "  redis-cli %s %s: got \"%s\"\n", c->args[0],
                    c->args[1] ? c->args[1] : "", out);
        CHECK(ok);
        free(out);
    }
    kv_stop(&kv);
}

/* redis-cli reading commands from its input sends COMMAND DOCS first, as its interactive
 * mode does, and redis-benchmark starts with CONFIG GET save and appendonly. */
static void redis_cli_and_benchmark_connect(void)
{
    if (skip_without("redis-cli", "redis-tools") ||
        skip_without("redis-benchmark", "redis-tools"))
        return;
    struct kv_proc kv;
    kv_start(&kv, NULL);
    char *out = redis_cli(kv.port, (const char *[]){NULL}, "set a 1\nincr a\nget a\n");
    CHECK(strcmp(out, "OK\n2\n2\n") == 0);
    free(out);
    out = redis_cli(kv.port, (const char *[]){"--no-raw", "COMMAND", "DOCS", "set", NULL}, NULL);
    CHECK(strstr(out, "\"summary\"") && strstr(out, "\"group\"") && strstr(out, "\"string\""));
    free(out);

    char port[16];
    snprintf(port, sizeof port, "%d", kv.port);
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 1);
        dup2(p[1], 2);
        execlp("redis-benchmark", "redis-benchmark", "-p", port, "-n", "2000", "-c", "10",
               "-t", "set,get,incr,mset", "-q", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    char text[16384];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof text - 1 && readable_within(p[0], 30000) &&
           (r = read(p[0], text + n, sizeof text - 1 - n)) > 0)
        n += (size_t)r;
    text[n] = '\0';
    close(p[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(strstr(text, "SET: ") && strstr(text, "GET: ") && strstr(text, "INCR: ") &&
          strstr(text, "MSET (10 keys): "));
    CHECK(!strstr(text, "WARN") && !strstr(text, "rror"));
    kv_stop(&kv);
}

/* ---- hiredis: every command, binary-safe ---- */

#ifdef KV_TEST_HIREDIS
static redisReply *ask(redisContext *c, int argc, const char *const *argv, const size_t *lens)
{
    redisReply *r = redisCommandArgv(c, argc, (const char **)argv, lens);
    CHECK(r != NULL);
    return r;
}

#define ARGS(...) (const char *[]){__VA_ARGS__}, NULL
#define N(...) (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *))
#define ASK(c, ...) ask(c, N(__VA_ARGS__), ARGS(__VA_ARGS__))

static void expect_status(redisReply *r, const char *s)
{
    CHECK(r->type == REDIS_REPLY_STATUS && strcmp(r->str, s) == 0);
    freeReplyObject(r);
}

static void expect_int(redisReply *r, long long v)
{
    if (r->type != REDIS_REPLY_INTEGER || r->integer != v)
        fprintf(stderr, "  want %lld, got type %d (%lld, %s)\n", v, r->type, r->integer,
                r->str ? r->str : "");
    CHECK(r->type == REDIS_REPLY_INTEGER && r->integer == v);
    freeReplyObject(r);
}

static void expect_str(redisReply *r, const char *s, size_t n)
{
    CHECK(r->type == REDIS_REPLY_STRING && r->len == n && memcmp(r->str, s, n) == 0);
    freeReplyObject(r);
}

static void expect_nil(redisReply *r)
{
    CHECK(r->type == REDIS_REPLY_NIL);
    freeReplyObject(r);
}

static void expect_error(redisReply *r, const char *prefix)
{
    CHECK(r->type == REDIS_REPLY_ERROR && strncmp(r->str, prefix, strlen(prefix)) == 0);
    freeReplyObject(r);
}

static void hiredis_every_command(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    redisContext *c = redisConnect("127.0.0.1", kv.port);
    CHECK(c && !c->err);
    /* Keys and values with NUL, CR, LF and bytes past 0x7f. */
    static const char key[] = "k\0e\r\ny\xff";
    static const char val[] = "v\0a\r\nl\n\x80";
    const size_t kl = sizeof key - 1, vl = sizeof val - 1;

    expect_status(ASK(c, "PING"), "PONG");
    expect_str(ask(c, 2, (const char *[]){"ECHO", val}, (size_t[]){4, vl}), val, vl);
    expect_status(ask(c, 3, (const char *[]){"SET", key, val}, (size_t[]){3, kl, vl}), "OK");
    expect_str(ask(c, 2, (const char *[]){"GET", key}, (size_t[]){3, kl}), val, vl);
    expect_int(ask(c, 2, (const char *[]){"STRLEN", key}, (size_t[]){6, kl}), (long long)vl);
    expect_int(ask(c, 3, (const char *[]){"APPEND", key, val}, (size_t[]){6, kl, vl}),
               2 * (long long)vl);
    expect_str(ask(c, 3, (const char *[]){"GETSET", key, "x"}, (size_t[]){6, kl, 1}),
               "v\0a\r\nl\n\x80v\0a\r\nl\n\x80", 2 * vl);
    expect_int(ask(c, 3, (const char *[]){"EXISTS", key, "k"}, (size_t[]){6, kl, 1}), 1);
    expect_int(ask(c, 2, (const char *[]){"DEL", key}, (size_t[]){3, kl}), 1);
    expect_nil(ask(c, 2, (const char *[]){"GET", key}, (size_t[]){3, kl}));

    expect_int(ASK(c, "INCR", "n"), 1);
    expect_int(ASK(c, "INCRBY", "n", "41"), 42);
    expect_int(ASK(c, "DECR", "n"), 41);
    expect_int(ASK(c, "DECRBY", "n", "50"), -9);
    expect_error(ASK(c, "INCRBY", "n", "1.5"), "ERR value is not an integer");
    expect_status(ASK(c, "MSET", "a", "1", "b", "2"), "OK");
    redisReply *r = ASK(c, "MGET", "a", "nope", "b");
    CHECK(r->type == REDIS_REPLY_ARRAY && r->elements == 3);
    CHECK(r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "1") == 0);
    CHECK(r->element[1]->type == REDIS_REPLY_NIL);
    CHECK(r->element[2]->type == REDIS_REPLY_STRING && strcmp(r->element[2]->str, "2") == 0);
    freeReplyObject(r);

    expect_status(ASK(c, "SET", "t", "v", "EX", "100", "NX"), "OK");
    expect_int(ASK(c, "TTL", "t"), 100);
    r = ASK(c, "PTTL", "t");
    CHECK(r->type == REDIS_REPLY_INTEGER && r->integer > 90000 && r->integer <= 100000);
    freeReplyObject(r);
    expect_int(ASK(c, "PEXPIRE", "t", "500000"), 1);
    expect_int(ASK(c, "TTL", "t"), 500);
    expect_int(ASK(c, "EXPIRE", "t", "600"), 1);
    expect_int(ASK(c, "PERSIST", "t"), 1);
    expect_int(ASK(c, "TTL", "t"), -1);
    expect_nil(ASK(c, "SET", "t", "w", "NX"));
    expect_str(ASK(c, "SET", "t", "w", "XX", "GET"), "v", 1);

    r = ASK(c, "KEYS", "[ab]");
    CHECK(r->type == REDIS_REPLY_ARRAY && r->elements == 2);
    freeReplyObject(r);
    expect_int(ASK(c, "DBSIZE"), 4); /* n a b t */
    expect_status(ASK(c, "SELECT", "0"), "OK");
    expect_status(ASK(c, "CLIENT", "SETNAME", "hiredis"), "OK");
    expect_str(ASK(c, "CLIENT", "GETNAME"), "hiredis", 7);
    r = ASK(c, "CLIENT", "ID");
    CHECK(r->type == REDIS_REPLY_INTEGER && r->integer > 0);
    freeReplyObject(r);
    r = ASK(c, "HELLO", "2");
    CHECK(r->type == REDIS_REPLY_ARRAY && r->elements == 14);
    freeReplyObject(r);
    r = ASK(c, "CONFIG", "GET", "save", "appendonly");
    CHECK(r->type == REDIS_REPLY_ARRAY && r->elements == 4);
    freeReplyObject(r);
    r = ASK(c, "COMMAND");
    CHECK(r->type == REDIS_REPLY_ARRAY && r->elements == 29);
    freeReplyObject(r);
    expect_error(ASK(c, "NOSUCH"), "ERR unknown command 'NOSUCH'");
    expect_status(ASK(c, "FLUSHALL"), "OK");
    expect_int(ASK(c, "DBSIZE"), 0);
    expect_status(ASK(c, "QUIT"), "OK");
    redisFree(c);
    kv_stop(&kv);
}
#else
static void hiredis_every_command(void)
{
    printf("  skipped: hiredis not installed for this compiler (Debian package libhiredis-dev)\n");
}
#endif

/* ---- Raw sockets: pipelining, expiry, threads ---- */

/* Many requests in one write: every reply comes back, in order. */
static void pipelining_many_in_one_write(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    const int blocks = test_scale(4000); /* SET k b; GET k; INCR c */
    size_t cap = (size_t)blocks * 96 + 64, len = 0;
    char *out = malloc(cap);
    CHECK(out);
    for (int b = 0; b < blocks; b++) {
        char k[16], v[16];
        snprintf(k, sizeof k, "key%d", b % 100);
        snprintf(v, sizeof v, "%d", b);
        len += resp_encode(out + len, cap - len, 3, (const char *[]){"SET", k, v}, NULL);
        len += resp_encode(out + len, cap - len, 2, (const char *[]){"GET", k}, NULL);
        len += resp_encode(out + len, cap - len, 2, (const char *[]){"INCR", "c"}, NULL);
    }
    struct resp_conn c;
    resp_open(&c, kv.port);
    write_all(c.fd, out, len);
    for (int b = 0; b < blocks; b++) {
        char want[3][64];
        snprintf(want[0], sizeof want[0], "+OK\r\n");
        snprintf(want[1], sizeof want[1], "$%d\r\n%d\r\n", snprintf(NULL, 0, "%d", b), b);
        snprintf(want[2], sizeof want[2], ":%d\r\n", b + 1);
        for (int k = 0; k < 3; k++) {
            size_t rn;
            char *r = resp_read(&c, &rn, 20000);
            CHECK(strcmp(r, want[k]) == 0);
            free(r);
        }
    }
    resp_close(&c);
    free(out);
    kv_stop(&kv);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Ask until the reply is `want`, for at most limit_ms: state, not timing, is checked. */
static void poll_until(struct resp_conn *c, const char *want, int limit_ms, const char *arg0,
                       const char *arg1)
{
    int64_t end = now_ms() + limit_ms;
    for (;;) {
        resp_send(c, arg0, arg1, NULL);
        size_t n;
        char *r = resp_read(c, &n, 20000);
        bool done = strcmp(r, want) == 0;
        free(r);
        if (done)
            return;
        CHECK(now_ms() < end);
        usleep(10000);
    }
}

static void expiry_on_access(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    struct resp_conn c;
    resp_open(&c, kv.port);
    resp_expect(&c, "+OK\r\n", "SET", "a", "1", "PX", "30", NULL);
    resp_expect(&c, "+OK\r\n", "SET", "b", "1", NULL);
    resp_expect(&c, ":1\r\n", "PEXPIRE", "b", "30", NULL);
    resp_expect(&c, "+OK\r\n", "SET", "c", "1", "EX", "1000", NULL);
    resp_expect(&c, ":1\r\n", "PERSIST", "c", NULL);
    poll_until(&c, "$-1\r\n", 5000, "GET", "a");
    poll_until(&c, ":-2\r\n", 5000, "TTL", "b");
    resp_expect(&c, ":-2\r\n", "PTTL", "a", NULL);
    resp_expect(&c, ":0\r\n", "EXISTS", "b", NULL);
    resp_expect(&c, "$1\r\n1\r\n", "GET", "c", NULL);
    resp_expect(&c, ":-1\r\n", "TTL", "c", NULL);
    /* An expired key is a new one: SET NX succeeds, INCR starts from 0, APPEND from "". */
    resp_expect(&c, "+OK\r\n", "SET", "a", "x", "PX", "20", NULL);
    resp_expect(&c, "+OK\r\n", "SET", "n", "41", "PX", "20", NULL);
    poll_until(&c, ":0\r\n", 5000, "EXISTS", "a");
    poll_until(&c, ":-2\r\n", 5000, "PTTL", "n");
    resp_expect(&c, "+OK\r\n", "SET", "a", "y", "NX", NULL);
    resp_expect(&c, ":1\r\n", "INCR", "n", NULL);
    resp_expect(&c, ":-1\r\n", "TTL", "n", NULL);
    resp_close(&c);
    kv_stop(&kv);
}

/* With no sweep (--hz 0) an expired key stays in the table, counted by DBSIZE (which looks
 * at no key, as Redis's), until a command looks it up: then it is gone, as if deleted. */
static void expired_keys_go_when_looked_up(void)
{
    struct kv_proc kv;
    kv_start(&kv, (const char *[]){"--hz", "0", NULL});
    struct resp_conn c;
    resp_open(&c, kv.port);
    static const char *const keys[] = {"a", "b", "c", "d", "e", "f", "g"};
    for (int i = 0; i < 7; i++)
        resp_expect(&c, "+OK\r\n", "SET", keys[i], "41", "PX", "20", NULL);
    resp_expect(&c, "+OK\r\n", "SET", "sentinel", "x", "PX", "20", NULL);
    resp_expect(&c, "+OK\r\n", "SET", "stays", "x", NULL);
    poll_until(&c, ":-2\r\n", 5000, "PTTL", "sentinel"); /* its time has come, so theirs too */
    resp_expect(&c, ":8\r\n", "DBSIZE", NULL);
    resp_expect(&c, "*1\r\n$5\r\nstays\r\n", "KEYS", "*", NULL); /* listed: only live keys */
    resp_expect(&c, ":8\r\n", "DBSIZE", NULL);
    resp_expect(&c, "$-1\r\n", "GET", "a", NULL);
    resp_expect(&c, ":7\r\n", "DBSIZE", NULL);
    resp_expect(&c, ":0\r\n", "EXISTS", "b", NULL);
    resp_expect(&c, ":-2\r\n", "TTL", "c", NULL);
    resp_expect(&c, ":0\r\n", "DEL", "d", NULL);
    resp_expect(&c, ":4\r\n", "DBSIZE", NULL);
    resp_expect(&c, "+OK\r\n", "SET", "e", "new", "NX", NULL); /* a new key... */
    resp_expect(&c, ":-1\r\n", "TTL", "e", NULL);               /* ...without the old TTL */
    resp_expect(&c, ":1\r\n", "INCR", "f", NULL);
    resp_expect(&c, ":1\r\n", "APPEND", "g", "x", NULL);
    resp_expect(&c, ":4\r\n", "DBSIZE", NULL);
    resp_close(&c);
    kv_stop(&kv);
}

/* Keys nobody looks at again still go: DBSIZE (which looks at none) falls to what is left. */
static void sweep_deletes_untouched_keys(void)
{
    struct kv_proc kv;
    kv_start(&kv, NULL);
    struct resp_conn c;
    resp_open(&c, kv.port);
    const int n = test_scale(2000);
    char *batch = malloc((size_t)n * 64);
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        char k[16];
        snprintf(k, sizeof k, "tmp%d", i);
        len += resp_encode(batch + len, (size_t)n * 64 - len, 5,
                           (const char *[]){"SET", k, "v", "PX", i % 2 ? "40" : "80"}, NULL);
    }
    len += resp_encode(batch + len, (size_t)n * 64 - len, 3,
                       (const char *[]){"SET", "keep", "v"}, NULL);
    write_all(c.fd, batch, len);
    for (int i = 0; i <= n; i++) {
        size_t rn;
        free(resp_read(&c, &rn, 20000));
    }
    free(batch);
    poll_until(&c, ":1\r\n", 20000, "DBSIZE", NULL);
    resp_expect(&c, "$1\r\nv\r\n", "GET", "keep", NULL);
    resp_close(&c);
    kv_stop(&kv);
}

/* --threads: clients on several threads share one store. */
static void threads_share_one_store(void)
{
    struct kv_proc kv;
    kv_start(&kv, (const char *[]){"--threads", "4", NULL});
    enum { CLIENTS = 16 };
    const int per = test_scale(2000);
    struct resp_conn c[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        resp_open(&c[i], kv.port);
    /* Every client pipelines INCRs of one counter and SETs of its own keys. */
    char *buf = malloc((size_t)per * 80);
    for (int i = 0; i < CLIENTS; i++) {
        size_t len = 0;
        for (int j = 0; j < per; j++) {
            char k[32], v[16];
            snprintf(k, sizeof k, "c%d:%d", i, j % 50);
            snprintf(v, sizeof v, "%d", j);
            if (j % 2)
                len += resp_encode(buf + len, (size_t)per * 80 - len, 2,
                                   (const char *[]){"INCR", "shared"}, NULL);
            else
                len += resp_encode(buf + len, (size_t)per * 80 - len, 3,
                                   (const char *[]){"SET", k, v}, NULL);
        }
        write_all(c[i].fd, buf, len);
    }
    free(buf);
    for (int i = 0; i < CLIENTS; i++)
        for (int j = 0; j < per; j++) {
            size_t n;
            char *r = resp_read(&c[i], &n, 30000);
            CHECK(r[0] == (j % 2 ? ':' : '+'));
            free(r);
        }
    char want[32];
    snprintf(want, sizeof want, "$%d\r\n%d\r\n", (int)snprintf(NULL, 0, "%d", CLIENTS * (per / 2)),
             CLIENTS * (per / 2));
    resp_expect(&c[0], want, "GET", "shared", NULL);
    int keys = 0; /* distinct j % 50 for even j below per, per client */
    for (int m = 0; m < 50; m++) {
        bool hit = false;
        for (int j = m; j < per && !hit; j += 50)
            hit = j % 2 == 0;
        keys += hit;
    }
    snprintf(want, sizeof want, ":%d\r\n", CLIENTS * keys + 1);
    resp_expect(&c[1], want, "DBSIZE", NULL);
    for (int i = 0; i < CLIENTS; i++)
        resp_close(&c[i]);
    kv_stop(&kv);
}

static void quit_closes_and_sigterm_is_clean(void)
{
    struct kv_proc kv;
    kv_start(&kv, (const char *[]){"-g", "100", NULL});
    struct resp_conn idle, c;
    resp_open(&idle, kv.port); /* stays connected through the shutdown */
    resp_expect(&idle, "+PONG\r\n", "PING", NULL);
    resp_open(&c, kv.port);
    write_all(c.fd, "*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n", 28);
    size_t n;
    char *r = resp_read(&c, &n, 20000);
    CHECK(strcmp(r, "+OK\r\n") == 0);
    free(r);
    CHECK(resp_closed(&c, 20000)); /* the PING after QUIT is not answered */
    CHECK(c.len == 0);
    resp_close(&c);
    kv_stop(&kv); /* exit status 0 with a client still connected */
    CHECK(resp_closed(&idle, 20000));
    resp_close(&idle);
}

const struct test tests[] = {
    {"usage_and_bad_flags", usage_and_bad_flags, 0},
    {"redis_cli_every_command", redis_cli_every_command, 120},
    {"redis_cli_and_benchmark_connect", redis_cli_and_benchmark_connect, 120},
    {"hiredis_every_command", hiredis_every_command, 0},
    {"pipelining_many_in_one_write", pipelining_many_in_one_write, 0},
    {"expiry_on_access", expiry_on_access, 0},
    {"expired_keys_go_when_looked_up", expired_keys_go_when_looked_up, 0},
    {"sweep_deletes_untouched_keys", sweep_deletes_untouched_keys, 0},
    {"threads_share_one_store", threads_share_one_store, 120},
    {"quit_closes_and_sigterm_is_clean", quit_closes_and_sigterm_is_clean, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
