/* echo_threads_bench: lines per second through three line-echo servers, same run:
 *
 *   weft 1t   weft_serve_threads(..., 1): one scheduler thread (the echo handler of
 *             examples/echo_handler.c)
 *   weft 2t   weft_serve_threads(..., 2): two scheduler threads, SO_REUSEPORT listeners
 *   events    examples/echo-events: the hand-written epoll state machine, one thread, no weft
 *
 * Each server runs in its own process (forked, or exec'd for echo-events); this process is
 * the load generator: tests/echoload.c, one epoll thread opening every connection at once,
 * sending random lines and verifying every echoed byte. Two load shapes: one line in flight
 * per connection (request/response) and a pipelined one. For each shape the servers are
 * measured in turn, the order rotating between repetitions, and the table shows medians.
 * The load generator shares the machine's cores with the servers: with 2 cores, "2 threads"
 * means the server's two threads and the client compete for them.
 *
 * usage: echo_threads_bench -e PATH/echo-events [-q] [-r REPS] [-t SECONDS] [-c CONNS]
 *                           [-s MAXLEN] [-P PIPELINE]
 *   -q  quick (CI): 3 repetitions of about 0.15 s per run
 *   -r  repetitions (default 5), -t  target seconds per run (default 1)
 *   -c  connections (default 100), -s  line content length uniform in [0, MAXLEN] (default
 *       126: 64 bytes a line on average with its '\n'), -P  the pipelined shape's depth (16)
 * Exits 1 if a server fails to start or any byte comes back wrong. Loopback only; every
 * server process is ended by its PID (SIGTERM, then SIGKILL after 10 s) and also dies with
 * this process (PR_SET_PDEATHSIG); a watchdog alarm bounds the whole run.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "../examples/echo_handler.h"
#include "../tests/echoload.h"

#include <weft.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPS 51
#define NSERVERS 3

typedef struct {
    const char *name;
    int threads;   /* weft_serve_threads threads; 0: exec echo-events */
    pid_t pid;
    int port;
    int reserve_fd; /* holds the port until the server listens on it */
} server;

static server servers[NSERVERS] = {
    {"weft_serve_threads, 1 thread", 1, 0, 0, -1},
    {"weft_serve_threads, 2 threads", 2, 0, 0, -1},
    {"echo-events (epoll by hand)", 0, 0, 0, -1},
};

/* Kill and reap every server still running; safe from the alarm handler too. */
static void stop_servers(int sig)
{
    for (int i = 0; i < NSERVERS; i++)
        if (servers[i].pid > 0)
            kill(servers[i].pid, sig);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "echo_threads_bench: watchdog: run took too long\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    stop_servers(SIGKILL);
    _exit(1);
}

static void reap_servers(void)
{
    stop_servers(SIGTERM);
    for (int i = 0; i < NSERVERS; i++) {
        server *s = &servers[i];
        if (s->pid <= 0)
            continue;
        int status = 0;
        pid_t r = 0;
        for (int ms = 0; ms < 10000 && (r = waitpid(s->pid, &status, WNOHANG)) == 0; ms += 10)
            usleep(10000);
        if (r == 0) {
            fprintf(stderr, "echo_threads_bench: %s (pid %d) ignored SIGTERM: killed\n",
                    s->name, (int)s->pid);
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &status, 0);
        } else if (r > 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
            fprintf(stderr, "echo_threads_bench: %s (pid %d) ended with status 0x%x\n",
                    s->name, (int)s->pid, status);
        }
        s->pid = 0;
    }
}

static _Noreturn void fail(const char *fmt, const char *detail)
{
    fprintf(stderr, "echo_threads_bench: ");
    fprintf(stderr, fmt, detail);
    fprintf(stderr, "\n");
    reap_servers();
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* In a child: die with the parent, so no server outlives the benchmark. */
static void die_with_parent(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
}

/* A port on 127.0.0.1 kept bound (SO_REUSEPORT, not listening: it takes no connections) so
 * that nobody else takes it before the weft server, which binds it with SO_REUSEPORT too. */
static int reserve_port(int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        fail("reserving a port: %s", strerror(errno));
    *fd_out = fd;
    return ntohs(sa.sin_port);
}

/* Sockets listening on 127.0.0.1:port, from /proc/net/tcp (state 0A is LISTEN). */
static int count_listeners(int port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    if (!f)
        return -1;
    char line[512], want[32];
    snprintf(want, sizeof want, "0100007F:%04X", port);
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char local[64], remote[64], state[8];
        if (sscanf(line, " %*s %63s %63s %7s", local, remote, state) == 3 &&
            strcmp(local, want) == 0 && strcmp(state, "0A") == 0)
            n++;
    }
    fclose(f);
    return n;
}

