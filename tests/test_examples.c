/* The seed's three servers, run as real processes and driven over loopback: the coroutine
 * echo serves 500 clients at once with every byte verified, echo-events passes the same
 * verification, echo-blocking really serves one client at a time, and all of them log like
 * the seed and echo a last line that has no newline. */
#include "harness.h"
#include "echoload.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t start_server(const char *prog, const char *host, int quiet, int *port,
                          int *stderr_fd)
{
    char *argv[] = {(char *)prog, "-p", "0", "-h", (char *)host, quiet ? "-q" : NULL, NULL};
    int out;
    pid_t pid = spawn_program(argv, &out, stderr_fd);
    *port = read_listen_port(out);
    close(out);
    return pid;
}

/* SIGTERM ends each server; the coroutine and event servers exit 0 on it. */
static void stop_server(pid_t pid, int expect_clean_exit)
{
    int status = stop_program(pid, SIGTERM);
    if (expect_clean_exit)
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void load(const char *host, int port, int conns, int lines, size_t max_len, int pipeline)
{
    struct echoload_opts o = {
        .host = host, .port = port, .conns = conns, .lines = lines, .max_len = max_len,
        .seed = 20261123u, .random_chunks = 1, .pipeline = pipeline, .timeout_ms = 500000,
    };
    struct echoload_result r;
    int rc = echoload_run(&o, &r);
    if (rc != 0)
        fprintf(stderr, "  echoload: %s\n", r.error);
    CHECK(rc == 0);
    CHECK(r.lines_ok == (long long)conns * lines && r.conns_failed == 0);
}

static void echo_serves_500_clients_every_byte_verified(void)
{
    int port;
    pid_t pid = start_server("examples/echo", "127.0.0.1", 1, &port, NULL);
    load("127.0.0.1", port, test_scale(500), 200, 8192, 0);
    stop_server(pid, 1);
}

static void echo_events_passes_the_same_verification(void)
{
    int port;
    pid_t pid = start_server("examples/echo-events", "127.0.0.1", 1, &port, NULL);
    load("127.0.0.1", port, test_scale(500), 200, 8192, 0);
    stop_server(pid, 1);
}

static void echo_pipelined_over_ipv6(void)
{
    int port;
    pid_t pid = start_server("examples/echo", "::1", 1, &port, NULL);
    load("::1", port, 1, test_scale(5000), 64, 16);
    load("::1", port, 50, 100, 0, 16); /* empty lines only */
    stop_server(pid, 1);
}

/* Every example prints an IPv6 address in brackets, as weft formats it, and refuses a port
 * past 65535 (exit 2) instead of listening on it modulo 65536. */
static void ipv6_addresses_in_brackets_and_ports_checked(void)
{
    static const char *progs[] = {"examples/echo", "examples/echo-events",
                                  "examples/echo-blocking", "examples/chat", NULL};
    for (int i = 0; progs[i]; i++) {
        char *argv[] = {(char *)progs[i], "-p", "0", "-h", "::1", "-q", NULL};
        int out;
        pid_t pid = spawn_program(argv, &out, NULL);
        char line[128];
        size_t n = 0;
        while (n < sizeof line - 1) {
            CHECK(readable_within(out, 30000));
            CHECK(read(out, line + n, 1) == 1);
            if (line[n] == '\n')
                break;
            n++;
        }
        line[n] = '\0';
        CHECK(strncmp(line, "listening on [::1]:", 19) == 0);
        close(out);
        stop_program(pid, SIGTERM);

        char *bad[] = {(char *)progs[i], "-p", "70000", "-q", NULL};
        pid = spawn_program(bad, &out, NULL);
        char buf[64];
        CHECK(readable_within(out, 30000) && read(out, buf, sizeof buf) == 0); /* no listening */
        close(out);
        int status = stop_program(pid, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2);
    }
}

static void ask(int fd, const char *line, size_t n)
{
    char back[128];
    write_all(fd, line, n);
    read_exact_timeout(fd, back, n, 20000);
    CHECK(memcmp(back, line, n) == 0);
}

static void echo_blocking_serves_one_client_at_a_time(void)
{
    int port;
    pid_t pid = start_server("examples/echo-blocking", "127.0.0.1", 1, &port, NULL);
    int a = tcp_connect_loopback(port);
    ask(a, "a1\n", 3); /* a is being served */
    int b = tcp_connect_loopback(port);
    write_all(b, "b1\n", 3);
    /* The server is inside a's handler: a is answered, b's line waits. Once a's answer is
     * back, the server is parked in a's next gets, so b's silence is certain, not a race. */
    ask(a, "a2\n", 3);
    CHECK(!readable_within(b, 200));
    close(a);
    char back[3];
    read_exact_timeout(b, back, 3, 20000); /* a left: now b is served */
    CHECK(memcmp(back, "b1\n", 3) == 0);
    ask(b, "b2\n", 3);
    close(b);
    stop_server(pid, 0);
}

/* Read everything until EOF (or reset) within timeout. */
static size_t read_to_eof(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        CHECK(readable_within(fd, 20000));
        ssize_t r = read(fd, buf + n, cap - n);
        if (r <= 0)
            return n;
        n += (size_t)r;
        CHECK(n < cap);
    }
}

