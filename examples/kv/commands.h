/* The commands: a table of what kv answers, the checks Redis makes before running one
 * (unknown command or subcommand, arity), and the commands themselves. A command never
 * waits: it reads and changes the store (under its lock when threads share it) and appends
 * its reply to a buffer the connection sends afterwards. */
#ifndef KV_COMMANDS_H
#define KV_COMMANDS_H

#include "proto.h"
#include "store.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* What every connection shares. */
struct kv_server {
    struct kv_store *store;
    struct kv_limits limits;
    const char *bind; /* as given with -h */
    int port;         /* the port actually listened on */
    int threads;
    int hz;           /* sweeps a second (0: none) */
    size_t max_conns;
    atomic_ullong next_id; /* CLIENT ID */
};

/* One connection's state between its requests. */
struct kv_client {
    struct kv_server *srv;
    unsigned long long id;
    char *name; /* CLIENT SETNAME, or NULL */
};

void kv_client_init(struct kv_client *cl, struct kv_server *srv);
void kv_client_free(struct kv_client *cl);

/* What the connection does once the reply is sent. */
enum kv_after {
    KV_GO_ON,
    KV_CLOSE, /* the reply, then close (QUIT) */
    KV_DROP   /* close without a reply (a request that looks like HTTP: "POST", "Host:") */
};

/* Run one request (argc >= 1) and append its reply to rp. */
enum kv_after kv_command_run(struct kv_client *cl, const struct kv_request *rq,
                             struct kv_reply *rp);

/* ---- Between commands.c and introspect.c ---- */

struct kv_ctx;
typedef void (*kv_proc)(struct kv_ctx *x);

struct kv_command {
    const char *name;     /* lower case; "config|get" for a subcommand */
    int arity;            /* n: exactly n arguments with the name; -n: at least n */
    const char *flags;    /* as COMMAND INFO shows them, space-separated */
    const char *acl;      /* ACL categories, space-separated */
    int first_key, last_key, key_step;
    const char *key_flags; /* key spec flags ("RW update"), NULL if no keys */
    kv_proc proc;         /* NULL for a container (CONFIG, CLIENT, COMMAND) */
    const struct kv_command *subs; /* a container's subcommands, ending with a NULL name */
    bool uses_store;      /* runs under the store's lock */
    const char *group, *since, *summary; /* COMMAND DOCS */
};

struct kv_ctx {
    struct kv_client *cl;
    struct kv_store *st;
    const struct kv_command *cmd;
    size_t argc;
    char *const *argv;
    const size_t *argl;
    struct kv_reply *rp;
    struct kv_clock now;  /* read once per command, when first needed */
    enum kv_after after;
};

extern const struct kv_command kv_commands[];
int64_t kv_now(struct kv_ctx *x);
void kv_reply_arity(struct kv_ctx *x);
bool kv_eq_nocase(const char *a, size_t alen, const char *b);

/* introspect.c */
void kv_cmd_command(struct kv_ctx *x);
void kv_cmd_command_count(struct kv_ctx *x);
void kv_cmd_command_list(struct kv_ctx *x);
void kv_cmd_command_info(struct kv_ctx *x);
void kv_cmd_command_docs(struct kv_ctx *x);
void kv_cmd_command_help(struct kv_ctx *x);
void kv_cmd_config_get(struct kv_ctx *x);
void kv_cmd_config_help(struct kv_ctx *x);
void kv_cmd_client_setname(struct kv_ctx *x);
void kv_cmd_client_getname(struct kv_ctx *x);
void kv_cmd_client_id(struct kv_ctx *x);
void kv_cmd_client_help(struct kv_ctx *x);
void kv_cmd_hello(struct kv_ctx *x);

#endif