static void start_weft(server *s)
{
    s->port = reserve_port(&s->reserve_fd);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", s->port);
    pid_t parent = getpid();
    fflush(NULL);
    s->pid = fork();
    if (s->pid < 0)
        fail("fork: %s", strerror(errno));
    if (s->pid == 0) {
        die_with_parent(parent);
        close(s->reserve_fd); /* the parent's copy keeps the port until we listen */
        static struct echo_opts opts = {.quiet = 1};
        _exit(weft_serve_threads(addr, echo, &opts, s->threads) == 0 ? 0 : 1);
    }
}

static void start_events(server *s, const char *path)
{
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0)
        fail("pipe: %s", strerror(errno));
    pid_t parent = getpid();
    fflush(NULL);
    s->pid = fork();
    if (s->pid < 0)
        fail("fork: %s", strerror(errno));
    if (s->pid == 0) {
        die_with_parent(parent);
        dup2(out[1], 1);
        execl(path, "echo-events", "-h", "127.0.0.1", "-p", "0", "-q", (char *)NULL);
        fprintf(stderr, "echo_threads_bench: exec %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    close(out[1]);
    /* "listening on 127.0.0.1:PORT" within 10 s */
    char buf[256];
    size_t len = 0;
    double end = now_s() + 10;
    while (len < sizeof buf - 1 && !memchr(buf, '\n', len)) {
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        int ms = (int)((end - now_s()) * 1000);
        if (ms <= 0 || poll(&p, 1, ms) <= 0)
            fail("%s did not say where it listens", path);
        ssize_t n = read(out[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            fail("%s ended before listening", path);
        len += (size_t)n;
    }
    buf[len] = '\0';
    close(out[0]);
    if (sscanf(buf, "listening on 127.0.0.1:%d", &s->port) != 1)
        fail("unexpected first line from echo-events: %s", buf);
}

/* Wait until every thread of s listens (the 2-thread server's second listener comes a moment
 * after the first), or fail after 10 s. */
static void wait_listening(server *s)
{
    int want = s->threads > 0 ? s->threads : 1;
    for (int ms = 0; count_listeners(s->port) < want; ms += 5) {
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            s->pid = 0;
            fail("%s ended before listening", s->name);
        }
        if (ms >= 10000)
            fail("%s is not listening after 10 s", s->name);
        usleep(5000);
    }
    if (s->reserve_fd >= 0) {
        close(s->reserve_fd);
        s->reserve_fd = -1;
    }
}

/* CPU time (user + system) the process has used, in seconds. */
static double cpu_of(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

typedef struct {
    double lines_per_s;
    double cpu_us_per_line; /* the server's CPU time per line */
} sample;

/* One verified run against s; fails the benchmark on any wrong byte. */
static sample run_load(server *s, int conns, int lines, size_t maxlen, int pipeline,
                       unsigned seed)
{
    struct echoload_opts o = {.host = "127.0.0.1", .port = s->port, .conns = conns,
                              .lines = lines, .max_len = maxlen, .seed = seed,
                              .pipeline = pipeline, .timeout_ms = 120000};
    struct echoload_result r;
    double c0 = cpu_of(s->pid), t0 = now_s();
    int rc = echoload_run(&o, &r);
    double t1 = now_s(), c1 = cpu_of(s->pid);
    if (rc != 0)
        fail("verification failed: %s", r.error);
    return (sample){(double)r.lines_ok / (t1 - t0), (c1 - c0) * 1e6 / (double)r.lines_ok};
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s -e PATH/echo-events [-q] [-r REPS] [-t SECONDS] [-c CONNS] [-s MAXLEN] "
            "[-P PIPELINE]\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *events_path = NULL;
    int reps = 5, conns = 100, depth = 16, quick = 0, opt;
    double secs = 1.0;
    long maxlen = 126;
    while ((opt = getopt(argc, argv, "e:qr:t:c:s:P:")) != -1) {
        switch (opt) {
        case 'e': events_path = optarg; break;
        case 'q': quick = 1; break;
        case 'r': reps = atoi(optarg); break;
        case 't': secs = atof(optarg); break;
        case 'c': conns = atoi(optarg); break;
        case 's': maxlen = atol(optarg); break;
        case 'P': depth = atoi(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (!events_path || optind != argc)
        usage(argv[0]);
    if (quick) {
        reps = 3;
        secs = 0.15;
    }
    if (reps < 1 || reps > MAX_REPS || !(secs > 0 && secs <= 30) || conns < 1 ||
        conns > 10000 || maxlen < 0 || maxlen > 65536 || depth < 1) {
        fprintf(stderr, "echo_threads_bench: -r 1..%d, -t in (0, 30], -c 1..10000, "
                        "-s 0..65536, -P >= 1\n", MAX_REPS);
        return 2;
    }
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    /* Watchdog: two shapes x (warm-up + reps) x servers, each run aiming at secs. */
    alarm((unsigned)(2 * (reps + 1) * NSERVERS * (secs * 4 + 2)) + 60);

    for (int i = 0; i < NSERVERS; i++) {
        if (servers[i].threads > 0)
            start_weft(&servers[i]);
        else
            start_events(&servers[i], events_path);
    }
    for (int i = 0; i < NSERVERS; i++)
        wait_listening(&servers[i]);

    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", localtime(&now));
    struct utsname u;
    uname(&u);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    printf("echo_threads_bench %s, %s %s, %ld CPUs online, weft %s\n", date, u.sysname,
           u.release, cpus, WEFT_VERSION);
    printf("NOTE: the load generator (this process: one epoll thread that makes and verifies "
           "every byte)\n      runs on the same %ld cores as the servers; a 2-thread server "
           "competes with it for them.\n", cpus);
    printf("%d connections, line = 0..%ld random bytes + '\\n' (%.1f B mean), %d repetitions, "
           "~%.2f s a run, medians\n", conns, maxlen, maxlen / 2.0 + 1, reps, secs);
    printf("server CPU/line: user+system time of the server process per line (clock ticks: "
           "coarse for short runs)\n");
    fflush(stdout);

    const int shapes[2] = {1, depth};
    for (int sh = 0; sh < 2; sh++) {
        int pipeline = shapes[sh];
        /* Warm-up (also checks every server) sizes each server's runs to about secs. */
        int warm_lines = quick ? 20 : 100;
        long lines[NSERVERS];
        for (int i = 0; i < NSERVERS; i++) {
            double r = run_load(&servers[i], conns, warm_lines, (size_t)maxlen, pipeline, 99)
                           .lines_per_s;
            lines[i] = (long)(r * secs / conns);
            lines[i] = lines[i] < 10 ? 10 : lines[i] > 1000000 ? 1000000 : lines[i];
        }

        double rate[NSERVERS][MAX_REPS], cpu[NSERVERS][MAX_REPS];
        for (int rep = 0; rep < reps; rep++)
            for (int k = 0; k < NSERVERS; k++) {
                int i = (k + rep) % NSERVERS; /* rotate: no server always goes first */
                sample sm = run_load(&servers[i], conns, (int)lines[i], (size_t)maxlen, pipeline,
                                     (unsigned)(rep + 1));
                rate[i][rep] = sm.lines_per_s;
                cpu[i][rep] = sm.cpu_us_per_line;
            }

        printf("\nload: %d connections, %s\n", conns,
               pipeline == 1 ? "P=1 (one line in flight per connection: request/response)"
                             : "pipelined");
        if (pipeline != 1)
            printf("      (P=%d: up to %d lines in flight per connection)\n", pipeline,
                   pipeline);
        printf("  %-30s %10s %10s %20s %16s\n", "server", "lines/conn", "lines/s", "min..max",
               "server CPU/line");
        double med[NSERVERS];
        for (int i = 0; i < NSERVERS; i++) {
            double lo = rate[i][0], hi = rate[i][0];
            for (int r = 1; r < reps; r++) {
                lo = rate[i][r] < lo ? rate[i][r] : lo;
                hi = rate[i][r] > hi ? rate[i][r] : hi;
            }
            med[i] = median(rate[i], reps);
            char range[48];
            snprintf(range, sizeof range, "%.0f..%.0f", lo, hi);
            printf("  %-30s %10ld %10.0f %20s %13.2f us\n", servers[i].name, lines[i], med[i],
                   range, median(cpu[i], reps));
        }
        printf("  ratio 2 threads / 1 thread:        %.2f\n", med[1] / med[0]);
        printf("  ratio weft 1 thread / echo-events: %.2f   (> 1: weft faster)\n",
               med[0] / med[2]);
        fflush(stdout);
    }
    alarm(0);
    reap_servers();
    return 0;
}
