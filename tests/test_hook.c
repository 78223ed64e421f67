/* libweft_hook at the edges: blocking libc calls in coroutines park the coroutine, not the
 * thread, and give what the blocking call gives. Where the kernel's answer is the reference
 * (timeouts, refusals, signals, a peer that goes away) the same scenario runs on a plain
 * thread, where the hooks go straight to libc, and in a coroutine, and both answers must be
 * the same. A ticker coroutine, waking every 10 ms, shows the thread kept running while a
 * call was parked (its count grows); a call that blocked the thread instead would hang the
 * test, since what it waits for comes from another coroutine. The hooks are linked in here;
 * preload_mode runs a program linked with libweft.so alone under LD_PRELOAD. */
#include "harness.h"
#include "hook_support.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <weft.h>

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifdef UNDER_TSAN
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "die_after_fork=0"; /* fork_in_coroutine: the child starts the offload pool */
}
#endif

static void socket_pair(int sv[2])
{
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
}

static bool is_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    CHECK(fl >= 0);
    return fl & O_NONBLOCK;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void plain_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* A TCP connection on loopback: *client connected, *server accepted (both blocking). */
static void tcp_pair(int *client, int *server)
{
    int port = 0;
    int l = listen_loopback(&port, 4);
    *client = tcp_connect_loopback(port);
    *server = accept(l, NULL, NULL);
    CHECK(*server >= 0);
    close(l);
}

/* ---- A blocking read parks the coroutine ---- */

struct delayed_write {
    int fd;
    int ms;
    const char *text;
};

static void *write_later(void *p)
{
    struct delayed_write *d = p;
    weft_sleep(d->ms);
    CHECK(write(d->fd, d->text, strlen(d->text)) == (ssize_t)strlen(d->text));
    return NULL;
}

static void *read_blocked(void *p)
{
    int *sv = p;
    struct delayed_write d = {sv[1], 100, "hello"};
    weft_co *w = weft_spawn(write_later, &d);
    char buf[16];
    ssize_t r = read(sv[0], buf, sizeof buf);
    CHECK(r == 5 && memcmp(buf, "hello", 5) == 0);
    CHECK(weft_join(w, NULL, -1) == 0);
    return NULL;
}

static void read_parks_coroutine(void)
{
    int sv[2];
    socket_pair(sv);
    long ticks = 0;
    run_in_coroutine(read_blocked, sv, &ticks);
    CHECK(ticks > 0);
    /* The descriptor itself was never made non-blocking. */
    CHECK(!is_nonblocking(sv[0]) && !is_nonblocking(sv[1]));
    close(sv[0]);
    close(sv[1]);
}

/* ---- The caller's own non-blocking descriptors keep saying EAGAIN ---- */

static void *nonblocking_eagain(void *unused)
{
    (void)unused;
    char c;
    int sv[2];
    socket_pair(sv);
    CHECK(fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK) == 0);
    CHECK(read(sv[0], &c, 1) == -1 && errno == EAGAIN);
    CHECK(recv(sv[0], &c, 1, 0) == -1 && errno == EAGAIN);
    CHECK(fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) & ~O_NONBLOCK) == 0);
    struct delayed_write d = {sv[1], 20, "x"};
    weft_co *w = weft_spawn(write_later, &d);
    CHECK(read(sv[0], &c, 1) == 1 && c == 'x'); /* blocking again: it waited */
    weft_join(w, NULL, -1);
    int on = 1;
    CHECK(ioctl(sv[0], FIONBIO, &on) == 0);
    CHECK(read(sv[0], &c, 1) == -1 && errno == EAGAIN);
    close(sv[0]);
    close(sv[1]);

    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    CHECK(read(sv[0], &c, 1) == -1 && errno == EAGAIN);
    close(sv[0]);
    close(sv[1]);
    int p[2];
    CHECK(pipe2(p, O_NONBLOCK) == 0);
    CHECK(read(p[0], &c, 1) == -1 && errno == EAGAIN);
    close(p[0]);
    close(p[1]);

    int port = 0, l = listen_loopback(&port, 4);
    CHECK(fcntl(l, F_SETFL, O_NONBLOCK) == 0);
    CHECK(accept(l, NULL, NULL) == -1 && errno == EAGAIN);
    close(l);

    /* O_NONBLOCK is the open file's: set through one number, every dup of it says EAGAIN;
     * cleared through one, every dup waits (parks) again, as the kernel would block. */
    socket_pair(sv);
    int dd = dup(sv[0]), d2 = fcntl(sv[0], F_DUPFD_CLOEXEC, 0);
    CHECK(dd >= 0 && d2 >= 0);
    CHECK(fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK) == 0);
    CHECK(read(dd, &c, 1) == -1 && errno == EAGAIN);
    CHECK(recv(d2, &c, 1, 0) == -1 && errno == EAGAIN);
    CHECK(fcntl(dd, F_SETFL, fcntl(dd, F_GETFL) & ~O_NONBLOCK) == 0);
    struct delayed_write d3 = {sv[1], 20, "y"};
    w = weft_spawn(write_later, &d3);
    CHECK(read(sv[0], &c, 1) == 1 && c == 'y'); /* blocking again through the other number */
    weft_join(w, NULL, -1);
    close(dd);
    close(d2);
    close(sv[0]);
    close(sv[1]);
    return NULL;
}

