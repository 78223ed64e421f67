/* soak: connection churn against an in-process weft echo server for a given time, with every
 * echoed byte verified, then a check that the server's descriptors, coroutines and memory are
 * back where they were after a warm-up.
 *
 * usage: soak [-d seconds] [-s seed] [-v]
 *
 * The server runs in a forked child: weft_listen("127.0.0.1:0"), weft_server_start_ex with
 * short idle and write timeouts, the examples' shared `echo` handler, and a control coroutine
 * that reads commands from a pipe ("stats", "quit") and answers on a second pipe. The parent
 * is an ordinary blocking program: rounds of echoload (a verifying epoll client) with random
 * shapes, and rounds of clients that go away abruptly (close or RST in the middle of a line,
 * or right after connecting), some of which first verify a few echoed lines, and a few that
 * stall mid-line until the server's idle timeout closes them.
 *
 * Everything is bounded: each round has a deadline, the final drain waits at most 15 s, and
 * the server child is killed and reaped by its PID on every way out. A failure prints what
 * failed, the seed and (for echoload rounds) the echoload command that repeats the round.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "echoload.h"
#include "../examples/echo_handler.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <weft.h>

#if defined(__SANITIZE_ADDRESS__)
#define SOAK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SOAK_ASAN 1
#endif
#endif
#ifdef SOAK_ASAN
/* From <sanitizer/allocator_interface.h>, which gcc does not install: bytes allocated by the
 * program and not yet freed (the quarantine not included). */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#define IDLE_TIMEOUT_MS 5000
#define WRITE_TIMEOUT_MS 5000
#define MAX_STALLS 8            /* stalled clients outstanding at once */
#define STALL_LATE_MS 10000     /* a stalled client must be closed by idle timeout + this */
#define DRAIN_MS 15000          /* final wait for active == 0 */
#define CTL_TIMEOUT_MS 10000    /* answer from the server's control coroutine */
#define ABRUPT_ROUND_MS 30000

/* ---- small utilities ---------------------------------------------------------------- */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int poll_left(long long deadline)
{
    long long left = deadline - now_ms();
    return left <= 0 ? 0 : left > 1000000 ? 1000000 : (int)left;
}

