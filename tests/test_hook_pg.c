/* libpq in coroutines, with libweft_hook linked in, against a PostgreSQL server this test
 * makes (initdb in a temp dir) and starts on a free loopback port, its Unix socket in the
 * same dir. PostgreSQL refuses to run as root, so under root (CI) initdb and the server run
 * as the "postgres" user the Debian package creates. Without a server installed (the
 * postgresql package) the test says so and is skipped. */
#include "harness.h"
#include "hook_support.h"

#include <glob.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <weft.h>

static char bindir[256];
static char dir[256];
static int port;
static pid_t server;

/* The newest /usr/lib/postgresql/N/bin with a postgres in it. */
static bool find_server(void)
{
    glob_t g;
    if (glob("/usr/lib/postgresql/*/bin/postgres", 0, NULL, &g) != 0)
        return false;
    snprintf(bindir, sizeof bindir, "%s", g.gl_pathv[g.gl_pathc - 1]);
    globfree(&g);
    *strrchr(bindir, '/') = '\0';
    return true;
}

static const char *server_user(void)
{
    return geteuid() == 0 ? "postgres" : NULL;
}

static void pg_start(void)
{
    make_temp_dir(dir, sizeof dir);
    struct passwd *pw = server_user() ? getpwnam(server_user()) : NULL;
    CHECK(!server_user() || pw);
    if (pw)
        CHECK(chown(dir, pw->pw_uid, pw->pw_gid) == 0);
    char data[300], log[300], initdb[300], postgres[300], p[16];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    snprintf(initdb, sizeof initdb, "%s/initdb", bindir);
    snprintf(postgres, sizeof postgres, "%s/postgres", bindir);
    char *init_argv[] = {initdb, "-D", data, "-A", "trust", "-U", "weft", "--no-sync",
                         "-E", "UTF8", NULL};
    pid_t pid = start_process(init_argv, log, server_user());
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    port = free_port();
    snprintf(p, sizeof p, "%d", port);
    char *argv[] = {postgres, "-D", data, "-p", p, "-k", dir, "-c",
                    "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50",
                    NULL};
    server = start_process(argv, log, server_user());
    wait_port_open(port, 30000);
    /* It listens before it takes connections ("the database system is starting up"). */
    char conninfo[128];
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d dbname=postgres user=weft",
             port);
    for (int waited = 0; PQping(conninfo) != PQPING_OK; waited += 20) {
        CHECK(waited < 30000);
        usleep(20000);
    }
}

static void pg_stop(void)
{
    stop_program(server, SIGINT); /* fast shutdown */
    remove_tree(dir);
}

static int in_flight, max_in_flight;

static void *query(void *arg)
{
    int id = (int)(intptr_t)arg;
    char conninfo[512];
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d dbname=postgres user=weft",
             port);
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "  connect: %s", PQerrorMessage(c));
    CHECK(PQstatus(c) == CONNECTION_OK);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT pg_sleep(0.3), %d * 2 AS twice", id);
    if (++in_flight > max_in_flight)
        max_in_flight = in_flight;
    PGresult *r = PQexec(c, sql);
    in_flight--;
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1);
    CHECK(atoi(PQgetvalue(r, 0, 1)) == id * 2);
    PQclear(r);
    /* The Unix socket too. */
    snprintf(conninfo, sizeof conninfo, "host=%s port=%d dbname=postgres user=weft", dir, port);
    PQfinish(c);
    c = PQconnectdb(conninfo);
    CHECK(PQstatus(c) == CONNECTION_OK);
    r = PQexec(c, "SELECT 'unix'");
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "unix") == 0);
    PQclear(r);
    PQfinish(c);
    return NULL;
}

static void *refused(void *unused)
{
    (void)unused;
    char conninfo[128];
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d dbname=postgres user=weft",
             free_port());
    PGconn *c = PQconnectdb(conninfo);
    CHECK(PQstatus(c) == CONNECTION_BAD && strstr(PQerrorMessage(c), "refused"));
    PQfinish(c);
    return NULL;
}

static void queries_together(void)
{
    if (!find_server()) {
        printf("  skipped: no PostgreSQL server here (Debian: apt-get install postgresql)\n");
        return;
    }
    pg_start();
    int n = test_scale(20);
    weft_co **cos = calloc((size_t)n, sizeof *cos);
    ticker t;
    ticker_start(&t);
    for (int i = 0; i < n; i++)
        CHECK((cos[i] = weft_spawn(query, (void *)(intptr_t)i)));
    for (int i = 0; i < n; i++)
        CHECK(weft_join(cos[i], NULL, -1) == 0);
    ticker_stop(&t);
    printf("  %d connections, pg_sleep(0.3) each: %d queries at once, %ld ticks meanwhile\n", n,
           max_in_flight, t.ticks);
    CHECK(max_in_flight == n);
    CHECK(t.ticks > 0);
    run_in_coroutine(refused, NULL, NULL);
    free(cos);
    pg_stop();
}

const struct test tests[] = {
    {"queries_together", queries_together, 90},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
