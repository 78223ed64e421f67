/* Channels over real loopback TCP connections: lines at every split point, partial last
 * line, NUL bytes, CRLF, long lines and EMSGSIZE, buffering modes, bounded write buffer,
 * timeouts, close under a waiter, EPIPE, and the same calls blocking outside coroutines. */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <weft.h>

#include "../src/internal.h" /* chan_stop_input, what a graceful shutdown does to a channel */

/* A connected TCP pair on 127.0.0.1: sv[0] is wrapped in a channel by the tests, sv[1] is
 * driven with plain blocking calls. */
static void tcp_pair(int sv[2])
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    CHECK(l >= 0 && bind(l, (struct sockaddr *)&sin, sizeof sin) == 0 && listen(l, 1) == 0);
    CHECK(getsockname(l, (struct sockaddr *)&sin, &len) == 0);
    sv[1] = tcp_connect_loopback(ntohs(sin.sin_port));
    sv[0] = accept(l, NULL, NULL);
    CHECK(sv[0] >= 0);
    close(l);
}

static size_t max_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (size_t)ru.ru_maxrss;
}

/* ---- Line splitting ---- */

/* Lines with an empty one, a CRLF, NULs, a lone CR, and a last line without newline. */
static const char text[] = "alpha\n\nbe\0ta\r\n\0\0\ngamma\rdelta\nlast";
#define TEXT_LEN (sizeof text - 1)
static const struct { const char *s; size_t n; } want[] = {
    {"alpha", 5}, {"", 0}, {"be\0ta\r", 6}, {"\0\0", 2}, {"gamma\rdelta", 11}, {"last", 4},
};

struct split {
    int fd;
    size_t at;
};

static void *write_in_two(void *arg)
{
    struct split *sp = arg;
    write_all(sp->fd, text, sp->at);
    for (int i = 0; i < 3; i++)
        weft_yield(); /* the reader consumes the first part and parks */
    write_all(sp->fd, text + sp->at, TEXT_LEN - sp->at);
    shutdown(sp->fd, SHUT_WR);
    return NULL;
}

static void read_all_lines(weft_chan *c)
{
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        size_t len = 99;
        const char *line = weft_gets(c, &len);
        CHECK(line != NULL);
        CHECK(len == want[i].n && memcmp(line, want[i].s, len) == 0);
        CHECK(line[len] == '\0');
    }
    size_t len;
    errno = EINVAL;
    CHECK(weft_gets(c, &len) == NULL && errno == 0 && weft_eof(c));
    CHECK(weft_gets(c, &len) == NULL && errno == 0); /* and stays at EOF */
}

static void *read_lines(void *arg)
{
    read_all_lines(arg);
    return NULL;
}

static void lines_split_at_every_byte_boundary(void)
{
    for (size_t at = 0; at <= TEXT_LEN; at++) {
        int sv[2];
        tcp_pair(sv);
        weft_chan *c = weft_chan_open(sv[0]);
        CHECK(c);
        struct split sp = {sv[1], at};
        weft_co *r = weft_spawn(read_lines, c);
        weft_co *w = weft_spawn(write_in_two, &sp);
        CHECK(r && w);
        CHECK(weft_join(r, NULL, -1) == 0 && weft_join(w, NULL, -1) == 0);
        CHECK(weft_close(c) == 0);
        close(sv[1]);
    }
}

static void *write_bytewise(void *arg)
{
    int fd = *(int *)arg;
    for (size_t i = 0; i < TEXT_LEN; i++) {
        write_all(fd, text + i, 1);
        weft_yield();
    }
    shutdown(fd, SHUT_WR);
    return NULL;
}

static void lines_arriving_one_byte_at_a_time(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    weft_co *r = weft_spawn(read_lines, c);
    weft_co *w = weft_spawn(write_bytewise, &sv[1]);
    CHECK(c && r && w);
    CHECK(weft_join(r, NULL, -1) == 0 && weft_join(w, NULL, -1) == 0);
    weft_close(c);
    close(sv[1]);
}

static void gets_blocks_outside_a_coroutine(void)
{
    int sv[2];
    tcp_pair(sv);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) { /* a separate writer, pausing mid-line so the reader really blocks */
        write_all(sv[1], text, 3);
        usleep(50000);
        write_all(sv[1], text + 3, TEXT_LEN - 3);
        _exit(0);
    }
    close(sv[1]);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c && weft_self() == NULL);
    read_all_lines(c);
    CHECK(weft_close(c) == 0);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- Long lines ---- */

/* write_all for coroutines: parks instead of blocking the thread when the socket is full,
 * so the reader on the other end gets to run. */
static void co_write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) {
            CHECK(weft_wait_fd(fd, WEFT_WRITABLE, -1) == 0);
            continue;
        }
        CHECK(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

static void *send_lines_around_limit(void *arg)
{
    int fd = *(int *)arg;
    static char big[300 * 1024];
    memset(big, 'x', sizeof big);
    big[1000] = '\n';                 /* exactly the limit: accepted */
    big[1000 + 1 + 1001] = '\n';      /* one more: EMSGSIZE */
    co_write_all(fd, big, 1000 + 1 + 1001 + 1);
    co_write_all(fd, "next\n", 5);       /* read normally after the error */
    big[1000] = big[1000 + 1 + 1001] = 'x';
    big[sizeof big - 1] = '\n';       /* 300 KiB with no newline until the end */
    co_write_all(fd, big, sizeof big);
    co_write_all(fd, "after\nunfinished-and-too-long", 29);
    for (int i = 0; i < 2000; i++)
        co_write_all(fd, "yyyyyyyyyy", 10);
    shutdown(fd, SHUT_WR);
    return NULL;
}

static void *read_lines_around_limit(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    const char *line;
    CHECK(weft_chan_set_maxline(c, 1000) == 0);
    CHECK((line = weft_gets(c, &len)) && len == 1000);
    CHECK(weft_gets(c, &len) == NULL && errno == EMSGSIZE);
    CHECK((line = weft_gets(c, &len)) && len == 4 && memcmp(line, "next", 4) == 0);
    CHECK(weft_gets(c, &len) == NULL && errno == EMSGSIZE);
    CHECK((line = weft_gets(c, &len)) && len == 5 && memcmp(line, "after", 5) == 0);
    CHECK(weft_gets(c, &len) == NULL && errno == EMSGSIZE); /* the unterminated tail */
    CHECK(weft_gets(c, &len) == NULL && errno == 0 && weft_eof(c));
    return NULL;
}

static void overlong_lines_fail_with_emsgsize_and_reading_resumes(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    weft_co *r = weft_spawn(read_lines_around_limit, c);
    weft_co *w = weft_spawn(send_lines_around_limit, &sv[1]);
    CHECK(c && r && w);
    CHECK(weft_join(w, NULL, -1) == 0 && weft_join(r, NULL, -1) == 0);
    weft_close(c);
    close(sv[1]);
}

static void *flood_without_newline(void *arg)
{
    int fd = *(int *)arg;
    static char chunk[64 * 1024];
    memset(chunk, 'z', sizeof chunk);
    for (int i = 0; i < 32 * 16; i++) /* 32 MiB */
        co_write_all(fd, chunk, sizeof chunk);
    co_write_all(fd, "\nfine\n", 6);
    shutdown(fd, SHUT_WR);
    return NULL;
}

static void *read_after_flood(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    const char *line;
    CHECK(weft_gets(c, &len) == NULL && errno == EMSGSIZE);
    CHECK((line = weft_gets(c, &len)) && len == 4 && memcmp(line, "fine", 4) == 0);
    return NULL;
}

static void endless_line_keeps_memory_bounded(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    size_t before = max_rss_kib();
    weft_co *r = weft_spawn(read_after_flood, c);
    weft_co *w = weft_spawn(flood_without_newline, &sv[1]);
    CHECK(c && r && w);
    CHECK(weft_join(w, NULL, -1) == 0 && weft_join(r, NULL, -1) == 0);
    /* 32 MiB went through; the default 64 KiB limit keeps the peak far below that. */
    CHECK(!memory_is_measurable() || max_rss_kib() - before < 4096);
    weft_close(c);
    close(sv[1]);
}

/* ---- Reads ---- */

static void read_and_read_exact(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c);
    write_all(sv[1], "line one\n0123456789abcdef", 25);
    size_t len;
    const char *l = weft_gets(c, &len);
    CHECK(l && len == 8);
    char buf[64];
    CHECK(weft_read(c, buf, 4) == 4 && memcmp(buf, "0123", 4) == 0); /* from the buffer */
    CHECK(weft_read_exact(c, buf, 6) == 6 && memcmp(buf, "456789", 6) == 0);
    write_all(sv[1], "ghij", 4);
    shutdown(sv[1], SHUT_WR);
    CHECK(weft_read_exact(c, buf, 20) == 10 && memcmp(buf, "abcdefghij", 10) == 0);
    CHECK(weft_eof(c));
    CHECK(weft_read(c, buf, sizeof buf) == 0);
    weft_close(c);
    close(sv[1]);
}

/* A read_exact that times out or is cancelled midway keeps what it had read for the next
 * read: small reads (through the buffer) and large ones (straight into the caller's memory). */
static int exact_peer;
static size_t exact_n;

static void *read_exact_after_timeout(void *arg)
{
    weft_chan *c = arg;
    char *buf = malloc(exact_n), *pattern = malloc(exact_n);
    CHECK(buf && pattern);
    for (size_t i = 0; i < exact_n; i++)
        pattern[i] = (char)('a' + i % 23);
    CHECK(weft_read_exact(c, buf, exact_n) == -1 && errno == ETIMEDOUT); /* half came */
    write_all(exact_peer, pattern + exact_n / 2, exact_n - exact_n / 2);
    CHECK(weft_read_exact(c, buf, exact_n) == (ssize_t)exact_n);
    CHECK(memcmp(buf, pattern, exact_n) == 0);
    /* Cancelled midway: the same. */
    write_all(exact_peer, pattern, exact_n / 2);
    CHECK(weft_read(c, buf, 1) == 1 && buf[0] == pattern[0]);
    free(buf);
    free(pattern);
    return NULL;
}

