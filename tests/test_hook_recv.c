/* libweft_hook's blocking receives at the edges, on both backends in every run: on io_uring a
 * plain receive on a stream socket that has to wait is made by the ring itself (its recv
 * completes when bytes come: hook/io.c ring_recv), on epoll it waits for readiness and then
 * receives. Each scenario runs on a plain thread (the kernel's own answer), then in a
 * coroutine of a scheduler on io_uring (auto: see backends) and of one on epoll (each on a
 * thread of its own, weft_set_backend), and the answers must be the same; where the kernel's answer depends on
 * a race (a signal or the timeout at the moment the bytes come), every answer the kernel may
 * give is allowed, and no byte may be lost or read twice. */
#include "harness.h"
#include "hook_support.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
    return "die_after_fork=0"; /* fork_with_a_receive_in_flight: the child runs a scheduler */
}
#endif

/* auto is io_uring wherever it starts, epoll where it cannot (qemu-user) and under valgrind
 * (which stops every other thread while one waits in io_uring_enter: the peers here are
 * threads); each run prints the backend it got. */
static const char *const backends[] = {"auto", "epoll"};
#define NBACKENDS 2

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

/* ---- Running a scenario on the kernel and on each backend ---- */

struct on_backend {
    const char *want;
    void *(*fn)(void *);
    void *arg;
    char got[16]; /* the backend the scheduler got ("epoll" where io_uring cannot start) */
};

static void *backend_thread(void *p)
{
    struct on_backend *b = p;
    CHECK(weft_set_backend(b->want) == 0);
    snprintf(b->got, sizeof b->got, "%s", weft_backend_name());
    run_in_coroutine(b->fn, b->arg, NULL);
    return NULL;
}

/* Run fn(arg) in a coroutine of a new thread whose scheduler uses backend want; the backend
 * it got is returned (static storage). */
static const char *in_coroutine_on(const char *want, void *(*fn)(void *), void *arg)
{
    static char got[16];
    struct on_backend b = {want, fn, arg, ""};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, backend_thread, &b) == 0);
    CHECK(pthread_join(th, NULL) == 0);
    snprintf(got, sizeof got, "%s", b.got);
    return got;
}

struct outcome {
    ssize_t r1, r2;
    int e1, e2;
    intptr_t param; /* the scenario's own */
};

/* fn on a plain thread, then in a coroutine on each backend; the coroutines' outcomes must
 * be the kernel's (r1/e1 and r2/e2, errno only where the count is -1). */
static void kernel_and_backends(const char *what, void *(*fn)(void *), intptr_t param)
{
    struct outcome kernel = {.param = param};
    run_on_plain_thread(fn, &kernel);
    for (int i = 0; i < NBACKENDS; i++) {
        struct outcome hooked = {.param = param};
        const char *got = in_coroutine_on(backends[i], fn, &hooked);
        printf("  %s, %s: kernel %zd/%s %zd/%s; hooked %zd/%s %zd/%s\n", what, got, kernel.r1,
               strerror(kernel.e1), kernel.r2, strerror(kernel.e2), hooked.r1,
               strerror(hooked.e1), hooked.r2, strerror(hooked.e2));
        CHECK(hooked.r1 == kernel.r1 && hooked.r2 == kernel.r2);
        if (kernel.r1 < 0)
            CHECK(hooked.e1 == kernel.e1);
        if (kernel.r2 < 0)
            CHECK(hooked.e2 == kernel.e2);
    }
}

/* ---- On io_uring the wait is the ring's receive; flags it cannot carry keep readiness ---- */

struct dump_then_send {
    int fd;          /* where to send the byte that ends the wait */
    char text[8192]; /* weft_dump's lines, taken while the reader waited */
};

static void *dump_then_send(void *p)
{
    struct dump_then_send *d = p;
    weft_sleep(50); /* the reader parked long before */
    int m = memfd_create("dump", MFD_CLOEXEC);
    CHECK(m >= 0);
    CHECK(weft_dump(m) == 0);
    ssize_t n = pread(m, d->text, sizeof d->text - 1, 0);
    CHECK(n > 0);
    d->text[n] = '\0';
    close(m);
    CHECK(send(d->fd, "k", 1, 0) == 1);
    return NULL;
}

