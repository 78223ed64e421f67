/* tools/weft-gdb.py against a real process: the coroutine echo server with clients parked in
 * weft_gets. `weft coroutines` names each client ("host:port") with what it waits on, and
 * `weft bt NAME` shows weft_gets in its backtrace; the same from a core file of it. Skipped,
 * saying why, where gdb is missing, may not attach (ptrace), or programs run through an
 * emulator or valgrind ($WEFT_RUN). */
#include "harness.h"
#include "../src/internal.h" /* deep_call */

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <weft.h>

#define SCRIPT "tools/weft-gdb.py"
#define CLIENTS 3

/* A core file of a sanitizer build would hold its shadow memory: tens of gigabytes. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif

/* Run a shell command, return its output (stdout and stderr) or NULL if it could not run.
 * Free it. */
static char *run_capture(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    if (!p)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    CHECK(out);
    size_t r;
    while ((r = fread(out + len, 1, cap - 1 - len, p)) > 0) {
        len += r;
        if (len + 1 == cap) {
            cap *= 2;
            out = realloc(out, cap);
            CHECK(out);
        }
    }
    out[len] = '\0';
    pclose(p);
    return out;
}

/* Why gdb cannot be used here, or NULL. */
static const char *why_no_gdb(void)
{
    if (getenv("WEFT_RUN") && *getenv("WEFT_RUN"))
        return "programs run through $WEFT_RUN (an emulator or valgrind), which gdb would see";
    if (system("command -v gdb >/dev/null 2>&1") != 0)
        return "gdb is not installed";
    struct stat st;
    if (stat(SCRIPT, &st) != 0)
        return "no " SCRIPT " here (run from the source tree)";
    return NULL;
}

struct echo_run {
    pid_t pid;
    int clients[CLIENTS];
    char names[CLIENTS][64]; /* each client's "127.0.0.1:port": its handler's name */
    const char *build;
};

/* The echo server, with CLIENTS clients each parked in weft_gets after one echoed line. */
static void start_echo(struct echo_run *e)
{
    char *argv[] = {"examples/echo", "-p", "0", "-q", NULL};
    int out;
    e->pid = spawn_program(argv, &out, NULL);
    int port = read_listen_port(out);
    close(out);
    for (int i = 0; i < CLIENTS; i++) {
        e->clients[i] = tcp_connect_loopback(port);
        char answer[64];
        ask_line(e->clients[i], "hello", answer, sizeof answer, 30000);
        CHECK(strcmp(answer, "hello") == 0); /* served: its handler is back in weft_gets */
        struct sockaddr_in sin;
        socklen_t len = sizeof sin;
        CHECK(getsockname(e->clients[i], (struct sockaddr *)&sin, &len) == 0);
        snprintf(e->names[i], sizeof e->names[i], "127.0.0.1:%d", ntohs(sin.sin_port));
    }
    e->build = getenv("WEFT_BUILD") ? getenv("WEFT_BUILD") : "build";
}

static void stop_echo(struct echo_run *e)
{
    for (int i = 0; i < CLIENTS; i++)
        close(e->clients[i]);
    int status = stop_program(e->pid, SIGTERM);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0); /* gdb left it as it was */
}

/* What gdb said: every client listed as parked reading, and weft_gets in the backtrace of
 * the one asked for (the first). */
static void check_gdb_output(const struct echo_run *e, const char *out)
{
    for (int i = 0; i < CLIENTS; i++) {
        char want[96];
        snprintf(want, sizeof want, "\"%s\" parked ", e->names[i]);
        const char *line = strstr(out, want);
        if (!line)
            fprintf(stderr, "  no line for %s in gdb's output:\n%s\n", e->names[i], out);
        CHECK(line);
        CHECK(strstr(line, ": read fd ") && strstr(line, "; stack ") < strchr(line, '\n'));
    }
    const char *bt = strstr(out, "coroutine #");
    if (!bt || !strstr(bt, " in weft_gets ") || !strstr(bt, e->names[0]))
        fprintf(stderr, "  no backtrace through weft_gets in gdb's output:\n%s\n", out);
    CHECK(bt && strstr(bt, e->names[0]) && strstr(bt, " in weft_gets "));
    CHECK(strstr(bt, " in echo ")); /* down to the handler, the example's own function */
}