static void nonblocking_keeps_eagain(void)
{
    run_in_coroutine(nonblocking_eagain, NULL, NULL);
}

/* ---- Compared with the kernel: refusals and timeouts ---- */

struct outcome {
    ssize_t r1, r2;
    int e1, e2;
};

static void *connect_refused(void *p)
{
    struct outcome *o = p;
    int port = free_port();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    errno = 0;
    o->r1 = connect(fd, (struct sockaddr *)&sin, sizeof sin);
    o->e1 = errno;
    close(fd);
    return NULL;
}

static void connection_refused(void)
{
    struct outcome kernel = {0}, hooked = {0};
    run_on_plain_thread(connect_refused, &kernel);
    run_in_coroutine(connect_refused, &hooked, NULL);
    CHECK(kernel.r1 == -1 && kernel.e1 == ECONNREFUSED);
    CHECK(hooked.r1 == kernel.r1 && hooked.e1 == kernel.e1);
}

/* A listener whose accept queue is full drops new SYNs: a connect then waits for SO_SNDTIMEO
 * and says EINPROGRESS. */
static int listen_full(int *port, int *fillers, int nfill)
{
    int l = listen_loopback(port, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)*port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < nfill; i++) {
        fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fillers[i], (struct sockaddr *)&sin, sizeof sin);
    }
    plain_sleep_ms(50); /* handshakes done: the queue is full */
    return l;
}

static void *connect_times_out(void *p)
{
    struct outcome *o = p;
    int port = 0, fillers[4];
    int l = listen_full(&port, fillers, 4);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {0, 200000};
    CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int64_t t0 = now_ms();
    o->r1 = connect(fd, (struct sockaddr *)&sin, sizeof sin);
    o->e1 = errno;
    o->r2 = now_ms() - t0; /* printed, not judged */
    close(fd);
    for (int i = 0; i < 4; i++)
        close(fillers[i]);
    close(l);
    return NULL;
}

static void connect_timeout(void)
{
    struct outcome kernel = {0}, hooked = {0};
    run_on_plain_thread(connect_times_out, &kernel);
    long ticks = 0;
    run_in_coroutine(connect_times_out, &hooked, &ticks);
    printf("  connect timeout: kernel -1/%s after %zd ms, hooked %zd/%s after %zd ms\n",
           strerror(kernel.e1), kernel.r2, hooked.r1, strerror(hooked.e1), hooked.r2);
    CHECK(kernel.r1 == -1 && kernel.e1 == EINPROGRESS);
    CHECK(hooked.r1 == -1 && hooked.e1 == EINPROGRESS);
    CHECK(ticks > 0);
}

static void *receive_times_out(void *p)
{
    struct outcome *o = p;
    int sv[2];
    socket_pair(sv);
    struct timeval tv = {0, 100000};
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    char buf[8];
    o->r1 = read(sv[0], buf, sizeof buf);
    o->e1 = errno;
    CHECK(write(sv[1], "abc", 3) == 3);
    errno = 0;
    o->r2 = recv(sv[0], buf, sizeof buf, MSG_WAITALL); /* 3 came: the timeout ends the wait */
    o->e2 = errno;
    close(sv[0]);
    close(sv[1]);
    return NULL;
}

static void receive_timeout(void)
{
    struct outcome kernel = {0}, hooked = {0};
    run_on_plain_thread(receive_times_out, &kernel);
    long ticks = 0;
    run_in_coroutine(receive_times_out, &hooked, &ticks);
    CHECK(kernel.r1 == -1 && kernel.e1 == EAGAIN && kernel.r2 == 3);
    CHECK(hooked.r1 == kernel.r1 && hooked.e1 == kernel.e1 && hooked.r2 == kernel.r2);
    CHECK(ticks > 0);
}

