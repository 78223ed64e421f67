/* loadgen.h: what loadgen.c (plain connections, the phases, main), loadgen_tls.c (the same
 * over TLS, and the handshake mode) and loadgen_core.c (what both use) share. One thread: no
 * locks. */
#ifndef BENCH_LOADGEN_H
#define BENCH_LOADGEN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/types.h>

/* A connection's life; plain ones are C_OPEN from their connect to the end. */
enum { C_FREE, C_HANDSHAKE, C_OPEN, C_CLOSING };

struct conn {
    int fd;
    int state;
    int inflight;            /* lines started, not yet fully echoed */
    uint64_t sent;           /* stream bytes sent */
    uint64_t rcvd;           /* stream bytes received and verified */
    uint64_t limit;          /* send no byte at or past this offset */
    int64_t *ts;             /* ring of P send times of lines in flight */
    unsigned ts_head;        /* index of the oldest line in flight */
    int want_out;            /* output blocked: wait for EPOLLOUT */
    /* TLS */
    void *ssl;               /* SSL *, NULL for plain */
    size_t wretry;           /* a write said WANT_WRITE: the retry gives at least this many */
    int read_wants_out;      /* a read said WANT_WRITE: read again on EPOLLOUT */
    int64_t t_start;         /* when its connect began (handshake latency) */
};

extern struct loadgen {
    int port, nconns, depth, cpu;
    size_t size;
    double secs;
    pid_t server;
    int idle;
    int tls, handshakes, resume; /* --tls, -H, -R */
    int window;              /* TLS: handshakes in progress at once while opening */
    int ep;
    int sending;             /* 0 once draining */
    int measuring;
    char *pattern;           /* NPATTERN lines of size bytes */
    struct conn *c;
    int64_t *ts;             /* every connection's ring, nconns * depth */
    long long rt_measured;
    int64_t last_progress;
    /* latency histogram: log-linear, 64 sub-buckets per power of two, in ns */
    uint64_t hist[64 * 64];
    uint64_t hist_n;
    /* run_loop hands each event of connection ci here (plain or TLS) */
    void (*on_event)(int ci, uint32_t events, int64_t *nowp);
} g;

#define NPATTERN 61 /* distinct line contents (prime, so connections differ) */

#define STALL_NS (10LL * 1000000000LL)

void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
int64_t now_ns(void);
void hist_add(int64_t ns);
double percentile_us(double q);
/* The server's CPU seconds (utime + stime) so far. */
double server_cpu(void);

/* A connected TCP socket to the server (blocking connect, with retries), non-blocking after. */
int tcp_connect(int ci);
/* Where the window lets connection ci's stream go now (== c->sent: nothing to send). */
uint64_t window_end(const struct conn *c);
/* w more bytes of ci's stream went out at now: time-stamp the lines they started. */
void note_sent(int ci, size_t w, int64_t now);
/* Verify r received bytes of ci's stream; count and time the lines they complete. */
void consume(int ci, const char *buf, size_t r, int64_t now);
/* The bytes of ci's stream from off: a pointer and how many follow in this line. */
const char *stream_at(int ci, uint64_t off, size_t *avail);

/* Run the event loop until done() (every turn) or the deadline (0: none). */
void run_loop(int (*done)(void), int64_t deadline);

/* loadgen_tls.c (without OpenSSL at build time each fails with a message) */
void tls_init(void);                           /* the client context */
void tls_open_all(void);                       /* connect + handshake every connection */
void tls_event(int ci, uint32_t events, int64_t *nowp);
void tls_pump_out(int ci, int64_t now);
void tls_close_all(void);                      /* close_notify and close */
void tls_handshakes(void);                     /* -H: measure, print, exit */

#endif
