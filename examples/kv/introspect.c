/* What clients ask about the server and their connection: COMMAND (the table, in Redis 7's
 * format: redis-cli asks for COMMAND DOCS on start), CONFIG GET (redis-benchmark asks for
 * "save" and "appendonly"), CLIENT SETNAME/GETNAME/ID, and HELLO 2. kv speaks RESP2 only, so
 * HELLO 3 gets the error a server without RESP3 gives. */
#include "commands.h"
#include "glob.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Some words, space-separated, as an array of status replies (+write +fast ...). */
static void reply_words(struct kv_reply *rp, const char *words)
{
    long long n = 0;
    for (const char *p = words; *p; p++)
        if (*p != ' ' && (p == words || p[-1] == ' '))
            n++;
    kv_reply_array(rp, n);
    for (const char *p = words; *p;) {
        size_t len = strcspn(p, " ");
        if (len) {
            kv_reply_raw(rp, "+", 1);
            kv_reply_raw(rp, p, len);
            kv_reply_raw(rp, "\r\n", 2);
        }
        p += len;
        p += *p == ' ';
    }
}

static size_t count(const struct kv_command *t)
{
    size_t n = 0;
    while (t[n].name)
        n++;
    return n;
}

/* A key spec as COMMAND INFO shows it: keys found by index, then a range. */
static void reply_key_specs(struct kv_reply *rp, const struct kv_command *c)
{
    if (!c->key_flags) {
        kv_reply_array(rp, 0);
        return;
    }
    kv_reply_array(rp, 1);
    kv_reply_array(rp, 6);
    kv_reply_bulk_str(rp, "flags");
    reply_words(rp, c->key_flags);
    kv_reply_bulk_str(rp, "begin_search");
    kv_reply_array(rp, 4);
    kv_reply_bulk_str(rp, "type");
    kv_reply_bulk_str(rp, "index");
    kv_reply_bulk_str(rp, "spec");
    kv_reply_array(rp, 2);
    kv_reply_bulk_str(rp, "index");
    kv_reply_int(rp, c->first_key);
    kv_reply_bulk_str(rp, "find_keys");
    kv_reply_array(rp, 4);
    kv_reply_bulk_str(rp, "type");
    kv_reply_bulk_str(rp, "range");
    kv_reply_bulk_str(rp, "spec");
    kv_reply_array(rp, 6);
    kv_reply_bulk_str(rp, "lastkey");
    kv_reply_int(rp, c->last_key < 0 ? c->last_key : c->last_key - c->first_key);
    kv_reply_bulk_str(rp, "keystep");
    kv_reply_int(rp, c->key_step);
    kv_reply_bulk_str(rp, "limit");
    kv_reply_int(rp, 0);
}

static void reply_info(struct kv_reply *rp, const struct kv_command *c)
{
    if (!c) {
        kv_reply_nil(rp);
        return;
    }
    kv_reply_array(rp, 10);
    kv_reply_bulk_str(rp, c->name);
    kv_reply_int(rp, c->arity);
    reply_words(rp, c->flags);
    kv_reply_int(rp, c->first_key);
    kv_reply_int(rp, c->last_key);
    kv_reply_int(rp, c->key_step);
    reply_words(rp, c->acl);
    kv_reply_array(rp, 0); /* tips */
    reply_key_specs(rp, c);
    size_t n = c->subs ? count(c->subs) : 0;
    kv_reply_array(rp, (long long)n);
    for (size_t i = 0; i < n; i++)
        reply_info(rp, &c->subs[i]);
}

static void reply_docs(struct kv_reply *rp, const struct kv_command *c)
{
    kv_reply_array(rp, c->subs ? 8 : 6);
    kv_reply_bulk_str(rp, "summary");
    kv_reply_bulk_str(rp, c->summary);
    kv_reply_bulk_str(rp, "since");
    kv_reply_bulk_str(rp, c->since);
    kv_reply_bulk_str(rp, "group");
    kv_reply_bulk_str(rp, c->group);
    if (c->subs) {
        size_t n = count(c->subs);
        kv_reply_bulk_str(rp, "subcommands");
        kv_reply_array(rp, 2 * (long long)n);
        for (size_t i = 0; i < n; i++) {
            kv_reply_bulk_str(rp, c->subs[i].name);
            reply_docs(rp, &c->subs[i]);
        }
    }
}

/* A command by its full name: "get", or "config|get" for a subcommand. */
static const struct kv_command *by_name(const char *name, size_t len)
{
    const char *bar = memchr(name, '|', len);
    size_t base = bar ? (size_t)(bar - name) : len;
    for (const struct kv_command *c = kv_commands; c->name; c++) {
        if (!kv_eq_nocase(name, base, c->name))
            continue;
        if (!bar)
            return c;
        for (const struct kv_command *s = c->subs; s && s->name; s++)
            if (kv_eq_nocase(name, len, s->name))
                return s;
        return NULL;
    }
    return NULL;
}

