/* Sockets: address strings, listen/accept/connect over TCP (IPv4, IPv6, host names) and Unix
 * sockets, all non-blocking underneath so they park inside a coroutine and block outside.
 * A listener, like a channel, counts the coroutines parked in it, so closing it under a
 * waiter wakes the waiter with EBADF instead of freeing memory it is about to use. */
#include "internal.h"
#include "sys.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct weft_listener {
    int fd;
    int port;
    ref ref;            /* coroutines inside weft_accept; closed under them */
    bool accepting;     /* a coroutine waits in weft_accept: a second one gets EBUSY */
    char addr[128];
    char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

_Atomic unsigned net_resolve_delay_ms;

struct resolve_job {
    const char *host, *port;
    struct addrinfo hints;
    struct addrinfo *res;
    int rc;             /* getaddrinfo's */
    bool ran;
    char host_copy[256], port_copy[32];
};

/* Runs on an offload thread: getaddrinfo may wait for DNS for seconds. */
static void *resolve_blocking(void *p)
{
    struct resolve_job *j = p;
    if (net_resolve_delay_ms)
    {
        unsigned ms = net_resolve_delay_ms;
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
        sys_nanosleep(&ts);
    }
    j->rc = getaddrinfo(j->host, j->port, &j->hints, &j->res);
    j->ran = true;
    return NULL;
}

/* The lookup of a caller that left (cancelled, out of time) or never started. */
static void resolve_drop(void *arg, void *result)
{
    (void)result;
    struct resolve_job *j = arg;
    if (j->ran && j->rc == 0)
        freeaddrinfo(j->res);
    free(j);
}

static int resolve(const parsed_addr *pa, bool passive, struct addrinfo **res, int64_t deadline)
{
    struct addrinfo hints = {0}, *found = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = (passive ? AI_PASSIVE : 0) | AI_NUMERICHOST;
    const char *host = pa->wildcard ? NULL : pa->host;
    /* Numeric addresses need no resolver: answer them here, without a thread hop. */
    int rc = getaddrinfo(host, pa->port, &hints, &found);
    if (rc == EAI_NONAME && host) {
        /* Names go to an offload thread; the job is on the heap because a caller that is
         * cancelled or out of time leaves before the lookup ends (resolve_drop cleans up). */
        struct resolve_job *j = calloc(1, sizeof *j);
        if (!j)
            return -1;
        snprintf(j->host_copy, sizeof j->host_copy, "%s", pa->host);
        snprintf(j->port_copy, sizeof j->port_copy, "%s", pa->port);
        j->host = j->host_copy;
        j->port = j->port_copy;
        j->hints = hints;
        j->hints.ai_flags &= ~AI_NUMERICHOST;
        if (offload_call(resolve_blocking, j, NULL, resolve_drop, deadline) != 0)
            return -1; /* j is resolve_drop's */
        rc = j->rc;
        found = j->res;
        free(j);
    }
    if (rc == 0) {
        *res = found;
        return 0;
    }
    if (rc == EAI_SYSTEM)
        return -1;
    errno = rc == EAI_MEMORY ? ENOMEM : (rc == EAI_SERVICE ? EINVAL : EHOSTUNREACH);
    return -1;
}

static void set_nodelay(int fd)
{
    int one = 1;
    sys_setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ---- Listening ---- */

static int listen_unix(weft_listener *l, const parsed_addr *pa, int backlog)
{
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    memcpy(un.sun_path, pa->path, strlen(pa->path) + 1);
    l->fd = sys_socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0)
        return -1;
    if (bind(l->fd, (struct sockaddr *)&un, sizeof un) != 0 || listen(l->fd, backlog) != 0) {
        int e = errno;
        sys_close(l->fd);
        errno = e;
        return -1;
    }
    memcpy(l->unix_path, pa->path, strlen(pa->path) + 1);
    snprintf(l->addr, sizeof l->addr, "unix:%s", pa->path);
    return 0;
}

