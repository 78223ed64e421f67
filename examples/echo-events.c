/* echo-events: the line echo server written the "classic" way, without coroutines.
 *
 * One thread, one edge-triggered epoll loop, non-blocking sockets and an explicit state
 * machine per connection. It exists to show what weft saves you from writing, and as a
 * reference: its output must match the coroutine echo server byte for byte.
 *
 * Protocol: every line the client sends ('\n' terminated, any other byte allowed) comes
 * back unchanged. A final line without '\n' is echoed with one added when the client shuts
 * down its side; once everything is echoed the server closes. A line longer than LINE_MAX
 * bytes closes the connection.
 *
 * Usage: echo-events [-p PORT] [-h HOST] [-q]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_LEN  65536     /* longest accepted line, '\n' not counted */
#define OUT_HIGH      65536     /* stop reading a client with this much echo unsent */
#define MIN_READ      2048      /* compact or grow the buffer below this much free space */
#define INIT_CAP      4096
/* Worst case held at once: just under OUT_HIGH unsent, a partial line of LINE_MAX bytes,
 * and room for one more read (or the '\n' added at EOF). */
#define MAX_CAP       (OUT_HIGH + LINE_MAX_LEN + MIN_READ + 1)
#define READ_BUDGET   16        /* reads per turn, so one fast client cannot starve the rest */
#define ACCEPT_PAUSE_MS 100     /* how long to ignore the listener after EMFILE and friends */
#define MAX_EVENTS    256

/* Connection state. ECHO: reading lines and echoing them. DRAIN: the client has shut down
 * its side; we only flush what is left, then close. */
enum conn_state { ST_ECHO, ST_DRAIN };

/* One buffer holds both directions, because the echo of a complete line is the line itself:
 *   buf[0, sent)      already sent, reclaimable
 *   buf[sent, ready)  complete lines waiting to be sent
 *   buf[ready, len)   the current partial line (never contains '\n')
 *   buf[len, cap)     free space for the next read */
struct conn {
    int fd;
    enum conn_state state;
    /* Edge-triggered readiness as last known: set by epoll, cleared by EAGAIN. */
    unsigned readable : 1, writable : 1, queued : 1;
    char *buf;
    size_t cap, sent, ready, len;
    struct conn *prev, *next;   /* run queue: connections with budgeted-out work */
};

static struct {
    int epfd;
    int listen_fd;
    int sig_fd;
    int quiet;
    int accept_paused;
    int accept_warned;          /* accept failure already logged */
    long long resume_at;        /* monotonic ms at which to watch the listener again */
    struct conn *runq_head, *runq_tail;
} srv;

/* epoll user data for the two non-connection fds; connections use their struct conn. */
static char listen_tag, signal_tag;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);     /* one write per line: stderr is unbuffered */
}

/* ---- run queue ---------------------------------------------------------------------- */

static void runq_push(struct conn *c)
{
    if (c->queued)
        return;
    c->queued = 1;
    c->next = NULL;
    c->prev = srv.runq_tail;
    if (srv.runq_tail)
        srv.runq_tail->next = c;
    else
        srv.runq_head = c;
    srv.runq_tail = c;
}

static void runq_remove(struct conn *c)
{
    if (!c->queued)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv.runq_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        srv.runq_tail = c->prev;
    c->queued = 0;
    c->prev = c->next = NULL;
}

/* ---- connections -------------------------------------------------------------------- */

static const char too_long_msg[] = "line too long (over 65536 bytes)";

static void conn_close(struct conn *c, const char *why)
{
    /* A too-long line is logged even with -q: it is the client breaking the protocol. */
    if (!srv.quiet || why == too_long_msg) {
        if (why)
            logmsg("closing fd %d: %s", c->fd, why);
        else
            logmsg("EOF on fd %d", c->fd);
    }
    runq_remove(c);
    close(c->fd);   /* also removes it from the epoll set */
    free(c->buf);
    free(c);
}

/* Make sure there is room to read into: first reclaim the sent prefix, then grow.
 * The invariants in conn_read keep what must be kept below MAX_CAP - 1. */
static int conn_make_room(struct conn *c)
{
    if (c->cap - c->len >= MIN_READ)
        return 0;
    if (c->sent > 0) {
        memmove(c->buf, c->buf + c->sent, c->len - c->sent);
        c->ready -= c->sent;
        c->len -= c->sent;
        c->sent = 0;
    }
    if (c->cap - c->len < MIN_READ && c->cap < MAX_CAP) {
        size_t ncap = c->cap * 2 < MAX_CAP ? c->cap * 2 : MAX_CAP;
        char *nbuf = realloc(c->buf, ncap);
        if (!nbuf)
            return -1;
        c->buf = nbuf;
        c->cap = ncap;
    }
    return 0;
}