void kv_cmd_command(struct kv_ctx *x)
{
    size_t n = count(kv_commands);
    kv_reply_array(x->rp, (long long)n);
    for (size_t i = 0; i < n; i++)
        reply_info(x->rp, &kv_commands[i]);
}

void kv_cmd_command_count(struct kv_ctx *x)
{
    kv_reply_int(x->rp, (long long)count(kv_commands));
}

void kv_cmd_command_list(struct kv_ctx *x)
{
    if (x->argc > 2) { /* FILTERBY is not implemented */
        kv_reply_error(x->rp, "syntax error");
        return;
    }
    long long n = 0;
    for (const struct kv_command *c = kv_commands; c->name; c++)
        n += 1 + (c->subs ? (long long)count(c->subs) : 0);
    kv_reply_array(x->rp, n);
    for (const struct kv_command *c = kv_commands; c->name; c++) {
        kv_reply_bulk_str(x->rp, c->name);
        for (const struct kv_command *s = c->subs; s && s->name; s++)
            kv_reply_bulk_str(x->rp, s->name);
    }
}

void kv_cmd_command_info(struct kv_ctx *x)
{
    if (x->argc == 2) {
        kv_cmd_command(x);
        return;
    }
    kv_reply_array(x->rp, (long long)x->argc - 2);
    for (size_t i = 2; i < x->argc; i++)
        reply_info(x->rp, by_name(x->argv[i], x->argl[i]));
}

void kv_cmd_command_docs(struct kv_ctx *x)
{
    const struct kv_command *found[64];
    size_t n = 0;
    if (x->argc == 2) {
        for (const struct kv_command *c = kv_commands; c->name && n < 64; c++)
            found[n++] = c;
    } else {
        for (size_t i = 2; i < x->argc && n < 64; i++) {
            const struct kv_command *c = by_name(x->argv[i], x->argl[i]);
            if (c)
                found[n++] = c;
        }
    }
    kv_reply_array(x->rp, 2 * (long long)n);
    for (size_t i = 0; i < n; i++) {
        kv_reply_bulk_str(x->rp, found[i]->name);
        reply_docs(x->rp, found[i]);
    }
}

static void reply_help(struct kv_reply *rp, const char *const *lines)
{
    long long n = 0;
    while (lines[n])
        n++;
    kv_reply_array(rp, n);
    for (long long i = 0; i < n; i++)
        kv_reply_status(rp, lines[i]);
}

void kv_cmd_command_help(struct kv_ctx *x)
{
    static const char *const lines[] = {
        "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "(no subcommand)",
        "    Return details about all commands.",
        "COUNT",
        "    Return the total number of commands in this server.",
        "LIST",
        "    Return a list of all commands in this server.",
        "INFO [<command-name> ...]",
        "    Return details about multiple commands (all when none is given).",
        "DOCS [<command-name> ...]",
        "    Return documentation details about multiple commands (all when none is given).",
        "HELP",
        "    Prints this help.",
        NULL,
    };
    reply_help(x->rp, lines);
}

/* ---- CONFIG GET: the few settings clients ask about, read-only ---- */

static void config_value(const struct kv_server *s, const char *name, char *out, size_t cap)
{
    if (strcmp(name, "port") == 0)
        snprintf(out, cap, "%d", s->port);
    else if (strcmp(name, "bind") == 0)
        snprintf(out, cap, "%s", s->bind);
    else if (strcmp(name, "maxclients") == 0)
        snprintf(out, cap, "%zu", s->max_conns);
    else if (strcmp(name, "proto-max-bulk-len") == 0)
        snprintf(out, cap, "%zu", s->limits.max_bulk);
    else if (strcmp(name, "client-query-buffer-limit") == 0)
        snprintf(out, cap, "%zu", s->limits.max_request);
    else if (strcmp(name, "io-threads") == 0)
        snprintf(out, cap, "%d", s->threads);
    else if (strcmp(name, "hz") == 0)
        snprintf(out, cap, "%d", s->hz);
    else if (strcmp(name, "appendonly") == 0)
        snprintf(out, cap, "no");
    else if (strcmp(name, "databases") == 0)
        snprintf(out, cap, "1");
    else if (strcmp(name, "timeout") == 0 || strcmp(name, "maxmemory") == 0)
        snprintf(out, cap, "0");
    else
        out[0] = '\0'; /* save: "" (no snapshots) */
}

static const char *const config_names[] = {
    "save", "appendonly", "databases", "port", "bind", "maxclients", "proto-max-bulk-len",
    "client-query-buffer-limit", "timeout", "maxmemory", "io-threads", "hz", NULL,
};
#define NCONFIG (sizeof config_names / sizeof config_names[0] - 1)