static void *cancel_after(void *arg)
{
    CHECK(weft_sleep(50) == 0);
    weft_cancel(arg);
    return NULL;
}

static void *read_exact_cancelled(void *arg)
{
    weft_chan *c = arg;
    char *buf = malloc(exact_n);
    CHECK(buf);
    CHECK(weft_read_exact(c, buf, exact_n) == -1 && errno == ECANCELED);
    free(buf);
    return NULL;
}

static void read_exact_keeps_its_bytes_on_a_timeout(void)
{
    size_t sizes[] = {8, 64 * 1024};
    for (int k = 0; k < 2; k++) {
        exact_n = sizes[k];
        int sv[2];
        tcp_pair(sv);
        exact_peer = sv[1];
        weft_chan *c = weft_chan_open(sv[0]);
        CHECK(c && weft_chan_set_timeouts(c, 100, -1) == 0);
        char *pattern = malloc(exact_n);
        CHECK(pattern);
        for (size_t i = 0; i < exact_n; i++)
            pattern[i] = (char)('a' + i % 23);
        write_all(sv[1], pattern, exact_n / 2);
        weft_co *r = weft_spawn(read_exact_after_timeout, c);
        CHECK(r && weft_join(r, NULL, -1) == 0);
        /* Cancelled: what it read goes back too (pattern[1..n/2) is buffered now). */
        CHECK(weft_chan_set_timeouts(c, -1, -1) == 0);
        weft_co *x = weft_spawn(read_exact_cancelled, c);
        weft_co *k2 = weft_spawn(cancel_after, x);
        CHECK(x && k2 && weft_join(x, NULL, -1) == 0 && weft_join(k2, NULL, -1) == 0);
        char *buf = malloc(exact_n);
        CHECK(buf);
        write_all(sv[1], pattern + exact_n / 2, exact_n - exact_n / 2);
        CHECK(weft_read_exact(c, buf, exact_n - 1) == (ssize_t)(exact_n - 1)); /* outside */
        CHECK(memcmp(buf, pattern + 1, exact_n - 1) == 0);
        free(buf);
        free(pattern);
        weft_close(c);
        close(sv[1]);
    }
}

/* weft_chan_open leaves the caller's descriptor flags alone but O_NONBLOCK: a wrapped
 * stdout-like descriptor stays open across exec, so a child started meanwhile can use it. */
static void chan_open_keeps_the_callers_fd_flags(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(!(fcntl(p[1], F_GETFD) & FD_CLOEXEC));
    weft_chan *c = weft_chan_open(p[1]);
    CHECK(c);
    CHECK(!(fcntl(p[1], F_GETFD) & FD_CLOEXEC));
    CHECK(fcntl(p[1], F_GETFL) & O_NONBLOCK);
    /* A child writes through the inherited descriptor, as system("echo hi") would. */
    char cmd[64];
    snprintf(cmd, sizeof cmd, "echo hi >&%d", p[1]);
    CHECK(system(cmd) == 0);
    char buf[8];
    read_exact_timeout(p[0], buf, 3, 10000);
    CHECK(memcmp(buf, "hi\n", 3) == 0);
    CHECK(weft_close(c) == 0);
    close(p[0]);
    /* A descriptor that was close-on-exec stays so. */
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    c = weft_chan_open(p[1]);
    CHECK(c && (fcntl(p[1], F_GETFD) & FD_CLOEXEC));
    CHECK(weft_close(c) == 0);
    close(p[0]);
}

/* ---- Output and buffering ---- */

static int peer_has_data(int fd)
{
    return readable_within(fd, 0);
}

static void buffering_modes(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    char buf[64];
    CHECK(c);
    /* line (sockets' default): held until a newline */
    CHECK(weft_write(c, "abc", 3) == 3);
    CHECK(!readable_within(sv[1], 50));
    CHECK(weft_write(c, "d\nef", 4) == 4);
    read_exact_timeout(sv[1], buf, 7, 5000);
    CHECK(memcmp(buf, "abcd\nef", 7) == 0);
    /* full: held until flush */
    CHECK(weft_chan_set_buffering(c, WEFT_BUF_FULL) == 0);
    CHECK(weft_puts(c, "one") == 0 && weft_printf(c, "%d-%s\n", 2, "two") == 6);
    CHECK(!readable_within(sv[1], 50));
    CHECK(weft_flush(c) == 0);
    read_exact_timeout(sv[1], buf, 10, 5000);
    CHECK(memcmp(buf, "one\n2-two\n", 10) == 0);
    /* none: out at once */
    CHECK(weft_chan_set_buffering(c, WEFT_BUF_NONE) == 0);
    CHECK(weft_write(c, "x", 1) == 1);
    read_exact_timeout(sv[1], buf, 1, 5000);
    CHECK(buf[0] == 'x');
    CHECK(!peer_has_data(sv[1]));
    CHECK(weft_chan_set_buffering(c, 7) == -1 && errno == EINVAL);
    /* printf longer than its stack buffer */
    char big[2000];
    memset(big, 'p', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK(weft_printf(c, "[%s]", big) == 2001);
    char back[2001];
    read_exact_timeout(sv[1], back, sizeof back, 5000);
    CHECK(back[0] == '[' && back[1999] == 'p' && back[2000] == ']');
    weft_close(c);
    close(sv[1]);
}

struct bulk {
    weft_chan *c;
    int done;
};

static void *write_8mib(void *arg)
{
    struct bulk *b = arg;
    static char block[1000];
    for (int i = 0; i < 8 * 1024; i++) {
        memset(block, 'a' + i % 26, sizeof block);
        block[sizeof block - 1] = '\n';
        CHECK(weft_write(b->c, block, sizeof block) == (ssize_t)sizeof block);
    }
    CHECK(weft_flush(b->c) == 0);
    b->done = 1;
    return NULL;
}

static void *slow_reader(void *arg)
{
    int fd = ((int *)arg)[0];
    struct bulk *b = *(struct bulk **)((int *)arg + 2);
    CHECK(weft_sleep(100) == 0);
    CHECK(!b->done); /* the writer is parked, not buffering 8 MiB */
    static char block[1000];
    for (int i = 0; i < 8 * 1024; i++) {
        size_t got = 0;
        while (got < sizeof block) {
            ssize_t r = read(fd, block + got, sizeof block - got);
            if (r < 0 && errno == EAGAIN) {
                CHECK(weft_wait_fd(fd, WEFT_READABLE, -1) == 0);
                continue;
            }
            CHECK(r > 0);
            got += (size_t)r;
        }
        CHECK(block[0] == 'a' + i % 26 && block[998] == 'a' + i % 26 && block[999] == '\n');
    }
    return NULL;
}

static void writer_that_outruns_its_reader_parks(void)
{
    int sv[2];
    tcp_pair(sv);
    int small = 16 * 1024;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    struct bulk b = {weft_chan_open(sv[0]), 0};
    CHECK(b.c && weft_chan_set_buffering(b.c, WEFT_BUF_FULL) == 0);
    struct { int fd[2]; struct bulk *b; } ra = {{sv[1], 0}, &b};
    size_t before = max_rss_kib();
    weft_co *w = weft_spawn(write_8mib, &b);
    weft_co *r = weft_spawn(slow_reader, &ra);
    CHECK(w && r);
    CHECK(weft_join(r, NULL, -1) == 0 && weft_join(w, NULL, -1) == 0);
    CHECK(b.done);
    CHECK(!memory_is_measurable() || max_rss_kib() - before < 4096);
    weft_close(b.c);
    close(sv[1]);
}

/* ---- Timeouts ---- */

static void *timeouts(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    CHECK(weft_chan_set_timeouts(c, 30, 30) == 0);
    int64_t t0 = weft_now();
    CHECK(weft_gets(c, &len) == NULL && errno == ETIMEDOUT);
    CHECK(weft_now() - t0 >= 30);
    char buf[8];
    CHECK(weft_read(c, buf, sizeof buf) == -1 && errno == ETIMEDOUT);
    /* The peer never reads: the write timeout ends a write that cannot finish. */
    static char block[1000];
    ssize_t w;
    int rounds = 0;
    CHECK(weft_chan_set_buffering(c, WEFT_BUF_FULL) == 0);
    while ((w = weft_write(c, block, sizeof block)) > 0)
        CHECK(++rounds < 100000);
    CHECK(w == -1 && errno == ETIMEDOUT);
    return NULL;
}

static void read_and_write_timeouts(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    weft_co *co = weft_spawn(timeouts, c);
    CHECK(c && co && weft_join(co, NULL, -1) == 0);
    timeouts(c); /* and the same, blocking, outside any coroutine */
    CHECK(weft_chan_set_timeouts(c, -1, 0) == 0);
    CHECK(weft_close(c) == -1 && errno == ETIMEDOUT); /* unsent data: say so, close anyway */
    close(sv[1]);
}

/* A read timeout renewed by every line: the timer armed by the first wait comes due while
 * lines still arrive, and must then move to the later deadline, not fire. Once input stops,
 * it fires a full timeout after the last line. */
static int renew_fd;

static void *trickle_lines(void *arg)
{
    (void)arg;
    for (int i = 0; i < 60; i++) { /* 1.2 s in all: longer than the 1 s timeout */
        weft_sleep(20);
        write_all(renew_fd, "tick\n", 5);
    }
    return NULL;
}

static void *read_until_timeout(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    int lines = 0;
    int64_t last = weft_now();
    const char *l;
    while ((l = weft_gets(c, &len)) != NULL) {
        CHECK(len == 4 && memcmp(l, "tick", 4) == 0);
        lines++;
        last = weft_now();
    }
    CHECK(errno == ETIMEDOUT);
    CHECK(lines == 60);
    CHECK(weft_now() - last >= 1000);
    return NULL;
}

static void a_read_timeout_renewed_by_input_fires_only_after_input_stops(void)
{
    int sv[2];
    tcp_pair(sv);
    renew_fd = sv[1];
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c && weft_chan_set_timeouts(c, 1000, -1) == 0);
    weft_co *r = weft_spawn(read_until_timeout, c);
    weft_co *w = weft_spawn(trickle_lines, NULL);
    CHECK(r && w && weft_join(w, NULL, -1) == 0 && weft_join(r, NULL, -1) == 0);
    CHECK(weft_close(c) == 0);
    close(sv[1]);
}

