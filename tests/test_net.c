/* Sockets: TCP over IPv4, IPv6 and host names, Unix sockets, connect/accept timeouts and
 * errors, and the same calls blocking outside coroutines. Loopback only. */
#include "harness.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <weft.h>

struct pair_test {
    weft_listener *l;
    char addr[160];
};

/* Server side: accept one client, answer each line with "re:" + line, until EOF. */
static void *answer_one(void *arg)
{
    struct pair_test *pt = arg;
    weft_chan *c = weft_accept(pt->l, weft_now() + 10000);
    CHECK(c);
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len)))
        CHECK(weft_printf(c, "re:%s\n", line) > 0);
    CHECK(weft_eof(c));
    CHECK(weft_close(c) == 0);
    return NULL;
}

static void *ask(void *arg)
{
    struct pair_test *pt = arg;
    weft_chan *c = weft_connect(pt->addr, weft_now() + 10000);
    CHECK(c);
    for (int i = 0; i < 100; i++) {
        CHECK(weft_printf(c, "q%d\n", i) > 0);
        size_t len;
        const char *line = weft_gets(c, &len);
        char want[32];
        snprintf(want, sizeof want, "re:q%d", i);
        CHECK(line && strcmp(line, want) == 0);
    }
    CHECK(weft_shutdown(c) == 0);
    size_t len;
    CHECK(weft_gets(c, &len) == NULL && weft_eof(c)); /* the server closed after our EOF */
    CHECK(weft_close(c) == 0);
    return NULL;
}

/* Listen on listen_addr, then connect to connect_fmt (with %d for the port) and talk. */
static void talk(const char *listen_addr, const char *connect_fmt)
{
    struct pair_test pt;
    pt.l = weft_listen(listen_addr, 0);
    CHECK(pt.l);
    snprintf(pt.addr, sizeof pt.addr, connect_fmt, weft_listener_port(pt.l));
    weft_co *s = weft_spawn(answer_one, &pt);
    weft_co *c = weft_spawn(ask, &pt);
    CHECK(s && c);
    CHECK(weft_join(c, NULL, -1) == 0 && weft_join(s, NULL, -1) == 0);
    CHECK(weft_listener_close(pt.l) == 0);
}

static void tcp_over_ipv4(void)
{
    talk("127.0.0.1:0", "127.0.0.1:%d");
}

static void tcp_over_ipv6(void)
{
    struct pair_test pt;
    pt.l = weft_listen("[::1]:0", 0);
    CHECK(pt.l);
    CHECK(strncmp(weft_listener_addr(pt.l), "[::1]:", 6) == 0);
    weft_listener_close(pt.l);
    talk("[::1]:0", "[::1]:%d");
}

static void tcp_with_host_names(void)
{
    /* "localhost" may resolve to ::1 and 127.0.0.1: connect must try each in turn. */
    talk("localhost:0", "localhost:%d");
}

static void unix_sockets(void)
{
    char path[128], addr[160];
    snprintf(path, sizeof path, "/tmp/weft-test-%d.sock", (int)getpid());
    snprintf(addr, sizeof addr, "unix:%s", path);
    unlink(path);
    struct pair_test pt;
    pt.l = weft_listen(addr, 0);
    CHECK(pt.l && strcmp(weft_listener_addr(pt.l), addr) == 0);
    snprintf(pt.addr, sizeof pt.addr, "%s", addr);
    weft_co *s = weft_spawn(answer_one, &pt);
    weft_co *c = weft_spawn(ask, &pt);
    CHECK(s && c);
    CHECK(weft_join(c, NULL, -1) == 0 && weft_join(s, NULL, -1) == 0);
    CHECK(weft_listen(addr, 0) == NULL && errno == EADDRINUSE);
    CHECK(weft_listener_close(pt.l) == 0);
    struct stat st;
    CHECK(stat(path, &st) == -1 && errno == ENOENT); /* the socket file is gone */
}