void kv_cmd_config_get(struct kv_ctx *x)
{
    /* As Redis: a name without * ? [ is looked up (the reply names it as asked), a pattern
     * is matched without case; each setting is given once. */
    const char *shown[NCONFIG];
    size_t shown_len[NCONFIG], which[NCONFIG], n = 0;
    for (size_t i = 2; i < x->argc; i++) {
        bool pattern = strpbrk(x->argv[i], "[*?") != NULL;
        for (size_t k = 0; k < NCONFIG; k++) {
            const char *name = config_names[k];
            bool hit = pattern ? kv_glob_match(x->argv[i], x->argl[i], name, strlen(name), true)
                               : strcasecmp(x->argv[i], name) == 0;
            size_t j = 0;
            while (j < n && which[j] != k)
                j++;
            if (!hit || j < n)
                continue;
            which[n] = k;
            shown[n] = pattern ? name : x->argv[i];
            shown_len[n] = pattern ? strlen(name) : strlen(x->argv[i]);
            n++;
        }
    }
    kv_reply_array(x->rp, 2 * (long long)n);
    for (size_t j = 0; j < n; j++) {
        char value[64];
        config_value(x->cl->srv, config_names[which[j]], value, sizeof value);
        kv_reply_bulk(x->rp, shown[j], shown_len[j]);
        kv_reply_bulk_str(x->rp, value);
    }
}

void kv_cmd_config_help(struct kv_ctx *x)
{
    static const char *const lines[] = {
        "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GET <pattern>",
        "    Return parameters matching the glob-like <pattern> and their values.",
        "HELP",
        "    Prints this help.",
        NULL,
    };
    reply_help(x->rp, lines);
}

/* ---- CLIENT and HELLO ---- */

/* Redis's rule for names: printable ASCII without spaces. */
static bool name_ok(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < '!' || p[i] > '~')
            return false;
    return true;
}

static bool set_name(struct kv_ctx *x, size_t i)
{
    if (!name_ok(x->argv[i], x->argl[i])) {
        kv_reply_error(x->rp, "Client names cannot contain spaces, newlines or special characters.");
        return false;
    }
    char *name = NULL;
    if (x->argl[i] > 0) {
        name = strdup(x->argv[i]);
        if (!name) {
            kv_reply_error(x->rp, "-OOM command not allowed when used memory > 'maxmemory'.");
            return false;
        }
    }
    free(x->cl->name);
    x->cl->name = name;
    return true;
}

void kv_cmd_client_setname(struct kv_ctx *x)
{
    if (set_name(x, 2))
        kv_reply_status(x->rp, "OK");
}

void kv_cmd_client_getname(struct kv_ctx *x)
{
    if (x->cl->name)
        kv_reply_bulk_str(x->rp, x->cl->name);
    else
        kv_reply_nil(x->rp);
}

void kv_cmd_client_id(struct kv_ctx *x)
{
    kv_reply_int(x->rp, (long long)x->cl->id);
}

void kv_cmd_client_help(struct kv_ctx *x)
{
    static const char *const lines[] = {
        "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GETNAME",
        "    Return the name of the current connection.",
        "ID",
        "    Return the ID of the current connection.",
        "SETNAME <name>",
        "    Assign the name <name> to the current connection.",
        "HELP",
        "    Prints this help.",
        NULL,
    };
    reply_help(x->rp, lines);
}

void kv_cmd_hello(struct kv_ctx *x)
{
    size_t j = 1;
    if (x->argc >= 2) {
        long long ver;
        if (!kv_parse_ll(x->argv[1], x->argl[1], &ver)) {
            kv_reply_error(x->rp, "Protocol version is not an integer or out of range");
            return;
        }
        if (ver != 2) { /* RESP3 is not spoken here */
            kv_reply_error(x->rp, "-NOPROTO unsupported protocol version");
            return;
        }
        j = 2;
    }
    for (; j < x->argc; j++) {
        size_t more = x->argc - 1 - j;
        if (strcasecmp(x->argv[j], "AUTH") == 0 && more >= 2) {
            /* No passwords here: the default user, as Redis has it, takes any. */
            if (strcmp(x->argv[j + 1], "default") != 0) {
                kv_reply_error(x->rp,
                               "-WRONGPASS invalid username-password pair or user is disabled.");
                return;
            }
            j += 2;
        } else if (strcasecmp(x->argv[j], "SETNAME") == 0 && more >= 1) {
            if (!set_name(x, j + 1))
                return;
            j++;
        } else {
            kv_reply_errorf(x->rp, "Syntax error in HELLO option '%s'", x->argv[j]);
            return;
        }
    }
    kv_reply_array(x->rp, 14);
    kv_reply_bulk_str(x->rp, "server");
    kv_reply_bulk_str(x->rp, "redis");
    kv_reply_bulk_str(x->rp, "version");
    kv_reply_bulk_str(x->rp, "7.0.0");
    kv_reply_bulk_str(x->rp, "proto");
    kv_reply_int(x->rp, 2);
    kv_reply_bulk_str(x->rp, "id");
    kv_reply_int(x->rp, (long long)x->cl->id);
    kv_reply_bulk_str(x->rp, "mode");
    kv_reply_bulk_str(x->rp, "standalone");
    kv_reply_bulk_str(x->rp, "role");
    kv_reply_bulk_str(x->rp, "master");
    kv_reply_bulk_str(x->rp, "modules");
    kv_reply_array(x->rp, 0);
}
