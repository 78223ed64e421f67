/* hiredis's synchronous API in coroutines, with libweft_hook linked in, against a
 * redis-server this test starts on a free loopback port (no persistence, files in a temp
 * dir). Many coroutines on one thread, each with its own connection, each call parking only
 * its coroutine: the count of calls in flight at once shows it (a call that blocked the
 * thread would keep it at one), and a ticker coroutine keeps waking meanwhile. */
#include "harness.h"
#include "hook_support.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <weft.h>

static int port;
static pid_t server;
static char dir[256];

static void redis_start(void)
{
    CHECK(have_program("redis-server"));
    make_temp_dir(dir, sizeof dir);
    port = free_port();
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    char *argv[] = {"redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", dir, "--daemonize", "no", NULL};
    server = start_process(argv, NULL, NULL);
    wait_port_open(port, 20000);
}

static void redis_stop(void)
{
    int status = stop_program(server, SIGTERM);
    (void)status;
    remove_tree(dir);
}

static int in_flight, max_in_flight;

static void enter(void)
{
    if (++in_flight > max_in_flight)
        max_in_flight = in_flight;
}

static void leave(void)
{
    in_flight--;
}

static redisReply *command(redisContext *c, const char *fmt, const char *a, const char *b)
{
    enter();
    redisReply *r = b ? redisCommand(c, fmt, a, b) : redisCommand(c, fmt, a);
    leave();
    return r;
}

/* ---- 200 connections, 100 SET/GET pairs each, every reply checked ---- */

static void *set_get_client(void *arg)
{
    int id = (int)(intptr_t)arg;
    redisContext *c = redisConnect("127.0.0.1", port);
    CHECK(c && !c->err);
    int pairs = test_scale(100);
    for (int i = 0; i < pairs; i++) {
        char key[32], val[64];
        snprintf(key, sizeof key, "k%d:%d", id, i);
        snprintf(val, sizeof val, "value %d of client %d", i, id);
        redisReply *r = command(c, "SET %s %s", key, val);
        CHECK(r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0);
        freeReplyObject(r);
        r = command(c, "GET %s", key, NULL);
        CHECK(r && r->type == REDIS_REPLY_STRING && strcmp(r->str, val) == 0);
        freeReplyObject(r);
    }
    redisFree(c);
    return NULL;
}

static void many_clients_set_get(void)
{
    redis_start();
    int n = test_scale(200);
    weft_co **cos = calloc((size_t)n, sizeof *cos);
    ticker t;
    ticker_start(&t);
    for (int i = 0; i < n; i++)
        CHECK((cos[i] = weft_spawn(set_get_client, (void *)(intptr_t)i)));
    for (int i = 0; i < n; i++)
        CHECK(weft_join(cos[i], NULL, -1) == 0);
    ticker_stop(&t);
    printf("  %d clients, %d SET/GET pairs each: up to %d calls in flight at once\n", n,
           test_scale(100), max_in_flight);
    CHECK(max_in_flight > 1);
    free(cos);
    redis_stop();
}

/* ---- 100 BLPOPs with a 0.5 s timeout, all parked together ---- */

static int nil_replies;

static void *blpop_client(void *arg)
{
    int id = (int)(intptr_t)arg;
    redisContext *c = redisConnect("127.0.0.1", port);
    CHECK(c && !c->err);
    char key[32];
    snprintf(key, sizeof key, "empty:%d", id);
    redisReply *r = command(c, "BLPOP %s 0.5", key, NULL);
    CHECK(r && r->type == REDIS_REPLY_NIL); /* timed out on the server: nil */
    nil_replies++;
    freeReplyObject(r);
    redisFree(c);
    return NULL;
}

static void blpop_together(void)
{
    redis_start();
    int n = test_scale(100);
    weft_co **cos = calloc((size_t)n, sizeof *cos);
    ticker t;
    ticker_start(&t);
    max_in_flight = 0;
    for (int i = 0; i < n; i++)
        CHECK((cos[i] = weft_spawn(blpop_client, (void *)(intptr_t)i)));
    for (int i = 0; i < n; i++)
        CHECK(weft_join(cos[i], NULL, -1) == 0);
    long ticks = t.ticks;
    ticker_stop(&t);
    printf("  %d BLPOPs: %d in flight at once, %d nil replies, %ld ticks meanwhile\n", n,
           max_in_flight, nil_replies, ticks);
    CHECK(nil_replies == n);
    CHECK(max_in_flight == n); /* every one of them was parked at the same time */
    CHECK(ticks > 0);
    free(cos);
    redis_stop();
}

/* ---- hiredis's own timeout is SO_RCVTIMEO: the hooks honour it ---- */

static void *timed_out_client(void *unused)
{
    (void)unused;
    redisContext *c = redisConnect("127.0.0.1", port);
    CHECK(c && !c->err);
    struct timeval tv = {0, 200000};
    CHECK(redisSetTimeout(c, tv) == REDIS_OK);
    redisReply *r = redisCommand(c, "BLPOP never:filled 5");
    CHECK(!r && c->err == REDIS_ERR_IO && (c->errstr[0] != '\0'));
    printf("  BLPOP 5 with a 0.2 s client timeout: \"%s\"\n", c->errstr);
    redisFree(c);
    /* And a refused connection is reported as hiredis reports it without the hooks. */
    c = redisConnect("127.0.0.1", free_port());
    CHECK(c && c->err);
    printf("  connection refused: \"%s\"\n", c->errstr);
    redisFree(c);
    return NULL;
}

static void client_timeout_and_refusal(void)
{
    redis_start();
    long ticks = 0;
    run_in_coroutine(timed_out_client, NULL, &ticks);
    CHECK(ticks > 0);
    redis_stop();
}

const struct test tests[] = {
    {"many_clients_set_get", many_clients_set_get, 120},
    {"blpop_together", blpop_together, 60},
    {"client_timeout_and_refusal", client_timeout_and_refusal, 60},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