static void blocking_outside_coroutines(void)
{
    /* The client runs in a child process with plain blocking weft calls; the server here too. */
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", weft_listener_port(l));
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        weft_listener_close(l); /* the parent's */
        weft_chan *c = weft_connect(addr, -1);
        CHECK(c && weft_self() == NULL);
        CHECK(weft_puts(c, "ping") == 0);
        size_t len;
        const char *line = weft_gets(c, &len);
        CHECK(line && strcmp(line, "pong") == 0);
        weft_close(c);
        exit(0);
    }
    weft_chan *c = weft_accept(l, weft_now() + 10000);
    CHECK(c);
    size_t len;
    const char *line = weft_gets(c, &len);
    CHECK(line && strcmp(line, "ping") == 0);
    CHECK(weft_puts(c, "pong") == 0);
    CHECK(weft_gets(c, &len) == NULL && weft_eof(c));
    weft_close(c);
    weft_listener_close(l);
    CHECK(stop_program(pid, 0) == 0);
}

static void *accept_with_deadline(void *arg)
{
    weft_listener *l = arg;
    CHECK(weft_accept(l, weft_now() + 30) == NULL && errno == ETIMEDOUT);
    return NULL;
}

static void *accept_until_closed(void *arg)
{
    weft_listener *l = arg;
    CHECK(weft_accept(l, -1) == NULL && errno == EBADF);
    return NULL;
}

static void *close_listener(void *arg)
{
    weft_yield();
    CHECK(weft_listener_close(arg) == 0);
    return NULL;
}

static void accept_timeout_and_close_under_waiter(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    weft_co *a = weft_spawn(accept_with_deadline, l);
    CHECK(a && weft_join(a, NULL, -1) == 0);
    weft_co *w = weft_spawn(accept_until_closed, l);
    weft_co *k = weft_spawn(close_listener, l);
    CHECK(w && k);
    CHECK(weft_join(w, NULL, -1) == 0 && weft_join(k, NULL, -1) == 0);
}

static void *connect_refused(void *arg)
{
    const char *addr = arg;
    CHECK(weft_connect(addr, weft_now() + 5000) == NULL && errno == ECONNREFUSED);
    return NULL;
}

static void connect_errors(void)
{
    /* A port nobody listens on: bind one, note it, close it. */
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", weft_listener_port(l));
    weft_listener_close(l);
    weft_co *co = weft_spawn(connect_refused, addr);
    CHECK(co && weft_join(co, NULL, -1) == 0);
    connect_refused(addr); /* blocking, outside */

    static const char *bad[] = {"nocolon", "127.0.0.1:", "[::1:80", "unix:", "*:80", NULL};
    for (int i = 0; bad[i]; i++)
        CHECK(weft_connect(bad[i], -1) == NULL && errno == EINVAL);
    CHECK(weft_listen("127.0.0.1", 0) == NULL && errno == EINVAL);
    CHECK(weft_connect("no-such-host.invalid:80", weft_now() + 5000) == NULL);
}

/* Ports are 0..65535: getaddrinfo alone would wrap 70000 to 4464 and 65536 to 0. */
static void ports_past_65535_are_refused(void)
{
    static const char *bad[] = {"127.0.0.1:65536", "127.0.0.1:70000", "[::1]:70000",
                                ":99999", "*:4294967296", "127.0.0.1:-1", "127.0.0.1:+80",
                                "127.0.0.1:80x", "127.0.0.1: 80", NULL};
    for (int i = 0; bad[i]; i++) {
        errno = 0;
        CHECK(weft_listen(bad[i], 0) == NULL && errno == EINVAL);
        errno = 0;
        CHECK(weft_connect(bad[i], weft_now() + 1000) == NULL && errno == EINVAL);
    }
    /* A listener on P is not reached through P + 65536. */
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", weft_listener_port(l) + 65536);
    CHECK(weft_connect(addr, weft_now() + 1000) == NULL && errno == EINVAL);
    /* The edges and service names still work. */
    snprintf(addr, sizeof addr, "127.0.0.1:%05d", weft_listener_port(l));
    weft_chan *c = weft_connect(addr, weft_now() + 5000);
    CHECK(c && weft_close(c) == 0);
    CHECK(weft_listener_close(l) == 0);
    l = weft_listen("127.0.0.1:0", 0);
    CHECK(l && weft_listener_close(l) == 0);
    errno = 0;
    l = weft_listen("127.0.0.1:65535", 0); /* may be taken: then not EINVAL */
    CHECK(l ? weft_listener_close(l) == 0 : errno != EINVAL);
}

/* A second coroutine accepting on the same listener is refused (EBUSY) on either backend,
 * and the first still gets its client. */
static void *accept_one(void *arg)
{
    weft_chan *c = weft_accept(arg, weft_now() + 10000);
    CHECK(c && weft_close(c) == 0);
    return NULL;
}

