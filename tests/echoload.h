/* echoload: a verifying multi-connection client for line echo servers.
 *
 * Opens `conns` connections at once and, on each, sends `lines` random lines and checks that
 * every byte comes back unchanged and in order. Lines hold random bytes of any value but
 * '\n' (NUL and '\r' are made more frequent on purpose, and some lines end in "\r\n"), each
 * followed by '\n'. When a connection's last line has been echoed it shuts down its sending
 * side and expects the server to close without sending anything more.
 *
 * Everything runs in the calling thread: one epoll loop, no threads, no signals (sends use
 * MSG_NOSIGNAL). The byte streams are a pure function of the seed and the connection index,
 * so a failing run can be repeated exactly. Memory: about 16 KiB per connection.
 */
#ifndef ECHOLOAD_H
#define ECHOLOAD_H

#include <stddef.h>

struct echoload_opts {
    const char *host;     /* "127.0.0.1" or "::1" (NULL: "127.0.0.1") */
    int port;
    int conns;            /* concurrent connections, e.g. 500 */
    int lines;            /* lines per connection, e.g. 200 */
    size_t max_len;       /* each line's length uniform random in [0, max_len] bytes, excluding '\n' */
    unsigned seed;        /* deterministic PRNG seed */
    int random_chunks;    /* nonzero: send each connection's byte stream in random-sized send() calls
                           * (1..16 KiB, a quarter of them 1..64 bytes), splitting lines anywhere */
    int pipeline;         /* max lines in flight per connection (sent but not yet fully echoed); 0 = unlimited */
    int timeout_ms;       /* whole-run bound; on expiry fail with a message (<= 0: 60000) */
};

struct echoload_result {
    long long lines_ok;   /* lines fully echoed and verified */
    long long bytes_out, bytes_in;
    int conns_failed;
    char error[256];      /* first failure, human readable ("" if none) */
};

/* Run the load. 0 if every byte on every connection was verified, -1 otherwise (see r->error). */
int echoload_run(const struct echoload_opts *o, struct echoload_result *r);

#endif
