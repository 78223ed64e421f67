/* Hostile clients against a weft echo server in another process: endless lines, slowloris,
 * clients that never read, connect/reset storms, half-closes, signals, no memory for stacks,
 * a connection limit. Each asserts that a well-behaved client is served meanwhile and that
 * the server's memory and descriptors stay bounded. Loopback only, bounded in count. */
#include "harness.h"
#include "servers.h"
#include "echoload.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void endless_line_is_refused_with_bounded_memory(void)
{
    struct test_server ts;
    test_server_start(&ts, NULL, 0);
    int good = tcp_connect_loopback(ts.port);
    /* Warm-up: one near-limit line, so buffers and pools exist before the baseline. */
    static char line[64 * 1024];
    memset(line, 'w', sizeof line - 1024);
    line[sizeof line - 1024] = '\0';
    expect_echo(good, line);
    long base = test_server_hwm_kib(&ts);

    int bad = tcp_connect_loopback(ts.port);
    static char chunk[1 << 20];
    memset(chunk, 'z', sizeof chunk);
    size_t sent = 0, limit = (size_t)test_scale(256) << 20;
    int rounds = 0;
    while (sent < limit) {
        ssize_t w = send(bad, chunk, sizeof chunk, MSG_NOSIGNAL);
        if (w <= 0)
            break; /* the server closed on us: EPIPE or ECONNRESET */
        sent += (size_t)w;
        if (++rounds % 16 == 0)
            expect_echo(good, "still served"); /* a good client, meanwhile */
    }
    CHECK(sent < limit); /* it was cut off long before 256 MiB */
    struct server_counts sc;
    test_server_counts(&ts, &sc);
    CHECK(sc.emsgsize == 1);
    long growth = test_server_hwm_kib(&ts) - base;
    fprintf(stderr, "  endless line: cut off after %zu KiB, server peak RSS +%ld KiB\n",
            sent / 1024, growth);
    CHECK(!memory_is_measurable() || growth < 2 * 64); /* under twice the 64 KiB line limit */
    expect_echo(good, "after");
    close(bad);
    close(good);
    test_server_stop(&ts);
}

static void slowloris_clients_are_dropped_at_the_idle_timeout(void)
{
    weft_server_opts o = {.idle_timeout_ms = 1500};
    struct test_server ts;
    test_server_start(&ts, &o, 0);
    int n = test_scale(2000);
    int *fds = calloc((size_t)n, sizeof *fds);
    CHECK(fds);
    for (int i = 0; i < n; i++)
        fds[i] = connect_nonblocking(ts.port);
    int good = tcp_connect_loopback(ts.port);
    /* One byte each every 500 ms, never a newline: each gets read, none completes a line. */
    int open_left = n;
    for (int round = 0; round < 40 && open_left > 0; round++) {
        for (int i = 0; i < n; i++) {
            if (fds[i] < 0)
                continue;
            if (closed_by_server(fds[i])) {
                close(fds[i]);
                fds[i] = -1;
                open_left--;
            } else {
                send(fds[i], "s", 1, MSG_NOSIGNAL);
            }
        }
        expect_echo(good, "not slow");
        usleep(500 * 1000);
    }
    CHECK(open_left == 0); /* all dropped, within 20 s for a 1.5 s timeout */
    struct server_counts sc;
    test_server_counts(&ts, &sc);
    CHECK(sc.etimedout == (unsigned long long)n);
    expect_echo(good, "last");
    close(good);
    free(fds);
    test_server_stop(&ts);
}

