/* Graceful shutdown: stop accepting, let handlers finish, answer every line already received,
 * cancel what is stuck, exit 0 on SIGTERM; a second signal ends the process at once. */
#include "harness.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <weft.h>

static int start_echo(int grace_ms, pid_t *pid)
{
    char g[16];
    snprintf(g, sizeof g, "%d", grace_ms);
    char *argv[] = {"examples/echo", "-p", "0", "-q", "-g", g, NULL};
    int out;
    *pid = spawn_program(argv, &out, NULL);
    int port = read_listen_port(out);
    close(out);
    return port;
}

static void sigterm_answers_every_received_line_and_exits_0(void)
{
    pid_t pid;
    int port = start_echo(300, &pid);
    enum { CLIENTS = 20, LINES = 200 };
    int fds[CLIENTS];
    char out[LINES * 16];
    for (int i = 0; i < CLIENTS; i++) {
        fds[i] = tcp_connect_loopback(port);
        size_t n = 0;
        for (int j = 0; j < LINES; j++)
            n += (size_t)snprintf(out + n, sizeof out - n, "c%02d l%03d\n", i, j);
        write_all(fds[i], out, n); /* all of it sent before the signal, none read yet */
    }
    int status = stop_program(pid, SIGTERM);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    for (int i = 0; i < CLIENTS; i++) {
        char back[sizeof out], want[sizeof out];
        size_t n = 0;
        for (int j = 0; j < LINES; j++)
            n += (size_t)snprintf(want + n, sizeof want - n, "c%02d l%03d\n", i, j);
        read_exact_timeout(fds[i], back, n, 20000);
        CHECK(memcmp(back, want, n) == 0);
        CHECK(readable_within(fds[i], 20000) && read(fds[i], back, 1) == 0);
        close(fds[i]);
    }
}

static void second_signal_ends_the_process_at_once(void)
{
    pid_t pid;
    int port = start_echo(60000, &pid);
    int fd = tcp_connect_loopback(port);
    write_all(fd, "hi\n", 3);
    char b[3];
    read_exact_timeout(fd, b, 3, 20000);
    kill(pid, SIGTERM); /* graceful: our idle connection would hold it for a minute */
    CHECK(waitpid(pid, NULL, WNOHANG) == 0);
    usleep(50000);
    int status = stop_program(pid, SIGTERM);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
    close(fd);
}

/* ---- In-process, through the API ---- */

static int ended_with_ecanceled;

static void stuck_handler(weft_chan *c, void *arg)
{
    (void)c;
    (void)arg;
    if (weft_sleep(1000000) == -1 && errno == ECANCELED)
        ended_with_ecanceled++;
}

static void *idle_client(void *arg)
{
    weft_chan *c = weft_connect(arg, weft_now() + 10000);
    CHECK(c);
    size_t len;
    CHECK(weft_gets(c, &len) == NULL); /* nothing is ever sent; the server goes away */
    weft_close(c);
    return NULL;
}

static void stuck_handlers_are_cancelled_after_the_grace_period(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", weft_listener_port(l));
    weft_server_opts o = {.write_timeout_ms = 50};
    weft_server *s = weft_server_start_ex(l, stuck_handler, NULL, &o);
    weft_co *clients[3];
    for (int i = 0; i < 3; i++)
        CHECK((clients[i] = weft_spawn(idle_client, addr)));
    while (1) { /* until all three are being handled */
        weft_server_stats st;
        weft_server_get_stats(s, &st);
        if (st.active == 3)
            break;
        weft_yield();
    }
    CHECK(weft_server_shutdown(s, 50) == 0);
    CHECK(ended_with_ecanceled == 3);
    for (int i = 0; i < 3; i++)
        CHECK(weft_join(clients[i], NULL, -1) == 0);
    CHECK(weft_count() == 0);
}

static weft_server *self_stopping;

static void echo_or_quit(weft_chan *c, void *arg)
{
    (void)arg;
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len))) {
        if (strcmp(line, "quit") == 0)
            CHECK(weft_server_shutdown(self_stopping, 20) == 0); /* returns at once */
        CHECK(weft_putln(c, line, len) == 0);
    }
    CHECK(errno == ECANCELED || weft_eof(c));
}

static void *pipelining_client(void *arg)
{
    weft_chan *c = weft_connect(arg, weft_now() + 10000);
    CHECK(c && weft_chan_set_buffering(c, WEFT_BUF_FULL) == 0);
    /* Three lines in one write, the last one asking the server to stop, then silence. */
    CHECK(weft_puts(c, "one") == 0 && weft_puts(c, "quit") == 0 && weft_puts(c, "three") == 0);
    CHECK(weft_flush(c) == 0);
    size_t len;
    const char *line;
    CHECK((line = weft_gets(c, &len)) && strcmp(line, "one") == 0);
    CHECK((line = weft_gets(c, &len)) && strcmp(line, "quit") == 0);
    CHECK((line = weft_gets(c, &len)) && strcmp(line, "three") == 0);
    CHECK(weft_gets(c, &len) == NULL && weft_eof(c)); /* then the server closes */
    weft_close(c);
    return NULL;
}