/* After a read with a timeout, the timer it armed stays behind (lazily); a coroutine that
 * then waits for something that can never come must still be reported as a deadlock at
 * once, not after the old timeout. */
static void *gets_then_waits_forever(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    CHECK(weft_gets(c, &len) != NULL && len == 5);
    weft_queue *q = weft_queue_new(1);
    void *item;
    CHECK(q && weft_queue_recv(q, &item, -1) == -1 && errno == ECANCELED);
    weft_queue_free(q);
    return NULL;
}

static void deadlock_is_seen_despite_a_timer_left_by_a_read(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c && weft_chan_set_timeouts(c, 600000, -1) == 0);
    weft_co *co = weft_spawn(gets_then_waits_forever, c);
    CHECK(co);
    CHECK(weft_yield() == 0); /* it parks in gets, arming a 10-minute timer */
    write_all(sv[1], "hello\n", 6);
    CHECK(weft_run() == -1 && errno == EDEADLK);
    weft_cancel(co);
    CHECK(weft_join(co, NULL, -1) == 0);
    CHECK(weft_close(c) == 0);
    close(sv[1]);
}

/* Input that arrives while its reader is busy elsewhere (not parked on the fd) raises its
 * edge with nobody waiting; the reader, whose last read came back short, must still see it
 * rather than park for an edge that already came. Another coroutine parked on a pipe keeps
 * the loop polling meanwhile. */
static int busy_fd;
static bool second_line_sent;

static void *reader_busy_between_lines(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    const char *l = weft_gets(c, &len);
    CHECK(l && len == 3 && memcmp(l, "one", 3) == 0); /* a short read: drained */
    write_all(busy_fd, "two\n", 4);
    second_line_sent = true;
    for (int i = 0; i < 20; i++) /* the loop polls and sees the edge, nobody parked */
        CHECK(weft_yield() == 0);
    l = weft_gets(c, &len);
    CHECK(l && len == 3 && memcmp(l, "two", 3) == 0);
    return NULL;
}

static void *park_on_a_pipe(void *arg)
{
    int *p = arg;
    CHECK(weft_wait_fd(p[0], WEFT_READABLE, -1) == 0);
    return NULL;
}

static void an_edge_that_comes_while_the_reader_is_busy_is_not_lost(void)
{
    int sv[2], p[2];
    tcp_pair(sv);
    CHECK(pipe(p) == 0);
    busy_fd = sv[1];
    weft_chan *c = weft_chan_open(sv[0]);
    weft_co *w = weft_spawn(park_on_a_pipe, p);
    weft_co *r = weft_spawn(reader_busy_between_lines, c);
    CHECK(c && w && r && weft_yield() == 0); /* r waits in gets: its fd is registered */
    write_all(sv[1], "one\n", 4);
    CHECK(weft_join(r, NULL, -1) == 0);
    CHECK(second_line_sent);
    CHECK(write(p[1], "x", 1) == 1);
    CHECK(weft_join(w, NULL, -1) == 0);
    CHECK(weft_close(c) == 0);
    close(sv[1]);
    close(p[0]);
    close(p[1]);
}

/* Idle connections hold no buffers: 1,000 coroutines, each having read a line and answered
 * it, parked waiting for the next, cost what as many coroutines parked on a bare descriptor
 * cost (a stack page or two, depending on the switch) and a few small structs. Holding a read
 * or a write buffer each (as before the pool) would add 4 or 8 KiB per connection. */
#define IDLE_CONNS 1000

static void *answer_then_idle(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    const char *l = weft_gets(c, &len);
    CHECK(l && weft_putln(c, l, len) == 0);
    CHECK(weft_gets(c, &len) == NULL && weft_eof(c));
    CHECK(weft_close(c) == 0);
    return NULL;
}

static void *wait_then_close(void *arg)
{
    int fd = (int)(intptr_t)arg;
    CHECK(weft_wait_fd(fd, WEFT_READABLE, -1) >= 0);
    CHECK(weft_fd_close(fd) == 0);
    return NULL;
}

static void idle_connections_hold_no_buffers(void)
{
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_cur < 4 * IDLE_CONNS + 64 && rl.rlim_max >= 4 * IDLE_CONNS + 64) {
        rl.rlim_cur = 4 * IDLE_CONNS + 64;
        CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    }
    static int peer[IDLE_CONNS], bare_peer[IDLE_CONNS];
    static weft_co *co[IDLE_CONNS], *bare[IDLE_CONNS];
    CHECK(weft_yield() == 0); /* the scheduler and its backend exist before we measure */
    /* The baseline: coroutines parked on a descriptor of their own, with no channel. */
    long before = proc_status_kib(getpid(), "VmRSS:");
    for (int i = 0; i < IDLE_CONNS; i++) {
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        bare_peer[i] = sv[1];
        CHECK((bare[i] = weft_spawn(wait_then_close, (void *)(intptr_t)sv[0])));
    }
    for (int i = 0; i < 3; i++)
        CHECK(weft_yield() == 0);
    long mid = proc_status_kib(getpid(), "VmRSS:");
    for (int i = 0; i < IDLE_CONNS; i++) {
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        peer[i] = sv[1];
        write_all(peer[i], "ping\n", 5);
        weft_chan *c = weft_chan_open(sv[0]);
        CHECK(c && (co[i] = weft_spawn(answer_then_idle, c)));
    }
    for (int i = 0; i < 3; i++)
        CHECK(weft_yield() == 0); /* all answer and park */
    char reply[5];
    for (int i = 0; i < IDLE_CONNS; i++) {
        /* (On io_uring the replies are sends the loop submits: let it run until they come.) */
        while (!readable_within(peer[i], 0))
            CHECK(weft_yield() == 0);
        read_exact_timeout(peer[i], reply, 5, 5000);
        CHECK(memcmp(reply, "ping\n", 5) == 0);
    }
    long per_bare = (mid - before) * 1024 / IDLE_CONNS;
    long per_conn = (proc_status_kib(getpid(), "VmRSS:") - mid) * 1024 / IDLE_CONNS;
    printf("idle connections: %ld bytes each, coroutines on a bare descriptor %ld (%s)\n",
           per_conn, per_bare, weft_backend_name());
    /* Both backends: an idle socket waits for input holding no buffer of 4 KiB. */
    if (memory_is_measurable())
        CHECK(per_conn - per_bare < 4096);
    for (int i = 0; i < IDLE_CONNS; i++) {
        close(peer[i]);
        close(bare_peer[i]);
    }
    for (int i = 0; i < IDLE_CONNS; i++)
        CHECK(weft_join(co[i], NULL, -1) == 0 && weft_join(bare[i], NULL, -1) == 0);
}

/* A limit lowered while a longer line already sits whole in the buffer still applies. */
static void *lower_the_limit_under_a_buffered_line(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    const char *l = weft_gets(c, &len);
    CHECK(l && len == 1 && l[0] == 'a');
    CHECK(weft_chan_set_maxline(c, 100) == 0);
    CHECK(weft_gets(c, &len) == NULL && errno == EMSGSIZE);
    l = weft_gets(c, &len);
    CHECK(l && len == 5 && memcmp(l, "short", 5) == 0);
    return NULL;
}

static void a_lowered_line_limit_applies_to_buffered_input(void)
{
    int sv[2];
    tcp_pair(sv);
    char msg[2 + 500 + 1 + 6];
    memcpy(msg, "a\n", 2);
    memset(msg + 2, 'b', 500);
    memcpy(msg + 502, "\nshort\n", 7);
    write_all(sv[1], msg, sizeof msg); /* one write: it all arrives in one read */
    weft_chan *c = weft_chan_open(sv[0]);
    weft_co *r = weft_spawn(lower_the_limit_under_a_buffered_line, c);
    CHECK(c && r && weft_join(r, NULL, -1) == 0);
    CHECK(weft_close(c) == 0);
    close(sv[1]);
}

/* Long lines with nothing buffered go out straight from the caller's memory; when the
 * socket takes only part, the rest must follow through the buffer, in order, newline last. */
#define LONG_LINE (256 * 1024)
#define LONG_LINES 6

static void *put_long_lines(void *arg)
{
    weft_chan *c = arg;
    char *line = malloc(LONG_LINE);
    CHECK(line);
    for (int i = 0; i < LONG_LINES; i++) {
        for (size_t k = 0; k < LONG_LINE; k++)
            line[k] = (char)('a' + (k * 7 + (size_t)i) % 26);
        CHECK(weft_putln(c, line, LONG_LINE - (size_t)i) == 0);
    }
    free(line);
    CHECK(weft_shutdown(c) == 0);
    return NULL;
}