static void clients_that_never_read_cost_bounded_memory(void)
{
    weft_server_opts o = {.write_timeout_ms = 1000};
    struct test_server ts;
    test_server_start(&ts, &o, 0);
    int good = tcp_connect_loopback(ts.port);
    expect_echo(good, "warm");
    long base = test_server_hwm_kib(&ts);
    enum { N = 50 };
    int fds[N];
    size_t sent[N] = {0};
    size_t limit = (size_t)64 << 20;
    for (int i = 0; i < N; i++)
        fds[i] = connect_nonblocking(ts.port);
    static char lines[64 * 1024];
    for (size_t i = 0; i < sizeof lines; i++)
        lines[i] = (i % 100 == 99) ? '\n' : 'r';
    /* Push lines at every client and never read a byte, until the server gives up on them
     * (its writes time out) or 64 MiB went in. */
    int open_left = N;
    for (int round = 0; round < 2000 && open_left > 0; round++) {
        for (int i = 0; i < N; i++) {
            if (fds[i] < 0)
                continue;
            ssize_t w = send(fds[i], lines, sizeof lines, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0)
                sent[i] += (size_t)w;
            if ((w < 0 && errno != EAGAIN) || sent[i] >= limit) {
                close(fds[i]);
                fds[i] = -1;
                open_left--;
            }
        }
        if (round % 10 == 0)
            expect_echo(good, "reading fine");
        usleep(5000);
    }
    CHECK(open_left == 0);
    struct server_counts sc;
    test_server_counts(&ts, &sc);
    CHECK(sc.etimedout >= N - 1); /* dropped at the write timeout (one may hit 64 MiB first) */
    long growth = test_server_hwm_kib(&ts) - base;
    fprintf(stderr, "  %d non-reading clients: server peak RSS +%ld KiB\n", N, growth);
    /* Per client: 64 KiB write buffer + a read buffer of up to one 100-byte line's worth of
     * reads (4 KiB) + its stack's touched pages: far below 256 KiB each. */
    CHECK(!memory_is_measurable() || growth < N * 256);
    expect_echo(good, "done");
    close(good);
    test_server_stop(&ts);
}

static void connect_reset_storms_leak_nothing(void)
{
    struct test_server ts;
    test_server_start(&ts, NULL, 0);
    int good = tcp_connect_loopback(ts.port);
    /* Warm-up, then baseline: tables and pools have grown for 100 clients at once. */
    for (int round = 0; round < 2; round++) {
        int fds[100];
        for (int i = 0; i < 100; i++)
            fds[i] = tcp_connect_loopback(ts.port);
        for (int i = 0; i < 100; i++)
            expect_echo(fds[i], "warm");
        for (int i = 0; i < 100; i++)
            close(fds[i]);
    }
    struct server_counts sc;
    do {
        test_server_counts(&ts, &sc);
    } while (sc.active > 1 && usleep(10000) == 0);
    int base_fds = test_server_fds(&ts);
    long base_rss = test_server_rss_kib(&ts);

    int cycles = test_scale(10000);
    static const char *partial[] = {"", "half a li", "x", "a whole line\nand half"};
    for (int done = 0; done < cycles; done += 100) {
        int fds[100];
        for (int i = 0; i < 100; i++)
            fds[i] = tcp_connect_loopback(ts.port);
        for (int i = 0; i < 100; i++) {
            const char *p = partial[(done + i) % 4];
            if (*p)
                write_all(fds[i], p, strlen(p));
            struct linger lg = {1, 0}; /* close with a reset, mid-line */
            if ((done + i) % 2 == 0)
                setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(fds[i]);
        }
        expect_echo(good, "between storms");
    }
    for (int i = 0; i < 500; i++) { /* let every handler see its reset and end */
        test_server_counts(&ts, &sc);
        if (sc.active == 1)
            break;
        usleep(10000);
    }
    CHECK(sc.active == 1); /* only the good client */
    int fds_after = test_server_fds(&ts);
    long rss_after = test_server_rss_kib(&ts);
    fprintf(stderr, "  %d connect/reset cycles: fds %d -> %d, RSS %ld -> %ld KiB\n", cycles,
            base_fds, fds_after, base_rss, rss_after);
    CHECK(fds_after == base_fds);
    CHECK(!memory_is_measurable() || rss_after - base_rss < 1024);
    close(good);
    test_server_stop(&ts);
}