/* splitmix64 */
static uint64_t rng_state;
static uint64_t rng(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* Uniform in [0, n). */
static uint64_t rnd(uint64_t n)
{
    return rng() % n;
}

/* ---- the server child ----------------------------------------------------------------- */

struct figures {
    long fds;                 /* open descriptors */
    unsigned long cos;        /* weft_count() */
    unsigned long long active, accepted, accept_errors, spawn_errors;
    long rss_raw_kib;         /* VmRSS as it is */
    long rss_kib;             /* VmRSS after malloc_trim(0) (only where measure() gave it) */
    unsigned long long heap;  /* bytes allocated and not freed (malloc's view) */
};

static weft_server *srv_server;
static int srv_port;
static int srv_cmd_fd, srv_ans_fd;

static long count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    long n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n - 3; /* ".", ".." and the directory's own descriptor */
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* VmRSS after handing malloc's free pages back to the kernel. glibc only ever returns the top
 * of its heap by itself; free chunks below a chunk still in use stay resident, and which chunk
 * ends up highest depends on the order of allocations under load. On this server that pins
 * 1 to 4 MiB of free heap (flat after the first half minute) that no code holds, and it would
 * decide the comparison by chance. malloc_trim(0) also releases whole free pages inside the
 * heap, so what is left is memory something holds: live allocations, the pages they share,
 * pooled stacks. Both figures are printed. (Under AddressSanitizer malloc is the sanitizer's
 * and this is a no-op.) */
static long rss_trimmed_kib(void)
{
    malloc_trim(0);
    return rss_kib();
}

static unsigned long long heap_in_use(void)
{
#ifdef SOAK_ASAN
    return __sanitizer_get_current_allocated_bytes();
#else
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
#endif
}

/* The control coroutine: one command per line on srv_cmd_fd, one answer line per command on
 * srv_ans_fd. At "quit" or end of file it shuts the server down gracefully and ends, so
 * weft_run() returns once the last handler is gone and the child exits normally (which lets
 * LeakSanitizer check it under SAN=1). */
static void *control(void *arg)
{
    (void)arg;
    weft_chan *in = weft_chan_open(srv_cmd_fd);
    weft_chan *out = weft_chan_open(srv_ans_fd);
    const char *line;
    size_t len;

    if (!in || !out) {
        fprintf(stderr, "soak server: weft_chan_open: %s\n", strerror(errno));
        exit(2);
    }
    weft_printf(out, "port %d\n", srv_port);
    weft_flush(out);
    while ((line = weft_gets(in, &len)) != NULL) {
        if (strcmp(line, "stats") == 0) {
            weft_server_stats st;
            weft_server_get_stats(srv_server, &st);
            weft_printf(out, "fds %ld co %zu active %" PRIu64 " accepted %" PRIu64
                        " rss %ld heap %llu accept_errors %" PRIu64 " spawn_errors %" PRIu64
                        "\n", count_fds(), weft_count(), st.active, st.accepted, rss_kib(),
                        heap_in_use(), st.accept_errors, st.spawn_errors);
        } else if (strcmp(line, "trim") == 0) {
            weft_printf(out, "rss %ld\n", rss_trimmed_kib());
        } else if (strcmp(line, "quit") == 0) {
            weft_puts(out, "bye");
            break;
        } else {
            weft_puts(out, "error unknown command");
        }
        if (weft_flush(out) != 0)
            break;
    }
    weft_close(in);
    weft_close(out);
    weft_server_shutdown(srv_server, 1000);
    return NULL;
}

static int server_main(int cmd_fd, int ans_fd)
{
    static struct echo_opts eo = {.quiet = 1};
    weft_server_opts so = {.idle_timeout_ms = IDLE_TIMEOUT_MS,
                           .write_timeout_ms = WRITE_TIMEOUT_MS};

    srv_cmd_fd = cmd_fd;
    srv_ans_fd = ans_fd;
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    if (!l) {
        fprintf(stderr, "soak server: weft_listen: %s\n", strerror(errno));
        return 2;
    }
    srv_port = weft_listener_port(l);
    srv_server = weft_server_start_ex(l, echo, &eo, &so);
    if (!srv_server) {
        fprintf(stderr, "soak server: weft_server_start_ex: %s\n", strerror(errno));
        return 2;
    }
    weft_spawn_opts co = {.name = "soak-control", .detached = 1};
    if (!weft_spawn_ex(control, NULL, &co)) {
        fprintf(stderr, "soak server: weft_spawn_ex: %s\n", strerror(errno));
        return 2;
    }
    return weft_run() == 0 ? 0 : 2;
}

/* ---- the parent's side of the control pipes -------------------------------------------- */

static pid_t server_pid = -1;
static int cmd_w = -1, ans_r = -1;
static int port;
static uint64_t seed;

static void kill_server(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        while (waitpid(server_pid, NULL, 0) < 0 && errno == EINTR)
            ;
        server_pid = -1;
    }
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    va_list ap;
    int st;
    fflush(stdout);
    /* A server that died explains whatever the clients saw: say so first. */
    if (server_pid > 0 && waitpid(server_pid, &st, WNOHANG) == server_pid) {
        server_pid = -1;
        if (WIFSIGNALED(st))
            fprintf(stderr, "soak: FAIL: server died of signal %d (%s)\n", WTERMSIG(st),
                    strsignal(WTERMSIG(st)));
        else
            fprintf(stderr, "soak: FAIL: server exited with status %d\n", WEXITSTATUS(st));
    }
    fprintf(stderr, "soak: FAIL: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (seed %" PRIu64 ")\n", seed);
    kill_server();
    exit(1);
}