/* What a receive (flags; peek: MSG_PEEK) parked on shows in weft_dump. */
static void *receive_shows(void *p)
{
    struct outcome *o = p;
    int c, s;
    tcp_pair(&c, &s);
    struct dump_then_send d = {.fd = s};
    weft_co *w = weft_spawn(dump_then_send, &d);
    char buf[16], want[64];
    if (o->param == 0)
        CHECK(recv(c, buf, sizeof buf, 0) == 1);
    else if (o->param == 1)
        CHECK(read(c, buf, sizeof buf) == 1);
    else
        CHECK(recv(c, buf, sizeof buf, MSG_PEEK) == 1);
    CHECK(weft_join(w, NULL, -1) == 0);
    bool ring = o->param < 2 && strcmp(weft_backend_name(), "uring") == 0;
    snprintf(want, sizeof want, ring ? "recv on fd %d" : "read fd %d", c);
    if (!strstr(d.text, want))
        printf("  wanted \"%s\" in:\n%s", want, d.text);
    CHECK(strstr(d.text, want) != NULL);
    close(c);
    close(s);
    return NULL;
}

static void waiting_receive_is_the_rings(void)
{
    static const char *names[] = {"recv", "read", "recv MSG_PEEK"};
    for (int i = 0; i < NBACKENDS; i++)
        for (intptr_t k = 0; k < 3; k++) {
            struct outcome o = {.param = k};
            const char *got = in_coroutine_on(backends[i], receive_shows, &o);
            printf("  %s on %s: waits as it should\n", names[k], got);
        }
}

/* ---- Signals while the receive waits: EINTR exactly where the kernel gives it ---- */

static volatile sig_atomic_t handled;

static void on_usr1(int sig)
{
    (void)sig;
    handled++;
}

enum sig_plan {
    SIGNAL_THEN_DATA_LATER, /* a signal, and 60 ms later a byte */
    DATA_THEN_SIGNAL,       /* a byte, and at once a signal: the byte is the answer */
    SIGNAL_THEN_DATA,       /* a signal, and at once a byte: EINTR or the byte, never lost */
};

struct sig_case {
    enum sig_plan plan;
    bool restart; /* SA_RESTART */
    int rcvtimeo_ms;
};

struct sig_run {
    const struct sig_case *k;
    pthread_t target;
    int peer;
};

static void *signal_and_byte(void *p)
{
    struct sig_run *sr = p;
    plain_sleep_ms(40); /* the reader waits by then */
    if (sr->k->plan == DATA_THEN_SIGNAL)
        CHECK(send(sr->peer, "z", 1, MSG_NOSIGNAL) == 1);
    pthread_kill(sr->target, SIGUSR1);
    if (sr->k->plan == SIGNAL_THEN_DATA_LATER)
        plain_sleep_ms(60);
    if (sr->k->plan != DATA_THEN_SIGNAL)
        CHECK(send(sr->peer, "z", 1, MSG_NOSIGNAL) == 1);
    return NULL;
}

