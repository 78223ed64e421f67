/* echo_bench: the echo matrix of `make bench` (bench/README.md).
 *
 * For each row (connections N, lines in flight P, line size S) it runs each server in its own
 * process pinned to CPU 0 -- weft's examples/echo with WEFT_BACKEND=epoll and =uring, and the
 * hand-written baselines base_epoll and base_uring -- and drives it with bench/loadgen pinned
 * to CPU 1, which verifies every byte. Every server is measured REPS times, in rotating order,
 * within the same run; the median of each figure is shown. Then the idle memory per connection
 * (10,000 connections parked) for each server.
 *
 * Exit status 1 only on a real failure: a loadgen that reports a mismatch or an error, a
 * server that does not start or crashes. A low ratio is never a failure.
 *
 * Usage: echo_bench -b BUILD_DIR [-B OTHER_BUILD_DIR] [-q] [-U] [-t SECONDS] [-r REPS] [-R ROW]
 * With -B, the echo of another build (an earlier commit's, say) runs in the same rotation,
 * and a table gives this build's rt/cpu-s over the other's: an A/B in one run.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>

#define MAXREP 9
enum { S_WEFT_EPOLL, S_WEFT_URING, S_BASE_EPOLL, S_BASE_URING, S_B_EPOLL, S_B_URING, NSERV };
static const char *serv_name[NSERV] = {"weft/epoll", "weft/uring", "base_epoll", "base_uring",
                                       "B:epoll", "B:uring"};

struct row {
    int n, p, s;
    const char *label;
};
static const struct row rows[] = {
    {1, 1, 64, "N=1"},
    {100, 1, 64, "N=100"},
    {1000, 1, 64, "N=1000"},
    {10000, 1, 64, "N=10000"},
    {1000, 16, 64, "N=1000 P=16"},
    {100, 1, 16384, "N=100 S=16K"},
};
#define NROWS (int)(sizeof rows / sizeof rows[0])

struct res {
    int ok;
    double rtps, rtcpu, p50, p99, p999, cpu;
};

static char build[512], build_b[512];
static int have_uring = 1, failures;

static void server_path(int s, char *buf, size_t n)
{
    if (s == S_WEFT_EPOLL || s == S_WEFT_URING)
        snprintf(buf, n, "%s/examples/echo", build);
    else if (s == S_B_EPOLL || s == S_B_URING)
        snprintf(buf, n, "%s/examples/echo", build_b);
    else
        snprintf(buf, n, "%s/bench/%s", build, serv_name[s]);
}

/* Start server s pinned to CPU 0; returns its pid and sets *port, or -1. With logging, an
 * example server runs as `make run` ships it (its connect/EOF lines on, to /dev/null here):
 * through sh, which execs it, so the pid is the server's. */
static pid_t server_start_as(int s, int *port, int *outfd, bool logging)
{
    char path[600];
    server_path(s, path, sizeof path);
    const char *backend = NULL;
    if (s == S_WEFT_EPOLL || s == S_B_EPOLL)
        backend = "epoll";
    else if (s == S_WEFT_URING || s == S_B_URING)
        backend = "uring";
    char *argv[] = {path, "-q", "-p", "0", NULL};
    char *logged[] = {"/bin/sh", "-c", "exec \"$0\" -p 0 2>/dev/null", path, NULL};
    return run_server_start(serv_name[s], logging ? logged : argv, backend, port, outfd);
}

static pid_t server_start(int s, int *port, int *outfd)
{
    return server_start_as(s, port, outfd, false);
}

static int server_stop(int s, pid_t pid, int outfd)
{
    return run_server_stop(serv_name[s], pid, outfd);
}

static struct res measure(int s, const struct row *rw, double secs)
{
    struct res r = {0};
    int port, outfd;
    pid_t pid = server_start(s, &port, &outfd);
    if (pid < 0) {
        failures++;
        return r;
    }
    char lg[600], a_port[16], a_pid[16], a_c[16], a_p[16], a_s[16], a_t[32], out[1024];
    snprintf(lg, sizeof lg, "%s/bench/loadgen", build);
    snprintf(a_port, sizeof a_port, "%d", port);
    snprintf(a_pid, sizeof a_pid, "%d", (int)pid);
    snprintf(a_c, sizeof a_c, "%d", rw->n);
    snprintf(a_p, sizeof a_p, "%d", rw->p);
    snprintf(a_s, sizeof a_s, "%d", rw->s);
    snprintf(a_t, sizeof a_t, "%g", secs);
    char *args[] = {lg, "-p", a_port, "-S", a_pid, "-c", a_c, "-P", a_p, "-s", a_s, "-t", a_t,
                    "-a", "1", NULL};
    int lr = run_loadgen(args, out, sizeof out);
    int sr = server_stop(s, pid, outfd);
    if (lr != 0 || sr != 0) {
        fprintf(stderr, "echo_bench: FAIL: %s, %s: loadgen said: %s\n", serv_name[s], rw->label,
                out[0] ? out : "(nothing)");
        failures++;
        return r;
    }
    r.ok = 1;
    r.rtps = run_field(out, "rt_per_s=");
    r.rtcpu = run_field(out, "rt_per_cpu_s=");
    r.p50 = run_field(out, "p50_us=");
    r.p99 = run_field(out, "p99_us=");
    r.p999 = run_field(out, "p999_us=");
    r.cpu = run_field(out, "server_cpu_s=");
    return r;
}