/* The server must still be running; a child that died is reported with how it died. */
static void check_server_alive(void)
{
    int st;
    pid_t r = waitpid(server_pid, &st, WNOHANG);
    if (r == server_pid) {
        server_pid = -1;
        if (WIFSIGNALED(st))
            fail("server died of signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
        fail("server exited with status %d", WEXITSTATUS(st));
    }
}

/* One answer line from the server, without its newline. */
static void ctl_gets(char *buf, size_t n)
{
    long long deadline = now_ms() + CTL_TIMEOUT_MS;
    size_t len = 0;

    for (;;) {
        struct pollfd p = {.fd = ans_r, .events = POLLIN};
        int k = poll(&p, 1, poll_left(deadline));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            fail("poll on the control pipe: %s", strerror(errno));
        if (k == 0) {
            check_server_alive();
            fail("no answer from the server's control coroutine in %d ms", CTL_TIMEOUT_MS);
        }
        char ch;
        ssize_t r = read(ans_r, &ch, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            check_server_alive();
            fail("control pipe closed by the server");
        }
        if (ch == '\n') {
            buf[len] = '\0';
            return;
        }
        if (len + 1 < n)
            buf[len++] = ch;
    }
}

static void ctl_send(const char *cmd)
{
    size_t n = strlen(cmd);
    if (write(cmd_w, cmd, n) != (ssize_t)n) {
        check_server_alive();
        fail("write to the control pipe: %s", strerror(errno));
    }
}

static struct figures get_figures(void)
{
    struct figures f;
    char line[512];

    ctl_send("stats\n");
    ctl_gets(line, sizeof line);
    if (sscanf(line, "fds %ld co %lu active %llu accepted %llu rss %ld heap %llu "
               "accept_errors %llu spawn_errors %llu", &f.fds, &f.cos, &f.active, &f.accepted,
               &f.rss_raw_kib, &f.heap, &f.accept_errors, &f.spawn_errors) != 8)
        fail("bad answer from the server: \"%s\"", line);
    f.rss_kib = -1;
    return f;
}

/* The server's RSS after malloc_trim(0). Only for the baseline and the end: trimming in
 * between would hide what the allocator keeps during the run from the untrimmed figure. */
static long get_trimmed_rss(void)
{
    char line[64];
    long kib;
    ctl_send("trim\n");
    ctl_gets(line, sizeof line);
    if (sscanf(line, "rss %ld", &kib) != 1)
        fail("bad answer from the server: \"%s\"", line);
    return kib;
}

/* Poll the server every 100 ms until no handler runs; false if some still do at the end. */
static int wait_idle(int ms, struct figures *f)
{
    long long deadline = now_ms() + ms;
    for (;;) {
        *f = get_figures();
        if (f->active == 0)
            return 1;
        if (now_ms() >= deadline)
            return 0;
        usleep(100 * 1000);
    }
}

static void start_server(void)
{
    int cmd[2], ans[2];
    if (pipe2(cmd, O_CLOEXEC) != 0 || pipe2(ans, O_CLOEXEC) != 0) {
        perror("soak: pipe2");
        exit(1);
    }
    pid_t parent = getpid();
    fflush(stdout);
    fflush(stderr);
    server_pid = fork();
    if (server_pid < 0) {
        perror("soak: fork");
        exit(1);
    }
    if (server_pid == 0) {
        /* Never outlive the parent, whatever way it ends. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(2);
        close(cmd[1]);
        close(ans[0]);
        exit(server_main(cmd[0], ans[1]));
    }
    close(cmd[0]);
    close(ans[1]);
    cmd_w = cmd[1];
    ans_r = ans[0];

    char line[64];
    ctl_gets(line, sizeof line);
    if (sscanf(line, "port %d", &port) != 1 || port <= 0)
        fail("bad first line from the server: \"%s\"", line);
}

/* Ask the server to shut down and reap it; its exit status must be 0 (under SAN=1 this
 * includes LeakSanitizer's verdict on the server process). */
static void stop_server(void)
{
    char line[64];
    ctl_send("quit\n");
    ctl_gets(line, sizeof line);
    long long deadline = now_ms() + 10000;
    int st;
    for (;;) {
        pid_t r = waitpid(server_pid, &st, WNOHANG);
        if (r == server_pid)
            break;
        if (r < 0 && errno != EINTR)
            fail("waitpid: %s", strerror(errno));
        if (now_ms() >= deadline)
            fail("server did not exit within 10 s of \"quit\"");
        usleep(20 * 1000);
    }
    server_pid = -1;
    if (WIFSIGNALED(st))
        fail("server died of signal %d (%s) at shutdown", WTERMSIG(st), strsignal(WTERMSIG(st)));
    if (WEXITSTATUS(st) != 0)
        fail("server exited with status %d at shutdown%s", WEXITSTATUS(st),
#ifdef SOAK_ASAN
             " (LeakSanitizer's report, if any, is above)"
#else
             ""
#endif
        );
}

/* ---- totals ---------------------------------------------------------------------------- */

static long long n_rounds, n_conns, n_lines, n_echoload, n_abrupt, n_stalls;
static int verbose;

/* ---- echoload rounds -------------------------------------------------------------------- */

static void run_echoload(struct echoload_opts *o, const char *what)
{
    struct echoload_result r;
    long long t0 = now_ms();
    int rc = echoload_run(o, &r);
    n_conns += o->conns;
    if (rc != 0) {
        check_server_alive();
        fail("%s %lld: %s; repeat it with: echoload -p PORT -c %d -n %d -s %zu%s -P %d -S %u "
             "-t %d", what, n_rounds, r.error, o->conns, o->lines, o->max_len,
             o->random_chunks ? " -r" : "", o->pipeline, o->seed, o->timeout_ms);
    }
    n_lines += r.lines_ok;
    if (verbose)
        printf("soak: %s %lld: echoload -c %d -n %d -s %zu%s -P %d -S %u: %lld lines, "
               "%lld bytes in %lld ms\n", what, n_rounds, o->conns, o->lines, o->max_len,
               o->random_chunks ? " -r" : "", o->pipeline, o->seed, r.lines_ok, r.bytes_in,
               now_ms() - t0);
}

static void echoload_round(void)
{
    struct echoload_opts o = {
        .host = "127.0.0.1",
        .port = port,
        .conns = 1 + (int)rnd(300),
        .lines = 1 + (int)rnd(100),
        .max_len = (size_t)rnd(16385),
        .seed = (unsigned)rng(),
        .random_chunks = (int)rnd(2),
        .pipeline = rnd(3) == 0 ? 0 : 1 + (int)rnd(32),
    };
    /* Bounded by the data it moves: 30 s plus 1 s per 20 MB each way (the server echoes
     * several hundred MB/s on loopback, ASan included, so this only catches a hang). */
    long long bytes = (long long)o.conns * o.lines * ((long long)o.max_len / 2 + 1);
    o.timeout_ms = 30000 + (int)(bytes / 20000);
    n_echoload++;
    run_echoload(&o, "round");
}

/* ---- abrupt rounds --------------------------------------------------------------------- */

enum kind {
    K_CONNECT_CLOSE,  /* connect, close at once */
    K_CONNECT_RST,    /* connect, reset at once */
    K_PARTIAL_CLOSE,  /* a few lines and part of one, close (echoes left unread) */
    K_PARTIAL_RST,    /* the same, then reset */
    K_VERIFY_CLOSE,   /* a few lines, read and verify their echo, part of a line, close */
    K_VERIFY_RST,     /* the same, then reset */
    K_STALL,          /* part of a line, then silence until the server's idle timeout */
    K_COUNT
};

struct client {
    int fd;
    enum kind kind;
    unsigned char *buf;   /* complete lines, then the partial line */
    size_t full, partial; /* byte counts of both parts */
    int lines;
};

struct stall {
    int fd;
    long long t0;         /* before connect: the server cannot time it out earlier */
};
static struct stall stalls[MAX_STALLS];
static int n_stall_open;

static int connect_loopback(long long deadline)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (errno != EINPROGRESS)
            fail("connect to 127.0.0.1:%d: %s", port, strerror(errno));
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int k;
        while ((k = poll(&p, 1, poll_left(deadline))) < 0 && errno == EINTR)
            ;
        if (k == 0)
            fail("connect to 127.0.0.1:%d: timed out", port);
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0)
            fail("connect to 127.0.0.1:%d: %s", port, strerror(err));
    }
    n_conns++;
    return fd;
}