static void *accept_times_out(void *p)
{
    struct outcome *o = p;
    int port = 0, l = listen_loopback(&port, 4);
    struct timeval tv = {0, 100000};
    CHECK(setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    o->r1 = accept(l, NULL, NULL);
    o->e1 = errno;
    close(l);
    return NULL;
}

static void accept_timeout(void)
{
    struct outcome kernel = {0}, hooked = {0};
    run_on_plain_thread(accept_times_out, &kernel);
    run_in_coroutine(accept_times_out, &hooked, NULL);
    CHECK(kernel.r1 == -1 && kernel.e1 == EAGAIN);
    CHECK(hooked.r1 == kernel.r1 && hooked.e1 == kernel.e1);
}

/* A write the peer does not read, with SO_SNDTIMEO: part of it goes, then the timeout. */
static void *send_times_out(void *p)
{
    struct outcome *o = p;
    int sv[2];
    socket_pair(sv);
    struct timeval tv = {0, 100000};
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
    size_t n = 4 << 20;
    char *big = calloc(1, n);
    o->r1 = write(sv[0], big, n);
    o->e1 = errno;
    errno = 0;
    o->r2 = write(sv[0], big, n); /* full from the start: nothing goes */
    o->e2 = errno;
    free(big);
    close(sv[0]);
    close(sv[1]);
    return NULL;
}

static void send_timeout(void)
{
    struct outcome kernel = {0}, hooked = {0};
    run_on_plain_thread(send_times_out, &kernel);
    run_in_coroutine(send_times_out, &hooked, NULL);
    CHECK(kernel.r1 > 0 && kernel.r1 < (4 << 20));
    CHECK(kernel.r2 == -1 && kernel.e2 == EAGAIN);
    CHECK(hooked.r1 > 0 && hooked.r1 < (4 << 20));
    CHECK(hooked.r2 == -1 && hooked.e2 == EAGAIN);
}

/* ---- A peer that goes away in the middle of a reply ---- */

struct peer {
    int fd;
    bool reset; /* close with an RST (SO_LINGER 0) instead of a FIN */
};

static void *peer_half_reply(void *p)
{
    struct peer *pe = p;
    plain_sleep_ms(50); /* the reader is waiting by then */
    char part[100];
    memset(part, 'r', sizeof part);
    CHECK(send(pe->fd, part, sizeof part, 0) == (ssize_t)sizeof part);
    if (pe->reset) {
        plain_sleep_ms(20);
        struct linger lg = {1, 0};
        setsockopt(pe->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(pe->fd);
    return NULL;
}

static void *read_half_reply(void *p)
{
    struct outcome *o = p;
    bool reset = o->r1;
    int c, s;
    tcp_pair(&c, &s);
    struct peer pe = {s, reset};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, peer_half_reply, &pe) == 0);
    char buf[200];
    errno = 0;
    if (reset) {
        o->r1 = recv(c, buf, sizeof buf, 0);
        plain_sleep_ms(60); /* the RST is in */
        errno = 0;
        o->r2 = read(c, buf, sizeof buf);
        o->e2 = errno;
    } else {
        o->r1 = recv(c, buf, sizeof buf, MSG_WAITALL); /* 100 came, then the end */
        o->e1 = errno;
        o->r2 = read(c, buf, sizeof buf);
        o->e2 = errno;
    }
    pthread_join(th, NULL);
    close(c);
    return NULL;
}

static void peer_closes_mid_reply(void)
{
    for (int reset = 0; reset <= 1; reset++) {
        struct outcome kernel = {.r1 = reset}, hooked = {.r1 = reset};
        run_on_plain_thread(read_half_reply, &kernel);
        run_in_coroutine(read_half_reply, &hooked, NULL);
        printf("  %s: kernel %zd, %zd/%s; hooked %zd, %zd/%s\n", reset ? "RST" : "FIN", kernel.r1,
               kernel.r2, strerror(kernel.e2), hooked.r1, hooked.r2, strerror(hooked.e2));
        CHECK(kernel.r1 == 100);
        CHECK(hooked.r1 == kernel.r1 && hooked.r2 == kernel.r2);
        if (kernel.r2 < 0)
            CHECK(hooked.e2 == kernel.e2);
    }
}

/* A read after our own shutdown(SHUT_RD) ends at once. (A hooked read of a TCP socket whose
 * last read was short parks until the backend reports input; the kernel's shutdown wakes
 * pollers, so the event comes.) */
struct later {
    int fd;
    char c;
};

static void *thread_writes_soon(void *p)
{
    struct later *l = p;
    plain_sleep_ms(30);
    CHECK(write(l->fd, &l->c, 1) == 1);
    return NULL;
}

static void *read_after_shutdown(void *p)
{
    struct outcome *o = p;
    int c, s;
    tcp_pair(&c, &s);
    struct later l = {s, 'x'};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, thread_writes_soon, &l) == 0);
    char buf[8];
    CHECK(read(c, buf, sizeof buf) == 1); /* waited, and short: drained */
    pthread_join(th, NULL);
    CHECK(shutdown(c, SHUT_RD) == 0);
    errno = 0;
    o->r1 = read(c, buf, sizeof buf);
    o->e1 = errno;
    close(c);
    close(s);
    return NULL;
}