static void *interrupted_receive(void *p)
{
    struct outcome *o = p;
    const struct sig_case *k = (const struct sig_case *)o->param;
    int c, s;
    tcp_pair(&c, &s);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = k->restart ? SA_RESTART : 0;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    if (k->rcvtimeo_ms) {
        struct timeval tv = {k->rcvtimeo_ms / 1000, (k->rcvtimeo_ms % 1000) * 1000};
        CHECK(setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    }
    struct sig_run sr = {k, pthread_self(), s};
    pthread_t th;
    handled = 0;
    CHECK(pthread_create(&th, NULL, signal_and_byte, &sr) == 0);
    char buf[8];
    errno = 0;
    o->r1 = read(c, buf, sizeof buf);
    o->e1 = errno;
    CHECK(pthread_join(th, NULL) == 0);
    while (handled == 0) /* (a signal that came while the thread ran is handled by now) */
        plain_sleep_ms(1);
    CHECK(handled == 1);
    /* The byte, if the first call did not take it, is there for the next: nothing lost. */
    errno = 0;
    o->r2 = o->r1 == 1 ? 0 : recv(c, buf, sizeof buf, MSG_DONTWAIT);
    o->e2 = errno;
    CHECK(o->r1 == 1 || o->r2 == 1);
    signal(SIGUSR1, SIG_DFL);
    close(c);
    close(s);
    return NULL;
}

static void signal_while_receiving(void)
{
    static const struct sig_case exact[] = {
        {SIGNAL_THEN_DATA_LATER, false, 0},    {SIGNAL_THEN_DATA_LATER, true, 0},
        {SIGNAL_THEN_DATA_LATER, true, 3000},  {DATA_THEN_SIGNAL, false, 0},
        {DATA_THEN_SIGNAL, true, 0},
    };
    static const char *plans[] = {"signal, byte later", "byte then signal", "signal then byte"};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "%s%s%s", plans[exact[i].plan],
                 exact[i].restart ? " SA_RESTART" : "", exact[i].rcvtimeo_ms ? " SO_RCVTIMEO" : "");
        kernel_and_backends(what, interrupted_receive, (intptr_t)&exact[i]);
    }
    /* A signal and a byte at the same moment: the kernel says EINTR or gives the byte,
     * depending on which the reader sees first; either is right, and the byte is never lost
     * (interrupted_receive checks that). With SA_RESTART it is always the byte. */
    static const struct sig_case race[] = {{SIGNAL_THEN_DATA, false, 0},
                                           {SIGNAL_THEN_DATA, true, 0}};
    for (int i = 0; i < NBACKENDS; i++)
        for (size_t j = 0; j < 2; j++) {
            int got_byte = 0, rounds = 6;
            const char *got = "";
            for (int n = 0; n < rounds; n++) {
                struct outcome o = {.param = (intptr_t)&race[j]};
                got = in_coroutine_on(backends[i], interrupted_receive, &o);
                CHECK(o.r1 == 1 || (o.r1 == -1 && o.e1 == EINTR && !race[j].restart));
                got_byte += o.r1 == 1;
            }
            printf("  signal and byte together%s, %s: the byte %d times of %d, else EINTR\n",
                   race[j].restart ? " SA_RESTART" : "", got, got_byte, rounds);
        }
}

/* ---- SO_RCVTIMEO ---- */

struct timed_byte {
    int fd, after_ms;
};

static void *byte_after(void *p)
{
    struct timed_byte *t = p;
    plain_sleep_ms(t->after_ms);
    CHECK(send(t->fd, "t", 1, MSG_NOSIGNAL) == 1);
    return NULL;
}