static void send_all(int fd, const unsigned char *p, size_t n, long long deadline,
                     const char *who)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            fail("%s: send: %s", who, strerror(errno));
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        if (poll(&pf, 1, poll_left(deadline)) == 0)
            fail("%s: send timed out (%zu bytes left)", who, n);
    }
}

static void recv_exact(int fd, unsigned char *p, size_t n, long long deadline, const char *who)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = recv(fd, p + got, n - got, 0);
        if (k > 0) {
            got += (size_t)k;
            continue;
        }
        if (k == 0)
            fail("%s: premature end of file after %zu of %zu echoed bytes", who, got, n);
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            fail("%s: recv after %zu of %zu echoed bytes: %s", who, got, n, strerror(errno));
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, poll_left(deadline)) == 0)
            fail("%s: echo timed out after %zu of %zu bytes", who, got, n);
    }
}

static void reset_close(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* Random line bytes: anything but '\n', with '\r' and NUL now and then. */
static void fill_line(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng();
        unsigned char ch = (unsigned char)r;
        if ((r >> 8) % 16 == 0)
            ch = (r >> 12) & 1 ? '\r' : '\0';
        p[i] = ch == '\n' ? 'x' : ch;
    }
}

static void make_client(struct client *c, enum kind kind)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->kind = kind;
    if (kind == K_CONNECT_CLOSE || kind == K_CONNECT_RST)
        return;
    size_t lens[5];
    if (kind != K_STALL) {
        int verify = kind == K_VERIFY_CLOSE || kind == K_VERIFY_RST;
        c->lines = verify ? 1 + (int)rnd(5) : (int)rnd(6); /* verify: 1..5, else 0..5 */
        for (int i = 0; i < c->lines; i++) {
            lens[i] = (size_t)rnd(4097);
            c->full += lens[i] + 1;
        }
    }
    /* The partial line: usually up to 16 KiB, sometimes beyond the server's 64 KiB line
     * limit (the handler then gives up on the line and the connection). */
    if (kind == K_STALL)
        c->partial = 1 + (size_t)rnd(1000);
    else if (rnd(8) == 0)
        c->partial = 65536 + (size_t)rnd(65537);
    else
        c->partial = 1 + (size_t)rnd(16384);
    c->buf = malloc(c->full + c->partial);
    if (!c->buf)
        fail("out of memory");
    size_t off = 0;
    for (int i = 0; i < c->lines; i++) {
        fill_line(c->buf + off, lens[i]);
        off += lens[i];
        c->buf[off++] = '\n';
    }
    fill_line(c->buf + off, c->partial);
}