static void *read_long_lines(void *arg)
{
    weft_chan *c = arg;
    char *got = malloc(LONG_LINE + 1);
    CHECK(got);
    for (int i = 0; i < LONG_LINES; i++) {
        size_t n = LONG_LINE - (size_t)i + 1;
        CHECK(weft_read_exact(c, got, n) == (ssize_t)n);
        for (size_t k = 0; k + 1 < n; k++)
            CHECK(got[k] == (char)('a' + (k * 7 + (size_t)i) % 26));
        CHECK(got[n - 1] == '\n');
    }
    CHECK(weft_read(c, got, 1) == 0 && weft_eof(c)); /* nothing more */
    free(got);
    return NULL;
}

static void long_lines_sent_directly_arrive_whole_and_in_order(void)
{
    int sv[2];
    tcp_pair(sv);
    int small = 16 * 1024; /* small socket buffers: each line goes out in many parts */
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    weft_chan *c = weft_chan_open(sv[0]), *peer = weft_chan_open(sv[1]);
    weft_co *w = weft_spawn(put_long_lines, c);
    weft_co *r = weft_spawn(read_long_lines, peer);
    CHECK(c && peer && w && r);
    CHECK(weft_join(w, NULL, -1) == 0 && weft_join(r, NULL, -1) == 0);
    CHECK(weft_close(c) == 0 && weft_close(peer) == 0);
}

/* Two coroutines reading one channel: one parks in gets (and gives its buffers back while
 * idle), the other reads meanwhile and another channel takes the pooled buffer. When the
 * first wakes it must find its target again, not write into a buffer it no longer owns. */
static int two_fd[2], other_fd[2];
static weft_chan *two_c, *other_c;
static char first_reader_got[16];

static void *first_reader(void *arg)
{
    (void)arg;
    size_t len;
    const char *l = weft_gets(two_c, &len);
    if (l)
        snprintf(first_reader_got, sizeof first_reader_got, "%s", l);
    else
        snprintf(first_reader_got, sizeof first_reader_got, "errno %d", errno);
    return NULL;
}

static void *second_reader(void *arg)
{
    (void)arg;
    CHECK(weft_write(other_c, "BBBBBBBB", 8) == 8); /* takes a pooled buffer */
    write_all(two_fd[1], "line1\n", 6);
    size_t len;
    const char *l = weft_gets(two_c, &len);
    CHECK((l && len == 5 && memcmp(l, "line1", 5) == 0) || (!l && errno == EBUSY));
    write_all(two_fd[1], "line2\n", 6);
    CHECK(weft_sleep(50) == 0);
    CHECK(weft_flush(other_c) == 0);
    char out[8];
    read_exact_timeout(other_fd[1], out, 8, 5000);
    CHECK(memcmp(out, "BBBBBBBB", 8) == 0);
    return NULL;
}

/* The channel two readers share, and another that takes a pooled buffer meanwhile. */
static void open_shared_and_other(void)
{
    tcp_pair(two_fd);
    tcp_pair(other_fd);
    two_c = weft_chan_open(two_fd[0]);
    other_c = weft_chan_open(other_fd[0]);
    CHECK(two_c && other_c && weft_chan_set_buffering(other_c, WEFT_BUF_FULL) == 0);
    CHECK(weft_chan_set_timeouts(two_c, 2000, -1) == 0);
}

static void close_shared_and_other(void)
{
    CHECK(weft_close(two_c) == 0 && weft_close(other_c) == 0);
    close(two_fd[1]);
    close(other_fd[1]);
}

static void two_readers_of_one_channel_keep_to_their_buffers(void)
{
    open_shared_and_other();
    weft_co *a = weft_spawn(first_reader, NULL), *b = weft_spawn(second_reader, NULL);
    CHECK(a && b && weft_join(b, NULL, -1) == 0 && weft_join(a, NULL, -1) == 0);
    /* The first reader got the line the second did not take, or nothing: never garbage. */
    CHECK(strcmp(first_reader_got, "line2") == 0 || strcmp(first_reader_got, "line1") == 0 ||
          strncmp(first_reader_got, "errno", 5) == 0);
    close_shared_and_other();
}

/* The same with part of a line already buffered: on io_uring the first reader then waits
 * in a read operation into the channel's buffer (an idle socket waits for readiness), so
 * the second must be refused rather than move that buffer, on either backend: gets, and a
 * raw read once it has taken what was buffered. */
static void *partial_line_reader(void *arg)
{
    (void)arg;
    size_t len;
    const char *l = weft_gets(two_c, &len);
    snprintf(first_reader_got, sizeof first_reader_got, "%s", l ? l : "(error)");
    return NULL;
}

static void *refused_reader(void *arg)
{
    (void)arg;
    CHECK(weft_write(other_c, "BBBBBBBB", 8) == 8); /* takes a pooled buffer */
    size_t len;
    const char *l = weft_gets(two_c, &len);
    CHECK(!l && errno == EBUSY);
    /* Raw reads take what is buffered, then are refused too, leaving the buffer as it is. */
    char got[2];
    CHECK(weft_read(two_c, got, 2) == 2 && memcmp(got, "pa", 2) == 0);
    CHECK(weft_read(two_c, got, 2) == -1 && errno == EBUSY);
    write_all(two_fd[1], "rt\n", 3);
    CHECK(weft_flush(other_c) == 0);
    return NULL;
}

static void a_second_reader_is_refused_while_a_read_is_in_flight(void)
{
    open_shared_and_other();
    write_all(two_fd[1], "pa", 2);
    weft_co *a = weft_spawn(partial_line_reader, NULL);
    CHECK(a && weft_yield() == 0 && weft_yield() == 0); /* it reads "pa" and waits for more */
    weft_co *b = weft_spawn(refused_reader, NULL);
    CHECK(b && weft_join(b, NULL, -1) == 0 && weft_join(a, NULL, -1) == 0);
    CHECK(strcmp(first_reader_got, "rt") == 0);
    char out[8];
    read_exact_timeout(other_fd[1], out, 8, 5000);
    CHECK(memcmp(out, "BBBBBBBB", 8) == 0);
    close_shared_and_other();
}

/* Reads that stop short although more input is queued: TCP urgent data (recv stops at the
 * mark) and a Unix socket message that passed a file descriptor. A reader whose last read
 * came back short must not take that for "drained" and wait forever. The sender writes
 * "hello\n", then "ab" + the special part + "cd\n"; the reader must get "hello" and "abcd"
 * (or, where the special part is a line end and an urgent byte, "hello", "ab" and "cd"). */
static int short_peer;
static void (*send_special)(void);

static void send_urgent_data(void)
{
    CHECK(send(short_peer, "abX", 3, MSG_OOB) == 3); /* 'X' is the urgent byte */
}

static void send_line_end_and_urgent_data(void)
{
    CHECK(send(short_peer, "ab\nX", 4, MSG_OOB) == 4); /* a whole line, then 'X' urgent */
}

static void send_a_passed_fd(void)
{
    char cbuf[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = {"ab", 2};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                       .msg_controllen = sizeof cbuf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    int any = 0; /* pass stdin: any open descriptor will do */
    memcpy(CMSG_DATA(cm), &any, sizeof any);
    CHECK(sendmsg(short_peer, &m, 0) == 2);
}

static void *send_around(void *arg)
{
    (void)arg;
    CHECK(weft_sleep(20) == 0);
    CHECK(send(short_peer, "hello\n", 6, 0) == 6);
    CHECK(weft_sleep(20) == 0);
    send_special();
    CHECK(send(short_peer, "cd\n", 3, 0) == 3);
    return NULL;
}

static void *read_hello_then_abcd(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    const char *l = weft_gets(c, &len);
    CHECK(l && len == 5 && memcmp(l, "hello", 5) == 0); /* a short read: nothing more yet */
    CHECK(weft_sleep(100) == 0); /* all the rest has arrived */
    l = weft_gets(c, &len);
    CHECK(l && len == 4 && memcmp(l, "abcd", 4) == 0);
    return NULL;
}

static void *read_hello_ab_cd(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    const char *l = weft_gets(c, &len);
    CHECK(l && len == 5 && memcmp(l, "hello", 5) == 0);
    CHECK(weft_sleep(100) == 0);
    /* This read stops at the urgent mark with a whole line and nothing else buffered: the
     * next gets must read again rather than wait for an arrival that already came. */
    l = weft_gets(c, &len);
    CHECK(l && len == 2 && memcmp(l, "ab", 2) == 0);
    l = weft_gets(c, &len);
    CHECK(l && len == 2 && memcmp(l, "cd", 2) == 0);
    return NULL;
}

static void read_across_a_short_read(int sv[2], void (*special)(void))
{
    short_peer = sv[1];
    send_special = special;
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c && weft_chan_set_timeouts(c, 5000, -1) == 0);
    bool line_end = special == send_line_end_and_urgent_data;
    weft_co *r = weft_spawn(line_end ? read_hello_ab_cd : read_hello_then_abcd, c);
    weft_co *w = weft_spawn(send_around, NULL);
    CHECK(r && w && weft_join(w, NULL, -1) == 0 && weft_join(r, NULL, -1) == 0);
    CHECK(weft_close(c) == 0);
    close(sv[1]);
}

static void urgent_data_does_not_stall_a_reader(void)
{
    int sv[2];
    tcp_pair(sv);
    read_across_a_short_read(sv, send_urgent_data);
}

static void urgent_data_after_a_line_does_not_stall_a_reader(void)
{
    int sv[2];
    tcp_pair(sv);
    read_across_a_short_read(sv, send_line_end_and_urgent_data);
}

static void a_passed_fd_does_not_stall_a_unix_reader(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    read_across_a_short_read(sv, send_a_passed_fd);
}