/* Send complete lines while the socket takes them. -1 on a fatal error (errno set). */
static int conn_flush(struct conn *c)
{
    while (c->writable && c->sent < c->ready) {
        ssize_t n = send(c->fd, c->buf + c->sent, c->ready - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                c->writable = 0;
            else if (errno != EINTR)
                return -1;
            continue;
        }
        c->sent += (size_t)n;
    }
    if (c->sent == c->len)   /* nothing buffered at all: start over at the front */
        c->sent = c->ready = c->len = 0;
    return 0;
}

/* Mark the complete lines among the n bytes just read at buf[len]. -1 if a line is too long. */
static int conn_frame(struct conn *c, size_t n)
{
    char *p = c->buf + c->len, *end = p + n, *nl;

    while ((nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        if ((size_t)(nl - (c->buf + c->ready)) > LINE_MAX_LEN)
            return -1;
        c->ready = (size_t)(nl + 1 - c->buf);
        p = nl + 1;
    }
    c->len += n;
    return c->len - c->ready > LINE_MAX_LEN ? -1 : 0;
}

/* One read. Returns 0 to go on, -1 to close the connection (*why says why). */
static int conn_read(struct conn *c, const char **why)
{
    if (conn_make_room(c) < 0) {
        *why = "out of memory";
        return -1;
    }
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            c->readable = 0;
        else if (errno != EINTR) {
            *why = strerror(errno);
            return -1;
        }
        return 0;
    }
    if (n == 0) {
        /* Client is done sending. conn_make_room left at least one byte free, which is
         * where the '\n' for a final unterminated line goes. */
        if (c->len > c->ready)
            c->buf[c->len++] = '\n';
        c->ready = c->len;
        c->state = ST_DRAIN;
        return 0;
    }
    if (conn_frame(c, (size_t)n) < 0) {
        *why = too_long_msg;
        return -1;
    }
    return 0;
}

/* Advance the state machine as far as readiness allows. May free c. */
static void conn_run(struct conn *c)
{
    const char *why = NULL;
    int budget = READ_BUDGET;

    runq_remove(c);
    for (;;) {
        if (conn_flush(c) < 0) {
            why = strerror(errno);
            break;
        }
        if (c->state == ST_DRAIN) {
            if (c->len == 0)
                break;          /* all echoed: close */
            return;             /* wait for EPOLLOUT */
        }
        /* Back-pressure: with OUT_HIGH unsent we stop reading until EPOLLOUT drains it,
         * so a client that never reads costs at most MAX_CAP bytes. */
        if (!c->readable || c->ready - c->sent >= OUT_HIGH)
            return;
        if (budget-- == 0) {
            runq_push(c);       /* more to read, but let the others have a turn */
            return;
        }
        if (conn_read(c, &why) < 0)
            break;
    }
    conn_close(c, why);
}

static void conn_event(struct conn *c, uint32_t ev)
{
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->readable = 1;
    if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        c->writable = 1;
    conn_run(c);
}

static void format_addr(const struct sockaddr *sa, socklen_t len, char *out, size_t size)
{
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if (getnameinfo(sa, len, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        snprintf(out, size, "?");
    else
        snprintf(out, size, "%s:%s", host, port);
}

static void conn_new(int fd, const struct sockaddr *peer, socklen_t peerlen)
{
    int one = 1;
    /* Echoes are small and latency-bound: don't let Nagle hold them back. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    struct conn *c = calloc(1, sizeof *c);
    if (c)
        c->buf = malloc(INIT_CAP);
    if (!c || !c->buf) {
        logmsg("out of memory, dropping connection on fd %d", fd);
        free(c);
        close(fd);
        return;
    }
    c->fd = fd;
    c->cap = INIT_CAP;
    c->state = ST_ECHO;

    /* Both directions, edge-triggered, registered once: no epoll_ctl per state change. */
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                              .data.ptr = c };
    if (epoll_ctl(srv.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        logmsg("epoll_ctl: %s", strerror(errno));
        free(c->buf);
        free(c);
        close(fd);
        return;
    }
    if (!srv.quiet) {
        char addr[NI_MAXHOST + NI_MAXSERV + 2];
        format_addr(peer, peerlen, addr, sizeof addr);
        logmsg("connect on fd %d (from %s)", fd, addr);
    }
}

/* ---- listener ----------------------------------------------------------------------- */

static void listener_watch(int on)
{
    struct epoll_event ev = { .events = on ? EPOLLIN | EPOLLET : 0, .data.ptr = &listen_tag };
    /* Re-arming with MOD makes epoll look at the socket again, so connections that queued
     * up while we were not watching are reported even though no new edge happens. */
    if (epoll_ctl(srv.epfd, EPOLL_CTL_MOD, srv.listen_fd, &ev) < 0)
        logmsg("epoll_ctl(listener): %s", strerror(errno));
}

static void accept_all(void)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(srv.listen_fd, (struct sockaddr *)&ss, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            srv.accept_warned = 0;
            conn_new(fd, (struct sockaddr *)&ss, len);
            continue;
        }
        switch (errno) {
        case EAGAIN:
#if EAGAIN != EWOULDBLOCK
        case EWOULDBLOCK:
#endif
            return;             /* drained, as edge-triggering requires */
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
            continue;           /* that one connection is gone; try the next */
        default:
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays queued, so
             * retrying now would spin. Stop watching the listener for a while instead. */
            if (!srv.accept_warned)     /* once per streak, not every retry */
                logmsg("accept: %s; retrying every %d ms", strerror(errno), ACCEPT_PAUSE_MS);
            srv.accept_warned = 1;
            listener_watch(0);
            srv.accept_paused = 1;
            srv.resume_at = now_ms() + ACCEPT_PAUSE_MS;
            return;
        }
    }
}