static void shutdown_read(void)
{
    struct outcome kernel = {0}, hooked = {0};
    run_on_plain_thread(read_after_shutdown, &kernel);
    run_in_coroutine(read_after_shutdown, &hooked, NULL);
    CHECK(kernel.r1 == 0);
    CHECK(hooked.r1 == kernel.r1);
}

/* ---- 1 MiB to a slow reader: one write, every byte, the thread free meanwhile ---- */

#define BIG (1 << 20)

static void *slow_reader(void *p)
{
    int fd = *(int *)p;
    static unsigned char buf[BIG];
    size_t got = 0;
    while (got < BIG) {
        plain_sleep_ms(2);
        ssize_t r = read(fd, buf + got, 16384 < BIG - got ? 16384 : BIG - got);
        CHECK(r > 0);
        got += (size_t)r;
    }
    for (size_t i = 0; i < BIG; i++)
        CHECK(buf[i] == (unsigned char)(i * 7 + i / 4096));
    return NULL;
}

static void *write_big(void *p)
{
    int fd = *(int *)p;
    unsigned char *data = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
        data[i] = (unsigned char)(i * 7 + i / 4096);
    ssize_t w = write(fd, data, BIG);
    CHECK(w == BIG);
    free(data);
    return NULL;
}

static void big_write_to_slow_reader(void)
{
    int c, s;
    tcp_pair(&c, &s);
    int snd = 16384; /* so that the writer waits many times */
    setsockopt(c, SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, slow_reader, &s) == 0);
    long ticks = 0;
    run_in_coroutine(write_big, &c, &ticks);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK(ticks > 0);
    close(c);
    close(s);
}

/* The same through a pipe: the writer and the reader are coroutines of one thread. */
static void *pipe_reader(void *p)
{
    int fd = *(int *)p;
    unsigned char *buf = malloc(BIG);
    size_t got = 0;
    while (got < BIG) {
        ssize_t r = read(fd, buf + got, BIG - got);
        CHECK(r > 0);
        got += (size_t)r;
        weft_sleep(1);
    }
    for (size_t i = 0; i < BIG; i++)
        CHECK(buf[i] == (unsigned char)(i * 7 + i / 4096));
    free(buf);
    return NULL;
}

static void *pipe_both(void *p)
{
    int *fds = p;
    weft_co *r = weft_spawn(pipe_reader, &fds[0]);
    write_big(&fds[1]);
    CHECK(weft_join(r, NULL, -1) == 0);
    return NULL;
}

static void pipe_big_write(void)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    run_in_coroutine(pipe_both, fds, NULL);
    CHECK(!is_nonblocking(fds[0]) && !is_nonblocking(fds[1]));
    close(fds[0]);
    close(fds[1]);
}

/* ---- close under a waiter ---- */

static void *close_later(void *p)
{
    weft_sleep(30);
    CHECK(close(*(int *)p) == 0);
    return NULL;
}

static void *read_closed(void *p)
{
    int *sv = p;
    weft_co *w = weft_spawn(close_later, &sv[0]);
    char c;
    errno = 0;
    CHECK(read(sv[0], &c, 1) == -1 && errno == EBADF);
    CHECK(weft_join(w, NULL, -1) == 0);
    return NULL;
}

static void close_wakes_waiter(void)
{
    int sv[2];
    socket_pair(sv);
    run_in_coroutine(read_closed, sv, NULL);
    close(sv[1]);
}

/* ---- Threads without a scheduler: plain blocking calls ---- */

static void *plain_thread_reads(void *p)
{
    int fd = *(int *)p;
    char buf[8];
    ssize_t r = read(fd, buf, sizeof buf); /* blocks this thread until the coroutine writes */
    CHECK(r == 5 && memcmp(buf, "plain", 5) == 0);
    return NULL;
}

static void *coroutine_writes(void *p)
{
    int fd = *(int *)p;
    weft_sleep(50);
    CHECK(write(fd, "plain", 5) == 5);
    return NULL;
}

static void thread_without_scheduler(void)
{
    int sv[2];
    socket_pair(sv);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, plain_thread_reads, &sv[0]) == 0);
    run_in_coroutine(coroutine_writes, &sv[1], NULL);
    CHECK(pthread_join(th, NULL) == 0);
    /* And outside any coroutine on this thread too. */
    CHECK(write(sv[1], "abc", 3) == 3);
    char buf[4];
    CHECK(read(sv[0], buf, sizeof buf) == 3);
    close(sv[0]);
    close(sv[1]);
}

/* ---- Signals: EINTR exactly where the kernel gives it ---- */

static volatile sig_atomic_t handled;

static void on_usr1(int sig)
{
    (void)sig;
    handled++;
}

struct sig_case {
    pthread_t target;
    int restart;      /* SA_RESTART */
    int rcvtimeo_ms;  /* 0: none */
    int what;         /* 0 read, 1 poll, 2 nanosleep, 3 sleep */
    int sv[2];
};

