/* The test harness: each test file lists its tests in `tests[]`; the harness runs each one
 * in a child process (so a crash, a hang or a leak fails that test alone), bounded by an
 * alarm, and prints "<file>: N passed, N failed". */
#ifndef WEFT_TEST_HARNESS_H
#define WEFT_TEST_HARNESS_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

struct test {
    const char *name;
    void (*fn)(void);
    int timeout_s; /* 0: 60 seconds */
};

extern const struct test tests[];
extern const size_t tests_count;

/* Optional: defined by a test program (or its support code), run once in the harness
 * process after every test has run, to remove what the tests shared (a temp dir). */
void test_teardown(void) __attribute__((weak));

/* Fail the running test with a message naming the place. */
_Noreturn void check_failed(const char *expr, const char *file, int line);
#define CHECK(cond) ((cond) ? (void)0 : check_failed(#cond, __FILE__, __LINE__))

/* Start a built program (examples/echo, ...) with its stdout on a pipe, through $WEFT_RUN
 * (e.g. qemu) when set. argv[0] is relative to the build directory. Its stderr goes to a
 * second pipe if stderr_fd is given, else to /dev/null. Returns its pid. */
pid_t spawn_program(char *const argv[], int *stdout_fd, int *stderr_fd);
/* Read the "listening on HOST:PORT" line a server prints, return PORT (fails the test). */
int read_listen_port(int stdout_fd);
/* Send sig to pid and reap it; returns the wait status. */
int stop_program(pid_t pid, int sig);
/* Connect a plain blocking TCP socket to 127.0.0.1:port (fails the test on error). */
int tcp_connect_loopback(int port);
/* Start a non-blocking connect to 127.0.0.1:port (fails the test unless it is under way). */
int connect_nonblocking(int port);
/* True once the peer has closed fd (EOF or reset); never blocks. What it sent before is read
 * and dropped. */
int closed_by_server(int fd);
/* Write all of buf or fail the test. */
void write_all(int fd, const void *buf, size_t n);
/* Read exactly n bytes within timeout_ms or fail the test. */
void read_exact_timeout(int fd, void *buf, size_t n, int timeout_ms);
/* Send q and a newline on fd, then read one reply line into answer (without its newline,
 * NUL-terminated, at most cap - 1 bytes), each byte within timeout_ms, or fail the test. */
void ask_line(int fd, const char *q, char *answer, size_t cap, int timeout_ms);
/* Nonzero if fd has data to read within timeout_ms. */
int readable_within(int fd, int timeout_ms);
/* n, or a tenth of it (at least 1) when WEFT_TEST_LIGHT=1: for slow runners (valgrind). */
int test_scale(int n);
/* Nonzero when resident memory measures weft: a plain native build (not under a sanitizer's
 * shadow memory and quarantine, nor an emulator or valgrind via $WEFT_RUN). Memory bounds are
 * asserted only then; the figures are printed everywhere. */
int memory_is_measurable(void);
/* A field of /proc/PID/status in kB ("VmRSS:", "VmHWM:"); fails the test if it is missing. */
long proc_status_kib(pid_t pid, const char *field);
/* Nonzero when running under valgrind (which emulates some faults, guard pages among them,
 * differently from the hardware). */
int under_valgrind(void);
/* Nonzero when the tests run under qemu-user ($WEFT_RUN names it). */
int under_qemu(void);
/* Count this process's open file descriptors. */
int count_open_fds(void);
/* Whether an executable of this name is on $PATH (or, for a path, exists). */
int have_program(const char *name);

#endif