static void gdb_lists_coroutines_and_backtraces_a_live_process(void)
{
    const char *why = why_no_gdb();
    if (why) {
        printf("  skipped: %s\n", why);
        return;
    }
    struct echo_run e;
    start_echo(&e);
    char *out = run_capture("gdb -nx -batch -p %d -x " SCRIPT
                            " -ex 'weft coroutines' -ex 'weft bt %s' 2>&1 </dev/null",
                            (int)e.pid, e.names[0]);
    CHECK(out);
    if (strstr(out, "ptrace: Operation not permitted") || strstr(out, "Could not attach")) {
        printf("  skipped: gdb may not attach to a process here (ptrace not permitted)\n");
        free(out);
        stop_echo(&e);
        return;
    }
    check_gdb_output(&e, out);
    /* Live, the peer comes from /proc as well. */
    char peer[96];
    snprintf(peer, sizeof peer, "peer %s", e.names[1]);
    CHECK(strstr(out, peer));
    free(out);
    stop_echo(&e); /* and it still answers SIGTERM with a clean exit */
}

static void gdb_reads_a_core_file(void)
{
    const char *why = why_no_gdb();
#ifdef SANITIZED
    why = "a core file of a sanitizer build holds its shadow memory (tens of GB)";
#endif
    if (why) {
        printf("  skipped: %s\n", why);
        return;
    }
    char dir[] = "/tmp/weft-gdb-XXXXXX";
    CHECK(mkdtemp(dir));
    struct echo_run e;
    start_echo(&e);
    char *out = run_capture("gdb -nx -batch -p %d -ex 'gcore %s/core' 2>&1 </dev/null",
                            (int)e.pid, dir);
    CHECK(out);
    bool attached = !strstr(out, "ptrace: Operation not permitted") &&
                    !strstr(out, "Could not attach");
    free(out);
    stop_echo(&e);
    if (!attached) {
        printf("  skipped: gdb may not attach to a process here (ptrace not permitted)\n");
        rmdir(dir);
        return;
    }
    out = run_capture("gdb -nx -batch %s/examples/echo %s/core -x " SCRIPT
                      " -ex 'weft coroutines' -ex 'weft bt %s' 2>&1 </dev/null",
                      e.build, dir, e.names[0]);
    char core[64];
    snprintf(core, sizeof core, "%s/core", dir);
    unlink(core);
    rmdir(dir);
    CHECK(out);
    check_gdb_output(&e, out);
    CHECK(strstr(out, "(times as of the loop's last turn)"));
    free(out);
}

/* ---- gdb and weft_dump agree ---- */

/* A child process with coroutines parked in many kinds of wait writes weft_dump to out_fd,
 * then blocks its thread in read(2) while gdb looks at it. */
static struct scene {
    weft_co *sleeper;
    weft_queue *empty, *full;
    weft_mutex *m;
    weft_waitgroup *wg;
    weft_group *g;
    weft_chan *sc;
    int out_fd, block_fd;
} sc;

static void *sleep_long(void *a)
{
    (void)a;
    weft_sleep(600000);
    return NULL;
}

static void *join_sleeper(void *a)
{
    (void)a;
    weft_join(sc.sleeper, NULL, -1);
    return NULL;
}

static void *recv_empty(void *a)
{
    (void)a;
    void *item;
    weft_queue_recv(sc.empty, &item, -1);
    return NULL;
}

static void *send_full(void *a)
{
    (void)a;
    weft_queue_send(sc.full, NULL, -1);
    return NULL;
}

static void *lock_held(void *a)
{
    (void)a;
    weft_mutex_lock(sc.m, -1);
    return NULL;
}

static void *wait_wg(void *a)
{
    (void)a;
    weft_waitgroup_wait(sc.wg, -1);
    return NULL;
}