static void check_logs_and_last_line(const char *prog, int clean_exit)
{
    int port, err;
    pid_t pid = start_server(prog, "127.0.0.1", 0, &port, &err);
    int fd = tcp_connect_loopback(port);
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    CHECK(getsockname(fd, (struct sockaddr *)&me, &len) == 0);
    write_all(fd, "first\nno newline at the end", 27);
    shutdown(fd, SHUT_WR);
    char buf[256];
    size_t n = read_to_eof(fd, buf, sizeof buf);
    CHECK(n == 28 && memcmp(buf, "first\nno newline at the end\n", 28) == 0);
    close(fd);
    stop_server(pid, clean_exit);
    char log[4096];
    size_t got = 0;
    ssize_t r;
    while ((r = read(err, log + got, sizeof log - 1 - got)) > 0)
        got += (size_t)r;
    log[got] = '\0';
    char want[128];
    snprintf(want, sizeof want, "(from 127.0.0.1:%u)\n", ntohs(me.sin_port));
    CHECK(strstr(log, "connect on ") && strstr(log, want));
    CHECK(strstr(log, "EOF on "));
    close(err);
}

static void all_three_log_like_the_seed_and_echo_a_last_partial_line(void)
{
    check_logs_and_last_line("examples/echo", 1);
    check_logs_and_last_line("examples/echo-events", 1);
    check_logs_and_last_line("examples/echo-blocking", 0);
}

static void overlong_line_costs_only_its_connection(const char *prog)
{
    int port;
    pid_t pid = start_server(prog, "127.0.0.1", 1, &port, NULL);
    int good = tcp_connect_loopback(port);
    int bad = tcp_connect_loopback(port);
    static char junk[256 * 1024];
    memset(junk, 'j', sizeof junk);
    /* The server stops reading and closes: our send may fail with a reset, that is fine. */
    for (size_t off = 0; off < sizeof junk;) {
        ssize_t w = send(bad, junk + off, sizeof junk - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    char buf[64];
    CHECK(readable_within(bad, 20000));
    CHECK(read(bad, buf, sizeof buf) <= 0); /* closed without an answer */
    ask(good, "still fine\n", 11);
    close(good);
    close(bad);
    stop_server(pid, 1);
}

static void overlong_lines_close_only_their_connection(void)
{
    overlong_line_costs_only_its_connection("examples/echo");
    overlong_line_costs_only_its_connection("examples/echo-events");
}

/* Every example built on weft writes a dump of its coroutines to stderr on SIGUSR1 (weft.h:
 * weft_dump_on_signal) and says so in its --help; the servers are asked while they listen. */
static void examples_dump_their_coroutines_on_sigusr1(void)
{
    static const char *servers[][7] = {
        {"examples/echo", "-p", "0", "-q", NULL},
        {"examples/echo-blocking", "-p", "0", "-q", NULL},
        {"examples/chat", "-p", "0", "-q", NULL},
        {"examples/kv", "-p", "0", "-q", NULL},
        {"examples/httpd", "-p", "0", "-q", "-r", "/"},
    };
    for (size_t i = 0; i < sizeof servers / sizeof servers[0]; i++) {
        int out, err;
        pid_t pid = spawn_program((char *const *)servers[i], &out, &err);
        read_listen_port(out);
        CHECK(kill(pid, SIGUSR1) == 0);
        char text[4096];
        size_t n = 0;
        while (n < sizeof text - 1 && !memmem(text, n, " turns, ", 8)) {
            if (!readable_within(err, 10000))
                fprintf(stderr, "  %s wrote no dump\n", servers[i][0]);
            CHECK(readable_within(err, 0));
            ssize_t r = read(err, text + n, sizeof text - 1 - n);
            CHECK(r > 0);
            n += (size_t)r;
        }
        text[n] = '\0';
        /* "weft: thread N, backend B, K coroutines", one line each, then the summary */
        CHECK(strstr(text, "weft: thread ") && strstr(text, " coroutines: "));
        CHECK(kill(pid, SIGKILL) == 0 && waitpid(pid, NULL, 0) == pid);
        close(out);
        close(err);
    }
    static const char *all[] = {"examples/echo", "examples/echo-blocking", "examples/chat",
                                "examples/client", "examples/kv", "examples/httpd"};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        char *argv[] = {(char *)all[i], "--help", NULL};
        int out, err;
        pid_t pid = spawn_program(argv, &out, &err);
        char text[8192];
        size_t n = 0;
        ssize_t r;
        while (n < sizeof text - 1 && readable_within(out, 10000) &&
               (r = read(out, text + n, sizeof text - 1 - n)) > 0)
            n += (size_t)r;
        while (n < sizeof text - 1 && readable_within(err, 10000) &&
               (r = read(err, text + n, sizeof text - 1 - n)) > 0)
            n += (size_t)r;
        text[n] = '\0';
        if (!strstr(text, "kill -USR1"))
            fprintf(stderr, "  %s --help does not mention kill -USR1\n", all[i]);
        CHECK(strstr(text, "kill -USR1"));
        CHECK(waitpid(pid, NULL, 0) == pid);
        close(out);
        close(err);
    }
}

const struct test tests[] = {
    {"echo_serves_500_clients_every_byte_verified", echo_serves_500_clients_every_byte_verified, 600},
    {"echo_events_passes_the_same_verification", echo_events_passes_the_same_verification, 600},
    {"echo_pipelined_over_ipv6", echo_pipelined_over_ipv6, 300},
    {"ipv6_addresses_in_brackets_and_ports_checked", ipv6_addresses_in_brackets_and_ports_checked, 0},
    {"echo_blocking_serves_one_client_at_a_time", echo_blocking_serves_one_client_at_a_time, 0},
    {"all_three_log_like_the_seed_and_echo_a_last_partial_line", all_three_log_like_the_seed_and_echo_a_last_partial_line, 0},
    {"overlong_lines_close_only_their_connection", overlong_lines_close_only_their_connection, 0},
    {"examples_dump_their_coroutines_on_sigusr1", examples_dump_their_coroutines_on_sigusr1, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
