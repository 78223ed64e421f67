/* examples/chat run as a real process and driven over loopback by many clients from one poll
 * loop (non-blocking sockets, reads and writes interleaved, every wait bounded): every line
 * reaches every other client exactly once, each sender's lines in order, none back to its
 * sender; a client that never reads is dropped while the others go on undisturbed; SIGTERM
 * ends the server cleanly; lines pass through byte for byte.
 *
 * The clients send "<index> <seq> <padding>"; a receiver gets "<sender host:port> <index>
 * <seq> <padding>" and checks the sender's address, the sequence number it expects next from
 * that sender, and the padding (its length and letter follow from index and seq). A sender
 * stays at most `window` lines ahead of its slowest reader, so that at most (clients - 1) *
 * window messages are ever on the way to one client: fewer than the server's queue holds, so
 * a client that reads is never dropped, however the two processes get scheduled. */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SERVER_QUEUE 1024 /* examples/chat.c's QUEUE_CAPACITY */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- The server ---- */

/* Start examples/chat on a free port with up to three more arguments (NULL: none). */
static pid_t start_chat(int *port, int *stderr_fd, const char *x1, const char *x2,
                        const char *x3)
{
    char *argv[] = {"examples/chat", "-p", "0", (char *)x1, (char *)x2, (char *)x3, NULL};
    int out;
    pid_t pid = spawn_program(argv, &out, stderr_fd);
    *port = read_listen_port(out);
    close(out);
    return pid;
}

