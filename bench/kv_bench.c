/* kv_bench: examples/kv against redis-server 7 under redis-benchmark (bench/README.md).
 *
 * For each row -- a test of redis-benchmark (SET, GET, INCR, MSET of 10 keys) with 50
 * clients one request at a time (-P 1), 50 clients pipelining 16 (-P 16), and 1,000 clients
 * at -P 1 -- it starts each server afresh, pinned to CPU 0 (kv, and redis-server --save ''
 * --appendonly no), runs redis-benchmark pinned to CPU 1, and reads the server's CPU time
 * (utime + stime, /proc/PID/stat) before and after. Figures: requests per server CPU-second
 * (the fair one: the client has a core of its own), requests per second, and the p99 latency
 * redis-benchmark reports (--csv). Every measurement is repeated, alternating the servers,
 * and the median shown, with ratios kv / redis-server.
 *
 * Exit status 1 only on a real failure (a server that does not start or crashes,
 * redis-benchmark failing); without redis-server or redis-benchmark it says so and exits 0.
 *
 * Usage: kv_bench -b BUILD_DIR [-q] [-r REPS] [-R ROW]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "run.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXREP 9
enum { S_KV, S_REDIS, NSERV };
static const char *const serv_name[NSERV] = {"kv", "redis"};

struct row {
    const char *test; /* redis-benchmark -t */
    int clients, pipeline;
    long requests, quick_requests;
};
static const struct row rows[] = {
    {"set", 50, 1, 200000, 10000},     {"get", 50, 1, 200000, 10000},
    {"incr", 50, 1, 200000, 10000},    {"mset", 50, 1, 150000, 10000},
    {"set", 50, 16, 2000000, 100000},  {"get", 50, 16, 2000000, 100000},
    {"incr", 50, 16, 2000000, 100000}, {"mset", 50, 16, 600000, 40000},
    {"set", 1000, 1, 200000, 10000},   {"get", 1000, 1, 200000, 10000},
    {"incr", 1000, 1, 200000, 10000},  {"mset", 1000, 1, 150000, 10000},
};
#define NROWS (int)(sizeof rows / sizeof rows[0])

struct res {
    int ok;
    double rps, per_cpu, p99, cpu;
};

static char build[512];
static pid_t live_server = -1, live_client = -1;
static int failures;

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "kv_bench: FAIL: watchdog expired\n";
    if (live_client > 0)
        kill(live_client, SIGKILL);
    if (live_server > 0)
        kill(live_server, SIGKILL);
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(1);
}

static int accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0;
    close(fd);
    return ok;
}

/* Start server s pinned to CPU 0 on a free port; its pid, or -1. */
static pid_t server_start(int s, int *port, char *dir)
{
    *port = run_free_port();
    char portstr[16], kv[600];
    snprintf(portstr, sizeof portstr, "%d", *port);
    snprintf(kv, sizeof kv, "%s/examples/kv", build);
    if (s == S_REDIS) {
        snprintf(dir, 64, "/tmp/kv-bench-XXXXXX");
        if (!mkdtemp(dir))
            return -1;
    }
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        run_pin(0);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        if (s == S_KV)
            execl(kv, kv, "-q", "-p", portstr, (char *)NULL);
        else
            execlp("redis-server", "redis-server", "--save", "", "--appendonly", "no", "--port",
                   portstr, "--bind", "127.0.0.1", "--dir", dir, (char *)NULL);
        fprintf(stderr, "kv_bench: exec %s: %s\n", s == S_KV ? kv : "redis-server",
                strerror(errno));
        _exit(127);
    }
    live_server = pid;
    for (int i = 0; i < 500; i++) { /* up to 10 s */
        if (waitpid(pid, NULL, WNOHANG) == pid)
            break;
        if (accepts(*port))
            return pid;
        usleep(20000);
    }
    fprintf(stderr, "kv_bench: FAIL: %s did not start\n", serv_name[s]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    live_server = -1;
    return -1;
}