/* param: ms after which a byte comes (0: none); the timeout is 50 ms. */
static void *timed_receive(void *p)
{
    struct outcome *o = p;
    int c, s;
    tcp_pair(&c, &s);
    struct timeval tv = {0, 50000};
    CHECK(setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    struct timed_byte t = {s, (int)o->param};
    pthread_t th;
    if (t.after_ms)
        CHECK(pthread_create(&th, NULL, byte_after, &t) == 0);
    char buf[8];
    errno = 0;
    o->r1 = recv(c, buf, sizeof buf, 0);
    o->e1 = errno;
    if (t.after_ms) {
        CHECK(pthread_join(th, NULL) == 0);
        errno = 0;
        o->r2 = o->r1 == 1 ? 0 : recv(c, buf, sizeof buf, 0); /* the byte is there now */
        o->e2 = errno;
        CHECK(o->r1 == 1 || (o->r1 == -1 && o->e1 == EAGAIN && o->r2 == 1));
    }
    close(c);
    close(s);
    return NULL;
}

static void receive_timeout(void)
{
    kernel_and_backends("SO_RCVTIMEO expires", timed_receive, 0);
    /* The byte comes at about the moment the timeout ends the wait: EAGAIN or the byte, and
     * the byte is never lost (timed_receive checks). */
    for (int i = 0; i < NBACKENDS; i++) {
        int got_byte = 0;
        const char *got = "";
        for (int ms = 44; ms <= 56; ms += 2) {
            struct outcome o = {.param = ms};
            got = in_coroutine_on(backends[i], timed_receive, &o);
            got_byte += o.r1 == 1;
        }
        printf("  a byte at about the timeout, %s: the byte %d times of 7, else EAGAIN\n",
               got, got_byte);
    }
}

/* ---- close by another coroutine, and weft_cancel ---- */

static void *close_soon(void *p)
{
    weft_sleep(30);
    CHECK(close(*(int *)p) == 0);
    return NULL;
}

static void *read_until_closed(void *p)
{
    struct outcome *o = p;
    int c, s;
    tcp_pair(&c, &s);
    weft_co *w = weft_spawn(close_soon, &c);
    char buf[8];
    errno = 0;
    o->r1 = read(c, buf, sizeof buf);
    o->e1 = errno;
    CHECK(weft_join(w, NULL, -1) == 0);
    close(s);
    return NULL;
}

struct cancel_run {
    int fd;
    ssize_t r;
    int e;
};

static void *read_one(void *p)
{
    struct cancel_run *cr = p;
    char buf[8];
    errno = 0;
    cr->r = recv(cr->fd, buf, sizeof buf, 0);
    cr->e = errno;
    return NULL;
}

/* A receive of a cancelled coroutine ends with ECANCELED (param 0), or with the byte if it
 * came with the cancel (param 1); either way the byte is read exactly once. */
static void *cancel_receive(void *p)
{
    struct outcome *o = p;
    int c, s;
    tcp_pair(&c, &s);
    struct cancel_run cr = {c, 0, 0};
    weft_co *r = weft_spawn(read_one, &cr);
    weft_sleep(30);
    if (o->param)
        CHECK(send(s, "c", 1, 0) == 1);
    weft_cancel(r);
    CHECK(weft_join(r, NULL, -1) == 0);
    CHECK(cr.r == 1 || (cr.r == -1 && cr.e == ECANCELED));
    if (!o->param)
        CHECK(cr.r == -1);
    if (cr.r != 1) { /* the cancel won: a byte sent now comes after any that was there */
        CHECK(send(s, "d", 1, 0) == 1);
        char buf[8];
        ssize_t n = recv(c, buf, sizeof buf, 0);
        CHECK(n == 1 + o->param && buf[n - 1] == 'd');
    }
    o->r1 = cr.r;
    o->e1 = cr.e;
    close(c);
    close(s);
    return NULL;
}

static void close_and_cancel(void)
{
    for (int i = 0; i < NBACKENDS; i++) {
        struct outcome o = {0};
        const char *got = in_coroutine_on(backends[i], read_until_closed, &o);
        printf("  closed by another coroutine, %s: %zd/%s\n", got, o.r1, strerror(o.e1));
        CHECK(o.r1 == -1 && o.e1 == EBADF);
        for (intptr_t k = 0; k <= 1; k++) {
            o = (struct outcome){.param = k};
            in_coroutine_on(backends[i], cancel_receive, &o);
            printf("  cancelled%s, %s: %zd/%s\n", k ? " as the byte came" : "", got, o.r1,
                   o.r1 < 0 ? strerror(o.e1) : "the byte");
        }
    }
}

/* ---- Partial reads, a 1 MiB read in pieces, a reset while waiting ---- */

#define BIG (1 << 20)

static void *send_pieces(void *p)
{
    int fd = *(int *)p;
    plain_sleep_ms(20);
    CHECK(send(fd, "0123456789", 10, 0) == 10);
    plain_sleep_ms(20);
    char *big = malloc(BIG);
    CHECK(big);
    for (int i = 0; i < BIG; i++)
        big[i] = (char)(i * 7 + i / 4096);
    for (int off = 0; off < BIG; off += 64 * 1024) {
        CHECK(send(fd, big + off, 64 * 1024, 0) == 64 * 1024);
        plain_sleep_ms(2);
    }
    free(big);
    return NULL;
}

/* r1: what a read of 100 gets when 10 came; r2: whether the 1 MiB read in pieces (each read
 * asking for all that is left) got every byte in order. */
static void *partial_reads(void *p)
{
    struct outcome *o = p;
    int c, s;
    tcp_pair(&c, &s);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, send_pieces, &s) == 0);
    char small[100];
    o->r1 = read(c, small, sizeof small);
    CHECK(o->r1 == 10 && memcmp(small, "0123456789", 10) == 0);
    char *big = malloc(BIG);
    CHECK(big);
    size_t got = 0;
    int reads = 0;
    while (got < BIG) {
        ssize_t n = recv(c, big + got, BIG - got, 0);
        CHECK(n > 0);
        got += (size_t)n;
        reads++;
    }
    bool same = true;
    for (int i = 0; i < BIG; i++)
        same = same && big[i] == (char)(i * 7 + i / 4096);
    o->r2 = same;
    o->param = reads;
    free(big);
    CHECK(pthread_join(th, NULL) == 0);
    close(c);
    close(s);
    return NULL;
}