static void *send_signal_then_data(void *p)
{
    struct sig_case *sc = p;
    plain_sleep_ms(60);
    pthread_kill(sc->target, SIGUSR1);
    plain_sleep_ms(60);
    CHECK(send(sc->sv[1], "z", 1, MSG_NOSIGNAL) == 1);
    return NULL;
}

static void *interrupted_call(void *p)
{
    struct outcome *o = p;
    struct sig_case *sc = (struct sig_case *)(intptr_t)o->r1;
    sc->target = pthread_self();
    socket_pair(sc->sv);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = sc->restart ? SA_RESTART : 0;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    if (sc->rcvtimeo_ms) {
        struct timeval tv = {sc->rcvtimeo_ms / 1000, (sc->rcvtimeo_ms % 1000) * 1000};
        setsockopt(sc->sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    pthread_t th;
    CHECK(pthread_create(&th, NULL, send_signal_then_data, sc) == 0);
    char c;
    errno = 0;
    handled = 0;
    if (sc->what == 0) {
        o->r2 = read(sc->sv[0], &c, 1);
    } else if (sc->what == 1) {
        struct pollfd pf = {.fd = sc->sv[0], .events = POLLIN};
        o->r2 = poll(&pf, 1, 5000);
    } else if (sc->what == 2) {
        struct timespec ts = {5, 0}, rem = {0, 0};
        o->r2 = nanosleep(&ts, &rem);
        CHECK(o->r2 == 0 || (rem.tv_sec >= 4 && rem.tv_sec < 5)); /* about 4.9 s left */
    } else {
        o->r2 = sleep(5);
    }
    o->e2 = errno;
    CHECK(handled == 1);
    pthread_join(th, NULL);
    signal(SIGUSR1, SIG_DFL);
    close(sc->sv[0]);
    close(sc->sv[1]);
    return NULL;
}

static void signal_interrupts_calls(void)
{
    static const struct sig_case cases[] = {
        {.what = 0, .restart = 0}, {.what = 0, .restart = 1},
        {.what = 0, .restart = 1, .rcvtimeo_ms = 3000}, {.what = 1, .restart = 1},
        {.what = 2, .restart = 1}, {.what = 3, .restart = 0},
    };
    static const char *names[] = {"read", "poll", "nanosleep", "sleep"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct sig_case k = cases[i], h = cases[i];
        struct outcome kernel = {.r1 = (intptr_t)&k}, hooked = {.r1 = (intptr_t)&h};
        run_on_plain_thread(interrupted_call, &kernel);
        run_in_coroutine(interrupted_call, &hooked, NULL);
        printf("  %s%s%s: kernel %zd/%s, hooked %zd/%s\n", names[k.what],
               k.restart ? " SA_RESTART" : "", k.rcvtimeo_ms ? " SO_RCVTIMEO" : "", kernel.r2,
               strerror(kernel.e2), hooked.r2, strerror(hooked.e2));
        CHECK(hooked.r2 == kernel.r2);
        if (kernel.r2 < 0)
            CHECK(hooked.e2 == kernel.e2);
    }
}

/* ---- poll and select over several descriptors ---- */

static void *poll_several(void *unused)
{
    (void)unused;
    int a[2], b[2], c[2];
    socket_pair(a);
    socket_pair(b);
    socket_pair(c);
    struct pollfd pf[3] = {{a[0], POLLIN, 0}, {b[0], POLLIN, 0}, {c[0], POLLIN, 0}};
    CHECK(poll(pf, 3, 60) == 0); /* nothing: the timeout */
    struct delayed_write d = {b[1], 40, "b"};
    weft_co *w = weft_spawn(write_later, &d);
    CHECK(poll(pf, 3, 5000) == 1);
    CHECK(pf[0].revents == 0 && pf[1].revents == POLLIN && pf[2].revents == 0);
    weft_join(w, NULL, -1);
    char ch;
    CHECK(read(b[0], &ch, 1) == 1);

    /* One descriptor for input and output at once; the same descriptor twice. */
    struct pollfd both[2] = {{a[0], POLLIN | POLLOUT, 0}, {a[0], POLLIN, 0}};
    CHECK(poll(both, 2, 1000) == 1 && both[0].revents == POLLOUT && both[1].revents == 0);

    /* select: the sets and the time left. */
    fd_set r;
    FD_ZERO(&r);
    FD_SET(a[0], &r);
    FD_SET(c[0], &r);
    struct timeval tv = {0, 50000};
    CHECK(select(c[0] + 1, &r, NULL, NULL, &tv) == 0);
    CHECK(tv.tv_sec == 0 && tv.tv_usec == 0 && !FD_ISSET(a[0], &r) && !FD_ISSET(c[0], &r));
    struct delayed_write d2 = {c[1], 30, "c"};
    w = weft_spawn(write_later, &d2);
    FD_SET(a[0], &r);
    FD_SET(c[0], &r);
    fd_set wr;
    FD_ZERO(&wr);
    tv = (struct timeval){5, 0};
    CHECK(select(c[0] + 1, &r, &wr, NULL, &tv) == 1);
    CHECK(!FD_ISSET(a[0], &r) && FD_ISSET(c[0], &r));
    CHECK(tv.tv_sec < 5 && tv.tv_sec >= 4); /* the rest of the time */
    weft_join(w, NULL, -1);

    /* pselect and ppoll, with a mask and without. */
    struct timespec ts = {0, 30000000};
    FD_ZERO(&r);
    FD_SET(a[0], &r);
    sigset_t mask;
    sigemptyset(&mask);
    CHECK(pselect(a[0] + 1, &r, NULL, NULL, &ts, &mask) == 0);
    struct pollfd one = {a[0], POLLIN, 0};
    CHECK(ppoll(&one, 1, &ts, NULL) == 0);
    /* No descriptors at all: a sleep. */
    CHECK(poll(NULL, 0, 20) == 0);
    for (int i = 0; i < 2; i++) {
        close(a[i]);
        close(b[i]);
        close(c[i]);
    }
    return NULL;
}

static void poll_select_several(void)
{
    long ticks = 0;
    run_in_coroutine(poll_several, NULL, &ticks);
    CHECK(ticks > 0);
}

/* ppoll's mask lets a blocked signal in while it waits, as the kernel's does. */
static void *ppoll_with_mask(void *unused)
{
    (void)unused;
    int sv[2];
    socket_pair(sv);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    sigset_t block, during;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    CHECK(pthread_sigmask(SIG_BLOCK, &block, NULL) == 0);
    sigemptyset(&during);
    struct sig_case sc = {.target = pthread_self(), .sv = {sv[0], sv[1]}};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, send_signal_then_data, &sc) == 0);
    handled = 0;
    struct pollfd pf = {sv[0], POLLIN, 0};
    errno = 0;
    CHECK(ppoll(&pf, 1, NULL, &during) == -1 && errno == EINTR);
    CHECK(handled == 1);
    pthread_join(th, NULL);
    pthread_sigmask(SIG_UNBLOCK, &block, NULL);
    close(sv[0]);
    close(sv[1]);
    return NULL;
}

