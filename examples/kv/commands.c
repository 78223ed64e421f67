/* The command table, the checks before a command runs, and the string and keyspace commands.
 * Replies and errors are Redis 7.0's, byte for byte, including the order of its checks (an
 * option error before a number error, and so on): the replay test compares them with
 * redis-server's. */
#include "commands.h"
#include "glob.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ERR_NOT_INT "value is not an integer or out of range"
#define ERR_SYNTAX "syntax error"

void kv_client_init(struct kv_client *cl, struct kv_server *srv)
{
    cl->srv = srv;
    cl->id = atomic_fetch_add(&srv->next_id, 1) + 1;
    cl->name = NULL;
}

void kv_client_free(struct kv_client *cl)
{
    free(cl->name);
    cl->name = NULL;
}

int64_t kv_now(struct kv_ctx *x)
{
    return kv_clock_ms(&x->now);
}

/* a (alen bytes) equals the NUL-terminated b, ignoring ASCII case. */
bool kv_eq_nocase(const char *a, size_t alen, const char *b)
{
    return strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

/* Redis compares options as C strings: an argument is cut at its first NUL. */
static bool opt_is(const struct kv_ctx *x, size_t i, const char *name)
{
    return strcasecmp(x->argv[i], name) == 0;
}

void kv_reply_arity(struct kv_ctx *x)
{
    kv_reply_errorf(x->rp, "wrong number of arguments for '%s' command", x->cmd->name);
}

static bool arg_ll(struct kv_ctx *x, size_t i, long long *v)
{
    if (kv_parse_ll(x->argv[i], x->argl[i], v))
        return true;
    kv_reply_error(x->rp, ERR_NOT_INT);
    return false;
}

static struct kv_entry *find(struct kv_ctx *x, size_t i)
{
    return kv_store_find(x->st, x->argv[i], x->argl[i], &x->now);
}

/* Set key argv[k] to the bytes of argument v (clearing its time to live unless keep_ttl).
 * NULL when out of memory, with the error replied. */
static struct kv_entry *set_from_arg(struct kv_ctx *x, size_t k, size_t v, bool keep_ttl)
{
    struct kv_value *val = kv_value_new(x->argv[v], x->argl[v], 0);
    struct kv_entry *e = val ? kv_store_set(x->st, x->argv[k], x->argl[k], val, keep_ttl, &x->now)
                             : NULL;
    if (!e)
        kv_reply_error(x->rp, "-OOM command not allowed when used memory > 'maxmemory'.");
    return e;
}

/* ---- Connection ---- */

static void cmd_ping(struct kv_ctx *x)
{
    if (x->argc > 2)
        kv_reply_arity(x);
    else if (x->argc == 1)
        kv_reply_status(x->rp, "PONG");
    else
        kv_reply_bulk(x->rp, x->argv[1], x->argl[1]);
}

static void cmd_echo(struct kv_ctx *x)
{
    kv_reply_bulk(x->rp, x->argv[1], x->argl[1]);
}

static void cmd_select(struct kv_ctx *x)
{
    long long db;
    if (!arg_ll(x, 1, &db))
        return;
    if (db < INT_MIN || db > INT_MAX)
        kv_reply_error(x->rp, "value is out of range, value must between -2147483648 and "
                              "2147483647");
    else if (db != 0) /* one database, as redis-server --databases 1 */
        kv_reply_error(x->rp, "DB index is out of range");
    else
        kv_reply_status(x->rp, "OK");
}

static void cmd_quit(struct kv_ctx *x)
{
    kv_reply_status(x->rp, "OK");
    x->after = KV_CLOSE;
}

/* ---- Strings ---- */

static void cmd_get(struct kv_ctx *x)
{
    struct kv_entry *e = find(x, 1);
    if (e)
        kv_reply_value(x->rp, e->val);
    else
        kv_reply_nil(x->rp);
}

enum {
    SET_NX = 1, SET_XX = 2, SET_GET = 4, SET_KEEPTTL = 8,
    SET_EX = 16, SET_PX = 32, SET_EXAT = 64, SET_PXAT = 128
};
#define SET_ANY_TIME (SET_EX | SET_PX | SET_EXAT | SET_PXAT)

/* SET's options, as Redis parses them: each may repeat, but not with a conflicting one. */
static bool set_options(struct kv_ctx *x, int *flags, size_t *expire_arg)
{
    static const struct {
        const char *name;
        int flag, excludes;
    } opts[] = {
        {"nx", SET_NX, SET_XX},
        {"xx", SET_XX, SET_NX},
        {"get", SET_GET, 0},
        {"keepttl", SET_KEEPTTL, SET_ANY_TIME},
        {"ex", SET_EX, SET_KEEPTTL | (SET_ANY_TIME & ~SET_EX)},
        {"px", SET_PX, SET_KEEPTTL | (SET_ANY_TIME & ~SET_PX)},
        {"exat", SET_EXAT, SET_KEEPTTL | (SET_ANY_TIME & ~SET_EXAT)},
        {"pxat", SET_PXAT, SET_KEEPTTL | (SET_ANY_TIME & ~SET_PXAT)},
    };
    for (size_t j = 3; j < x->argc; j++) {
        size_t k = 0;
        for (; k < sizeof opts / sizeof opts[0]; k++)
            if (opt_is(x, j, opts[k].name) && !(*flags & opts[k].excludes) &&
                (!(opts[k].flag & SET_ANY_TIME) || j + 1 < x->argc))
                break;
        if (k == sizeof opts / sizeof opts[0]) {
            kv_reply_error(x->rp, ERR_SYNTAX);
            return false;
        }
        *flags |= opts[k].flag;
        if (opts[k].flag & SET_ANY_TIME)
            *expire_arg = ++j;
    }
    return true;
}

/* The absolute expiry an EX/PX/EXAT/PXAT argument asks for, or false with the error. */
static bool expire_time(struct kv_ctx *x, size_t arg, int flags, int64_t *when)
{
    long long ms;
    if (!arg_ll(x, arg, &ms))
        return false;
    bool seconds = flags & (SET_EX | SET_EXAT), relative = flags & (SET_EX | SET_PX);
    if (ms <= 0 || (seconds && ms > LLONG_MAX / 1000) ||
        (relative && (seconds ? ms * 1000 : ms) > LLONG_MAX - kv_now(x))) {
        kv_reply_errorf(x->rp, "invalid expire time in '%s' command", x->cmd->name);
        return false;
    }
    if (seconds)
        ms *= 1000;
    *when = relative ? ms + kv_now(x) : ms;
    return true;
}

static void cmd_set(struct kv_ctx *x)
{
    int flags = 0;
    size_t expire_arg = 0;
    int64_t when = 0;
    if (!set_options(x, &flags, &expire_arg) ||
        (expire_arg && !expire_time(x, expire_arg, flags, &when)))
        return;
    struct kv_entry *e = find(x, 1);
    if (flags & SET_GET) {
        if (e)
            kv_reply_value(x->rp, e->val);
        else
            kv_reply_nil(x->rp);
    }
    if (((flags & SET_NX) && e) || ((flags & SET_XX) && !e)) {
        if (!(flags & SET_GET))
            kv_reply_nil(x->rp);
        return;
    }
    e = set_from_arg(x, 1, 2, flags & SET_KEEPTTL);
    if (!e)
        return;
    if (expire_arg && kv_store_expire(x->st, e, when) != 0) {
        kv_store_remove(x->st, e); /* no memory to remember its expiry: never keep it forever */
        kv_reply_error(x->rp, "-OOM command not allowed when used memory > 'maxmemory'.");
        return;
    }
    if (!(flags & SET_GET))
        kv_reply_status(x->rp, "OK");
}

static void cmd_getset(struct kv_ctx *x)
{
    cmd_get(x);
    set_from_arg(x, 1, 2, false);
}

static void cmd_mget(struct kv_ctx *x)
{
    kv_reply_array(x->rp, (long long)x->argc - 1);
    for (size_t i = 1; i < x->argc; i++) {
        struct kv_entry *e = find(x, i);
        if (e)
            kv_reply_value(x->rp, e->val);
        else
            kv_reply_nil(x->rp);
    }
}

static void cmd_mset(struct kv_ctx *x)
{
    if (x->argc % 2 == 0) {
        kv_reply_arity(x);
        return;
    }
    for (size_t i = 1; i < x->argc; i += 2)
        if (!set_from_arg(x, i, i + 1, false))
            return;
    kv_reply_status(x->rp, "OK");
}

static void incr_by(struct kv_ctx *x, long long by)
{
    struct kv_entry *e = find(x, 1);
    long long v = 0;
    if (e && !kv_parse_ll(e->val->data, e->val->len, &v)) {
        kv_reply_error(x->rp, ERR_NOT_INT);
        return;
    }
    if ((by < 0 && v < 0 && by < LLONG_MIN - v) || (by > 0 && v > 0 && by > LLONG_MAX - v)) {
        kv_reply_error(x->rp, "increment or decrement would overflow");
        return;
    }
    v += by;
    char num[24];
    struct kv_value *val = kv_value_new(num, kv_format_ll(num, v), 0);
    if (val && e)
        kv_store_replace(e, val); /* keeps the time to live, as Redis's INCR does */
    else if (!val || !kv_store_set(x->st, x->argv[1], x->argl[1], val, false, &x->now)) {
        kv_reply_error(x->rp, "-OOM command not allowed when used memory > 'maxmemory'.");
        return;
    }
    kv_reply_int(x->rp, v);
}

static void cmd_incr(struct kv_ctx *x)
{
    incr_by(x, 1);
}

static void cmd_decr(struct kv_ctx *x)
{
    incr_by(x, -1);
}

static void cmd_incrby(struct kv_ctx *x)
{
    long long by;
    if (arg_ll(x, 2, &by))
        incr_by(x, by);
}

static void cmd_decrby(struct kv_ctx *x)
{
    long long by;
    if (!arg_ll(x, 2, &by))
        return;
    if (by == LLONG_MIN)
        kv_reply_error(x->rp, "decrement would overflow");
    else
        incr_by(x, -by);
}

static void cmd_append(struct kv_ctx *x)
{
    struct kv_entry *e = find(x, 1);
    if (!e) {
        if (set_from_arg(x, 1, 2, false))
            kv_reply_int(x->rp, (long long)x->argl[2]);
        return;
    }
    struct kv_value *v = e->val;
    size_t add = x->argl[2], max = x->cl->srv->limits.max_bulk;
    if (v->len > max || add > max - v->len) {
        kv_reply_error(x->rp, "string exceeds maximum allowed size (proto-max-bulk-len)");
        return;
    }
    if (atomic_load(&v->refs) != 1 || v->len + add > v->cap) {
        /* Shared with a reply in flight, or full: a copy with room to grow, so appending
         * byte by byte costs amortised O(1). */
        size_t cap = v->len + add;
        cap = cap < max / 2 ? cap * 2 : max;
        struct kv_value *nv = kv_value_new(v->data, v->len, cap);
        if (!nv) {
            kv_reply_error(x->rp, "-OOM command not allowed when used memory > 'maxmemory'.");
            return;
        }
        kv_store_replace(e, nv);
        v = nv;
    }
    memcpy(v->data + v->len, x->argv[2], add);
    v->len += add;
    kv_reply_int(x->rp, (long long)v->len);
}

static void cmd_strlen(struct kv_ctx *x)
{
    struct kv_entry *e = find(x, 1);
    kv_reply_int(x->rp, e ? (long long)e->val->len : 0);
}

/* ---- Keyspace ---- */

static void cmd_del(struct kv_ctx *x)
{
    long long n = 0;
    for (size_t i = 1; i < x->argc; i++)
        n += kv_store_del(x->st, x->argv[i], x->argl[i], &x->now);
    kv_reply_int(x->rp, n);
}

static void cmd_exists(struct kv_ctx *x)
{
    long long n = 0;
    for (size_t i = 1; i < x->argc; i++)
        n += find(x, i) != NULL;
    kv_reply_int(x->rp, n);
}

enum { EXP_NX = 1, EXP_XX = 2, EXP_GT = 4, EXP_LT = 8 };

static void expire_generic(struct kv_ctx *x, bool seconds)
{
    int flags = 0;
    for (size_t j = 3; j < x->argc; j++) {
        if (opt_is(x, j, "nx"))
            flags |= EXP_NX;
        else if (opt_is(x, j, "xx"))
            flags |= EXP_XX;
        else if (opt_is(x, j, "gt"))
            flags |= EXP_GT;
        else if (opt_is(x, j, "lt"))
            flags |= EXP_LT;
        else {
            kv_reply_errorf(x->rp, "Unsupported option %s", x->argv[j]);
            return;
        }
    }
    if ((flags & EXP_NX) && (flags & (EXP_XX | EXP_GT | EXP_LT))) {
        kv_reply_error(x->rp, "NX and XX, GT or LT options at the same time are not compatible");
        return;
    }
    if ((flags & EXP_GT) && (flags & EXP_LT)) {
        kv_reply_error(x->rp, "GT and LT options at the same time are not compatible");
        return;
    }
    long long when;
    if (!arg_ll(x, 2, &when))
        return;
    if ((seconds && (when > LLONG_MAX / 1000 || when < LLONG_MIN / 1000)) ||
        (seconds ? when * 1000 : when) > LLONG_MAX - kv_now(x)) {
        kv_reply_errorf(x->rp, "invalid expire time in '%s' command", x->cmd->name);
        return;
    }
    when = (seconds ? when * 1000 : when) + kv_now(x); /* may be in the past: EXPIRE k -1 */
    struct kv_entry *e = find(x, 1);
    if (!e) {
        kv_reply_int(x->rp, 0);
        return;
    }
    int64_t cur = e->expire;
    if (((flags & EXP_NX) && cur != KV_NO_EXPIRE) || ((flags & EXP_XX) && cur == KV_NO_EXPIRE) ||
        ((flags & EXP_GT) && (cur == KV_NO_EXPIRE || when <= cur)) ||
        ((flags & EXP_LT) && cur != KV_NO_EXPIRE && when >= cur)) {
        kv_reply_int(x->rp, 0);
        return;
    }
    if (when <= kv_now(x)) {
        kv_store_remove(x->st, e);
    } else if (kv_store_expire(x->st, e, when) != 0) {
        kv_reply_error(x->rp, "-OOM command not allowed when used memory > 'maxmemory'.");
        return;
    }
    kv_reply_int(x->rp, 1);
}

static void cmd_expire(struct kv_ctx *x)
{
    expire_generic(x, true);
}

static void cmd_pexpire(struct kv_ctx *x)
{
    expire_generic(x, false);
}

static void ttl_generic(struct kv_ctx *x, bool ms)
{
    struct kv_entry *e = find(x, 1);
    if (!e) {
        kv_reply_int(x->rp, -2);
    } else if (e->expire == KV_NO_EXPIRE) {
        kv_reply_int(x->rp, -1);
    } else {
        long long left = e->expire - kv_now(x);
        if (left < 0)
            left = 0;
        kv_reply_int(x->rp, ms ? left : (left + 500) / 1000);
    }
}

static void cmd_ttl(struct kv_ctx *x)
{
    ttl_generic(x, false);
}

static void cmd_pttl(struct kv_ctx *x)
{
    ttl_generic(x, true);
}

static void cmd_persist(struct kv_ctx *x)
{
    struct kv_entry *e = find(x, 1);
    bool had = e && e->expire != KV_NO_EXPIRE;
    if (had)
        kv_store_expire(x->st, e, KV_NO_EXPIRE);
    kv_reply_int(x->rp, had);
}

struct keys_walk {
    struct kv_ctx *x;
    bool all;
    struct kv_entry **found;
    size_t n, cap;
    bool oom;
};

static int keys_visit(struct kv_entry *e, void *arg)
{
    struct keys_walk *w = arg;
    const char *pat = w->x->argv[1];
    if (e->expire != KV_NO_EXPIRE && e->expire <= kv_now(w->x))
        return 0; /* past its time: not shown, left for whoever looks next */
    if (!w->all && !kv_glob_match(pat, w->x->argl[1], e->key, e->klen, false))
        return 0;
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        struct kv_entry **a = realloc(w->found, cap * sizeof *a);
        if (!a) {
            w->oom = true;
            return 1;
        }
        w->found = a;
        w->cap = cap;
    }
    w->found[w->n++] = e;
    return 0;
}