static void *wait_group(void *a)
{
    (void)a;
    weft_group_wait(sc.g, -1);
    return NULL;
}

static void *read_line(void *a)
{
    (void)a;
    size_t len;
    weft_gets(sc.sc, &len);
    return NULL;
}

static void spawn_as(const char *name, weft_fn fn)
{
    weft_spawn_opts o = {.name = name};
    weft_co *co = weft_spawn_ex(fn, NULL, &o);
    CHECK(co);
    if (strcmp(name, "sleeper") == 0)
        sc.sleeper = co;
}

static void *scene_main(void *a)
{
    (void)a;
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    int cfd = tcp_connect_loopback(weft_listener_port(l));
    sc.sc = weft_accept(l, -1);
    CHECK(sc.sc && cfd >= 0);
    sc.empty = weft_queue_new(1);
    sc.full = weft_queue_new(1);
    CHECK(weft_queue_send(sc.full, NULL, -1) == 0);
    sc.m = weft_mutex_new();
    CHECK(weft_mutex_lock(sc.m, -1) == 0);
    sc.wg = weft_waitgroup_new();
    CHECK(weft_waitgroup_add(sc.wg, 2) == 0);
    sc.g = weft_group_new();
    weft_spawn_opts mo = {.name = "member"};
    CHECK(weft_group_spawn(sc.g, sleep_long, NULL, &mo));
    spawn_as("sleeper", sleep_long);
    spawn_as("joiner", join_sleeper);
    spawn_as("receiver", recv_empty);
    spawn_as("sender", send_full);
    spawn_as("locker", lock_held);
    spawn_as("wg", wait_wg);
    spawn_as("grouper", wait_group);
    spawn_as("reader", read_line);
    for (int i = 0; i < 1000; i++) {
        weft_sched_stats st;
        weft_sched_get_stats(&st);
        if (st.parked == 9)
            break;
        weft_yield();
    }
    spawn_as("not yet run", sleep_long); /* ready */
    CHECK(weft_dump(sc.out_fd) == 0);
    close(sc.out_fd);
    char ch;
    ssize_t r = read(sc.block_fd, &ch, 1); /* the whole thread stops here, as gdb looks */
    (void)r;
    _exit(0);
}

/* A dump line without what changes between two looks: the time parked, the time left, the
 * stack in memory. */
static void normalize(const char *line, char *out, size_t cap)
{
    snprintf(out, cap, "%.*s", (int)strcspn(line, "\n"), line);
    char *p = strstr(out, " parked ");
    if (p) {
        char *colon = strchr(p, ':');
        if (colon)
            memmove(p + 7, colon, strlen(colon) + 1); /* " parked: ..." */
    }
    char *cut = strstr(out, ", times out in ");
    if (!cut)
        cut = strstr(out, ", wakes in ");
    if (!cut)
        cut = strstr(out, "; stack ");
    if (cut)
        *cut = '\0';
}

static void gdb_and_weft_dump_agree(void)
{
    const char *why = why_no_gdb();
    if (why) {
        printf("  skipped: %s\n", why);
        return;
    }
    int out[2], block[2];
    CHECK(pipe(out) == 0 && pipe(block) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(out[0]);
        close(block[1]);
        sc.out_fd = out[1];
        sc.block_fd = block[0];
        weft_spawn_opts o = {.name = "scene"};
        CHECK(weft_spawn_ex(scene_main, NULL, &o));
        weft_run();
        _exit(1);
    }
    close(out[1]);
    close(block[0]);
    char dump[16384];
    size_t len = 0;
    ssize_t r;
    while ((r = read(out[0], dump + len, sizeof dump - 1 - len)) > 0)
        len += (size_t)r;
    dump[len] = '\0';
    close(out[0]);
    char *got = run_capture("gdb -nx -batch -p %d -x " SCRIPT " -ex 'weft coroutines' "
                            "-ex 'weft bt scene' 2>&1 </dev/null", (int)pid);
    close(block[1]); /* the child goes on and exits */
    int status;
    waitpid(pid, &status, 0);
    CHECK(got);
    if (strstr(got, "ptrace: Operation not permitted") || strstr(got, "Could not attach")) {
        printf("  skipped: gdb may not attach to a process here (ptrace not permitted)\n");
        free(got);
        return;
    }
    int lines = 0;
    for (const char *p = dump; (p = strstr(p, "\n  #")); p++) {
        char want[512], have[512], key[32];
        normalize(p + 1, want, sizeof want);
        snprintf(key, sizeof key, "\n%.*s\"", (int)strcspn(p + 1, "\""), p + 1);
        const char *in_gdb = strstr(got, key);
        if (!in_gdb)
            fprintf(stderr, "  gdb has no line %s in:\n%s\n", key + 1, got);
        CHECK(in_gdb);
        normalize(in_gdb + 1, have, sizeof have);
        if (strcmp(want, have) != 0)
            fprintf(stderr, "  weft_dump: %s\n  gdb:       %s\n", want, have);
        CHECK(strcmp(want, have) == 0);
        lines++;
    }
    CHECK(lines == 11); /* scene, member and the nine above */
    CHECK(strstr(got, "running: its frames are gdb thread 1's own"));
    free(got);
}