int main(int argc, char **argv)
{
    int quick = 0, reps = 0, only_row = -1;
    double secs = 0;
    int opt;
    while ((opt = getopt(argc, argv, "b:B:qUt:r:R:")) != -1) {
        switch (opt) {
        case 'b': snprintf(build, sizeof build, "%s", optarg); break;
        case 'B': snprintf(build_b, sizeof build_b, "%s", optarg); break;
        case 'q': quick = 1; break;
        case 'U': have_uring = 0; break;
        case 't': secs = atof(optarg); break;
        case 'r': reps = atoi(optarg); break;
        case 'R': only_row = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: echo_bench -b BUILD_DIR [-B OTHER_BUILD_DIR] [-q] [-U] "
                            "[-t SECONDS] [-r REPS] [-R ROW]\n");
            return 2;
        }
    }
    if (!build[0])
        snprintf(build, sizeof build, "build");
    if (secs <= 0)
        secs = quick ? 1 : 3;
    if (reps <= 0)
        reps = quick ? 1 : 3;
    if (reps > MAXREP)
        reps = MAXREP;
    run_prog = "echo_bench";
    run_watchdog(quick ? 600 : 3600, NULL);

    /* The servers in rotation: the rest are skipped (no liburing, no -B). */
    int list[NSERV], nserv = 0;
    for (int s = 0; s < NSERV; s++)
        if ((s != S_BASE_URING || have_uring) && (s < S_B_EPOLL || build_b[0]))
            list[nserv++] = s;
    time_t now = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", localtime(&now));
    printf("== echo: round trips, servers on CPU 0, loadgen on CPU 1, %g s x %d reps (median), %s ==\n",
           secs, reps, date);
    if (!have_uring)
        printf("note: built without liburing: no base_uring column\n");
    printf("rt/s: round trips per second; rt/cpu-s: per server CPU-second (the fair figure);\n"
           "ratio: weft / best baseline of the same run (rt: higher is better; p99: lower is better)\n\n");
    printf("%-12s %-10s %9s %10s %8s %8s %9s %6s\n", "row", "server", "rt/s", "rt/cpu-s",
           "p50 us", "p99 us", "p999 us", "cpu s");

    struct res med[NROWS][NSERV];
    memset(med, 0, sizeof med);
    for (int ri = 0; ri < NROWS; ri++) {
        if (only_row >= 0 && ri != only_row)
            continue;
        const struct row *rw = &rows[ri];
        double v[6][NSERV][MAXREP];
        int nok[NSERV] = {0};
        for (int k = 0; k < reps; k++) {
            for (int j = 0; j < nserv; j++) {
                int s = list[(j + k + ri) % nserv]; /* rotate the order */
                struct res r = measure(s, rw, secs);
                if (!r.ok)
                    continue;
                int i = nok[s]++;
                v[0][s][i] = r.rtps, v[1][s][i] = r.rtcpu, v[2][s][i] = r.p50;
                v[3][s][i] = r.p99, v[4][s][i] = r.p999, v[5][s][i] = r.cpu;
            }
        }
        for (int j = 0; j < nserv; j++) {
            int s = list[j];
            struct res *m = &med[ri][s];
            if (!nok[s])
                continue;
            m->ok = 1;
            m->rtps = median(v[0][s], nok[s]);
            m->rtcpu = median(v[1][s], nok[s]);
            m->p50 = median(v[2][s], nok[s]);
            m->p99 = median(v[3][s], nok[s]);
            m->p999 = median(v[4][s], nok[s]);
            m->cpu = median(v[5][s], nok[s]);
            char a[16], b[16];
            fmt_num(a, sizeof a, m->rtps);
            fmt_num(b, sizeof b, m->rtcpu);
            printf("%-12s %-10s %9s %10s %8.0f %8.0f %9.0f %6.2f\n", j == 0 ? rw->label : "",
                   serv_name[s], a, b, m->p50, m->p99, m->p999, m->cpu);
        }
        fflush(stdout);
    }

    /* the ratio table */
    printf("\n== echo ratios: weft / best baseline (same run) ==\n");
    printf("%-12s %-10s | %-21s | %-21s | %-21s\n", "", "", "rt/cpu-s (>= 1 good)",
           "rt/s (>= 1 good)", "p99 (<= 1 good)");
    printf("%-12s %-10s | %10s %10s | %10s %10s | %10s %10s\n", "row", "best", "weft/epoll",
           "weft/uring", "weft/epoll", "weft/uring", "weft/epoll", "weft/uring");
    for (int ri = 0; ri < NROWS; ri++) {
        if (only_row >= 0 && ri != only_row)
            continue;
        struct res *m = med[ri];
        /* best baseline: the higher rt/cpu-s (for rt/s and p99, the best of the two figures) */
        int bc = -1;
        double best_rt = 0, best_p99 = 0;
        for (int s = S_BASE_EPOLL; s <= S_BASE_URING; s++) {
            if (!m[s].ok)
                continue;
            if (bc < 0 || m[s].rtcpu > m[bc].rtcpu)
                bc = s;
            if (m[s].rtps > best_rt)
                best_rt = m[s].rtps;
            if (best_p99 == 0 || m[s].p99 < best_p99)
                best_p99 = m[s].p99;
        }
        char r1[16], r2[16], r3[16], r4[16], r5[16], r6[16];
        double bcpu = bc >= 0 ? m[bc].rtcpu : 0;
        ratio(r1, sizeof r1, m[S_WEFT_EPOLL].rtcpu, bcpu, m[S_WEFT_EPOLL].ok);
        ratio(r2, sizeof r2, m[S_WEFT_URING].rtcpu, bcpu, m[S_WEFT_URING].ok);
        ratio(r3, sizeof r3, m[S_WEFT_EPOLL].rtps, best_rt, m[S_WEFT_EPOLL].ok);
        ratio(r4, sizeof r4, m[S_WEFT_URING].rtps, best_rt, m[S_WEFT_URING].ok);
        ratio(r5, sizeof r5, m[S_WEFT_EPOLL].p99, best_p99, m[S_WEFT_EPOLL].ok);
        ratio(r6, sizeof r6, m[S_WEFT_URING].p99, best_p99, m[S_WEFT_URING].ok);
        printf("%-12s %-10s | %10s %10s | %10s %10s | %10s %10s\n", rows[ri].label,
               bc >= 0 ? serv_name[bc] : "-", r1, r2, r3, r4, r5, r6);
    }

    if (build_b[0]) {
        printf("\n== A/B: this build (%s) / the other (%s), rt/cpu-s (>= 1: this is cheaper) ==\n",
               build, build_b);
        printf("%-12s | %10s %10s\n", "row", "epoll", "uring");
        for (int ri = 0; ri < NROWS; ri++) {
            if (only_row >= 0 && ri != only_row)
                continue;
            struct res *m = med[ri];
            char r1[16], r2[16];
            ratio(r1, sizeof r1, m[S_WEFT_EPOLL].rtcpu, m[S_B_EPOLL].ok ? m[S_B_EPOLL].rtcpu : 0,
                  m[S_WEFT_EPOLL].ok);
            ratio(r2, sizeof r2, m[S_WEFT_URING].rtcpu, m[S_B_URING].ok ? m[S_B_URING].rtcpu : 0,
                  m[S_WEFT_URING].ok);
            printf("%-12s | %10s %10s\n", rows[ri].label, r1, r2);
        }
    }

    /* idle memory: 10,000 connections, one verified line each, then parked */
    int idle_n = 10000;
    printf("\n== idle memory: server RSS growth / connection, %d connections parked in a read ==\n",
           idle_n);
    /* The weft servers twice: quiet (-q, as the baselines, which log nothing), and as `make
     * run` ships them (logging each connect and EOF). */
    int idle_list[NSERV + 2], idle_n_serv = 0;
    bool idle_logging[NSERV + 2];
    for (int j = 0; j < nserv; j++) {
        idle_logging[idle_n_serv] = false;
        idle_list[idle_n_serv++] = list[j];
        if (list[j] == S_WEFT_EPOLL || list[j] == S_WEFT_URING) {
            idle_logging[idle_n_serv] = true;
            idle_list[idle_n_serv++] = list[j];
        }
    }
    for (int j = 0; j < idle_n_serv; j++) {
        int s = idle_list[j];
        int port, outfd;
        pid_t pid = server_start_as(s, &port, &outfd, idle_logging[j]);
        if (pid < 0) {
            failures++;
            continue;
        }
        char lg[600], a_port[16], a_pid[16], a_c[16], out[1024];
        snprintf(lg, sizeof lg, "%s/bench/loadgen", build);
        snprintf(a_port, sizeof a_port, "%d", port);
        snprintf(a_pid, sizeof a_pid, "%d", (int)pid);
        snprintf(a_c, sizeof a_c, "%d", idle_n);
        char *args[] = {lg, "-I", "-p", a_port, "-S", a_pid, "-c", a_c, "-t", "1", "-a", "1", NULL};
        int lr = run_loadgen(args, out, sizeof out);
        int sr = server_stop(s, pid, outfd);
        if (lr != 0 || sr != 0) {
            fprintf(stderr, "echo_bench: FAIL: idle memory, %s: %s\n", serv_name[s], out);
            failures++;
            continue;
        }
        printf("%-10s %-8s %8.0f bytes/conn  (RSS %.1f -> %.1f MiB)\n", serv_name[s],
               idle_logging[j] ? "make run" : "-q",
               run_field(out, "bytes_per_conn="), run_field(out, "rss_before_kib=") / 1024,
               run_field(out, "rss_after_kib=") / 1024);
    }
    if (failures)
        printf("\necho_bench: %d FAILURE(S): see the messages above\n", failures);
    return failures ? 1 : 0;
}
