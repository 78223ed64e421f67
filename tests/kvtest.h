/* Helpers for the tests of examples/kv: start kv and redis-server on free loopback ports and
 * stop them by PID, talk RESP over plain sockets (one reply at a time, whole), and run
 * redis-cli. Everything fails the running test (CHECK) rather than returning errors. */
#ifndef WEFT_TEST_KVTEST_H
#define WEFT_TEST_KVTEST_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct kv_proc {
    pid_t pid;
    int port;
    char dir[64]; /* redis-server's temporary directory ("" for kv) */
};

/* Start build/examples/kv -p 0 -q with the extra arguments (NULL-terminated). */
void kv_start(struct kv_proc *p, const char *const *extra);
/* Start redis-server --save '' --appendonly no --port P --bind 127.0.0.1 in a temp dir. */
void redis_start(struct kv_proc *p);
/* SIGTERM, reap, and check a clean exit (status 0) for kv; remove redis-server's dir. */
void kv_stop(struct kv_proc *p);

/* A RESP connection with its own read buffer. */
struct resp_conn {
    int fd;
    char *buf;
    size_t len, cap;
};
void resp_open(struct resp_conn *c, int port);
void resp_close(struct resp_conn *c);
/* The encoding of a request: *N then $LEN arguments (lens[i] bytes each; lens NULL: strlen). */
size_t resp_encode(char *out, size_t cap, int argc, const char *const *argv, const size_t *lens);
/* Send a request built from NUL-terminated strings (NULL-terminated list). */
void resp_send(struct resp_conn *c, const char *arg0, ...);
/* Read one whole reply; returns a malloc'd copy of its bytes (NUL-terminated), *n its
 * length. Fails the test if none comes within timeout_ms. */
char *resp_read(struct resp_conn *c, size_t *n, int timeout_ms);
/* resp_send + resp_read, and check the reply equals `want` exactly. */
void resp_expect(struct resp_conn *c, const char *want, const char *arg0, ...);
/* Length of the complete reply at the start of p[0..n): 0 if incomplete, -1 if malformed. */
long resp_complete(const char *p, size_t n);
/* Whether the server closed the connection (end of file or reset) within timeout_ms;
 * whatever it sent first is discarded. */
bool resp_closed(struct resp_conn *c, int timeout_ms);

/* Run redis-cli -p port ARGS... with input (or nothing) on its standard input; check it
 * exits 0 and return its standard output (malloc'd). */
char *redis_cli(int port, const char *const *args, const char *input);

#endif
