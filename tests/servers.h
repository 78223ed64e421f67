/* An in-process weft echo server in a child process, for tests that play hostile clients
 * against it and watch its memory and descriptors from outside. */
#ifndef WEFT_TEST_SERVERS_H
#define WEFT_TEST_SERVERS_H

#include <sys/types.h>
#include <weft.h>

struct test_server {
    pid_t pid;
    int port;
};

/* Fork a server with opts (NULL: defaults). Its handler echoes lines, answers the line
 * "stats" with "accepted active spawn_errors limit_waits emsgsize etimedout ecanceled
 * other tls_failures" (how handlers ended), and "fds" with its open descriptor count.
 * stack_failures: that many of the first stack allocations after warm-up fail with ENOMEM. */
void test_server_start(struct test_server *ts, const weft_server_opts *opts,
                       unsigned stack_failures);
/* If set, run in the server process before it serves (e.g. to install signal timers). */
extern void (*test_server_child_setup)(void);
/* How the questions below reach the server (a TLS server needs a TLS client): send q and a
 * newline to port, read the answer line. NULL: a plain TCP connection. */
extern void (*test_server_asker)(int port, const char *q, char *answer, size_t cap);
/* Stop it with SIGTERM (a graceful shutdown with no grace) and check it exited 0. */
void test_server_stop(struct test_server *ts);
/* The server's counters, asked over a fresh connection. */
struct server_counts {
    unsigned long long accepted, active, spawn_errors, limit_waits;
    unsigned long long emsgsize, etimedout, ecanceled, other;
    unsigned long long tls_failures;
};
void test_server_counts(struct test_server *ts, struct server_counts *out);
/* Its open descriptors, from /proc, excluding the one asking connection. */
int test_server_fds(struct test_server *ts);
/* Its resident and peak resident memory in KiB, from /proc/PID/status. */
long test_server_rss_kib(struct test_server *ts);
long test_server_hwm_kib(struct test_server *ts);
/* Send line + '\n' on a blocking socket and check the echo comes back. */
void expect_echo(int fd, const char *line);

#endif