/* Two writers of long lines on one channel: each line leaves whole, whichever way it goes
 * (directly, or through the buffer, which the second writer grows while the first is in the
 * middle of sending from it), even when one writer yields for the I/O budget. */
static size_t two_len;
static int lines_fd[2];
static weft_chan *lines_c, *busy_c;

static void *long_line_after_budget(void *arg)
{
    (void)arg;
    char *line = malloc(two_len);
    CHECK(line);
    memset(line, 'A', two_len);
    for (int i = 0; i < 63; i++) /* the budget's next call yields */
        CHECK(weft_write(busy_c, "x", 1) == 1);
    CHECK(weft_putln(lines_c, line, two_len) == 0);
    free(line);
    return NULL;
}

static void *long_line_at_once(void *arg)
{
    (void)arg;
    char *line = malloc(two_len);
    CHECK(line);
    memset(line, 'B', two_len);
    CHECK(weft_putln(lines_c, line, two_len) == 0); /* partly sent, the rest waits */
    free(line);
    return NULL;
}

static void *read_two_lines(void *arg)
{
    (void)arg;
    size_t total = 2 * (two_len + 1), have = 0;
    char *got = malloc(total);
    CHECK(got && fcntl(lines_fd[1], F_SETFL, O_NONBLOCK) == 0);
    for (int i = 0; i < 2000 && have < total; i++) { /* slowly, a piece at a time */
        ssize_t r = read(lines_fd[1], got + have, total - have);
        if (r > 0)
            have += (size_t)r;
        CHECK(weft_sleep(2) == 0);
    }
    CHECK(have == total);
    for (int line = 0; line < 2; line++) {
        const char *l = got + (size_t)line * (two_len + 1);
        for (size_t k = 1; k < two_len; k++)
            CHECK(l[k] == l[0]);
        CHECK(l[two_len] == '\n');
    }
    free(got);
    return NULL;
}

static void two_writers(size_t len, int sndbuf)
{
    int dv[2];
    two_len = len;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, lines_fd) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, dv) == 0);
    setsockopt(lines_fd[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    lines_c = weft_chan_open(lines_fd[0]);
    busy_c = weft_chan_open(dv[0]);
    CHECK(lines_c && busy_c && weft_chan_set_buffering(busy_c, WEFT_BUF_NONE) == 0);
    weft_co *a = weft_spawn(long_line_after_budget, NULL);
    weft_co *b = weft_spawn(long_line_at_once, NULL);
    weft_co *r = weft_spawn(read_two_lines, NULL);
    CHECK(a && b && r);
    CHECK(weft_join(a, NULL, -1) == 0 && weft_join(b, NULL, -1) == 0);
    CHECK(weft_join(r, NULL, -1) == 0);
    CHECK(weft_close(lines_c) == 0 && weft_close(busy_c) == 0);
    close(lines_fd[1]);
    close(dv[1]);
}

static void long_lines_of_two_writers_stay_whole(void)
{
    two_writers(20000, 4096);  /* lines sent directly, the rest through the buffer */
    two_writers(3000, 65536);  /* buffered lines: the buffer grows under a parked sender */
}

/* A graceful shutdown stops input: reads then return what has already arrived and fail
 * with ECANCELED instead of waiting. A request that came in while its handler was busy, after
 * a read that came back short, is still read. */
static int stop_peer;

static void *stop_input_after_a_short_read(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    const char *l = weft_gets(c, &len); /* waits, then a short read */
    CHECK(l && len == 4 && memcmp(l, "req1", 4) == 0);
    write_all(stop_peer, "req2\n", 5); /* arrives while the handler is busy */
    chan_stop_input(c);
    l = weft_gets(c, &len);
    CHECK(l && len == 4 && memcmp(l, "req2", 4) == 0);
    CHECK(weft_gets(c, &len) == NULL && errno == ECANCELED); /* nothing more: no wait */
    return NULL;
}

static void *stopped_while_parked(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    const char *l = weft_gets(c, &len);
    CHECK(l && len == 4 && memcmp(l, "req3", 4) == 0); /* arrived with the stop */
    CHECK(weft_gets(c, &len) == NULL && errno == ECANCELED);
    return NULL;
}

static void *send_then_stop(void *arg)
{
    weft_chan *c = arg;
    CHECK(weft_sleep(20) == 0); /* the reader is parked */
    write_all(stop_peer, "req3\n", 5);
    chan_stop_input(c); /* same turn: the reader is woken with ECANCELED, req3 unread */
    return NULL;
}

static void stopped_input_still_returns_what_has_arrived(void)
{
    int sv[2];
    tcp_pair(sv);
    stop_peer = sv[1];
    weft_chan *c = weft_chan_open(sv[0]);
    weft_co *r = weft_spawn(stop_input_after_a_short_read, c);
    CHECK(c && r && weft_yield() == 0);
    write_all(sv[1], "req1\n", 5);
    CHECK(weft_join(r, NULL, -1) == 0);
    CHECK(weft_close(c) == 0);
    close(sv[1]);

    tcp_pair(sv);
    stop_peer = sv[1];
    c = weft_chan_open(sv[0]);
    r = weft_spawn(stopped_while_parked, c);
    weft_co *s = weft_spawn(send_then_stop, c);
    CHECK(c && r && s && weft_join(s, NULL, -1) == 0 && weft_join(r, NULL, -1) == 0);
    CHECK(weft_close(c) == 0);
    close(sv[1]);
}

/* A close while one writer is parked mid-send and another waits for its turn: both wake with
 * EBADF, and the channel is freed by the last one out (ASan would see a use after free). */
static weft_chan *turn_c;
static int turn_errs[2];

static void *write_until_closed(void *arg)
{
    int *err = arg;
    static char block[64 * 1024];
    memset(block, 'w', sizeof block);
    for (;;) {
        if (weft_write(turn_c, block, sizeof block) < 0) {
            *err = errno;
            return NULL;
        }
    }
}

static void *close_turn_channel(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++)
        CHECK(weft_yield() == 0); /* both writers are parked by now */
    CHECK(weft_close(turn_c) == -1 && errno == EBUSY); /* a writer was cut mid-send */
    return NULL;
}

static void close_while_writers_wait_their_turn(void)
{
    int sv[2];
    tcp_pair(sv); /* the peer never reads: the socket fills */
    turn_c = weft_chan_open(sv[0]);
    CHECK(turn_c && weft_chan_set_timeouts(turn_c, -1, 200) == 0);
    weft_co *a = weft_spawn(write_until_closed, &turn_errs[0]);
    weft_co *b = weft_spawn(write_until_closed, &turn_errs[1]);
    weft_co *k = weft_spawn(close_turn_channel, NULL);
    CHECK(a && b && k);
    CHECK(weft_join(k, NULL, -1) == 0 && weft_join(a, NULL, -1) == 0);
    CHECK(weft_join(b, NULL, -1) == 0);
    CHECK(turn_errs[0] == EBADF && turn_errs[1] == EBADF);
    close(sv[1]);
}

/* ---- Close and errors ---- */

static void *gets_until_closed(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    CHECK(weft_gets(c, &len) == NULL && errno == EBADF);
    return NULL;
}

static void *close_it(void *arg)
{
    weft_yield();
    CHECK(weft_close(arg) == 0);
    return NULL;
}

static void close_under_a_waiting_reader_wakes_it(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    weft_co *r = weft_spawn(gets_until_closed, c);
    weft_co *k = weft_spawn(close_it, c);
    CHECK(c && r && k);
    CHECK(weft_join(r, NULL, -1) == 0 && weft_join(k, NULL, -1) == 0);
    /* The fd really is closed: the peer sees end of file. */
    char b;
    CHECK(readable_within(sv[1], 5000) && read(sv[1], &b, 1) == 0);
    close(sv[1]);
}

static void writes_to_a_vanished_peer_fail_with_epipe(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c);
    struct linger lg = {1, 0};
    setsockopt(sv[1], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(sv[1]); /* reset */
    usleep(20000);
    int rc = 0;
    for (int i = 0; i < 100 && rc == 0; i++)
        rc = weft_puts(c, "anyone there?");
    CHECK(rc == -1 && (errno == EPIPE || errno == ECONNRESET));
    int first = errno;
    CHECK(weft_puts(c, "again") == -1 && errno == first); /* sticky */
    CHECK(weft_close(c) == 0);

    /* The same for long lines, which go out straight from the caller's memory. */
    tcp_pair(sv);
    c = weft_chan_open(sv[0]);
    CHECK(c);
    setsockopt(sv[1], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(sv[1]);
    usleep(20000);
    static char big[8192];
    memset(big, 'x', sizeof big);
    rc = 0;
    for (int i = 0; i < 100 && rc == 0; i++)
        rc = weft_putln(c, big, sizeof big);
    CHECK(rc == -1 && (errno == EPIPE || errno == ECONNRESET));
    first = errno;
    CHECK(weft_putln(c, big, sizeof big) == -1 && errno == first); /* sticky */
    CHECK(weft_close(c) == 0);

    /* A pipe whose reader is gone: EPIPE, not death by SIGPIPE. */
    int p[2];
    CHECK(pipe(p) == 0);
    close(p[0]);
    weft_chan *pc = weft_chan_open(p[1]);
    CHECK(pc && weft_puts(pc, "x") == 0); /* full buffering for pipes: still buffered */
    CHECK(weft_flush(pc) == -1 && errno == EPIPE);
    weft_close(pc);
}

static void shutdown_sends_eof_and_reading_goes_on(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c);
    CHECK(weft_puts(c, "hello") == 0 && weft_shutdown(c) == 0);
    char buf[16];
    read_exact_timeout(sv[1], buf, 6, 5000);
    CHECK(memcmp(buf, "hello\n", 6) == 0);
    CHECK(readable_within(sv[1], 5000) && read(sv[1], buf, 1) == 0); /* EOF */
    write_all(sv[1], "still reading\n", 14);
    size_t len;
    const char *l = weft_gets(c, &len);
    CHECK(l && len == 13);
    weft_close(c);
    close(sv[1]);
}