static const char *kind_name(enum kind k)
{
    static const char *names[] = {"connect-close", "connect-reset", "partial-close",
                                  "partial-reset", "verify-close", "verify-reset", "stall"};
    return names[k];
}

static void abrupt_round(int nclients, int allow_stalls)
{
    long long deadline = now_ms() + ABRUPT_ROUND_MS;
    struct client *cl = calloc((size_t)nclients, sizeof *cl);
    unsigned char *echo_buf = malloc(5 * 4097);
    int counts[K_COUNT] = {0};
    char who[96];

    if (!cl || !echo_buf)
        fail("out of memory");
    n_abrupt++;
    /* Connect everyone first so the server holds many of these clients at once. */
    for (int i = 0; i < nclients; i++) {
        enum kind k = (enum kind)rnd(K_STALL + (allow_stalls != 0));
        if (k == K_STALL && n_stall_open >= MAX_STALLS)
            k = K_PARTIAL_CLOSE;
        make_client(&cl[i], k);
        counts[k]++;
        long long t0 = now_ms();
        cl[i].fd = connect_loopback(deadline);
        if (k == K_CONNECT_CLOSE) {
            close(cl[i].fd);
            cl[i].fd = -1;
        } else if (k == K_CONNECT_RST) {
            reset_close(cl[i].fd);
            cl[i].fd = -1;
        } else if (k == K_STALL) {
            stalls[n_stall_open].fd = cl[i].fd;
            stalls[n_stall_open].t0 = t0;
            n_stall_open++;
            n_stalls++;
        }
    }
    /* Send: verifying clients only their complete lines for now. */
    for (int i = 0; i < nclients; i++) {
        struct client *c = &cl[i];
        if (c->fd < 0)
            continue;
        snprintf(who, sizeof who, "abrupt round %lld, client %d (%s)", n_rounds, i,
                 kind_name(c->kind));
        int verify = c->kind == K_VERIFY_CLOSE || c->kind == K_VERIFY_RST;
        send_all(c->fd, c->buf, verify ? c->full : c->full + c->partial, deadline, who);
    }
    /* Verify the echo of the complete lines, then send the partial line. */
    for (int i = 0; i < nclients; i++) {
        struct client *c = &cl[i];
        if (c->kind != K_VERIFY_CLOSE && c->kind != K_VERIFY_RST)
            continue;
        snprintf(who, sizeof who, "abrupt round %lld, client %d (%s)", n_rounds, i,
                 kind_name(c->kind));
        recv_exact(c->fd, echo_buf, c->full, deadline, who);
        if (memcmp(echo_buf, c->buf, c->full) != 0) {
            size_t at = 0;
            while (echo_buf[at] == c->buf[at])
                at++;
            fail("%s: wrong echo at byte %zu of %zu: got 0x%02x, expected 0x%02x", who, at,
                 c->full, echo_buf[at], c->buf[at]);
        }
        n_lines += c->lines;
        send_all(c->fd, c->buf + c->full, c->partial, deadline, who);
    }
    /* Go away in a random order, the reset kinds with SO_LINGER {1, 0}; stalls stay. */
    for (int left = nclients; left > 0; left--) {
        int j = (int)rnd((uint64_t)left);
        struct client tmp = cl[j];
        cl[j] = cl[left - 1];
        cl[left - 1] = tmp;
        struct client *c = &cl[left - 1];
        if (c->fd >= 0 && c->kind != K_STALL) {
            if (c->kind == K_PARTIAL_RST || c->kind == K_VERIFY_RST)
                reset_close(c->fd);
            else
                close(c->fd);
        }
        free(c->buf);
    }
    free(cl);
    free(echo_buf);
    if (verbose)
        printf("soak: round %lld: %d abrupt clients (%d connect-close, %d connect-reset, "
               "%d partial-close, %d partial-reset, %d verify-close, %d verify-reset, "
               "%d stall)\n", n_rounds, nclients, counts[0], counts[1], counts[2], counts[3],
               counts[4], counts[5], counts[6]);
}