static void ppoll_mask(void)
{
    run_on_plain_thread(ppoll_with_mask, NULL); /* (the kernel's answer, for reference) */
    run_in_coroutine(ppoll_with_mask, NULL, NULL);
}

/* ---- Two coroutines accept on one blocking listener ---- */

static void *accept_one(void *p)
{
    int l = *(int *)p;
    int fd = accept(l, NULL, NULL);
    CHECK(fd >= 0);
    char c;
    CHECK(read(fd, &c, 1) == 1 && c == 'k');
    close(fd);
    return NULL;
}

static void *connect_two(void *p)
{
    int port = *(int *)p;
    weft_sleep(30);
    for (int i = 0; i < 2; i++) {
        int fd = tcp_connect_loopback(port);
        CHECK(write(fd, "k", 1) == 1);
        close(fd);
    }
    return NULL;
}

static void *two_acceptors(void *unused)
{
    (void)unused;
    int port = 0, l = listen_loopback(&port, 8);
    weft_co *a = weft_spawn(accept_one, &l), *b = weft_spawn(accept_one, &l);
    weft_co *c = weft_spawn(connect_two, &port);
    CHECK(weft_join(a, NULL, -1) == 0 && weft_join(b, NULL, -1) == 0);
    CHECK(weft_join(c, NULL, -1) == 0);
    close(l);
    return NULL;
}

static void accept_in_two_coroutines(void)
{
    run_in_coroutine(two_acceptors, NULL, NULL);
}

/* ---- Sleeps ---- */

static void *sleeps(void *unused)
{
    (void)unused;
    int64_t t0 = now_ms();
    CHECK(usleep(20000) == 0);
    struct timespec ts = {0, 20000000};
    CHECK(nanosleep(&ts, NULL) == 0);
    CHECK(clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL) == 0);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    now.tv_nsec += 20000000;
    if (now.tv_nsec >= 1000000000) {
        now.tv_sec++;
        now.tv_nsec -= 1000000000;
    }
    CHECK(clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &now, NULL) == 0);
    CHECK(sleep(0) == 0);
    CHECK(now_ms() - t0 >= 80); /* never shorter than asked */
    ts.tv_nsec = 1000000000;
    CHECK(nanosleep(&ts, NULL) == -1 && errno == EINVAL);
    CHECK(clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL) == EINVAL);
    return NULL;
}