/* Stop it; 0 if it was still running (then it exits on our SIGTERM), -1 if it had died. */
static int server_stop(int s, pid_t pid, const char *dir)
{
    int st = 0, crashed = waitpid(pid, &st, WNOHANG) == pid;
    if (!crashed) {
        kill(pid, SIGTERM);
        pid_t w = 0;
        for (int i = 0; i < 500 && (w = waitpid(pid, &st, WNOHANG)) == 0; i++)
            usleep(10000);
        if (w == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
        }
    }
    live_server = -1;
    if (s == S_REDIS) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "kv_bench: could not remove %s\n", dir);
    }
    if (crashed) {
        fprintf(stderr, "kv_bench: FAIL: %s ended on its own (status 0x%x)\n", serv_name[s], st);
        return -1;
    }
    return 0;
}

/* utime + stime of pid in seconds. */
static double cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the name may hold spaces */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Run redis-benchmark for row rw on CPU 1; fill rps and p99 from its CSV. 0 on success. */
static int run_client(const struct row *rw, int port, long requests, struct res *r)
{
    char a_port[16], a_c[16], a_p[16], a_n[24];
    snprintf(a_port, sizeof a_port, "%d", port);
    snprintf(a_c, sizeof a_c, "%d", rw->clients);
    snprintf(a_p, sizeof a_p, "%d", rw->pipeline);
    snprintf(a_n, sizeof a_n, "%ld", requests);
    int pfd[2];
    if (pipe(pfd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        run_pin(1);
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        close(pfd[0]);
        close(pfd[1]);
        execlp("redis-benchmark", "redis-benchmark", "-p", a_port, "-t", rw->test, "-c", a_c,
               "-P", a_p, "-n", a_n, "--csv", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    live_client = pid;
    char out[8192];
    size_t len = 0;
    ssize_t k;
    while (len < sizeof out - 1 && (k = read(pfd[0], out + len, sizeof out - 1 - len)) > 0)
        len += (size_t)k;
    out[len] = '\0';
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    live_client = -1;
    /* "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
     * "p99_latency_ms","max_latency_ms", then one line per test. */
    const char *line = strstr(out, "\n\"");
    double v[7];
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || !line ||
        sscanf(line + 1, "\"%*[^\"]\",\"%lf\",\"%lf\",\"%lf\",\"%lf\",\"%lf\",\"%lf\",\"%lf\"",
               &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]) != 7) {
        fprintf(stderr, "kv_bench: FAIL: redis-benchmark -t %s -c %d -P %d said: %s\n", rw->test,
                rw->clients, rw->pipeline, out);
        return -1;
    }
    r->rps = v[0];
    r->p99 = v[5];
    return 0;
}

static struct res measure(int s, const struct row *rw, long requests)
{
    struct res r = {0};
    int port;
    char dir[64] = "";
    pid_t pid = server_start(s, &port, dir);
    if (pid < 0) {
        failures++;
        return r;
    }
    double before = cpu_seconds(pid);
    int cr = run_client(rw, port, requests, &r);
    double after = cpu_seconds(pid);
    int sr = server_stop(s, pid, dir);
    if (cr != 0 || sr != 0 || before < 0 || after < 0) {
        failures++;
        return r;
    }
    r.cpu = after - before;
    r.per_cpu = r.cpu > 0 ? (double)requests / r.cpu : 0;
    r.ok = 1;
    return r;
}

static void redis_version(char *out, size_t n)
{
    snprintf(out, n, "?");
    FILE *f = popen("redis-server --version 2>/dev/null", "r");
    if (!f)
        return;
    char line[256];
    if (fgets(line, sizeof line, f)) {
        const char *v = strstr(line, "v=");
        if (v)
            snprintf(out, n, "%.*s", (int)strcspn(v + 2, " \n"), v + 2);
    }
    pclose(f);
}

int main(int argc, char **argv)
{
    int quick = 0, reps = 0, only_row = -1, opt;
    while ((opt = getopt(argc, argv, "b:qr:R:")) != -1) {
        switch (opt) {
        case 'b': snprintf(build, sizeof build, "%s", optarg); break;
        case 'q': quick = 1; break;
        case 'r': reps = atoi(optarg); break;
        case 'R': only_row = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: kv_bench -b BUILD_DIR [-q] [-r REPS] [-R ROW]\n");
            return 2;
        }
    }
    if (!build[0])
        snprintf(build, sizeof build, "build");
    if (reps <= 0)
        reps = quick ? 1 : 3;
    if (reps > MAXREP)
        reps = MAXREP;
    if (!run_have("redis-server") || !run_have("redis-benchmark")) {
        printf("kv_bench: skipped: redis-server or redis-benchmark not installed "
               "(Debian packages redis-server, redis-tools)\n");
        return 0;
    }
    signal(SIGALRM, on_alarm);
    alarm(quick ? 300 : 3600);
    signal(SIGPIPE, SIG_IGN);

    char version[32], date[64];
    redis_version(version, sizeof version);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", localtime(&now));
    printf("== kv vs redis-server %s: redis-benchmark, servers on CPU 0, client on CPU 1, "
           "median of %d%s, %s ==\n", version, reps, quick ? " (QUICK: few requests)" : "", date);
    printf("req/cpu-s: requests per server CPU-second (the fair figure); ratio: kv / redis "
           "(req: higher is better, p99: lower is better)\n\n");
    printf("%-22s %11s %11s %6s %9s %9s %6s %9s %9s\n", "row", "kv req/cpu", "redis", "ratio",
           "kv p99 ms", "redis", "ratio", "kv req/s", "redis");

    for (int ri = 0; ri < NROWS; ri++) {
        if (only_row >= 0 && ri != only_row)
            continue;
        const struct row *rw = &rows[ri];
        long requests = quick ? rw->quick_requests : rw->requests;
        double v[3][NSERV][MAXREP];
        int nok[NSERV] = {0};
        for (int k = 0; k < reps; k++) {
            for (int j = 0; j < NSERV; j++) {
                int s = (j + k + ri) % NSERV; /* alternate which goes first */
                struct res r = measure(s, rw, requests);
                if (!r.ok)
                    continue;
                int i = nok[s]++;
                v[0][s][i] = r.per_cpu, v[1][s][i] = r.p99, v[2][s][i] = r.rps;
            }
        }
        double m[3][NSERV];
        for (int f = 0; f < 3; f++)
            for (int s = 0; s < NSERV; s++)
                m[f][s] = median(v[f][s], nok[s]);
        char label[64], a[16], b[16], c[16], d[16];
        snprintf(label, sizeof label, "%s -c %d -P %d", rw->test, rw->clients, rw->pipeline);
        fmt_num(a, sizeof a, m[0][S_KV]);
        fmt_num(b, sizeof b, m[0][S_REDIS]);
        fmt_num(c, sizeof c, m[2][S_KV]);
        fmt_num(d, sizeof d, m[2][S_REDIS]);
        if (!nok[S_KV] || !nok[S_REDIS]) {
            printf("%-22s (failed)\n", label);
            continue;
        }
        printf("%-22s %11s %11s %6.2f %9.3f %9.3f %6.2f %9s %9s\n", label, a, b,
               m[0][S_REDIS] > 0 ? m[0][S_KV] / m[0][S_REDIS] : 0, m[1][S_KV], m[1][S_REDIS],
               m[1][S_REDIS] > 0 ? m[1][S_KV] / m[1][S_REDIS] : 0, c, d);
        fflush(stdout);
    }
    if (failures)
        fprintf(stderr, "kv_bench: %d measurement(s) failed\n", failures);
    return failures ? 1 : 0;
}