/* Stalled clients: the server must close each one (end of file, nothing echoed) no earlier
 * than its idle timeout and not much later. With `wait`, block until all are closed. */
static void check_stalls(int wait)
{
    for (int i = 0; i < n_stall_open;) {
        struct stall *s = &stalls[i];
        long long late = s->t0 + IDLE_TIMEOUT_MS + STALL_LATE_MS;
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        int k = poll(&p, 1, wait ? poll_left(late) : 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k == 0) {
            if (now_ms() >= late)
                fail("stalled client not closed by the server %d ms after its idle "
                     "timeout of %d ms", STALL_LATE_MS, IDLE_TIMEOUT_MS);
            i++;
            continue;
        }
        char b[64];
        ssize_t r = recv(s->fd, b, sizeof b, MSG_DONTWAIT);
        long long age = now_ms() - s->t0;
        if (r > 0)
            fail("stalled client got %zd bytes back for a line it never ended", r);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r < 0)
            fail("stalled client: recv: %s (after %lld ms)", strerror(errno), age);
        /* The server's clock starts after our t0, so it can only be later, never earlier
         * (10 ms of leeway for clock granularity). */
        if (age < IDLE_TIMEOUT_MS - 10)
            fail("stalled client closed by the server after %lld ms, before the idle timeout "
                 "of %d ms", age, IDLE_TIMEOUT_MS);
        close(s->fd);
        stalls[i] = stalls[--n_stall_open];
    }
}

/* ---- main ------------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr, "usage: soak [-d seconds] [-s seed] [-v]\n");
    exit(2);
}

static long long num(const char *s, long long max)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < 0 || v > max)
        usage();
    return v;
}

/* Where the server's resident memory is, from /proc/PID/smaps: the malloc heap, coroutine
 * stacks (anonymous read-write mappings of the default stack size), other anonymous
 * memory, and file-backed pages. For diagnosing an RSS figure. */
static void print_memory_map(const char *what)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/smaps", (int)server_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    long heap = 0, stacks = 0, nstacks = 0, anon = 0, file = 0, kib;
    int kind = 0; /* of the current mapping: 0 file, 1 heap, 2 stack, 3 other anonymous */
    unsigned long lo, hi;
    while (fgets(line, sizeof line, f)) {
        char name[256] = "";
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %255s", &lo, &hi, name) >= 2 &&
            strchr(line, '-') < strchr(line, ' ')) {
            long long stack_map = WEFT_STACK_DEFAULT; /* the guard page is a mapping of its own */
            if (strcmp(name, "[heap]") == 0)
                kind = 1;
            else if (name[0] == '\0' && (long long)(hi - lo) == stack_map)
                kind = 2, nstacks++;
            else if (name[0] == '\0' || name[0] == '[')
                kind = 3;
            else
                kind = 0;
        } else if (sscanf(line, "Rss: %ld kB", &kib) == 1) {
            if (kind == 1)
                heap += kib;
            else if (kind == 2)
                stacks += kib;
            else if (kind == 3)
                anon += kib;
            else
                file += kib;
        }
    }
    fclose(f);
    printf("soak: %s: server memory: heap %ld KiB, %ld stack mappings %ld KiB, other "
           "anonymous %ld KiB, file-backed %ld KiB\n", what, heap, nstacks, stacks, anon, file);
}

