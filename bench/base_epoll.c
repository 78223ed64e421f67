/* base_epoll: the hand-written epoll line echo server weft is measured against.
 *
 * One thread, edge-triggered epoll, non-blocking sockets. Each read goes into one shared
 * scratch buffer; the complete lines in it go back with one write (so pipelined lines are
 * answered with one send per read), and only what cannot go out now -- a partial last line,
 * or output the socket would not take -- is kept in a per-connection buffer, allocated on
 * demand and freed once empty. An idle connection costs its struct and nothing else.
 *
 * Protocol: every '\n'-terminated line comes back unchanged; a partial last line at EOF gets
 * a '\n' added; then the server closes. Lines longer than MAX_PENDING close the connection.
 * While output is blocked the connection is not read (backpressure).
 *
 * Usage: base_epoll [-p PORT]   (0: any free port); prints "listening on 127.0.0.1:PORT".
 * SIGTERM/SIGINT end it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define SCRATCH (64 * 1024)
#define MAX_PENDING (4 * 1024 * 1024)
#define READ_BUDGET 16
#define MAX_EVENTS 512

struct conn {
    int fd;
    unsigned readable : 1, blocked : 1, eof : 1, queued : 1, hup : 1; /* hup: FIN seen, read to 0 */
    char *buf;          /* pending bytes: buf[0, out) unsent complete lines, buf[out, len) partial line */
    size_t out, len, cap;
    struct conn *next;  /* run list: budget ran out with input left */
};

static char scratch[SCRATCH];
static int ep;
static struct conn *runq;
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void conn_free(struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->buf);
    c->buf = NULL;
    c->fd = -1;
    if (!c->queued)
        free(c);
    /* a queued conn is freed when the run list reaches it (fd == -1) */
}

static int reserve(struct conn *c, size_t extra)
{
    if (c->len + extra <= c->cap)
        return 0;
    size_t cap = c->cap ? c->cap : 4096;
    while (cap < c->len + extra)
        cap *= 2;
    if (cap > MAX_PENDING + SCRATCH + 1)
        return -1;
    char *b = realloc(c->buf, cap);
    if (!b)
        return -1;
    c->buf = b;
    c->cap = cap;
    return 0;
}

/* Try to send buf[0, out). 0: all sent; 1: blocked; -1: error. */
static int flush_pending(struct conn *c)
{
    size_t done = 0;
    while (done < c->out) {
        ssize_t w = send(c->fd, c->buf + done, c->out - done, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            return -1;
        }
        done += (size_t)w;
    }
    memmove(c->buf, c->buf + done, c->len - done);
    c->len -= done;
    c->out -= done;
    if (c->len == 0) {
        free(c->buf);
        c->buf = NULL;
        c->cap = 0;
    }
    c->blocked = c->out > 0;
    return c->blocked;
}

/* Serve c: flush, then read/echo until EAGAIN, budget, EOF or blocked output. */
static void serve(struct conn *c)
{
    if (c->out && flush_pending(c) != 0) {
        if (!c->blocked)
            conn_free(c);
        return;
    }
    for (int i = 0; c->readable && !c->eof && !c->blocked; i++) {
        if (i == READ_BUDGET) {
            if (!c->queued) {
                c->queued = 1;
                c->next = runq;
                runq = c;
            }
            return;
        }
        char *dst;
        size_t room;
        if (c->len) { /* a partial line is pending: read behind it */
            if (reserve(c, SCRATCH) != 0) {
                conn_free(c);
                return;
            }
            dst = c->buf + c->len;
            room = c->cap - c->len;
        } else {
            dst = scratch;
            room = SCRATCH;
        }
        ssize_t r = recv(c->fd, dst, room, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                c->readable = 0;
                break;
            }
            conn_free(c);
            return;
        }
        if (r == 0) {
            c->eof = 1;
            break;
        }
        if ((size_t)r < room && !c->hup)
            c->readable = 0; /* drained: the next arrival raises a new edge (not after FIN) */
        if (dst == scratch) {
            char *nl = memrchr(scratch, '\n', (size_t)r);
            size_t whole = nl ? (size_t)(nl - scratch) + 1 : 0, sent = 0;
            while (sent < whole) {
                ssize_t w = send(c->fd, scratch + sent, whole - sent, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EINTR)
                        continue;
                    if (errno == EAGAIN)
                        break;
                    conn_free(c);
                    return;
                }
                sent += (size_t)w;
            }
            /* keep what did not go out, and the partial line */
            if (reserve(c, (size_t)r - sent) != 0) {
                conn_free(c);
                return;
            }
            memcpy(c->buf, scratch + sent, (size_t)r - sent);
            c->len = (size_t)r - sent;
            c->out = whole - sent;
            c->blocked = c->out > 0;
            if (c->len == 0) {
                free(c->buf);
                c->buf = NULL;
                c->cap = 0;
            }
        } else {
            size_t old = c->len;
            c->len += (size_t)r;
            char *nl = memrchr(c->buf + old, '\n', (size_t)r);
            if (nl) {
                c->out = (size_t)(nl - c->buf) + 1;
                if (flush_pending(c) < 0) {
                    conn_free(c);
                    return;
                }
            } else if (c->len > MAX_PENDING) {
                conn_free(c); /* line too long */
                return;
            }
        }
    }
    if (c->eof && !c->blocked) {
        if (c->len > c->out) { /* partial last line: add its '\n' */
            if (reserve(c, 1) != 0) {
                conn_free(c);
                return;
            }
            c->buf[c->len++] = '\n';
            c->out = c->len;
        }
        int f = c->out ? flush_pending(c) : 0;
        if (f != 1)
            conn_free(c);
    }
}

int main(int argc, char **argv)
{
    int port = 1234, opt;
    while ((opt = getopt(argc, argv, "p:q")) != -1) {
        if (opt == 'p')
            port = atoi(optarg);
        else if (opt != 'q') {
            fprintf(stderr, "usage: %s [-p PORT]\n", argv[0]);
            return 2;
        }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof addr;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, SOMAXCONN) != 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0) {
        perror("listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    static struct epoll_event evs[MAX_EVENTS];
    while (!stop) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, runq ? 0 : 1000);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) { /* listener: accept everything waiting */
                for (int k = 0; k < 4096; k++) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break; /* EAGAIN, or EMFILE: the next connection retries */
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                             .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
                        close(fd);
                        free(nc);
                    }
                }
                continue;
            }
            if (c->fd < 0)
                continue;
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                c->readable = 1;
            if (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                c->hup = 1;
            if (c->blocked && !(evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR)))
                continue;
            if (!c->readable && !c->out)
                continue;
            serve(c);
        }
        /* connections whose read budget ran out */
        struct conn *q = runq;
        runq = NULL;
        while (q) {
            struct conn *c = q;
            q = q->next;
            c->queued = 0;
            if (c->fd < 0)
                free(c);
            else
                serve(c);
        }
    }
    return 0;
}