static void sleeps_park(void)
{
    long ticks = 0;
    run_in_coroutine(sleeps, NULL, &ticks);
    CHECK(ticks > 0);
}

/* ---- Name lookups ---- */

static void *lookups(void *unused)
{
    (void)unused;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    CHECK(getaddrinfo("localhost", "80", &hints, &res) == 0 && res);
    freeaddrinfo(res);
    CHECK(getaddrinfo("127.0.0.1", "80", &hints, &res) == 0 && res);
    freeaddrinfo(res);
    struct hostent *he = gethostbyname("localhost");
    CHECK(he && he->h_addrtype == AF_INET && he->h_addr_list[0]);
    struct hostent h, *found = NULL;
    char buf[1024];
    int herr = 0;
    CHECK(gethostbyname_r("localhost", &h, buf, sizeof buf, &found, &herr) == 0 && found == &h);
    CHECK(h.h_addr_list[0] && ((unsigned char *)h.h_addr_list[0])[0] == 127);
    CHECK(gethostbyname_r("localhost", &h, buf, 8, &found, &herr) == ERANGE);
    return NULL;
}

static void name_lookups(void)
{
    run_in_coroutine(lookups, NULL, NULL);
}

/* ---- fork and exec: the descriptors are as the caller left them ---- */

static void *fork_in_coroutine(void *p)
{
    int *sv = p;
    char c;
    CHECK(write(sv[1], "a", 1) == 1 && read(sv[0], &c, 1) == 1); /* used through the hooks */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        /* The child: its coroutine (this one) goes on, alone, with a scheduler of its own;
         * the descriptors are blocking, as they always were. */
        if (is_nonblocking(sv[0]))
            _exit(2);
#ifdef UNDER_TSAN
        /* ThreadSanitizer loses the order of the parent's coroutines (fibers) in a forked
         * child and reports races on every scheduler field they touched: not here. */
        _exit(0);
#endif
        struct delayed_write d = {sv[1], 20, "c"};
        weft_co *w = weft_spawn(write_later, &d);
        if (read(sv[0], &c, 1) != 1 || c != 'c')
            _exit(3);
        weft_join(w, NULL, -1);
        _exit(0);
    }
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0)
        weft_sleep(5); /* (the parent's coroutines go on meanwhile) */
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return NULL;
}

static void fork_in_hooked_program(void)
{
    int sv[2];
    socket_pair(sv);
    long ticks = 0;
    run_in_coroutine(fork_in_coroutine, sv, &ticks);
    CHECK(ticks > 0);
    close(sv[0]);
    close(sv[1]);
}

/* A program exec'd with a descriptor the hooks have used reads it blocking. */
static void *exec_child_reads(void *p)
{
    int *sv = p;
    char c;
    CHECK(write(sv[1], "a", 1) == 1 && read(sv[0], &c, 1) == 1);
    int out[2];
    CHECK(pipe(out) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(sv[0], 0);
        dup2(out[1], 1);
        execlp("head", "head", "-c", "5", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    weft_sleep(50); /* head is waiting in its read by now */
    CHECK(write(sv[1], "hello", 5) == 5);
    char buf[16];
    ssize_t n = 0, r;
    while ((r = read(out[0], buf + n, sizeof buf - (size_t)n)) > 0)
        n += r;
    CHECK(n == 5 && memcmp(buf, "hello", 5) == 0);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(out[0]);
    return NULL;
}

static void exec_sees_blocking(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0); /* inherited across exec */
    run_in_coroutine(exec_child_reads, sv, NULL);
    close(sv[0]);
    close(sv[1]);
}

/* ---- A number closed on one thread and reused: the other thread's backend must not keep
 * the old file's registration (it would never report the new one). ---- */

struct reuse {
    int fd;          /* the number, used twice */
    int other_end;
    weft_tqueue *to_owner, *to_user;
};

static void *owner_thread(void *p)
{
    struct reuse *ru = p;
    void *item;
    CHECK(weft_tqueue_recv(ru->to_owner, &item, -1) == 0); /* the user waited on it */
    int number = ru->fd;
    CHECK(close(ru->fd) == 0);
    CHECK(close(ru->other_end) == 0);
    int sv[2];
    socket_pair(sv); /* the lowest free number: the one just closed */
    CHECK(sv[0] == number || sv[1] == number);
    ru->fd = sv[0] == number ? sv[0] : sv[1];
    ru->other_end = sv[0] == number ? sv[1] : sv[0];
    CHECK(weft_tqueue_send(ru->to_user, NULL, -1) == 0);
    plain_sleep_ms(50);
    CHECK(write(ru->other_end, "n", 1) == 1);
    return NULL;
}

static void *reuse_user(void *p)
{
    struct reuse *ru = p;
    struct delayed_write d = {ru->other_end, 20, "o"};
    weft_co *w = weft_spawn(write_later, &d);
    char c;
    CHECK(read(ru->fd, &c, 1) == 1 && c == 'o'); /* waited: the number is in our backend */
    weft_join(w, NULL, -1);
    CHECK(weft_tqueue_send(ru->to_owner, NULL, -1) == 0);
    void *item;
    CHECK(weft_tqueue_recv(ru->to_user, &item, -1) == 0);
    CHECK(read(ru->fd, &c, 1) == 1 && c == 'n'); /* a new file: must be heard */
    return NULL;
}

static void number_reused_by_another_thread(void)
{
    struct reuse ru;
    int sv[2];
    socket_pair(sv);
    ru.fd = sv[0];
    ru.other_end = sv[1];
    ru.to_owner = weft_tqueue_new(1);
    ru.to_user = weft_tqueue_new(1);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, owner_thread, &ru) == 0);
    run_in_coroutine(reuse_user, &ru, NULL);
    CHECK(pthread_join(th, NULL) == 0);
    close(ru.fd);
    close(ru.other_end);
    weft_tqueue_free(ru.to_owner);
    weft_tqueue_free(ru.to_user);
}