static void cmd_keys(struct kv_ctx *x)
{
    struct keys_walk w = {.x = x, .all = x->argl[1] == 1 && x->argv[1][0] == '*'};
    kv_store_each(x->st, keys_visit, &w);
    if (w.oom) {
        kv_reply_error(x->rp, "-OOM command not allowed when used memory > 'maxmemory'.");
    } else {
        kv_reply_array(x->rp, (long long)w.n);
        for (size_t i = 0; i < w.n; i++)
            kv_reply_bulk(x->rp, w.found[i]->key, w.found[i]->klen);
    }
    free(w.found);
}

static void cmd_dbsize(struct kv_ctx *x)
{
    kv_reply_int(x->rp, (long long)kv_store_count(x->st));
}

static void cmd_flushall(struct kv_ctx *x)
{
    if (x->argc > 2 || (x->argc == 2 && !opt_is(x, 1, "sync") && !opt_is(x, 1, "async"))) {
        kv_reply_error(x->rp, ERR_SYNTAX);
        return;
    }
    kv_store_flush(x->st);
    kv_reply_status(x->rp, "OK");
}

/* ---- The table ---- */

#define ADMIN "admin noscript loading stale"
#define ADMIN_ACL "@admin @slow @dangerous"
#define CONN_FLAGS "noscript loading stale"