static void half_closed_clients_get_every_echo(void)
{
    struct test_server ts;
    test_server_start(&ts, NULL, 0);
    int fd = tcp_connect_loopback(ts.port);
    char out[1000 * 8];
    size_t n = 0;
    for (int i = 0; i < 1000; i++)
        n += (size_t)snprintf(out + n, sizeof out - n, "l%05d\n", i);
    write_all(fd, out, n);
    shutdown(fd, SHUT_WR); /* before reading a single echo */
    char back[sizeof out];
    read_exact_timeout(fd, back, n, 20000);
    CHECK(memcmp(back, out, n) == 0);
    CHECK(readable_within(fd, 20000) && read(fd, back, 1) == 0); /* then the server closes */
    close(fd);
    test_server_stop(&ts);
}

static void no_memory_for_a_stack_costs_only_that_connection(void)
{
    struct test_server ts;
    test_server_start(&ts, NULL, 3); /* the next 3 stack allocations fail with ENOMEM */
    int refused[3];
    for (int i = 0; i < 3; i++) {
        refused[i] = tcp_connect_loopback(ts.port);
        char b;
        CHECK(readable_within(refused[i], 20000) && read(refused[i], &b, 1) <= 0);
    }
    int fd = tcp_connect_loopback(ts.port); /* memory is back: served */
    expect_echo(fd, "served");
    struct server_counts sc;
    test_server_counts(&ts, &sc);
    CHECK(sc.spawn_errors == 3);
    for (int i = 0; i < 3; i++)
        close(refused[i]);
    close(fd);
    test_server_stop(&ts);
}

static void on_alarm(int sig)
{
    (void)sig;
}

/* In the server process: a SIGALRM every 200 us, without SA_RESTART, so every blocking system
 * call it makes is interrupted again and again. */
static void signal_storm(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGALRM, &sa, NULL) == 0);
    struct itimerval it = {{0, 200}, {0, 200}};
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
}

static void eintr_everywhere(void)
{
    struct test_server ts;
    test_server_child_setup = signal_storm;
    test_server_start(&ts, NULL, 0);
    struct echoload_opts o = {.host = "127.0.0.1", .port = ts.port, .conns = test_scale(100),
                              .lines = 100, .max_len = 4096, .seed = 7, .random_chunks = 1,
                              .timeout_ms = 120000};
    struct echoload_result r;
    int rc = echoload_run(&o, &r);
    if (rc != 0)
        fprintf(stderr, "  echoload: %s\n", r.error);
    CHECK(rc == 0 && r.lines_ok == (long long)o.conns * o.lines);
    test_server_stop(&ts);
}

static void connection_limit_queues_clients_in_the_backlog(void)
{
    weft_server_opts o = {.max_conns = 5};
    struct test_server ts;
    test_server_start(&ts, &o, 0);
    int fds[6];
    for (int i = 0; i < 5; i++) {
        fds[i] = tcp_connect_loopback(ts.port);
        expect_echo(fds[i], "in");
    }
    fds[5] = tcp_connect_loopback(ts.port);
    write_all(fds[5], "waiting\n", 8);
    CHECK(!readable_within(fds[5], 300)); /* the sixth waits, unanswered */
    expect_echo(fds[0], "the first five are served");
    close(fds[0]);
    char back[8];
    read_exact_timeout(fds[5], back, 8, 20000); /* a slot freed: now it is served */
    CHECK(memcmp(back, "waiting\n", 8) == 0);
    for (int i = 1; i < 6; i++)
        close(fds[i]);
    test_server_stop(&ts);
}

const struct test tests[] = {
    {"endless_line_is_refused_with_bounded_memory", endless_line_is_refused_with_bounded_memory, 300},
    {"slowloris_clients_are_dropped_at_the_idle_timeout", slowloris_clients_are_dropped_at_the_idle_timeout, 120},
    {"clients_that_never_read_cost_bounded_memory", clients_that_never_read_cost_bounded_memory, 120},
    {"connect_reset_storms_leak_nothing", connect_reset_storms_leak_nothing, 300},
    {"half_closed_clients_get_every_echo", half_closed_clients_get_every_echo, 0},
    {"no_memory_for_a_stack_costs_only_that_connection", no_memory_for_a_stack_costs_only_that_connection, 0},
    {"eintr_everywhere", eintr_everywhere, 300},
    {"connection_limit_queues_clients_in_the_backlog", connection_limit_queues_clients_in_the_backlog, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
