/* run.h: what the benchmark drivers (echo_bench, tls_bench, kv_bench, httpd_bench) share: a server started in its
 * own process pinned to CPU 0 and stopped by PID, a run of bench/loadgen and its key=value
 * line, a watchdog that kills both, medians and the number formats of the tables. */
#ifndef BENCH_RUN_H
#define BENCH_RUN_H

#include <stddef.h>
#include <sys/types.h>

/* The driver's name, for messages ("echo_bench"). */
extern const char *run_prog;

/* End the run after seconds with "FAIL: watchdog expired", killing the live server and
 * loadgen by PID, after calling cleanup (NULL: none; it runs in a signal handler, so it may
 * only make async-signal-safe calls: unlink, rmdir). Also ignores SIGPIPE. */
void run_watchdog(unsigned seconds, void (*cleanup)(void));

/* Start argv (argv[0] the path) pinned to CPU 0, with WEFT_BACKEND=backend if not NULL, and
 * wait up to 10 s for its "listening on HOST:PORT" line. Its pid, *port and *outfd (its
 * stdout, for run_server_stop), or -1 with a message naming it by name. */
pid_t run_server_start(const char *name, char *const argv[], const char *backend, int *port,
                       int *outfd);
/* SIGTERM the server, then SIGKILL after 3 s. 0 if it ended normally (exit or our signal),
 * -1 with a message if it crashed or had ended before we asked. */
int run_server_stop(const char *name, pid_t pid, int outfd);

/* Run loadgen (args[0] its path) to the end; its stdout in out. 0 if it said status=OK. */
int run_loadgen(char *const args[], char *out, size_t n);
/* The number after key ("rt_per_s=") in out, or 0. */
double run_field(const char *out, const char *key);

/* Pin the calling process (and what it execs) to cpu. */
void run_pin(int cpu);
/* Whether prog is on PATH. */
int run_have(const char *prog);
/* A loopback port free now (bound and let go), or -1. */
int run_free_port(void);
/* A connected TCP socket to 127.0.0.1:port, or -1. */
int run_connect_port(int port);

/* The median of v[0, n) (sorts v); 0 if n == 0. */
double median(double *v, int n);
/* v as "1.23M", "45.6k" or "789". */
void fmt_num(char *b, size_t n, double v);
/* x / best with two decimals, or "-" when !ok or best <= 0. */
void ratio(char *b, size_t n, double x, double best, int ok);

#endif