static const struct kv_command config_subs[] = {
    {"config|get", -3, ADMIN, ADMIN_ACL, 0, 0, 0, NULL, kv_cmd_config_get, NULL, false,
     "server", "2.0.0", "Get the values of configuration parameters"},
    {"config|help", 2, "loading stale", "@slow", 0, 0, 0, NULL, kv_cmd_config_help, NULL, false,
     "server", "5.0.0", "Show helpful text about the different subcommands"},
    {.name = NULL},
};

static const struct kv_command client_subs[] = {
    {"client|setname", 3, CONN_FLAGS, "@slow @connection", 0, 0, 0, NULL,
     kv_cmd_client_setname, NULL, false, "connection", "2.6.9", "Set the current connection name"},
    {"client|getname", 2, CONN_FLAGS, "@slow @connection", 0, 0, 0, NULL,
     kv_cmd_client_getname, NULL, false, "connection", "2.6.9", "Get the current connection name"},
    {"client|id", 2, CONN_FLAGS, "@slow @connection", 0, 0, 0, NULL, kv_cmd_client_id, NULL,
     false, "connection", "5.0.0", "Returns the client ID for the current connection"},
    {"client|help", 2, "loading stale", "@slow @connection", 0, 0, 0, NULL, kv_cmd_client_help,
     NULL, false, "connection", "5.0.0", "Show helpful text about the different subcommands"},
    {.name = NULL},
};