static void partial_and_big_reads(void)
{
    kernel_and_backends("10 bytes to a read of 100, then 1 MiB in pieces", partial_reads, 0);
}

static void *reset_soon(void *p)
{
    int fd = *(int *)p;
    plain_sleep_ms(40);
    struct linger lg = {1, 0};
    CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    close(fd);
    return NULL;
}

static void *reset_while_waiting(void *p)
{
    struct outcome *o = p;
    int c, s;
    tcp_pair(&c, &s);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, reset_soon, &s) == 0);
    char buf[8];
    errno = 0;
    o->r1 = read(c, buf, sizeof buf);
    o->e1 = errno;
    errno = 0;
    o->r2 = read(c, buf, sizeof buf);
    o->e2 = errno;
    CHECK(pthread_join(th, NULL) == 0);
    close(c);
    return NULL;
}

static void peer_reset(void)
{
    kernel_and_backends("peer resets while the read waits", reset_while_waiting, 0);
}

/* ---- fork with a receive in flight ---- */

static void *wait_for_byte(void *p)
{
    struct cancel_run *cr = p;
    return read_one(cr);
}

static void *fork_while_receiving(void *p)
{
    struct outcome *o = p;
    int c, s, sv[2];
    tcp_pair(&c, &s);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    struct cancel_run cr = {c, 0, 0};
    weft_co *r = weft_spawn(wait_for_byte, &cr);
    weft_sleep(20); /* r waits in its receive */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
#ifdef UNDER_TSAN
        /* ThreadSanitizer loses the order of the parent's coroutines (fibers) in a forked
         * child and reports races on every scheduler field they touched: not here. */
        _exit(0);
#endif
        /* The child: a receive of its own, on its own backend; the parent's waiting
         * coroutine is not ours. */
        char ch;
        if (read(sv[1], &ch, 1) != 1 || ch != 'p')
            _exit(3);
        _exit(0);
    }
    CHECK(write(sv[0], "p", 1) == 1);
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0)
        weft_sleep(5);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(send(s, "f", 1, 0) == 1); /* the parent's receive goes on, and gets it */
    CHECK(weft_join(r, NULL, -1) == 0);
    o->r1 = cr.r;
    CHECK(cr.r == 1);
    close(c);
    close(s);
    close(sv[0]);
    close(sv[1]);
    return NULL;
}

static void fork_with_a_receive_in_flight(void)
{
    for (int i = 0; i < NBACKENDS; i++) {
        struct outcome o = {0};
        const char *got = in_coroutine_on(backends[i], fork_while_receiving, &o);
        printf("  %s: the parent's receive got its byte\n", got);
    }
}

/* ---- Socket options belong to the socket, not to the number (audit 2026-12-07) ---- */

/* (On a plain thread, after a delay: byte_after sends a byte, drain_later drains, so that
 * a wait the timeout should have ended ends anyway, and the test sees it did not.) */
static void *drain_later(void *p)
{
    struct timed_byte *l = p;
    plain_sleep_ms(l->after_ms);
    struct timeval quiet = {0, 300000}; /* until nothing came for that long */
    CHECK(setsockopt(l->fd, SOL_SOCKET, SO_RCVTIMEO, &quiet, sizeof quiet) == 0);
    char buf[65536];
    while (recv(l->fd, buf, sizeof buf, 0) > 0) {
    }
    return NULL;
}

/* param 0: SO_RCVTIMEO set through the first number, read through a dup; 1: set through the
 * dup, recv through the first; 2: SO_SNDTIMEO set through the first, 4 MiB written through
 * the dup to a peer that reads nothing for 1.5 s. The kernel ends each at the timeout
 * (EAGAIN, or the part that went); the hook kept the option per number and waited. */