static void large_write_after_buffered_bytes_goes_straight_out(void)
{
    /* With a tiny write buffer already holding a byte, a big write must flush that byte and
     * then send the rest directly, not in buffer-sized dribbles that outlast the timeout. */
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c && weft_chan_set_buffering(c, WEFT_BUF_FULL) == 0 && weft_chan_set_wbuf(c, 2) == 0);
    CHECK(weft_chan_set_timeouts(c, -1, 1000) == 0);
    static char big[20000];
    memset(big, 'x', sizeof big);
    CHECK(weft_write(c, "a", 1) == 1);
    CHECK(weft_write(c, big, sizeof big) == (ssize_t)sizeof big);
    CHECK(weft_flush(c) == 0);
    static char back[20001];
    read_exact_timeout(sv[1], back, sizeof back, 5000);
    CHECK(back[0] == 'a' && back[1] == 'x' && back[20000] == 'x');
    weft_close(c);
    close(sv[1]);
}

struct flood {
    weft_chan *in, *out;
    int lines;
    int done;
};

/* Echo every line of in to out. Input is all there already and out never fills, so no
 * call ever has to wait: only the I/O budget makes this coroutine let others run. */
static void *flood_handler(void *arg)
{
    struct flood *f = arg;
    const char *line;
    size_t len;
    while ((line = weft_gets(f->in, &len))) {
        CHECK(weft_putln(f->out, line, len) == 0);
        f->lines++;
    }
    f->done = 1;
    return NULL;
}

static void *bystander(void *arg)
{
    struct flood *f = arg;
    int turns = 0;
    while (!f->done) {
        CHECK(weft_yield() == 0);
        turns++;
    }
    return (void *)(intptr_t)turns;
}

static void a_coroutine_whose_input_never_runs_dry_still_yields(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    static char block[100 * 1000];
    for (size_t i = 0; i < sizeof block; i++)
        block[i] = i % 50 == 49 ? '\n' : 'f';
    write_all(sv[1], block, sizeof block); /* 2,000 lines, all in the socket already */
    shutdown(sv[1], SHUT_WR);
    int null = open("/dev/null", O_WRONLY);
    struct flood f = {weft_chan_open(sv[0]), weft_chan_open(null), 0, 0};
    CHECK(f.in && f.out && weft_chan_set_buffering(f.out, WEFT_BUF_LINE) == 0);
    weft_co *h = weft_spawn(flood_handler, &f), *b = weft_spawn(bystander, &f);
    void *turns;
    CHECK(h && b && weft_join(h, NULL, -1) == 0 && weft_join(b, &turns, -1) == 0);
    CHECK(f.lines == 2000);
    /* 2,000 writes and ~25 reads without a single wait: the budget of 64 I/O calls per turn
     * gives the bystander a turn at least every 64 of them. */
    CHECK((intptr_t)turns >= 2000 / 64);
    weft_close(f.in);
    weft_close(f.out);
    close(sv[1]);
}

/* Echo lines, optionally sleeping after the first reply. */
static void *echo_lines(void *arg)
{
    weft_chan *c = arg;
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len))) {
        CHECK(weft_putln(c, line, len) == 0);
        if (len == 5 && memcmp(line, "sleep", 5) == 0)
            CHECK(weft_sleep(50) == 0);
    }
    return NULL;
}

static void *client_seqpacket(void *arg)
{
    int fd = *(int *)arg;
    char all[16 * 8 + 1], back[4096];
    size_t n = 0;
    for (int i = 0; i < 16; i++)
        n += (size_t)snprintf(all + n, sizeof all - n, "line%02d\n", i);
    /* 16 pipelined lines in one record: the replies come back in one record too. */
    CHECK(send(fd, all, n, 0) == (ssize_t)n);
    ssize_t r;
    while ((r = recv(fd, back, sizeof back, MSG_DONTWAIT)) < 0 && errno == EAGAIN)
        CHECK(weft_wait_fd(fd, WEFT_READABLE, weft_now() + 5000) == 0);
    CHECK(r == (ssize_t)n && memcmp(back, all, n) == 0);
    /* One line alone is answered at once. */
    CHECK(send(fd, "solo\n", 5, 0) == 5);
    while ((r = recv(fd, back, sizeof back, MSG_DONTWAIT)) < 0 && errno == EAGAIN)
        CHECK(weft_wait_fd(fd, WEFT_READABLE, weft_now() + 5000) == 0);
    CHECK(r == 5 && memcmp(back, "solo\n", 5) == 0);
    /* A held reply goes out when its coroutine parks: "sleep" is answered before the
     * handler sleeps, though "after" was already buffered behind it. */
    CHECK(send(fd, "sleep\nafter\n", 12, 0) == 12);
    while ((r = recv(fd, back, sizeof back, MSG_DONTWAIT)) < 0 && errno == EAGAIN)
        CHECK(weft_wait_fd(fd, WEFT_READABLE, weft_now() + 5000) == 0);
    CHECK(r == 6 && memcmp(back, "sleep\n", 6) == 0);
    while ((r = recv(fd, back, sizeof back, MSG_DONTWAIT)) < 0 && errno == EAGAIN)
        CHECK(weft_wait_fd(fd, WEFT_READABLE, weft_now() + 5000) == 0);
    CHECK(r == 6 && memcmp(back, "after\n", 6) == 0);
    shutdown(fd, SHUT_WR);
    return NULL;
}

static void pipelined_replies_leave_in_one_send(void)
{
    /* SOCK_SEQPACKET keeps each send a record of its own, so the records the client gets
     * count the server's sends. */
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, sv) == 0);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c);
    weft_co *s = weft_spawn(echo_lines, c), *k = weft_spawn(client_seqpacket, &sv[1]);
    CHECK(s && k && weft_join(k, NULL, -1) == 0 && weft_join(s, NULL, -1) == 0);
    weft_close(c);
    close(sv[1]);
}

/* Echo lines; after a line "raw", echo the next 4 bytes, taken with weft_read, as a line. */
static void *echo_lines_and_raw(void *arg)
{
    weft_chan *c = arg;
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len))) {
        bool raw = len == 3 && memcmp(line, "raw", 3) == 0;
        CHECK(weft_putln(c, line, len) == 0);
        if (raw) {
            char four[4];
            CHECK(weft_read_exact(c, four, sizeof four) == (ssize_t)sizeof four);
            CHECK(weft_putln(c, four, sizeof four) == 0);
        }
    }
    CHECK(weft_eof(c));
    return NULL;
}

static void *client_mixed(void *arg)
{
    int fd = *(int *)arg;
    /* All at once, so that every reply but the last is held while more lines are buffered:
     * empty lines, lengths that differ, and raw bytes between lines. */
    static const char in[] = "a\n\nbb\nraw\nXYZWccc\n\n\nraw\n1234\nlast\n";
    static const char expect[] = "a\n\nbb\nraw\nXYZW\nccc\n\n\nraw\n1234\n\nlast\n";
    CHECK(send(fd, in, sizeof in - 1, 0) == (ssize_t)(sizeof in - 1));
    shutdown(fd, SHUT_WR);
    char back[256];
    size_t n = 0;
    for (;;) {
        ssize_t r = recv(fd, back + n, sizeof back - n, MSG_DONTWAIT);
        if (r == 0)
            break;
        if (r < 0) {
            CHECK(errno == EAGAIN);
            CHECK(weft_wait_fd(fd, WEFT_READABLE, weft_now() + 5000) == 0);
            continue;
        }
        n += (size_t)r;
        CHECK(n < sizeof back);
    }
    CHECK(n == sizeof expect - 1 && memcmp(back, expect, n) == 0);
    return NULL;
}

/* The coalescing check leaves the read position on the newline it found, for weft_gets to
 * take without a search: lines still come out whole and in order, around raw reads too. */
static void lines_raw_reads_and_held_replies_keep_their_order(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c);
    weft_co *s = weft_spawn(echo_lines_and_raw, c), *k = weft_spawn(client_mixed, &sv[1]);
    CHECK(s && k && weft_join(s, NULL, -1) == 0);
    weft_close(c); /* the client reads until end of file */
    CHECK(weft_join(k, NULL, -1) == 0);
    close(sv[1]);
}

/* Two writers on a channel whose reader has lines buffered, then a close by the reader: the
 * first writer's held reply must not outlive the channel (it used to be flushed, from a
 * freed channel, when that writer next parked). Sanitizers and valgrind watch this one. */
static weft_chan *shared;

static void *reader_then_closer(void *arg)
{
    (void)arg;
    size_t len;
    CHECK(weft_gets(shared, &len) && len == 1); /* two more lines stay buffered */
    weft_yield();
    weft_yield(); /* both writers write meanwhile */
    CHECK(weft_close(shared) == 0);
    return NULL;
}

static void *writer(void *arg)
{
    weft_yield();
    CHECK(weft_puts(shared, arg) == 0);
    weft_yield();
    weft_yield();
    weft_yield();
    CHECK(weft_sleep(1) == 0); /* a park: held output would be flushed here */
    return NULL;
}