static const struct kv_command command_subs[] = {
    {"command|count", 2, "loading stale", "@slow @connection", 0, 0, 0, NULL,
     kv_cmd_command_count, NULL, false, "server", "2.8.13", "Get total number of commands"},
    {"command|list", -2, "loading stale", "@slow @connection", 0, 0, 0, NULL,
     kv_cmd_command_list, NULL, false, "server", "7.0.0", "Get an array of command names"},
    {"command|info", -2, "loading stale", "@slow @connection", 0, 0, 0, NULL,
     kv_cmd_command_info, NULL, false, "server", "2.8.13",
     "Get array of specific command details, or all when no argument is given"},
    {"command|docs", -2, "loading stale", "@slow @connection", 0, 0, 0, NULL,
     kv_cmd_command_docs, NULL, false, "server", "7.0.0",
     "Get array of specific command documentation"},
    {"command|help", 2, "loading stale", "@slow @connection", 0, 0, 0, NULL,
     kv_cmd_command_help, NULL, false, "server", "5.0.0",
     "Show helpful text about the different subcommands"},
    {.name = NULL},
};

/* The hot commands first: lookup walks the table. */
const struct kv_command kv_commands[] = {
    {"get", 2, "readonly fast", "@read @string @fast", 1, 1, 1, "RO access", cmd_get, NULL, true,
     "string", "1.0.0", "Get the value of a key"},
    {"set", -3, "write denyoom", "@write @string @slow", 1, 1, 1, "RW access update", cmd_set,
     NULL, true, "string", "1.0.0", "Set the string value of a key"},
    {"incr", 2, "write denyoom fast", "@write @string @fast", 1, 1, 1, "RW access update",
     cmd_incr, NULL, true, "string", "1.0.0", "Increment the integer value of a key by one"},
    {"mset", -3, "write denyoom", "@write @string @slow", 1, -1, 2, "OW update", cmd_mset, NULL,
     true, "string", "1.0.1", "Set multiple keys to multiple values"},
    {"mget", -2, "readonly fast", "@read @string @fast", 1, -1, 1, "RO access", cmd_mget, NULL,
     true, "string", "1.0.0", "Get the values of all the given keys"},
    {"ping", -1, "fast", "@fast @connection", 0, 0, 0, NULL, cmd_ping, NULL, false,
     "connection", "1.0.0", "Ping the server"},
    {"del", -2, "write", "@keyspace @write @slow", 1, -1, 1, "RM delete", cmd_del, NULL, true,
     "generic", "1.0.0", "Delete a key"},
    {"exists", -2, "readonly fast", "@keyspace @read @fast", 1, -1, 1, "RO", cmd_exists, NULL,
     true, "generic", "1.0.0", "Determine if a key exists"},
    {"incrby", 3, "write denyoom fast", "@write @string @fast", 1, 1, 1, "RW access update",
     cmd_incrby, NULL, true, "string", "1.0.0",
     "Increment the integer value of a key by the given amount"},
    {"decr", 2, "write denyoom fast", "@write @string @fast", 1, 1, 1, "RW access update",
     cmd_decr, NULL, true, "string", "1.0.0", "Decrement the integer value of a key by one"},
    {"decrby", 3, "write denyoom fast", "@write @string @fast", 1, 1, 1, "RW access update",
     cmd_decrby, NULL, true, "string", "1.0.0",
     "Decrement the integer value of a key by the given number"},
    {"getset", 3, "write denyoom fast", "@write @string @fast", 1, 1, 1, "RW access update",
     cmd_getset, NULL, true, "string", "1.0.0",
     "Set the string value of a key and return its old value"},
    {"append", 3, "write denyoom fast", "@write @string @fast", 1, 1, 1, "RW insert", cmd_append,
     NULL, true, "string", "2.0.0", "Append a value to a key"},
    {"strlen", 2, "readonly fast", "@read @string @fast", 1, 1, 1, "RO", cmd_strlen, NULL, true,
     "string", "2.2.0", "Get the length of the value stored in a key"},
    {"expire", -3, "write fast", "@keyspace @write @fast", 1, 1, 1, "RW update", cmd_expire,
     NULL, true, "generic", "1.0.0", "Set a key's time to live in seconds"},
    {"pexpire", -3, "write fast", "@keyspace @write @fast", 1, 1, 1, "RW update", cmd_pexpire,
     NULL, true, "generic", "2.6.0", "Set a key's time to live in milliseconds"},
    {"ttl", 2, "readonly fast", "@keyspace @read @fast", 1, 1, 1, "RO access", cmd_ttl, NULL,
     true, "generic", "1.0.0", "Get the time to live for a key in seconds"},
    {"pttl", 2, "readonly fast", "@keyspace @read @fast", 1, 1, 1, "RO access", cmd_pttl, NULL,
     true, "generic", "2.6.0", "Get the time to live for a key in milliseconds"},
    {"persist", 2, "write fast", "@keyspace @write @fast", 1, 1, 1, "RW update", cmd_persist,
     NULL, true, "generic", "2.2.0", "Remove the expiration from a key"},
    {"keys", 2, "readonly", "@keyspace @read @slow @dangerous", 0, 0, 0, NULL, cmd_keys, NULL,
     true, "generic", "1.0.0", "Find all keys matching the given pattern"},
    {"dbsize", 1, "readonly fast", "@keyspace @read @fast", 0, 0, 0, NULL, cmd_dbsize, NULL, true,
     "server", "1.0.0", "Return the number of keys in the selected database"},
    {"flushall", -1, "write", "@keyspace @write @slow @dangerous", 0, 0, 0, NULL, cmd_flushall,
     NULL, true, "server", "1.0.0", "Remove all keys from all databases"},
    {"echo", 2, "loading stale fast", "@fast @connection", 0, 0, 0, NULL, cmd_echo, NULL, false,
     "connection", "1.0.0", "Echo the given string"},
    {"select", 2, "loading stale fast", "@fast @connection", 0, 0, 0, NULL, cmd_select, NULL,
     false, "connection", "1.0.0", "Change the selected database for the current connection"},
    {"quit", -1, "noscript loading stale fast no_auth allow_busy", "@fast @connection", 0, 0, 0,
     NULL, cmd_quit, NULL, false, "connection", "1.0.0", "Close the connection"},
    {"hello", -1, "noscript loading stale fast no_auth allow_busy", "@fast @connection", 0, 0, 0,
     NULL, kv_cmd_hello, NULL, false, "connection", "6.0.0", "Handshake with Redis"},
    {"client", -2, "", "@slow", 0, 0, 0, NULL, NULL, client_subs, false, "connection", "2.4.0",
     "A container for client connection commands"},
    {"config", -2, "", "@slow", 0, 0, 0, NULL, NULL, config_subs, false, "server", "2.0.0",
     "A container for server configuration commands"},
    {"command", -1, "loading stale", "@slow @connection", 0, 0, 0, NULL, kv_cmd_command,
     command_subs, false, "server", "2.8.13", "Get array of Redis command details"},
    {.name = NULL},
};