static int listen_on(const char *host, const char *port)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *res, *ai;
    int err = getaddrinfo(host, port, &hints, &res);
    if (err != 0) {
        logmsg("%s:%s: %s", host, port, gai_strerror(err));
        return -1;
    }
    int fd = -1;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
        errno = err;
    }
    if (fd < 0)
        logmsg("cannot listen on %s:%s: %s", host, port, strerror(errno));
    freeaddrinfo(res);
    return fd;
}

/* ---- main loop ---------------------------------------------------------------------- */

static int watch(int fd, void *tag)
{
    struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.ptr = tag };
    return epoll_ctl(srv.epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* Give each connection that used up its read budget one more turn. Only those queued
 * before this pass run, so a connection that queues itself again waits for the next one. */
static void run_queued(void)
{
    struct conn *last = srv.runq_tail;
    while (srv.runq_head) {
        struct conn *c = srv.runq_head;
        int was_last = (c == last);
        conn_run(c);
        if (was_last)
            break;
    }
}

static int next_timeout(void)
{
    if (srv.runq_head)
        return 0;
    if (!srv.accept_paused)
        return -1;
    long long left = srv.resume_at - now_ms();
    return left > 0 ? (int)left : 0;
}

static void serve(void)
{
    struct epoll_event evs[MAX_EVENTS];

    for (;;) {
        int n = epoll_wait(srv.epfd, evs, MAX_EVENTS, next_timeout());
        if (n < 0) {
            if (errno == EINTR)
                continue;
            logmsg("epoll_wait: %s", strerror(errno));
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            void *tag = evs[i].data.ptr;
            if (tag == &listen_tag)
                accept_all();
            else if (tag == &signal_tag)
                return;         /* SIGINT or SIGTERM */
            else
                conn_event(tag, evs[i].events);
        }
        if (srv.accept_paused && now_ms() >= srv.resume_at) {
            srv.accept_paused = 0;
            listener_watch(1);
        }
        run_queued();
    }
}

static _Noreturn void usage(const char *prog)
{
    fprintf(stderr, "usage: %s [-p PORT] [-h HOST] [-q]\n", prog);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "1234";
    int opt;

    while ((opt = getopt(argc, argv, "p:h:q")) != -1) {
        switch (opt) {
        case 'p': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 0 || v > 65535)
                usage(argv[0]);
            port = optarg;
            break;
        }
        case 'h': host = optarg; break;
        case 'q': srv.quiet = 1; break;
        default: usage(argv[0]);
        }
    }
    if (optind != argc)
        usage(argv[0]);

    /* Signals arrive as readable events on a signalfd, so the loop needs no handler. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);   /* belt and braces: sends already use MSG_NOSIGNAL */

    srv.epfd = epoll_create1(EPOLL_CLOEXEC);
    srv.sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (srv.epfd < 0 || srv.sig_fd < 0) {
        logmsg("epoll/signalfd: %s", strerror(errno));
        return 1;
    }
    srv.listen_fd = listen_on(host, port);
    if (srv.listen_fd < 0)
        return 1;
    if (watch(srv.listen_fd, &listen_tag) < 0 || watch(srv.sig_fd, &signal_tag) < 0) {
        logmsg("epoll_ctl: %s", strerror(errno));
        return 1;
    }

    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char portbuf[NI_MAXSERV];
    if (getsockname(srv.listen_fd, (struct sockaddr *)&ss, &len) < 0 ||
        getnameinfo((struct sockaddr *)&ss, len, NULL, 0, portbuf, sizeof portbuf,
                    NI_NUMERICSERV) != 0) {
        logmsg("getsockname: %s", strerror(errno));
        return 1;
    }
    if (strchr(host, ':')) /* an IPv6 address: bracketed, as weft and the seed print it */
        printf("listening on [%s]:%s\n", host, portbuf);
    else
        printf("listening on %s:%s\n", host, portbuf);
    fflush(stdout);

    serve();
    return 0;
}