/* ---- Preload: a program linked with libweft.so alone, hooked by LD_PRELOAD ---- */

/* Run build/tests/hook_preload_prog (through $WEFT_RUN, e.g. valgrind), with LD_PRELOAD set
 * for it alone (not for a shell in between); its output in out, its exit code returned. */
static int run_preload_prog(bool preload, char *out, size_t cap)
{
    const char *build = getenv("WEFT_BUILD") ? getenv("WEFT_BUILD") : "build";
    char hook[512], prog[512], run[1024];
    snprintf(hook, sizeof hook, "%s/libweft_hook.so", build);
    snprintf(prog, sizeof prog, "%s/tests/hook_preload_prog", build);
    snprintf(run, sizeof run, "%s", getenv("WEFT_RUN") ? getenv("WEFT_RUN") : "");
    char *argv[64];
    int argc = 0;
    for (char *w = strtok(run, " "); w && argc < 62; w = strtok(NULL, " "))
        argv[argc++] = w;
    argv[argc++] = prog;
    argv[argc] = NULL;
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 1);
        /* Under qemu-user the variable must reach the emulated program, not qemu itself. */
        bool qemu = strstr(argv[0], "qemu-") != NULL;
        char var[600];
        snprintf(var, sizeof var, "LD_PRELOAD=%s", hook);
        if (preload)
            setenv(qemu ? "QEMU_SET_ENV" : "LD_PRELOAD", qemu ? var : hook, 1);
        /* (Sanitized builds: the hook library, preloaded, comes before the runtime.) */
        setenv("ASAN_OPTIONS", "verify_asan_link_order=0", 0);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t r;
    while (n < cap - 1 && readable_within(p[0], 30000) &&
           (r = read(p[0], out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(p[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void preload_mode(void)
{
    char out[512];
    int rc = run_preload_prog(true, out, sizeof out);
    printf("  with LD_PRELOAD: %s", out);
    CHECK(rc == 0 && strstr(out, "parked"));
    rc = run_preload_prog(false, out, sizeof out);
    printf("  without: %s", out);
    CHECK(rc == 0 && strstr(out, "blocked")); /* the same program, unhooked, blocks */
}

const struct test tests[] = {
    {"read_parks_coroutine", read_parks_coroutine, 0},
    {"nonblocking_keeps_eagain", nonblocking_keeps_eagain, 0},
    {"connection_refused", connection_refused, 0},
    {"connect_timeout", connect_timeout, 0},
    {"receive_timeout", receive_timeout, 0},
    {"accept_timeout", accept_timeout, 0},
    {"send_timeout", send_timeout, 0},
    {"peer_closes_mid_reply", peer_closes_mid_reply, 0},
    {"shutdown_read", shutdown_read, 10},
    {"big_write_to_slow_reader", big_write_to_slow_reader, 0},
    {"pipe_big_write", pipe_big_write, 0},
    {"close_wakes_waiter", close_wakes_waiter, 0},
    {"thread_without_scheduler", thread_without_scheduler, 0},
    {"signal_interrupts_calls", signal_interrupts_calls, 0},
    {"poll_select_several", poll_select_several, 0},
    {"ppoll_mask", ppoll_mask, 0},
    {"accept_in_two_coroutines", accept_in_two_coroutines, 0},
    {"sleeps_park", sleeps_park, 0},
    {"name_lookups", name_lookups, 0},
    {"fork_in_hooked_program", fork_in_hooked_program, 0},
    {"exec_sees_blocking", exec_sees_blocking, 0},
    {"number_reused_by_another_thread", number_reused_by_another_thread, 0},
    {"preload_mode", preload_mode, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
