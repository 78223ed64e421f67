/* Helpers for the libweft_hook tests (test_hook*.c): a ticker coroutine that shows the thread
 * kept running while hooked calls were parked, a way to run the same scenario on a plain
 * thread (the kernel's own answer) and in a coroutine (the hook's), and servers the tests
 * start themselves on free loopback ports with their files in a temp dir. */
#ifndef WEFT_HOOK_SUPPORT_H
#define WEFT_HOOK_SUPPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <weft.h>

/* A coroutine that wakes every 10 ms and counts, until stopped. */
typedef struct ticker {
    volatile long ticks;
    volatile bool stop;
    weft_co *co;
} ticker;

void ticker_start(ticker *t);
/* Stop it and wait for it to end. */
void ticker_stop(ticker *t);

/* Run fn(arg) on a new thread that has no scheduler (plain blocking calls) and wait for it. */
void *run_on_plain_thread(void *(*fn)(void *), void *arg);
/* Run fn(arg) as the only coroutine of a scheduler on this thread, next to a ticker; *ticks
 * (if given) gets how often the ticker woke meanwhile. Returns fn's result. */
void *run_in_coroutine(void *(*fn)(void *), void *arg, long *ticks);

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int free_port(void);
/* A listening blocking TCP socket on 127.0.0.1 (port 0: any), its port in *port. */
int listen_loopback(int *port, int backlog);
/* A new directory under $TMPDIR or /tmp; rm -rf'd by remove_tree. */
void make_temp_dir(char *out, size_t cap);
void remove_tree(const char *dir);
/* Wait until something accepts TCP connections on 127.0.0.1:port (fails the test after
 * timeout_ms). */
void wait_port_open(int port, int timeout_ms);
/* Start argv (a path or a name on $PATH) with stdout and stderr to log (NULL: /dev/null); as
 * user (if given and we are root) instead of root. Returns its pid. */
pid_t start_process(char *const argv[], const char *log, const char *user);
/* (have_program: harness.h) */

#endif