static void print_figures(const char *what, const struct figures *f)
{
    char trimmed[48] = "";
    if (f->rss_kib >= 0)
        snprintf(trimmed, sizeof trimmed, "%ld KiB, untrimmed ", f->rss_kib);
    printf("soak: %s: fds %ld, coroutines %lu, active %llu, accepted %llu, rss %s%ld KiB, "
           "heap %llu KiB\n", what, f->fds, f->cos, f->active, f->accepted, trimmed,
           f->rss_raw_kib, f->heap / 1024);
}

/* The memory slack, for RSS and for the heap in use. The server legitimately keeps what it
 * grew into: up to 64 pooled coroutine stacks with the pages they touched, the event
 * backend's fd table and the timer heap sized for the most connections seen at once, the
 * malloc caches (tcache, fastbins) and the partly used pages that fragmentation leaves. The
 * warm-up already reached the rounds' largest shape (300 connections, 16 KiB lines), so what
 * remains is small: in 60 s runs RSS (trimmed) grew by 200-350 KiB and the heap in use by
 * 25-40 KiB, both flat after the first half minute. A leak grows with the run instead: at
 * 50,000 connections or more a minute, 40 bytes per connection, or one pooled stack's worth
 * of pages every few hundred connections, passes 2 MiB within a minute. max(2 MiB, 10%) sits
 * between the two; the 10% only matters for baselines above 20 MiB (sanitizer builds). */
static long long slack(long long base)
{
    long long tenth = base / 10;
    return tenth > 2048 ? tenth : 2048;
}