static void held_replies_of_two_writers_and_a_close(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    write_all(sv[1], "a\nb\nc\n", 6);
    shared = weft_chan_open(sv[0]);
    weft_co *r = weft_spawn(reader_then_closer, NULL);
    weft_co *a = weft_spawn(writer, "from-a"), *b = weft_spawn(writer, "from-b");
    CHECK(shared && r && a && b);
    CHECK(weft_join(r, NULL, -1) == 0 && weft_join(a, NULL, -1) == 0 && weft_join(b, NULL, -1) == 0);
    /* Both replies got out, in the order written, before the close. */
    char got[32] = "";
    size_t n = 0;
    ssize_t k;
    while (n < sizeof got - 1 && (k = read(sv[1], got + n, sizeof got - 1 - n)) > 0)
        n += (size_t)k;
    CHECK(strcmp(got, "from-a\nfrom-b\n") == 0);
    close(sv[1]);
}

/* A held reply goes out when its coroutine yields, although it neither reads nor parks: the
 * writer reads one of two pipelined lines, answers (held: the other is buffered) and then
 * only yields, while another coroutine watches the peer without parking. */
static int yield_peer;
static bool yield_seen;

static void *answer_then_yield(void *arg)
{
    size_t len;
    const char *l = weft_gets(arg, &len);
    CHECK(l && len == 1 && weft_putln(arg, l, len) == 0);
    for (int i = 0; i < 1000 && !yield_seen; i++)
        CHECK(weft_yield() == 0);
    CHECK(yield_seen);
    l = weft_gets(arg, &len);
    CHECK(l && len == 1 && l[0] == 'b');
    return NULL;
}

static void *watch_without_parking(void *arg)
{
    (void)arg;
    char got[8];
    for (int i = 0; i < 1000 && !yield_seen; i++) {
        ssize_t r = recv(yield_peer, got, sizeof got, MSG_DONTWAIT);
        if (r > 0) {
            CHECK(r == 2 && memcmp(got, "a\n", 2) == 0);
            yield_seen = true;
        }
        CHECK(weft_yield() == 0);
    }
    return NULL;
}

static void a_held_reply_leaves_when_its_writer_yields(void)
{
    int sv[2];
    tcp_pair(sv);
    yield_peer = sv[1];
    write_all(sv[1], "a\nb\n", 4);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c);
    char probe[1];
    while (recv(sv[0], probe, 1, MSG_PEEK | MSG_DONTWAIT) != 1) /* both lines have arrived */
        CHECK(weft_yield() == 0);
    weft_co *w = weft_spawn(answer_then_yield, c), *r = weft_spawn(watch_without_parking, NULL);
    CHECK(w && r && weft_join(w, NULL, -1) == 0 && weft_join(r, NULL, -1) == 0);
    CHECK(yield_seen && weft_close(c) == 0);
    close(sv[1]);
}

/* weft_wait_fd on a channel's own fd says input came; the gets after it must read it, even
 * though the channel's last read left it drained (io_uring: the completion that woke the
 * waiter must still count for the channel's next read). */
static int waitfd_peer;

static void *gets_wait_fd_gets(void *arg)
{
    weft_chan *c = arg;
    size_t len;
    const char *l = weft_gets(c, &len);
    CHECK(l && len == 1 && l[0] == 'a'); /* the kernel had nothing more: drained */
    CHECK(weft_wait_fd(weft_chan_fd(c), WEFT_READABLE, weft_now() + 5000) == 0);
    l = weft_gets(c, &len);
    CHECK(l && len == 1 && l[0] == 'b');
    return NULL;
}

static void *send_a_then_b(void *arg)
{
    (void)arg;
    CHECK(weft_sleep(20) == 0);
    CHECK(send(waitfd_peer, "a\n", 2, 0) == 2);
    CHECK(weft_sleep(50) == 0);
    CHECK(send(waitfd_peer, "b\n", 2, 0) == 2);
    return NULL;
}

static void a_read_after_wait_fd_finds_the_input(void)
{
    int sv[2];
    tcp_pair(sv);
    waitfd_peer = sv[1];
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c && weft_chan_set_timeouts(c, 5000, -1) == 0);
    weft_co *r = weft_spawn(gets_wait_fd_gets, c), *w = weft_spawn(send_a_then_b, NULL);
    CHECK(r && w && weft_join(w, NULL, -1) == 0 && weft_join(r, NULL, -1) == 0);
    CHECK(weft_close(c) == 0);
    close(sv[1]);
}

static void channel_metadata(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c && weft_chan_fd(c) == sv[0]);
    CHECK(strncmp(weft_chan_peer(c), "127.0.0.1:", 10) == 0);
    CHECK(fcntl(sv[0], F_GETFL) & O_NONBLOCK);
    CHECK(weft_chan_set_maxline(c, 0) == -1 && errno == EINVAL);
    CHECK(weft_chan_set_wbuf(c, 0) == -1 && errno == EINVAL);
    CHECK(weft_chan_open(-1) == NULL && errno == EBADF);
    weft_close(c);
    close(sv[1]);
}


/* ---- weft_sendfile ---- */

/* A temporary file of n bytes, byte i being (i * 7 + i / 251) & 0xff. */
static int pattern_file(size_t n)
{
    char path[] = "/tmp/weft-sendfile-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && unlink(path) == 0);
    char *b = malloc(n);
    CHECK(b);
    for (size_t i = 0; i < n; i++)
        b[i] = (char)((i * 7 + i / 251) & 0xff);
    CHECK(pwrite(fd, b, n, 0) == (ssize_t)n);
    free(b);
    return fd;
}

static bool is_pattern(const char *p, size_t from, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (char)(((from + i) * 7 + (from + i) / 251) & 0xff))
            return false;
    return true;
}

struct collect {
    int fd;
    char *data;
    size_t len;
    pthread_t tid;
};

static void *collect_main(void *arg)
{
    struct collect *k = arg;
    size_t cap = 1 << 20;
    k->data = malloc(cap);
    CHECK(k->data);
    for (;;) {
        if (cap - k->len < 65536)
            CHECK((k->data = realloc(k->data, cap *= 2)));
        ssize_t r = read(k->fd, k->data + k->len, 65536);
        CHECK(r >= 0);
        if (r == 0)
            return NULL;
        k->len += (size_t)r;
    }
}

#define SF_SIZE (3u << 20)

struct sf_job {
    weft_chan *c;
    int file;
};

/* Header line, 1 MiB from offset 1000, a middle line, the rest of the file by its position
 * (from 0, set by lseek), then past the end (fewer bytes), then a last line. */
static void *sendfile_writer(void *arg)
{
    struct sf_job *j = arg;
    CHECK(weft_puts(j->c, "head") == 0);
    off_t off = 1000;
    CHECK(weft_sendfile(j->c, j->file, &off, 1 << 20) == 1 << 20 && off == 1000 + (1 << 20));
    CHECK(weft_puts(j->c, "middle") == 0);
    CHECK(lseek(j->file, 0, SEEK_SET) == 0);
    CHECK(weft_sendfile(j->c, j->file, NULL, SF_SIZE) == SF_SIZE);
    CHECK(lseek(j->file, 0, SEEK_CUR) == SF_SIZE);
    off = SF_SIZE - 10;
    CHECK(weft_sendfile(j->c, j->file, &off, 100) == 10 && off == SF_SIZE);
    CHECK(weft_sendfile(j->c, j->file, &off, 100) == 0);
    CHECK(weft_puts(j->c, "tail") == 0);
    return NULL;
}

static void check_sendfile_stream(const struct collect *k)
{
    const char *p = k->data;
    CHECK(k->len == 5 + (1u << 20) + 7 + SF_SIZE + 10 + 5);
    CHECK(memcmp(p, "head\n", 5) == 0 && is_pattern(p + 5, 1000, 1 << 20));
    p += 5 + (1 << 20);
    CHECK(memcmp(p, "middle\n", 7) == 0 && is_pattern(p + 7, 0, SF_SIZE));
    p += 7 + SF_SIZE;
    CHECK(is_pattern(p, SF_SIZE - 10, 10) && memcmp(p + 10, "tail\n", 5) == 0);
}

/* Over a TCP socket (the kernel sends from the page cache) and a pipe, in a coroutine and
 * outside any, every byte in place among the channel's own writes; a slow reader makes the
 * sends wait. */
static void sendfile_sends_the_files_bytes_in_order(void)
{
    int file = pattern_file(SF_SIZE);
    for (int kind = 0; kind < 2; kind++) {
        for (int inside = 0; inside < 2; inside++) {
            int sv[2];
            if (kind == 0) {
                tcp_pair(sv);
            } else {
                int p[2];
                CHECK(pipe(p) == 0);
                sv[0] = p[1];
                sv[1] = p[0];
            }
            struct collect k = {.fd = sv[1]};
            CHECK(pthread_create(&k.tid, NULL, collect_main, &k) == 0);
            struct sf_job j = {weft_chan_open(sv[0]), file};
            CHECK(j.c);
            if (inside) {
                weft_co *w = weft_spawn(sendfile_writer, &j);
                CHECK(w && weft_join(w, NULL, -1) == 0);
            } else {
                sendfile_writer(&j);
            }
            CHECK(weft_close(j.c) == 0);
            CHECK(pthread_join(k.tid, NULL) == 0);
            check_sendfile_stream(&k);
            free(k.data);
            close(sv[1]);
        }
    }
    close(file);
}

/* A file sendfile(2) cannot read from goes through the buffer; a file that cannot be read
 * fails the call with the read's error, and the channel stays usable. */