/* ---- A coroutine inside a deep call ---- */

static int deep_out_fd, deep_block_fd;

/* On the deep-call stack: say so, then block the thread (not a park) while gdb looks. */
static void deep_blocked(void *arg)
{
    (void)arg;
    char b = 'x';
    CHECK(write(deep_out_fd, &b, 1) == 1);
    ssize_t r = read(deep_block_fd, &b, 1);
    (void)r;
}

static void *deep_blocked_main(void *arg)
{
    deep_call(deep_blocked, arg);
    return NULL;
}

/* `weft coroutines` says the running coroutine is in a deep call and shows the thread's
 * deep-call stack; `weft bt` unwinds the coroutine's own frames from where it switched. */
static void gdb_shows_a_coroutine_inside_a_deep_call(void)
{
    const char *why = why_no_gdb();
    if (why) {
        printf("  skipped: %s\n", why);
        return;
    }
    int out[2], block[2];
    CHECK(pipe(out) == 0 && pipe(block) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(out[0]);
        close(block[1]);
        deep_out_fd = out[1];
        deep_block_fd = block[0];
        weft_spawn_opts o = {.name = "deep-blocked"};
        CHECK(weft_spawn_ex(deep_blocked_main, NULL, &o));
        weft_run();
        _exit(0);
    }
    close(out[1]);
    close(block[0]);
    char b;
    CHECK(read(out[0], &b, 1) == 1); /* it is inside the deep call now */
    close(out[0]);
    char *got = run_capture("gdb -nx -batch -p %d -x " SCRIPT " -ex 'weft coroutines' "
                            "-ex 'weft bt deep-blocked' 2>&1 </dev/null", (int)pid);
    close(block[1]);
    int status;
    waitpid(pid, &status, 0);
    CHECK(got);
    if (strstr(got, "ptrace: Operation not permitted") || strstr(got, "Could not attach")) {
        printf("  skipped: gdb may not attach to a process here (ptrace not permitted)\n");
        free(got);
        return;
    }
    bool ok = strstr(got, "\"deep-blocked\" running (in a deep call") &&
              strstr(got, "deep-call stack ") && strstr(got, ", in use") &&
              strstr(got, "running a deep call") && strstr(got, " in deep_call ") &&
              strstr(got, " in deep_blocked_main ");
    if (!ok)
        fprintf(stderr, "  gdb said:\n%s\n", got);
    CHECK(ok);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free(got);
}

const struct test tests[] = {
    {"gdb_and_weft_dump_agree", gdb_and_weft_dump_agree, 120},
    {"gdb_lists_coroutines_and_backtraces_a_live_process",
     gdb_lists_coroutines_and_backtraces_a_live_process, 120},
    {"gdb_reads_a_core_file", gdb_reads_a_core_file, 120},
    {"gdb_shows_a_coroutine_inside_a_deep_call", gdb_shows_a_coroutine_inside_a_deep_call, 120},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