static int listen_one(const struct addrinfo *ai, int backlog, bool reuseport)
{
    int fd = sys_socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    int one = 1, zero = 0;
    sys_setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport)
        sys_setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (ai->ai_family == AF_INET6) /* "*:port" means both families on one socket */
        sys_setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        sys_close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int listen_inet(weft_listener *l, const parsed_addr *pa, int backlog, bool reuseport)
{
    struct addrinfo *res;
    if (resolve(pa, true, &res, -1) != 0)
        return -1;
    l->fd = -1;
    /* For the wildcard, an IPv6 socket serves both families: try it first. */
    for (int pass = 0; pass < 2 && l->fd < 0; pass++) {
        for (struct addrinfo *ai = res; ai && l->fd < 0; ai = ai->ai_next) {
            if (pa->wildcard && (pass == 0) != (ai->ai_family == AF_INET6))
                continue;
            if (!pa->wildcard && pass == 1)
                break;
            l->fd = listen_one(ai, backlog, reuseport);
        }
        /* IPv4 alone only where IPv6 is missing: a port taken on [::] stays taken. */
        if (l->fd < 0 && pa->wildcard && errno != EAFNOSUPPORT && errno != EADDRNOTAVAIL)
            break;
    }
    int err = errno;
    freeaddrinfo(res);
    errno = err;
    if (l->fd < 0)
        return -1;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    getsockname(l->fd, (struct sockaddr *)&ss, &len);
    sockaddr_format(&ss, len, l->addr, sizeof l->addr);
    l->port = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                      : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

weft_listener *weft_listen(const char *addr, int backlog)
{
    return net_listen(addr, backlog, false);
}

weft_listener *weft_listen_ex(const char *addr, int backlog, int flags)
{
    if (flags & ~WEFT_LISTEN_REUSEPORT) {
        errno = EINVAL;
        return NULL;
    }
    return net_listen(addr, backlog, flags & WEFT_LISTEN_REUSEPORT);
}

weft_listener *net_listen(const char *addr, int backlog, bool reuseport)
{
    parsed_addr pa;
    if (net_parse_addr(addr, &pa) != 0)
        return NULL;
    weft_listener *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    if (backlog <= 0)
        backlog = SOMAXCONN;
    int rc = pa.is_unix ? listen_unix(l, &pa, backlog) : listen_inet(l, &pa, backlog, reuseport);
    if (rc != 0) {
        free(l);
        return NULL;
    }
    return l;
}

const char *weft_listener_addr(const weft_listener *l) { return l->addr; }
int weft_listener_port(const weft_listener *l) { return l->port; }
int weft_listener_fd(const weft_listener *l) { return l->fd; }

/* Accept one connection without waiting: a channel, or NULL with errno (EAGAIN: none). */
/* After a stay in l (a wait or a budget yield), as chan_leave: a close meanwhile frees l
 * when we are the last one out and fails with EBADF. */
static int listener_leave(weft_listener *l, int rc)
{
    bool last;
    if (ref_leave(&l->ref, &last)) {
        if (last)
            free(l);
        errno = EBADF;
        return -1;
    }
    return rc;
}

static int listener_spend(weft_listener *l)
{
    ref_enter(&l->ref);
    sched_spend_io();
    return listener_leave(l, 0);
}

/* What a freshly accepted fd becomes a channel from. */
static void accepted_note(accepted_conn *a, int fd, const struct sockaddr_storage *ss,
                          socklen_t len)
{
    a->fd = fd;
    a->tcp = ss->ss_family != AF_UNIX;
    sockaddr_format(ss, len, a->peer, sizeof a->peer);
    if (a->tcp)
        set_nodelay(fd);
}

size_t net_chan_size(const accepted_conn *a)
{
    return chan_size(a->peer) + (sock_transport_size() + 63) / 64 * 64;
}

weft_chan *net_chan_of(const accepted_conn *a, void *mem)
{
    transport *t = sock_transport_in(mem ? (char *)mem + chan_size(a->peer) : NULL, a->fd, true,
                                     a->tcp);
    if (!t) {
        sys_close(a->fd);
        errno = ENOMEM;
        return NULL;
    }
    return chan_new_in(mem, t, a->peer, true);
}

void net_chan_settle(weft_chan *c)
{
    sock_room_settle((char *)c + chan_size(weft_chan_peer(c)));
}

/* Wait until l is readable (or, on io_uring, accept there): one coroutine at a time, as
 * epoll's slots also enforce, on either backend. -1 with errno; EBADF: l may be gone. */
static int accept_wait(weft_listener *l, struct sockaddr_storage *ss, socklen_t *len,
                       int64_t deadline)
{
    if (l->accepting) {
        errno = EBUSY;
        return -1;
    }
    ref_enter(&l->ref);
    l->accepting = true;
    int fd;
    if (fd_ops_available()) { /* io_uring: the accept itself waits */
        unsigned ulen = sizeof *ss;
        io_op op = {.kind = IO_OP_ACCEPT, .fd = l->fd, .buf = ss, .addrlen = &ulen};
        fd = (int)fd_op(&op, deadline);
        *len = ulen;
        if (fd < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            /* A kernel that honours O_NONBLOCK inside io_uring: wait for readiness. */
            fd = fd_wait(l->fd, WEFT_READABLE, deadline) == 0 ? -2 : -1;
    } else {
        fd = fd_wait(l->fd, WEFT_READABLE, deadline) == 0 ? -2 : -1;
    }
    int err = errno;
    l->accepting = false;
    if (listener_leave(l, 0) != 0) { /* closed meanwhile */
        if (fd >= 0)
            sys_close(fd);
        return -1;
    }
    errno = err;
    return fd; /* -2: readable now, try again */
}

int net_accept_now(weft_listener *l, accepted_conn *a)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = sys_accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            accepted_note(a, fd, &ss, len);
            return 0;
        }
        if (errno != EINTR && errno != ECONNABORTED)
            return -1;
    }
}