static void sendfile_copies_what_the_kernel_cannot_send(void)
{
    int sv[2];
    tcp_pair(sv);
    weft_chan *c = weft_chan_open(sv[0]);
    CHECK(c);
    int dir = open("/tmp", O_RDONLY | O_DIRECTORY);
    CHECK(dir >= 0);
    off_t off = 0;
    CHECK(weft_sendfile(c, dir, &off, 10) == -1 && errno == EISDIR);
    close(dir);
    char wpath[] = "/tmp/weft-sendfile-wronly-XXXXXX";
    int rw = mkstemp(wpath);
    CHECK(rw >= 0 && write(rw, "0123456789", 10) == 10);
    int wronly = open(wpath, O_WRONLY);
    CHECK(wronly >= 0 && unlink(wpath) == 0);
    close(rw);
    off = 0;
    CHECK(weft_sendfile(c, wronly, &off, 10) == -1 && errno == EBADF);
    close(wronly);
    /* A pipe, a socket, a character device: a read could wait for ever and would block the
     * thread (a pipe's writer may be a coroutine of it): refused, nothing sent. */
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(weft_sendfile(c, p[0], NULL, 10) == -1 && errno == EINVAL);
    close(p[0]);
    close(p[1]);
    int other[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, other) == 0);
    CHECK(weft_sendfile(c, other[0], NULL, 10) == -1 && errno == EINVAL);
    close(other[0]);
    close(other[1]);
    int null = open("/dev/null", O_RDONLY);
    CHECK(null >= 0);
    CHECK(weft_sendfile(c, null, NULL, 10) == -1 && errno == EINVAL);
    close(null);
    /* /proc files have no page cache to send from: copied, whole. */
    int ver = open("/proc/self/status", O_RDONLY);
    CHECK(ver >= 0);
    char expect[8192];
    ssize_t n = pread(ver, expect, sizeof expect, 0);
    CHECK(n > 100 && n < (ssize_t)sizeof expect);
    off = 0;
    ssize_t got = weft_sendfile(c, ver, &off, sizeof expect);
    CHECK(got > 100 && off == got);
    close(ver);
    CHECK(weft_puts(c, "end") == 0 && weft_flush(c) == 0);
    char buf[8200];
    size_t have = 0;
    while (have < (size_t)got + 4) {
        ssize_t r = read(sv[1], buf + have, sizeof buf - have);
        CHECK(r > 0);
        have += (size_t)r;
    }
    CHECK(have == (size_t)got + 4 && memcmp(buf + got, "end\n", 4) == 0);
    CHECK(memcmp(buf, "Name:", 5) == 0); /* (the sizes differ: the content is this process's) */
    CHECK(weft_close(c) == 0);
    close(sv[1]);
}

/* ---- io_uring's send slabs ---- */

static void *slab_reader(void *arg)
{
    weft_chan *c = weft_chan_open(*(int *)arg);
    CHECK(c != NULL);
    /* Not reading yet: the writer's sends stay in flight in their slab while the loop is
     * quiet, so the quiet callback runs then, and must leave that slab be. */
    CHECK(weft_sleep(3 * SCHED_QUIET_MS) == 0);
    static char expect[8192];
    for (int i = 0; i < 2000; i++) {
        const char *line = weft_gets(c, NULL);
        if (i < 1000)
            snprintf(expect, sizeof expect, "%d", i);
        else
            snprintf(expect, sizeof expect, "%d %*s", i, 1000 + i % 3000, "");
        CHECK(line && strcmp(line, expect) == 0);
    }
    const char *line = weft_gets(c, NULL);
    CHECK(line && strcmp(line, "after the quiet spell") == 0);
    CHECK(weft_gets(c, NULL) == NULL && weft_eof(c));
    CHECK(weft_close(c) == 0);
    return NULL;
}

static void *slab_writer(void *arg)
{
    weft_chan *c = weft_chan_open(*(int *)arg);
    CHECK(c != NULL);
    bool ring = strcmp(weft_backend_name(), "uring") == 0;
    for (int i = 0; i < 2000; i++) { /* 1,000 small gives, then 1,000 of 1-4 KiB */
        if (i < 1000)
            CHECK(weft_printf(c, "%d\n", i) > 0);
        else
            CHECK(weft_printf(c, "%d %*s\n", i, 1000 + i % 3000, "") > 0);
        if (i % 7 == 0)
            CHECK(weft_flush(c) == 0);
    }
    CHECK(weft_flush(c) == 0);
    CHECK(!ring || sock_slabs_mapped() > 0); /* (the slab they were copied into is kept) */
    CHECK(weft_sleep(3 * SCHED_QUIET_MS) == 0);
    CHECK(sock_slabs_mapped() == 0); /* the loop was quiet: every slab went */
    CHECK(weft_puts(c, "after the quiet spell") >= 0 && weft_flush(c) == 0);
    CHECK(weft_close(c) == 0);
    return NULL;
}

/* Output copied into the thread's send slabs arrives whole and in order, also when the loop
 * goes quiet with sends in flight (the peer not reading); once the loop has been quiet with
 * nothing in flight, or its scheduler is released, the slabs are given back (io_uring; on
 * epoll there are none). */
static void send_slabs_go_when_the_loop_is_quiet(void)
{
    int sv[2];
    tcp_pair(sv);
    int small = 65536; /* (so that the kernel takes little while the reader sleeps) */
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    CHECK(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    weft_co *r = weft_spawn(slab_reader, &sv[1]);
    weft_co *w = weft_spawn(slab_writer, &sv[0]);
    CHECK(r && w);
    CHECK(weft_join(r, NULL, -1) == 0 && weft_join(w, NULL, -1) == 0);
    CHECK(sock_slabs_mapped() == 0); /* the scheduler was released: its slabs went first */
}

const struct test tests[] = {
    {"send_slabs_go_when_the_loop_is_quiet", send_slabs_go_when_the_loop_is_quiet, 0},
    {"sendfile_sends_the_files_bytes_in_order", sendfile_sends_the_files_bytes_in_order, 0},
    {"sendfile_copies_what_the_kernel_cannot_send", sendfile_copies_what_the_kernel_cannot_send, 0},
    {"lines_split_at_every_byte_boundary", lines_split_at_every_byte_boundary, 0},
    {"lines_arriving_one_byte_at_a_time", lines_arriving_one_byte_at_a_time, 0},
    {"gets_blocks_outside_a_coroutine", gets_blocks_outside_a_coroutine, 0},
    {"overlong_lines_fail_with_emsgsize_and_reading_resumes", overlong_lines_fail_with_emsgsize_and_reading_resumes, 0},
    {"endless_line_keeps_memory_bounded", endless_line_keeps_memory_bounded, 0},
    {"read_and_read_exact", read_and_read_exact, 0},
    {"chan_open_keeps_the_callers_fd_flags", chan_open_keeps_the_callers_fd_flags, 0},
    {"read_exact_keeps_its_bytes_on_a_timeout", read_exact_keeps_its_bytes_on_a_timeout, 0},
    {"buffering_modes", buffering_modes, 0},
    {"writer_that_outruns_its_reader_parks", writer_that_outruns_its_reader_parks, 0},
    {"read_and_write_timeouts", read_and_write_timeouts, 0},
    {"close_under_a_waiting_reader_wakes_it", close_under_a_waiting_reader_wakes_it, 0},
    {"writes_to_a_vanished_peer_fail_with_epipe", writes_to_a_vanished_peer_fail_with_epipe, 0},
    {"shutdown_sends_eof_and_reading_goes_on", shutdown_sends_eof_and_reading_goes_on, 0},
    {"large_write_after_buffered_bytes_goes_straight_out", large_write_after_buffered_bytes_goes_straight_out, 0},
    {"a_coroutine_whose_input_never_runs_dry_still_yields", a_coroutine_whose_input_never_runs_dry_still_yields, 0},
    {"pipelined_replies_leave_in_one_send", pipelined_replies_leave_in_one_send, 0},
    {"lines_raw_reads_and_held_replies_keep_their_order",
     lines_raw_reads_and_held_replies_keep_their_order, 0},
    {"held_replies_of_two_writers_and_a_close", held_replies_of_two_writers_and_a_close, 0},
    {"a_held_reply_leaves_when_its_writer_yields", a_held_reply_leaves_when_its_writer_yields, 0},
    {"a_read_after_wait_fd_finds_the_input", a_read_after_wait_fd_finds_the_input, 20},
    {"channel_metadata", channel_metadata, 0},
    {"a_read_timeout_renewed_by_input_fires_only_after_input_stops", a_read_timeout_renewed_by_input_fires_only_after_input_stops, 0},
    {"deadlock_is_seen_despite_a_timer_left_by_a_read", deadlock_is_seen_despite_a_timer_left_by_a_read, 0},
    {"an_edge_that_comes_while_the_reader_is_busy_is_not_lost", an_edge_that_comes_while_the_reader_is_busy_is_not_lost, 10},
    {"idle_connections_hold_no_buffers", idle_connections_hold_no_buffers, 0},
    {"a_lowered_line_limit_applies_to_buffered_input", a_lowered_line_limit_applies_to_buffered_input, 0},
    {"long_lines_sent_directly_arrive_whole_and_in_order", long_lines_sent_directly_arrive_whole_and_in_order, 0},
    {"two_readers_of_one_channel_keep_to_their_buffers", two_readers_of_one_channel_keep_to_their_buffers, 0},
    {"a_second_reader_is_refused_while_a_read_is_in_flight", a_second_reader_is_refused_while_a_read_is_in_flight, 0},
    {"urgent_data_does_not_stall_a_reader", urgent_data_does_not_stall_a_reader, 20},
    {"urgent_data_after_a_line_does_not_stall_a_reader",
     urgent_data_after_a_line_does_not_stall_a_reader, 20},
    {"a_passed_fd_does_not_stall_a_unix_reader", a_passed_fd_does_not_stall_a_unix_reader, 20},
    {"long_lines_of_two_writers_stay_whole", long_lines_of_two_writers_stay_whole, 0},
    {"stopped_input_still_returns_what_has_arrived", stopped_input_still_returns_what_has_arrived, 0},
    {"close_while_writers_wait_their_turn", close_while_writers_wait_their_turn, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