static void *accept_second(void *arg)
{
    CHECK(weft_accept(arg, weft_now() + 10000) == NULL && errno == EBUSY);
    return NULL;
}

static void a_second_accept_on_one_listener_is_refused(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    weft_co *a = weft_spawn(accept_one, l), *b = weft_spawn(accept_second, l);
    CHECK(a && b && weft_join(b, NULL, -1) == 0);
    int fd = tcp_connect_loopback(weft_listener_port(l));
    CHECK(weft_join(a, NULL, -1) == 0);
    close(fd);
    CHECK(weft_listener_close(l) == 0);
}

/* weft_wait_fd on a negative descriptor fails with EBADF, inside a coroutine and outside. */
static void *wait_on_minus_one(void *arg)
{
    (void)arg;
    CHECK(weft_wait_fd(-1, WEFT_READABLE, weft_now() + 1000) == -1 && errno == EBADF);
    return NULL;
}

static void wait_fd_on_a_bad_descriptor_is_ebadf(void)
{
    CHECK(weft_wait_fd(-1, WEFT_READABLE, -1) == -1 && errno == EBADF);
    CHECK(weft_wait_fd(-5, WEFT_WRITABLE, weft_now() + 1000) == -1 && errno == EBADF);
    weft_co *co = weft_spawn(wait_on_minus_one, NULL);
    CHECK(co && weft_join(co, NULL, -1) == 0);
}

/* A descriptor number that is not open: EBADF on both backends, for either direction, inside
 * a coroutine (outside, poll says POLLNVAL). Before the fix io_uring's failed poll woke the
 * waiter as if the fd were ready, and weft_wait_fd returned 0. */
static void *wait_on_closed(void *arg)
{
    (void)arg;
    int p[2];
    CHECK(pipe(p) == 0);
    close(p[0]);
    close(p[1]); /* p[0] and p[1] are now numbers of nothing */
    CHECK(weft_wait_fd(p[0], WEFT_READABLE, weft_now() + 5000) == -1 && errno == EBADF);
    CHECK(weft_wait_fd(p[1], WEFT_WRITABLE, weft_now() + 5000) == -1 && errno == EBADF);
    return NULL;
}

static void wait_fd_on_a_closed_descriptor_is_ebadf(void)
{
    weft_co *co = weft_spawn(wait_on_closed, NULL);
    CHECK(co && weft_join(co, NULL, -1) == 0);
    int p[2];
    CHECK(pipe(p) == 0);
    close(p[0]);
    CHECK(weft_wait_fd(p[0], WEFT_READABLE, weft_now() + 5000) == -1 && errno == EBADF);
    close(p[1]);
}

/* Descriptor numbers index weft's tables: a huge one (not open: beyond RLIMIT_NOFILE's hard
 * limit here) must fail with EBADF without growing them. Before the fix weft_wait_fd(INT_MAX) grew
 * them by gigabytes on epoll (seconds of memset) and returned 0 or ENOMEM on io_uring. An open
 * descriptor with a high number (dup2 below the limit) still works. */
static void *wait_on_huge_numbers(void *arg)
{
    (void)arg;
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    long vm_before = proc_status_kib(getpid(), "VmData:");
    const int huge[] = {INT_MAX, 1 << 30, 50000000, (1 << 20) + 1};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        CHECK(weft_wait_fd(huge[i], WEFT_READABLE, weft_now() + 5000) == -1 && errno == EBADF);
        CHECK(weft_wait_fd(huge[i], WEFT_WRITABLE, weft_now() + 5000) == -1 && errno == EBADF);
    }
    long vm_after = proc_status_kib(getpid(), "VmData:");
    printf("  VmData %ld -> %ld kB\n", vm_before, vm_after);
    if (memory_is_measurable())
        CHECK(vm_after - vm_before < 4096); /* the tables did not grow to reach them */
    int p[2];
    CHECK(pipe(p) == 0);
    int high = (int)(rl.rlim_cur < 20000 ? rl.rlim_cur : 20000) - 1;
    if (dup2(p[0], high) == high) {
        CHECK(write(p[1], "x", 1) == 1);
        CHECK(weft_wait_fd(high, WEFT_READABLE, weft_now() + 5000) == 0);
        close(high);
    }
    close(p[0]);
    close(p[1]);
    return NULL;
}

static void huge_descriptor_numbers_do_not_grow_the_tables(void)
{
    weft_co *co = weft_spawn(wait_on_huge_numbers, NULL);
    CHECK(co && weft_join(co, NULL, -1) == 0);
}