static void expect_clean_exit(pid_t pid)
{
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fprintf(stderr, "  chat ended with status 0x%x\n", status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- Clients ---- */

struct peer {
    int fd;
    char name[64]; /* our address as the server names us, "127.0.0.1:PORT" */
    size_t namelen;
    bool reads;    /* polled for input (a slow client is not) */
    bool welcomed; /* its first line, "* welcome NAME, ...", has come */
    bool eof;      /* the server closed it */
    int sent;      /* lines put in the output buffer so far */
    int target;    /* lines to send in all */
    long lines_in;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_off, out_len, out_cap;
};

struct room {
    int n;
    struct peer *p;
    int *next;       /* next[r * n + s]: the sequence number r expects next from s */
    int window;      /* a sender keeps at most this many lines ahead of its slowest reader */
    int pad_max;     /* padding of a line: 0 .. pad_max bytes */
    bool expect_eof; /* the end: the server closing a client is no longer an error */
    int slow;        /* index of the client that never reads, or -1 */
    bool slow_dropped;
};

static size_t pad_len(const struct room *rm, int s, int seq)
{
    return (size_t)(((unsigned)s * 31u + (unsigned)seq * 17u) % (unsigned)(rm->pad_max + 1));
}

static char pad_char(int s, int seq)
{
    return (char)('a' + (s + seq) % 26);
}

static void set_nonblocking(int fd, bool on)
{
    int fl = fcntl(fd, F_GETFL);
    CHECK(fl >= 0 && fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) == 0);
}

/* Connect client i; rcvbuf > 0: that small a receive buffer (set before connecting, so the
 * window the server sees is small from the start). */
static void peer_connect(struct room *rm, int i, int port, int rcvbuf)
{
    struct peer *p = &rm->p[i];
    if (rcvbuf > 0) {
        p->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(p->fd >= 0);
        CHECK(setsockopt(p->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        CHECK(connect(p->fd, (struct sockaddr *)&sin, sizeof sin) == 0);
    } else {
        p->fd = tcp_connect_loopback(port);
    }
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    CHECK(getsockname(p->fd, (struct sockaddr *)&me, &len) == 0);
    char host[INET_ADDRSTRLEN];
    CHECK(inet_ntop(AF_INET, &me.sin_addr, host, sizeof host));
    snprintf(p->name, sizeof p->name, "%s:%u", host, ntohs(me.sin_port));
    p->namelen = strlen(p->name);
    p->reads = true;
    set_nonblocking(p->fd, true);
}

static void room_init(struct room *rm, int n)
{
    memset(rm, 0, sizeof *rm);
    rm->n = n;
    rm->p = calloc((size_t)n, sizeof *rm->p);
    rm->next = calloc((size_t)n * (size_t)n, sizeof *rm->next);
    CHECK(rm->p && rm->next);
    rm->window = 1;
    rm->slow = -1;
    for (int i = 0; i < n; i++)
        rm->p[i].fd = -1;
}

static void room_free(struct room *rm)
{
    for (int i = 0; i < rm->n; i++) {
        if (rm->p[i].fd >= 0)
            close(rm->p[i].fd);
        free(rm->p[i].in);
        free(rm->p[i].out);
    }
    free(rm->p);
    free(rm->next);
}

static _Noreturn void bad_line(const struct room *rm, int r, const char *line, size_t len,
                               const char *why, const char *file, int lineno)
{
    fprintf(stderr, "  client %d (%s) got a bad line (%s): \"%.*s\"%s\n", r, rm->p[r].name, why,
            (int)(len > 200 ? 200 : len), line, len > 200 ? "..." : "");
    check_failed(why, file, lineno);
    exit(1); /* not reached; keeps a harness.h without _Noreturn quiet */
}
#define EXPECT(cond, why) ((cond) ? (void)0 : bad_line(rm, r, line, len, why, __FILE__, __LINE__))

/* Parse a decimal number ending at a space; advance *pos past that space. -1 if malformed. */
static long parse_num(const char *line, size_t len, size_t *pos)
{
    long v = 0;
    size_t i = *pos;
    if (i >= len || line[i] < '0' || line[i] > '9')
        return -1;
    while (i < len && line[i] >= '0' && line[i] <= '9' && v < 100000000)
        v = v * 10 + (line[i++] - '0');
    if (i >= len || line[i] != ' ')
        return -1;
    *pos = i + 1;
    return v;
}

/* Check one line client r received (without its newline) and count it. */
static void take_line(struct room *rm, int r, const char *line, size_t len)
{
    struct peer *p = &rm->p[r];
    if (!p->welcomed) {
        char want[96];
        int wl = snprintf(want, sizeof want, "* welcome %s, ", p->name);
        EXPECT(len > (size_t)wl && memcmp(line, want, (size_t)wl) == 0,
               "the first line is not our welcome");
        p->welcomed = true;
        return;
    }
    const char *sp = memchr(line, ' ', len);
    EXPECT(sp != NULL, "no sender");
    size_t pos = (size_t)(sp - line) + 1;
    long s = parse_num(line, len, &pos);
    EXPECT(s >= 0 && s < rm->n, "bad sender index");
    long seq = parse_num(line, len, &pos);
    EXPECT(seq >= 0, "bad sequence number");
    EXPECT(s != r, "our own line came back");
    const struct peer *from = &rm->p[s];
    EXPECT((size_t)(sp - line) == from->namelen && memcmp(line, from->name, from->namelen) == 0,
           "sender address does not match the sender");
    int *want = &rm->next[r * rm->n + s];
    EXPECT(seq >= *want, "a line came twice");
    EXPECT(seq == *want, "a line is missing or out of order");
    size_t plen = pad_len(rm, (int)s, (int)seq);
    EXPECT(len - pos == plen, "padding has the wrong length");
    for (size_t i = pos; i < len; i++)
        EXPECT(line[i] == pad_char((int)s, (int)seq), "padding is corrupt");
    (*want)++;
    p->lines_in++;
}

/* Split what has come in into lines; keep a partial last line. */
static void take_input(struct room *rm, int r)
{
    struct peer *p = &rm->p[r];
    size_t start = 0;
    char *nl;
    while ((nl = memchr(p->in + start, '\n', p->in_len - start)) != NULL) {
        take_line(rm, r, p->in + start, (size_t)(nl - (p->in + start)));
        start = (size_t)(nl - p->in) + 1;
    }
    memmove(p->in, p->in + start, p->in_len - start);
    p->in_len -= start;
}

/* Read what is there (non-blocking). Returns false once the server has closed the socket. */
static bool read_input(struct room *rm, int r)
{
    struct peer *p = &rm->p[r];
    for (int rounds = 0; rounds < 16; rounds++) {
        if (p->in_cap - p->in_len < 65536) {
            p->in_cap = p->in_len + 65536 + 65536;
            p->in = realloc(p->in, p->in_cap);
            CHECK(p->in);
        }
        ssize_t got = read(p->fd, p->in + p->in_len, p->in_cap - p->in_len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (got <= 0) {
            if (!rm->expect_eof && r != rm->slow)
                fprintf(stderr, "  client %d (%s) closed by the server: %s\n", r, p->name,
                        got == 0 ? "end of file" : strerror(errno));
            if (r != rm->slow)
                CHECK(rm->expect_eof);
            p->eof = true;
            return false;
        }
        p->in_len += (size_t)got;
        take_input(rm, r);
    }
    return true;
}

/* Lowest sequence number any reading client still expects from s. */
static int slowest_reader(const struct room *rm, int s)
{
    int low = INT_MAX;
    for (int r = 0; r < rm->n; r++)
        if (r != s && r != rm->slow && rm->next[r * rm->n + s] < low)
            low = rm->next[r * rm->n + s];
    return low == INT_MAX ? rm->p[s].sent : low;
}

/* Queue more lines for s, within its target and its window. */
static void fill_output(struct room *rm, int s)
{
    struct peer *p = &rm->p[s];
    if (p->sent >= p->target || p->out_len - p->out_off > 256 * 1024)
        return;
    int limit = slowest_reader(rm, s) + rm->window;
    if (limit > p->target)
        limit = p->target;
    if (p->out_off > 0) {
        memmove(p->out, p->out + p->out_off, p->out_len - p->out_off);
        p->out_len -= p->out_off;
        p->out_off = 0;
    }
    while (p->sent < limit) {
        size_t plen = pad_len(rm, s, p->sent);
        if (p->out_cap - p->out_len < plen + 32) {
            p->out_cap = (p->out_cap + plen + 32) * 2;
            p->out = realloc(p->out, p->out_cap);
            CHECK(p->out);
        }
        int k = snprintf(p->out + p->out_len, p->out_cap - p->out_len, "%d %d ", s, p->sent);
        p->out_len += (size_t)k;
        memset(p->out + p->out_len, pad_char(s, p->sent), plen);
        p->out_len += plen;
        p->out[p->out_len++] = '\n';
        p->sent++;
    }
}

static void flush_output(struct room *rm, int s)
{
    struct peer *p = &rm->p[s];
    while (p->out_off < p->out_len) {
        ssize_t w = send(p->fd, p->out + p->out_off, p->out_len - p->out_off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (w < 0)
            fprintf(stderr, "  client %d (%s) cannot send: %s\n", s, p->name, strerror(errno));
        CHECK(w > 0);
        p->out_off += (size_t)w;
    }
}

typedef bool (*room_done)(struct room *rm);

/* The one loop: send within the windows, read everything, until done(rm) or timeout_ms. The
 * slow client is watched for the server dropping it (hang-up or reset) but never read. */
static void pump(struct room *rm, room_done done, int64_t timeout_ms, const char *what)
{
    int64_t deadline = now_ms() + timeout_ms;
    struct pollfd *pf = calloc((size_t)rm->n, sizeof *pf);
    int *who = calloc((size_t)rm->n, sizeof *who);
    CHECK(pf && who);
    while (!done(rm)) {
        if (now_ms() > deadline) {
            fprintf(stderr, "  timed out waiting for: %s\n", what);
            for (int r = 0; r < rm->n && r < 8; r++)
                fprintf(stderr, "  client %d: sent %d of %d, got %ld lines%s%s\n", r,
                        rm->p[r].sent, rm->p[r].target, rm->p[r].lines_in,
                        rm->p[r].welcomed ? "" : ", no welcome", rm->p[r].eof ? ", closed" : "");
            CHECK(!"timed out");
        }
        int k = 0;
        for (int i = 0; i < rm->n; i++) {
            struct peer *p = &rm->p[i];
            if (p->fd < 0 || p->eof)
                continue;
            fill_output(rm, i);
            flush_output(rm, i);
            short ev = 0;
            if (p->reads)
                ev |= POLLIN;
            if (p->out_off < p->out_len)
                ev |= POLLOUT;
            if (ev == 0 && !(i == rm->slow && !rm->slow_dropped))
                continue;
            pf[k] = (struct pollfd){.fd = p->fd, .events = ev};
            who[k++] = i;
        }
        int n = poll(pf, (nfds_t)k, 100);
        CHECK(n >= 0 || errno == EINTR);
        for (int j = 0; j < k && n > 0; j++) {
            int i = who[j];
            short re = pf[j].revents;
            if (!re)
                continue;
            if (rm->p[i].reads && (re & (POLLIN | POLLHUP | POLLERR)) && !read_input(rm, i))
                continue;
            if (re & POLLOUT)
                flush_output(rm, i);
            if (i == rm->slow && (re & (POLLHUP | POLLERR)))
                rm->slow_dropped = true;
        }
    }
    free(pf);
    free(who);
}

static bool all_welcomed(struct room *rm)
{
    for (int i = 0; i < rm->n; i++)
        if (rm->p[i].fd >= 0 && !rm->p[i].welcomed)
            return false;
    return true;
}

/* Every reading client has every line of every other client. */
static bool all_heard_all(struct room *rm)
{
    for (int r = 0; r < rm->n; r++) {
        if (r == rm->slow)
            continue;
        for (int s = 0; s < rm->n; s++)
            if (s != r && rm->next[r * rm->n + s] < rm->p[s].target)
                return false;
    }
    return true;
}

static bool all_closed(struct room *rm)
{
    for (int r = 0; r < rm->n; r++)
        if (r != rm->slow && !rm->p[r].eof)
            return false;
    return true;
}

/* Half-close every reading client: the server lets each leave and closes it once its queue is
 * delivered. Any line still arriving would be one too many (take_line fails on it). */
static void everyone_leaves(struct room *rm)
{
    rm->expect_eof = true;
    for (int r = 0; r < rm->n; r++)
        if (r != rm->slow)
            CHECK(shutdown(rm->p[r].fd, SHUT_WR) == 0);
    pump(rm, all_closed, 60000, "every client closed after leaving");
}

static long total_lines(const struct room *rm)
{
    long t = 0;
    for (int r = 0; r < rm->n; r++)
        t += rm->p[r].lines_in;
    return t;
}

/* ---- Tests ---- */

/* test_scale(100) clients each send 50 lines, all at the same time; every client gets the
 * 99 * 50 lines of the others exactly once, in each sender's order, and none of its own. */
static void many_clients_every_line_to_every_other_client(void)
{
    int port;
    pid_t pid = start_chat(&port, NULL, "-q", NULL, NULL);
    struct room rm;
    int n = test_scale(100), lines = 50;
    room_init(&rm, n);
    rm.pad_max = 60;
    for (int i = 0; i < n; i++)
        peer_connect(&rm, i, port, 0);
    pump(&rm, all_welcomed, 60000, "every welcome");
    rm.window = (SERVER_QUEUE - 1) / (n > 1 ? n - 1 : 1);
    if (rm.window > lines)
        rm.window = lines;
    for (int i = 0; i < n; i++)
        rm.p[i].target = lines;
    pump(&rm, all_heard_all, 240000, "every line at every client");
    CHECK(total_lines(&rm) == (long)n * (n - 1) * lines);
    everyone_leaves(&rm);
    CHECK(total_lines(&rm) == (long)n * (n - 1) * lines);
    kill(pid, SIGTERM);
    expect_clean_exit(pid);
    room_free(&rm);
}

#define SLOW_CAP_LINES 200000 /* per fast client: the slow one must be dropped well before */

static bool slow_is_dropped(struct room *rm)
{
    for (int s = 0; s < rm->n; s++)
        if (s != rm->slow && rm->p[s].sent >= SLOW_CAP_LINES) {
            fprintf(stderr, "  %d lines each and the client that does not read is still there\n",
                    rm->p[s].sent);
            CHECK(!"the slow client was dropped");
        }
    return rm->slow_dropped;
}

/* Four clients chat hard while a fifth, with a tiny receive buffer, never reads. Its queue
 * fills and the server drops it (it sees a reset without reading); the four never wait for it
 * and get every line of each other, and the one line the slow client said. What the slow
 * client had received by then is a gapless, in-order prefix of the conversation. */
static void a_client_that_never_reads_is_dropped_and_stalls_no_one(void)
{
    int port, err;
    pid_t pid = start_chat(&port, &err, NULL, NULL, NULL); /* logs: we look for the drop */
    struct room rm;
    int fast = 4;
    room_init(&rm, fast + 1);
    rm.pad_max = 1000;
    rm.window = 200; /* (fast - 1) * 200 + 1 < SERVER_QUEUE */
    rm.slow = fast;
    for (int i = 0; i < fast; i++)
        peer_connect(&rm, i, port, 0);
    pump(&rm, all_welcomed, 30000, "the fast clients' welcomes");
    peer_connect(&rm, fast, port, 4096);
    pump(&rm, all_welcomed, 30000, "the slow client's welcome");
    rm.p[fast].reads = false; /* from now on it never reads */
    rm.p[fast].target = 1;    /* it says one line, though */
    for (int i = 0; i < fast; i++)
        rm.p[i].target = INT_MAX;
    pump(&rm, slow_is_dropped, 120000, "the slow client to be dropped");
    long at_drop = 0;
    for (int i = 0; i < fast; i++) {
        at_drop += rm.p[i].sent;
        rm.p[i].target = rm.p[i].sent + 200; /* and the others chat on */
    }
    pump(&rm, all_heard_all, 120000, "every line at every fast client");

    /* What reached the slow client: read it at last, to its end, and check it. */
    struct peer *p = &rm.p[fast];
    p->reads = true;
    do
        CHECK(readable_within(p->fd, 20000));
    while (read_input(&rm, fast));
    CHECK(p->eof);
    fprintf(stderr, "  the slow client was dropped after %ld lines, %ld of which it could still read\n",
            at_drop, p->lines_in);
    CHECK(p->lines_in < at_drop);
    everyone_leaves(&rm);
    kill(pid, SIGTERM);
    expect_clean_exit(pid);

    char log[65536];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof log - 1 && (r = read(err, log + got, sizeof log - 1 - got)) > 0)
        got += (size_t)r;
    log[got] = '\0';
    char want[128];
    snprintf(want, sizeof want, "(%s): queue full", p->name);
    if (!strstr(log, want))
        fprintf(stderr, "  server log:\n%s", log);
    CHECK(strstr(log, want) != NULL);
    CHECK(strstr(log, "connect on ") && strstr(log, "EOF on "));
    close(err);
    room_free(&rm);
}

/* SIGTERM with clients connected: each sees end of file, the server exits 0 soon after the
 * grace period (-g 300). */
static void sigterm_stops_the_server_cleanly(void)
{
    int port;
    pid_t pid = start_chat(&port, NULL, "-q", "-g", "300");
    struct room rm;
    room_init(&rm, 3);
    rm.pad_max = 10;
    rm.window = 5;
    for (int i = 0; i < 3; i++)
        peer_connect(&rm, i, port, 0);
    pump(&rm, all_welcomed, 30000, "every welcome");
    for (int i = 0; i < 3; i++)
        rm.p[i].target = 5;
    pump(&rm, all_heard_all, 30000, "every line");
    int64_t t0 = now_ms();
    kill(pid, SIGTERM);
    rm.expect_eof = true;
    pump(&rm, all_closed, 30000, "every client closed by the shutdown");
    expect_clean_exit(pid);
    CHECK(now_ms() - t0 < 15000);
    CHECK(total_lines(&rm) == 3 * 2 * 5);
    room_free(&rm);
}

/* Read one line (blocking, bounded) from a peer's buffered input. */
static size_t read_line(struct peer *p, char **line)
{
    for (;;) {
        char *nl = p->in_len ? memchr(p->in, '\n', p->in_len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - p->in);
            *line = malloc(n + 1);
            CHECK(*line);
            memcpy(*line, p->in, n);
            memmove(p->in, nl + 1, p->in_len - n - 1);
            p->in_len -= n + 1;
            return n;
        }
        if (p->in_cap - p->in_len < 65536) {
            p->in_cap = p->in_len + 2 * 65536;
            p->in = realloc(p->in, p->in_cap);
            CHECK(p->in);
        }
        CHECK(readable_within(p->fd, 20000));
        ssize_t r = read(p->fd, p->in + p->in_len, p->in_cap - p->in_len);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        CHECK(r > 0);
        p->in_len += (size_t)r;
    }
}

static void expect_from(struct peer *to, const struct peer *from, const char *text, size_t n)
{
    char *line;
    size_t len = read_line(to, &line);
    CHECK(len == from->namelen + 1 + n);
    CHECK(memcmp(line, from->name, from->namelen) == 0 && line[from->namelen] == ' ');
    CHECK(memcmp(line + from->namelen + 1, text, n) == 0);
    free(line);
}

/* NUL bytes, a carriage return, a 60 KB line and a last line without newline all reach the
 * other clients exactly; a line over the 64 KiB limit ends only its sender's connection. */
static void lines_pass_through_byte_for_byte(void)
{
    int port;
    pid_t pid = start_chat(&port, NULL, "-q", "-g", "200"); /* b is still there at the end */
    struct room rm;
    room_init(&rm, 3);
    for (int i = 0; i < 3; i++)
        peer_connect(&rm, i, port, 0);
    pump(&rm, all_welcomed, 30000, "every welcome");
    struct peer *a = &rm.p[0], *b = &rm.p[1], *c = &rm.p[2];
    for (int i = 0; i < 3; i++)
        set_nonblocking(rm.p[i].fd, false); /* plain blocking I/O from here, bounded by polls */

    static const char odd[] = "nul\0inside\r";
    write_all(a->fd, odd, sizeof odd - 1);
    write_all(a->fd, "\n", 1);
    expect_from(b, a, odd, sizeof odd - 1);
    expect_from(c, a, odd, sizeof odd - 1);

    size_t big_n = 60000;
    char *big = malloc(big_n + 1);
    CHECK(big);
    for (size_t i = 0; i < big_n; i++)
        big[i] = (char)('A' + i % 23);
    big[big_n] = '\n';
    write_all(b->fd, big, big_n + 1);
    expect_from(a, b, big, big_n);
    expect_from(c, b, big, big_n);
    free(big);

    /* c sends a line past the limit: c is closed, a and b hear nothing of it and go on. */
    size_t huge_n = 70 * 1024;
    char *huge = malloc(huge_n + 1);
    CHECK(huge);
    memset(huge, 'h', huge_n);
    huge[huge_n] = '\n';
    for (size_t off = 0; off < huge_n + 1;) {
        ssize_t w = send(c->fd, huge + off, huge_n + 1 - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* closed under us: fine */
        off += (size_t)w;
    }
    free(huge);
    for (;;) { /* c: end of file (or reset), nothing else */
        CHECK(readable_within(c->fd, 20000));
        char tmp[256];
        ssize_t r = read(c->fd, tmp, sizeof tmp);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r <= 0);
        break;
    }

    /* a's last line has no newline; then a leaves (end of file) and is closed. */
    write_all(a->fd, "tail without newline", 20);
    shutdown(a->fd, SHUT_WR);
    expect_from(b, a, "tail without newline", 20);
    CHECK(a->in_len == 0 && readable_within(a->fd, 20000));
    char tmp[16];
    CHECK(read(a->fd, tmp, sizeof tmp) == 0);
    CHECK(b->in_len == 0 && !readable_within(b->fd, 100)); /* nothing more for b */
    kill(pid, SIGTERM);
    expect_clean_exit(pid);
    room_free(&rm);
}

const struct test tests[] = {
    {"many_clients_every_line_to_every_other_client", many_clients_every_line_to_every_other_client, 300},
    {"a_client_that_never_reads_is_dropped_and_stalls_no_one", a_client_that_never_reads_is_dropped_and_stalls_no_one, 300},
    {"sigterm_stops_the_server_cleanly", sigterm_stops_the_server_cleanly, 120},
    {"lines_pass_through_byte_for_byte", lines_pass_through_byte_for_byte, 120},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