static const struct kv_command *lookup(const struct kv_command *t, const char *name, size_t n,
                                       size_t skip)
{
    char first = (char)(name[0] | 0x20); /* (arguments end with a NUL: name[0] exists) */
    for (; t->name; t++)
        if ((t->name[skip] | 0x20) == first && kv_eq_nocase(name, n, t->name + skip))
            return t;
    return NULL;
}

/* What Redis says to a command it does not know: the name and the first arguments (each cut
 * at a NUL, 128 bytes in all), newlines turned into spaces. */
static void reply_unknown(struct kv_ctx *x)
{
    char args[512];
    size_t n = 0;
    args[0] = '\0';
    for (size_t i = 1; i < x->argc && n < 128; i++)
        n += (size_t)snprintf(args + n, sizeof args - n, "'%.*s' ", (int)(128 - n), x->argv[i]);
    kv_reply_errorf(x->rp, "unknown command '%.128s', with args beginning with: %s", x->argv[0],
                    args);
}

static void reply_unknown_sub(struct kv_ctx *x)
{
    char up[32];
    size_t i = 0;
    for (; x->argv[0][i] && i < sizeof up - 1; i++) {
        char ch = x->argv[0][i];
        up[i] = ch >= 'a' && ch <= 'z' ? (char)(ch - 'a' + 'A') : ch;
    }
    up[i] = '\0';
    kv_reply_errorf(x->rp, "unknown subcommand '%.128s'. Try %s HELP.", x->argv[1], up);
}