/* "*:port" means both families; when [::]:port is taken it fails, rather than quietly
 * listening on IPv4 alone. */
static void wildcard_does_not_fall_back_to_ipv4_when_ipv6_is_taken(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0) {
        printf("  skipped: no IPv6 here\n");
        return;
    }
    int one = 1;
    CHECK(setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) == 0);
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT};
    socklen_t len = sizeof sin6;
    CHECK(bind(fd, (struct sockaddr *)&sin6, sizeof sin6) == 0 && listen(fd, 1) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&sin6, &len) == 0);
    char addr[32];
    snprintf(addr, sizeof addr, "*:%d", ntohs(sin6.sin6_port));
    errno = 0;
    weft_listener *l = weft_listen(addr, 0);
    CHECK(l == NULL && errno == EADDRINUSE);
    close(fd);
    l = weft_listen(addr, 0); /* free again: both families on one socket */
    CHECK(l && weft_listener_close(l) == 0);
}

static void *connect_in_time(void *arg)
{
    const char *addr = arg;
    int64_t deadline = weft_now() + 100;
    weft_chan *c = weft_connect(addr, deadline);
    CHECK(c == NULL && errno == ETIMEDOUT);
    CHECK(weft_now() >= deadline);
    return NULL;
}

static void connect_times_out(void)
{
    /* A listener that never accepts, its backlog full: new handshakes go unanswered. */
    weft_listener *l = weft_listen("127.0.0.1:0", 1);
    CHECK(l);
    int port = weft_listener_port(l);
    int fds[8];
    for (int i = 0; i < 8; i++)
        fds[i] = -1;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    /* Fill the queue with plain non-blocking connects. */
    for (int i = 0; i < 8; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sin.sin_addr.s_addr = htonl(0x7f000001);
        connect(fds[i], (struct sockaddr *)&sin, sizeof sin);
    }
    usleep(50000);
    weft_co *co = weft_spawn(connect_in_time, addr);
    CHECK(co && weft_join(co, NULL, -1) == 0);
    for (int i = 0; i < 8; i++)
        close(fds[i]);
    weft_listener_close(l);
}

static void reuseport_listeners_share_a_port(void)
{
    weft_listener *a = weft_listen_ex("127.0.0.1:0", 0, WEFT_LISTEN_REUSEPORT);
    CHECK(a);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", weft_listener_port(a));
    weft_listener *b = weft_listen_ex(addr, 0, WEFT_LISTEN_REUSEPORT);
    CHECK(b && weft_listener_port(b) == weft_listener_port(a));
    CHECK(weft_listen(addr, 0) == NULL && errno == EADDRINUSE); /* without the flag: taken */
    CHECK(weft_listen_ex(addr, 0, 4) == NULL && errno == EINVAL);
    weft_listener_close(a);
    weft_listener_close(b);
}

const struct test tests[] = {
    {"reuseport_listeners_share_a_port", reuseport_listeners_share_a_port, 0},
    {"tcp_over_ipv4", tcp_over_ipv4, 0},
    {"tcp_over_ipv6", tcp_over_ipv6, 0},
    {"tcp_with_host_names", tcp_with_host_names, 0},
    {"unix_sockets", unix_sockets, 0},
    {"blocking_outside_coroutines", blocking_outside_coroutines, 0},
    {"accept_timeout_and_close_under_waiter", accept_timeout_and_close_under_waiter, 0},
    {"connect_errors", connect_errors, 0},
    {"connect_times_out", connect_times_out, 0},
    {"ports_past_65535_are_refused", ports_past_65535_are_refused, 0},
    {"a_second_accept_on_one_listener_is_refused", a_second_accept_on_one_listener_is_refused, 0},
    {"wait_fd_on_a_bad_descriptor_is_ebadf", wait_fd_on_a_bad_descriptor_is_ebadf, 0},
    {"wait_fd_on_a_closed_descriptor_is_ebadf", wait_fd_on_a_closed_descriptor_is_ebadf, 0},
    {"huge_descriptor_numbers_do_not_grow_the_tables",
     huge_descriptor_numbers_do_not_grow_the_tables, 0},
    {"wildcard_does_not_fall_back_to_ipv4_when_ipv6_is_taken",
     wildcard_does_not_fall_back_to_ipv4_when_ipv6_is_taken, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