int main(int argc, char **argv)
{
    long long duration = 600;
    int have_seed = 0;
    int opt;

    while ((opt = getopt(argc, argv, "d:s:v")) != -1) {
        switch (opt) {
        case 'd': duration = num(optarg, 1000000); break;
        case 's': seed = (uint64_t)num(optarg, INT64_MAX); have_seed = 1; break;
        case 'v': verbose = 1; break;
        default: usage();
        }
    }
    if (optind != argc)
        usage();
    if (!have_seed)
        seed = ((uint64_t)time(NULL) * 1000003u) ^ (uint64_t)getpid();
    seed &= INT64_MAX; /* so that -s can take it back */
    rng_state = seed;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);

    printf("soak: %lld s, seed %" PRIu64 "%s\n", duration, seed,
#ifdef SOAK_ASAN
           " (AddressSanitizer)"
#else
           ""
#endif
    );
    start_server();
    printf("soak: server pid %d on 127.0.0.1:%d\n", (int)server_pid, port);
    if (verbose) {
        struct figures f0 = get_figures();
        print_figures("at start", &f0);
    }

    /* Warm-up at the rounds' largest shape, so lazily grown tables and pools exist. */
    struct echoload_opts warm = {.host = "127.0.0.1", .port = port, .conns = 300, .lines = 8,
                                 .max_len = 16384, .seed = (unsigned)rng(), .random_chunks = 1,
                                 .pipeline = 0, .timeout_ms = 60000};
    run_echoload(&warm, "warm-up");
    abrupt_round(200, 0);
    n_rounds = n_conns = n_lines = n_echoload = n_abrupt = 0;

    struct figures base, end;
    if (!wait_idle(DRAIN_MS, &base))
        fail("%llu handlers still active %d s after the warm-up", base.active, DRAIN_MS / 1000);
    base.rss_kib = get_trimmed_rss();
    print_figures("baseline", &base);
    if (verbose)
        print_memory_map("baseline");

    long long t0 = now_ms(), stop = t0 + duration * 1000, next_report = t0 + 30000;
    while (now_ms() < stop) {
        n_rounds++;
        if (rnd(10) < 7)
            echoload_round();
        else
            abrupt_round(1 + (int)rnd(200), 1);
        check_stalls(0);
        check_server_alive();
        if (now_ms() >= next_report) {
            struct figures f = get_figures();
            printf("soak: %lld s: %lld rounds, %lld connections, %lld lines; server: "
                   "active %llu, fds %ld, coroutines %lu, rss %ld KiB (untrimmed), heap %llu "
                   "KiB\n", (now_ms() - t0) / 1000, n_rounds, n_conns, n_lines, f.active, f.fds,
                   f.cos, f.rss_raw_kib, f.heap / 1024);
            next_report += 30000;
        }
    }
    long long elapsed = now_ms() - t0;
    check_stalls(1);
    if (!wait_idle(DRAIN_MS, &end))
        fail("%llu handlers still active %d s after the last round (fds %ld, coroutines %lu)",
             end.active, DRAIN_MS / 1000, end.fds, end.cos);
    /* On io_uring the pages of the buffer ring go back to the system once no buffer has
     * moved for 200 ms (architecture.md): give it that, with room to spare, as a server gets
     * it after any burst. */
    usleep(1500 * 1000);
    end.rss_kib = get_trimmed_rss();
    if (verbose) {
        print_figures("end", &end);
        print_memory_map("end");
    }

    printf("soak: %lld rounds (%lld echoload, %lld abrupt, %lld stalled clients), "
           "%lld connections, %lld lines verified in %lld s; fds %ld -> %ld, coroutines %lu -> "
           "%lu, rss %ld -> %ld KiB (untrimmed %ld -> %ld), heap %llu -> %llu KiB\n", n_rounds,
           n_echoload, n_abrupt, n_stalls, n_conns, n_lines, (elapsed + 500) / 1000, base.fds,
           end.fds, base.cos, end.cos, base.rss_kib, end.rss_kib, base.rss_raw_kib,
           end.rss_raw_kib, base.heap / 1024, end.heap / 1024);

    int bad = 0;
    if (end.fds != base.fds) {
        fprintf(stderr, "soak: FAIL: %ld open fds at the end, %ld at the baseline\n", end.fds,
                base.fds);
        bad = 1;
    }
    if (end.cos != base.cos) {
        fprintf(stderr, "soak: FAIL: %lu live coroutines at the end, %lu at the baseline\n",
                end.cos, base.cos);
        bad = 1;
    }
    if (end.accepted - base.accepted != (unsigned long long)n_conns) {
        fprintf(stderr, "soak: FAIL: the server accepted %llu connections, the clients made "
                "%lld\n", end.accepted - base.accepted, n_conns);
        bad = 1;
    }
    if (end.accept_errors != 0 || end.spawn_errors != 0) {
        fprintf(stderr, "soak: FAIL: %llu accept errors, %llu spawn errors\n",
                end.accept_errors, end.spawn_errors);
        bad = 1;
    }
    long long heap_base = (long long)(base.heap / 1024), heap_end = (long long)(end.heap / 1024);
    if (heap_end > heap_base + slack(heap_base)) {
        fprintf(stderr, "soak: FAIL: heap in use grew from %lld to %lld KiB (allowed: %lld)\n",
                heap_base, heap_end, heap_base + slack(heap_base));
        bad = 1;
    }
#ifdef SOAK_ASAN
    /* Under AddressSanitizer RSS measures the sanitizer, not the server: freed memory sits in
     * a quarantine of up to 256 MiB and shadow memory follows every address ever used. The
     * heap check above (the sanitizer allocator's count of live bytes) and LeakSanitizer at
     * the server's exit stand in for it. */
    printf("soak: rss not checked under AddressSanitizer (quarantine and shadow memory)\n");
#else
    if (end.rss_kib > base.rss_kib + slack(base.rss_kib)) {
        fprintf(stderr, "soak: FAIL: rss grew from %ld to %ld KiB (allowed: %lld)\n",
                base.rss_kib, end.rss_kib, base.rss_kib + slack(base.rss_kib));
        print_memory_map("end");
        bad = 1;
    }
#endif
    if (bad) {
        kill_server();
        fprintf(stderr, "soak: FAIL (seed %" PRIu64 ")\n", seed);
        return 1;
    }
    stop_server();
    printf("soak: ok\n");
    return 0;
}