int net_accept_conn(weft_listener *l, int64_t deadline, accepted_conn *a)
{
    for (;;) {
        if (listener_spend(l) != 0)
            return -1;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = sys_accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            fd = accept_wait(l, &ss, &len, deadline);
            if (fd == -2)
                continue;
            if (fd < 0 && (errno == EBADF || errno == EBUSY || errno == ETIMEDOUT ||
                           errno == ECANCELED))
                return -1; /* (EBADF: l may be gone) */
        }
        if (fd >= 0) {
            accepted_note(a, fd, &ss, len);
            return 0;
        }
        if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1; /* (a client gone before we took it costs nothing: try again) */
    }
}

weft_chan *weft_accept(weft_listener *l, int64_t deadline)
{
    accepted_conn a;
    return net_accept_conn(l, deadline, &a) == 0 ? net_chan_of(&a, NULL) : NULL;
}

int weft_listener_close(weft_listener *l)
{
    if (l->unix_path[0])
        unlink(l->unix_path);
    int rc = fd_close(l->fd);
    if (ref_close(&l->ref))
        free(l);
    return rc;
}

/* ---- Connecting ---- */

/* Wait for a non-blocking connect on fd to finish. 0 or -1 with the connect error. */
static int connect_finish(int fd, int64_t deadline)
{
    if (fd_wait(fd, WEFT_WRITABLE, deadline) != 0)
        return -1;
    int err = 0;
    socklen_t len = sizeof err;
    if (sys_getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return -1;
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

/* io_uring: the whole connect as one operation. 0 or -1 with the connect's error. */
static int connect_op(int fd, const struct sockaddr *sa, socklen_t salen, int64_t deadline)
{
    io_op op = {.kind = IO_OP_CONNECT, .fd = fd, .buf = (void *)sa, .len = salen};
    return fd_op(&op, deadline) < 0 ? -1 : 0;
}

static int connect_one(const struct sockaddr *sa, socklen_t salen, int64_t deadline)
{
    int fd = sys_socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* io_uring performs the whole connect as one operation; elsewhere (or on a kernel that
     * hands back EINPROGRESS) wait for the socket to become writable. */
    bool op = fd_ops_available();
    int rc = op ? connect_op(fd, sa, salen, deadline) : sys_connect(fd, sa, salen);
    if (rc != 0 && errno == EINPROGRESS)
        rc = connect_finish(fd, deadline);
    /* A Unix socket whose backlog is full says EAGAIN: back off briefly and retry. */
    for (int64_t pause = 1; rc != 0 && errno == EAGAIN && sa->sa_family == AF_UNIX; pause *= 2) {
        if (deadline >= 0 && weft_now() >= deadline) {
            errno = ETIMEDOUT;
            break;
        }
        if (weft_sleep(pause < 100 ? pause : 100) != 0)
            break;
        rc = op ? connect_op(fd, sa, salen, deadline) : sys_connect(fd, sa, salen);
    }
    if (rc != 0) {
        int e = errno;
        fd_close(fd);
        errno = e;
        return -1;
    }
    if (sa->sa_family != AF_UNIX)
        set_nodelay(fd);
    return fd;
}

weft_chan *weft_connect(const char *addr, int64_t deadline)
{
    parsed_addr pa;
    if (net_parse_addr(addr, &pa) != 0)
        return NULL;
    int fd = -1;
    char peer[64];
    if (pa.is_unix) {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        memcpy(un.sun_path, pa.path, strlen(pa.path) + 1);
        fd = connect_one((struct sockaddr *)&un, sizeof un, deadline);
        snprintf(peer, sizeof peer, "unix:%s", pa.path);
    } else {
        if (pa.wildcard) {
            errno = EINVAL;
            return NULL;
        }
        struct addrinfo *res;
        if (resolve(&pa, false, &res, deadline) != 0)
            return NULL;
        int err = ECONNREFUSED;
        for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
            fd = connect_one(ai->ai_addr, ai->ai_addrlen, deadline);
            if (fd < 0) {
                err = errno;
                if (err == ETIMEDOUT || err == ECANCELED)
                    break;
            } else {
                sockaddr_format(ai->ai_addr, ai->ai_addrlen, peer, sizeof peer);
            }
        }
        freeaddrinfo(res);
        errno = err;
    }
    if (fd < 0)
        return NULL;
    transport *t = sock_transport_new(fd, true, !pa.is_unix);
    if (!t) {
        fd_close(fd);
        errno = ENOMEM;
        return NULL;
    }
    return chan_new(t, peer, true);
}