static void *timeout_through_a_dup(void *p)
{
    struct outcome *o = p;
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    int d = dup(sv[0]);
    CHECK(d >= 0);
    struct timeval tv = {0, 150000};
    struct timed_byte l = {sv[1], 1500};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, o->param == 2 ? drain_later : byte_after, &l) == 0);
    char buf[16];
    errno = 0;
    if (o->param == 0) {
        CHECK(setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
        o->r1 = read(d, buf, sizeof buf);
    } else if (o->param == 1) {
        CHECK(setsockopt(d, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
        o->r1 = recv(sv[0], buf, sizeof buf, 0);
    } else {
        CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
        size_t n = 4 << 20;
        char *big = calloc(1, n);
        CHECK(big);
        ssize_t r = write(d, big, n);
        o->r1 = r > 0 && (size_t)r < n ? 1 : r; /* part of it went (how much varies) */
        free(big);
    }
    o->e1 = errno;
    CHECK(pthread_join(th, NULL) == 0);
    close(d);
    close(sv[0]);
    close(sv[1]);
    return NULL;
}

static void socket_timeouts_hold_for_every_number(void)
{
    kernel_and_backends("SO_RCVTIMEO on the first, read on the dup", timeout_through_a_dup, 0);
    kernel_and_backends("SO_RCVTIMEO on the dup, recv on the first", timeout_through_a_dup, 1);
    kernel_and_backends("SO_SNDTIMEO on the first, write on the dup", timeout_through_a_dup, 2);
}

/* SO_RCVLOWAT on TCP: the blocking read waits until min(mark, len) bytes are there, where a
 * non-blocking one takes what is there. param 0: mark 10, 3 bytes there, 10 more 200 ms
 * later, read of 100: 13. 1: the same with a read of 5: 5 (the kernel wakes its reader at
 * the mark, not at 5). 2: 7 bytes there, read of 5: 5 at once. The second read takes what
 * is left. 3 and 4: 0 and 1 on a Unix stream socket. */
struct lowat_peer {
    int fd;
    int plan;
};

static void *lowat_sender(void *p)
{
    struct lowat_peer *l = p;
    if (l->plan == 2) {
        CHECK(send(l->fd, "0123456", 7, 0) == 7);
        return NULL;
    }
    CHECK(send(l->fd, "abc", 3, 0) == 3);
    plain_sleep_ms(200);
    CHECK(send(l->fd, "0123456789", 10, 0) == 10);
    return NULL;
}

static void *read_with_lowat(void *p)
{
    struct outcome *o = p;
    int c, s, plan = (int)o->param % 3;
    if (o->param < 3) {
        tcp_pair(&c, &s);
    } else {
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
        c = sv[0];
        s = sv[1];
    }
    int mark = 10;
    CHECK(setsockopt(c, SOL_SOCKET, SO_RCVLOWAT, &mark, sizeof mark) == 0);
    struct lowat_peer l = {s, plan};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, lowat_sender, &l) == 0);
    plain_sleep_ms(50); /* the first 3 (or the 7) bytes are there: a non-blocking recv takes them */
    char buf[100];
    errno = 0;
    o->r1 = read(c, buf, plan == 0 ? sizeof buf : 5);
    o->e1 = errno;
    CHECK(pthread_join(th, NULL) == 0);
    shutdown(s, SHUT_WR); /* so the second read ends */
    errno = 0;
    o->r2 = recv(c, buf, sizeof buf, MSG_WAITALL);
    o->e2 = errno;
    close(c);
    close(s);
    return NULL;
}

static void receive_low_water_mark(void)
{
    kernel_and_backends("SO_RCVLOWAT 10, 3 then 10 bytes, read 100", read_with_lowat, 0);
    kernel_and_backends("SO_RCVLOWAT 10, 3 then 10 bytes, read 5", read_with_lowat, 1);
    kernel_and_backends("SO_RCVLOWAT 10, 7 bytes there, read 5", read_with_lowat, 2);
    /* A Unix stream socket's reader takes what comes and waits for more until the mark. */
    kernel_and_backends("Unix, SO_RCVLOWAT 10, 3 then 10 bytes, read 100", read_with_lowat, 3);
    kernel_and_backends("Unix, SO_RCVLOWAT 10, 3 then 10 bytes, read 5", read_with_lowat, 4);
}

const struct test tests[] = {
    {"waiting_receive_is_the_rings", waiting_receive_is_the_rings, 0},
    {"signal_while_receiving", signal_while_receiving, 0},
    {"receive_timeout", receive_timeout, 0},
    {"close_and_cancel", close_and_cancel, 0},
    {"partial_and_big_reads", partial_and_big_reads, 0},
    {"peer_reset", peer_reset, 0},
    {"fork_with_a_receive_in_flight", fork_with_a_receive_in_flight, 0},
    {"socket_timeouts_hold_for_every_number", socket_timeouts_hold_for_every_number, 0},
    {"receive_low_water_mark", receive_low_water_mark, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
