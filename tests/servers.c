/* See servers.h. */
#include "servers.h"
#include "harness.h"
#include "../src/internal.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void (*test_server_child_setup)(void);
static weft_server *server;
static struct server_counts ends;

static void count_end(int err)
{
    if (err == EMSGSIZE)
        ends.emsgsize++;
    else if (err == ETIMEDOUT)
        ends.etimedout++;
    else if (err == ECANCELED)
        ends.ecanceled++;
    else
        ends.other++;
}

static void handler(weft_chan *c, void *arg)
{
    (void)arg;
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len))) {
        if (strcmp(line, "stats") == 0) {
            weft_server_stats st;
            weft_server_get_stats(server, &st);
            weft_printf(c, "%llu %llu %llu %llu %llu %llu %llu %llu %llu\n",
                        (unsigned long long)st.accepted, (unsigned long long)st.active,
                        (unsigned long long)st.spawn_errors, (unsigned long long)st.limit_waits,
                        ends.emsgsize, ends.etimedout, ends.ecanceled, ends.other,
                        (unsigned long long)st.tls_failures);
        } else if (strcmp(line, "fds") == 0) {
            weft_printf(c, "%d\n", count_open_fds());
        } else if (weft_putln(c, line, len) != 0) {
            count_end(errno);
            return;
        }
    }
    if (!weft_eof(c))
        count_end(errno);
}

void test_server_start(struct test_server *ts, const weft_server_opts *opts,
                       unsigned stack_failures)
{
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        if (test_server_child_setup)
            test_server_child_setup();
        weft_listener *l = weft_listen("127.0.0.1:0", 0);
        CHECK(l);
        server = weft_server_start_ex(l, handler, NULL, opts);
        CHECK(server);
        CHECK(weft_server_stop_on_signals(server, 0) == 0);
        stack_fail_next = stack_failures; /* applies to the handlers from now on */
        char msg[16];
        int n = snprintf(msg, sizeof msg, "%d\n", weft_listener_port(l));
        CHECK(write(p[1], msg, (size_t)n) == n);
        close(p[1]);
        CHECK(weft_run() == 0);
        exit(0); /* through exit(): sanitizers and valgrind check for leaks here */
    }
    close(p[1]);
    char buf[32];
    ssize_t r = read(p[0], buf, sizeof buf - 1);
    CHECK(r > 0);
    buf[r] = '\0';
    close(p[0]);
    ts->pid = pid;
    ts->port = atoi(buf);
}

void test_server_stop(struct test_server *ts)
{
    CHECK(waitpid(ts->pid, NULL, WNOHANG) == 0); /* still alive */
    int status = stop_program(ts->pid, SIGTERM);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0); /* shut down cleanly, no leak */
}

void (*test_server_asker)(int port, const char *q, char *answer, size_t cap);

static void ask(struct test_server *ts, const char *q, char *answer, size_t cap)
{
    if (test_server_asker) {
        test_server_asker(ts->port, q, answer, cap);
        return;
    }
    int fd = tcp_connect_loopback(ts->port);
    ask_line(fd, q, answer, cap, 20000);
    close(fd);
}

void test_server_counts(struct test_server *ts, struct server_counts *o)
{
    char a[256];
    ask(ts, "stats", a, sizeof a);
    CHECK(sscanf(a, "%llu %llu %llu %llu %llu %llu %llu %llu %llu", &o->accepted, &o->active,
                 &o->spawn_errors, &o->limit_waits, &o->emsgsize, &o->etimedout,
                 &o->ecanceled, &o->other, &o->tls_failures) == 9);
    o->active--; /* the asking connection itself */
}

int test_server_fds(struct test_server *ts)
{
    char a[64];
    ask(ts, "fds", a, sizeof a);
    return atoi(a) - 1;
}

long test_server_rss_kib(struct test_server *ts)
{
    return proc_status_kib(ts->pid, "VmRSS:");
}

long test_server_hwm_kib(struct test_server *ts)
{
    return proc_status_kib(ts->pid, "VmHWM:");
}

void expect_echo(int fd, const char *line)
{
    size_t n = strlen(line);
    char *back = malloc(n + 1);
    CHECK(back);
    write_all(fd, line, n);
    write_all(fd, "\n", 1);
    read_exact_timeout(fd, back, n + 1, 20000);
    CHECK(memcmp(back, line, n) == 0 && back[n] == '\n');
    free(back);
}