/* The command argv names, its subcommand for a container given one, as Redis finds them;
 * NULL with the error replied. */
static const struct kv_command *resolve(struct kv_ctx *x)
{
    const struct kv_command *c = lookup(kv_commands, x->argv[0], x->argl[0], 0);
    if (!c) {
        reply_unknown(x);
        return NULL;
    }
    if (c->subs && x->argc > 1) {
        const struct kv_command *sub = lookup(c->subs, x->argv[1], x->argl[1],
                                              strlen(c->name) + 1);
        if (!sub) {
            reply_unknown_sub(x);
            return NULL;
        }
        c = sub;
    }
    x->cmd = c;
    if ((c->arity > 0 && (size_t)c->arity != x->argc) ||
        (c->arity < 0 && x->argc < (size_t)-c->arity)) {
        kv_reply_arity(x);
        return NULL;
    }
    return c;
}

enum kv_after kv_command_run(struct kv_client *cl, const struct kv_request *rq,
                             struct kv_reply *rp)
{
    struct kv_ctx x = {.cl = cl, .st = cl->srv->store, .argc = rq->argc, .argv = rq->argv,
                       .argl = rq->argl, .rp = rp, .after = KV_GO_ON};
    /* A browser or an HTTP proxy talking to us: Redis drops it without a word. (The first
     * letter is looked at first: two strcasecmp calls were 1.6 % of kv's CPU at -P 16.) */
    char c0 = (char)(x.argv[0][0] | 0x20);
    if ((c0 == 'h' && strcasecmp(x.argv[0], "host:") == 0) ||
        (c0 == 'p' && strcasecmp(x.argv[0], "post") == 0))
        return KV_DROP;
    const struct kv_command *c = resolve(&x);
    if (!c)
        return KV_GO_ON;
    if (c->uses_store) {
        kv_store_lock(x.st);
        c->proc(&x);
        kv_store_unlock(x.st);
    } else {
        c->proc(&x);
    }
    return x.after;
}