static void a_handler_can_shut_its_server_down_and_lines_are_answered(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", weft_listener_port(l));
    self_stopping = weft_server_start(l, echo_or_quit, NULL);
    CHECK(self_stopping);
    weft_co *a = weft_spawn(pipelining_client, addr);
    CHECK(a);
    CHECK(weft_run() == 0); /* everything ends: the server shut itself down */
    CHECK(weft_join(a, NULL, -1) == 0);
    CHECK(weft_connect(addr, weft_now() + 5000) == NULL && errno == ECONNREFUSED);
}

/* ---- Clients waiting in the listen backlog ---- */

/* A server process of nthreads threads, each with its own SO_REUSEPORT listener on one port
 * and a server that handles one client at a time (max_conns = 1), so that further clients
 * wait in the kernel's backlog; SIGTERM shuts them all down with a 300 ms grace. */
static pthread_barrier_t backlog_ready;
static int backlog_port;

static void echo_lines(weft_chan *c, void *arg)
{
    (void)arg;
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len)))
        if (weft_putln(c, line, len) != 0)
            return;
}

static int serve_one_at_a_time(weft_listener *l)
{
    weft_server_opts o = {.max_conns = 1};
    weft_server *s = weft_server_start_ex(l, echo_lines, NULL, &o);
    CHECK(s && weft_server_stop_on_signals(s, 300) == 0);
    pthread_barrier_wait(&backlog_ready);
    return weft_run();
}

static void *backlog_thread(void *arg)
{
    (void)arg;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", backlog_port);
    weft_listener *l = weft_listen_ex(addr, 0, WEFT_LISTEN_REUSEPORT);
    CHECK(l);
    return (void *)(intptr_t)serve_one_at_a_time(l);
}

static pid_t start_backlog_server(int nthreads, int *port)
{
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        weft_listener *l = weft_listen_ex("127.0.0.1:0", 0, WEFT_LISTEN_REUSEPORT);
        CHECK(l);
        backlog_port = weft_listener_port(l);
        pthread_barrier_init(&backlog_ready, NULL, (unsigned)nthreads);
        pthread_t t[4];
        for (int i = 1; i < nthreads; i++)
            CHECK(pthread_create(&t[i], NULL, backlog_thread, NULL) == 0);
        weft_server_opts o = {.max_conns = 1};
        weft_server *s = weft_server_start_ex(l, echo_lines, NULL, &o);
        CHECK(s && weft_server_stop_on_signals(s, 300) == 0);
        /* Tell the port only once every thread's server stops on signals. */
        pthread_barrier_wait(&backlog_ready);
        CHECK(write(p[1], &backlog_port, sizeof backlog_port) == sizeof backlog_port);
        close(p[1]);
        int rc = weft_run();
        for (int i = 1; i < nthreads; i++) {
            void *r;
            CHECK(pthread_join(t[i], &r) == 0);
            rc |= (int)(intptr_t)r;
        }
        _exit(rc == 0 ? 0 : 1);
    }
    close(p[1]);
    CHECK(readable_within(p[0], 20000) && read(p[0], port, sizeof *port) == sizeof *port);
    close(p[0]);
    return pid;
}

static void expect_line_then_eof(int fd, const char *line)
{
    char buf[64];
    size_t n = strlen(line);
    read_exact_timeout(fd, buf, n + 1, 20000);
    CHECK(memcmp(buf, line, n) == 0 && buf[n] == '\n');
    CHECK(readable_within(fd, 20000) && read(fd, buf, 1) == 0); /* EOF, not a reset */
}

static void backlog_clients_are_answered_at_shutdown(void)
{
    /* The audit's case: one thread; a is served, b waits in the backlog with a line sent. */
    int port;
    pid_t pid = start_backlog_server(1, &port);
    int a = tcp_connect_loopback(port);
    char buf[64];
    ask_line(a, "first", buf, sizeof buf, 20000);
    CHECK(strcmp(buf, "first") == 0);
    int b = tcp_connect_loopback(port); /* connected in the kernel, not accepted */
    write_all(b, "second\n", 7);
    CHECK(!readable_within(b, 100)); /* not served yet: it waits for a's slot */
    kill(pid, SIGTERM);
    CHECK(readable_within(a, 20000) && read(a, buf, 1) == 0); /* a: end of file */
    expect_line_then_eof(b, "second");
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(a);
    close(b);

    /* Two threads, each with its own listener and backlog (as weft_serve_threads has). */
    pid = start_backlog_server(2, &port);
    enum { N = 12 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = tcp_connect_loopback(port);
        char line[16];
        int n = snprintf(line, sizeof line, "client %d\n", i);
        write_all(fds[i], line, (size_t)n);
    }
    usleep(100 * 1000); /* the first of each thread are being served, the rest wait */
    kill(pid, SIGTERM);
    for (int i = 0; i < N; i++) {
        char line[16];
        snprintf(line, sizeof line, "client %d", i);
        expect_line_then_eof(fds[i], line);
        close(fds[i]);
    }
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

const struct test tests[] = {
    {"sigterm_answers_every_received_line_and_exits_0", sigterm_answers_every_received_line_and_exits_0, 0},
    {"second_signal_ends_the_process_at_once", second_signal_ends_the_process_at_once, 0},
    {"stuck_handlers_are_cancelled_after_the_grace_period", stuck_handlers_are_cancelled_after_the_grace_period, 0},
    {"a_handler_can_shut_its_server_down_and_lines_are_answered", a_handler_can_shut_its_server_down_and_lines_are_answered, 0},
    {"backlog_clients_are_answered_at_shutdown", backlog_clients_are_answered_at_shutdown, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
