/* tls_bench: the TLS rows of `make bench` (make bench-tls; bench/README.md).
 *
 * weft's examples/echo serving TLS (--cert/--key) with WEFT_BACKEND=epoll and =uring, against
 * bench/base_tls, the hand-written non-blocking OpenSSL + epoll echo server. Each server runs
 * in its own process pinned to CPU 0, driven by bench/loadgen --tls pinned to CPU 1, which
 * verifies every echoed byte. Rows: round trips at N = 100, 1,000 and 1,000 with 16 lines in
 * flight; full handshakes with an ECDSA P-256 and an RSA-2048 certificate, and resumed ones
 * (TLS 1.3 tickets); then the memory of an idle TLS connection, 10,000 of them parked. Every
 * figure is per server CPU-second as well as per second; every server is measured REPS times
 * in rotating order within the same run and the medians are shown, with ratios to base_tls.
 *
 * The certificates are made at the start with the openssl command into a temporary directory,
 * which is removed at the end.
 *
 * Exit status 1 only on a real failure: a loadgen that reports a mismatch or an error, a
 * server that does not start or crashes, no certificates, a resumed row that did not resume.
 * A ratio under its target is reported, never a failure.
 *
 * Usage: tls_bench -b BUILD_DIR [-B OTHER_BUILD_DIR] [-q] [-t SECONDS] [-r REPS] [-R ROW]
 *                  [-n IDLE_CONNS]
 * With -B, the echo of another build (a change to src/tls.c, say) runs in the same rotation,
 * and a table gives its ratios to base_tls and this build's over it: an A/B in one run.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "run.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXREP 9
#define PAGE 4096 /* the idle target: base_tls's bytes plus one stack page */
enum { S_WEFT_EPOLL, S_WEFT_URING, S_BASE_TLS, S_B_EPOLL, S_B_URING, NSERV };
static const char *serv_name[NSERV] = {"weft/epoll", "weft/uring", "base_tls", "B:epoll",
                                       "B:uring"};
static int nserv = S_B_EPOLL; /* with -B: NSERV */
enum { CERT_EC, CERT_RSA, NCERT };
static const char *cert_name[NCERT] = {"ec", "rsa"};

struct row {
    int handshakes;  /* 0: round trips of 64-byte lines; 1: connections, one line each */
    int n, p;        /* connections (at once), lines in flight on each */
    int cert;
    int resume;
    char label[32];  /* (round trips: made from n and p) */
};
static struct row rows[] = {
    {0, 100, 1, CERT_EC, 0, ""},
    {0, 1000, 1, CERT_EC, 0, ""},
    {0, 1000, 16, CERT_EC, 0, ""},
    {1, 32, 1, CERT_EC, 0, "full P-256"},
    {1, 32, 1, CERT_RSA, 0, "full RSA-2048"},
    {1, 32, 1, CERT_EC, 1, "resumed"},
};
#define NROWS (int)(sizeof rows / sizeof rows[0])

struct res {
    int ok;
    double ops, opcpu, p50, p99, p999, cpu;
};

/* Every TLS connection costs the loadgen a handshake (about 1 ms of CPU here with OpenSSL
 * 3.0), so -q opens at most this many per round-trip row (a row that becomes the same as an
 * earlier one is left out) and ten times as many idle ones. */
#define QUICK_CONNS 100

static void setup_rows(int quick)
{
    for (int ri = 0; ri < NROWS; ri++) {
        struct row *rw = &rows[ri];
        if (rw->handshakes)
            continue;
        if (quick && rw->n > QUICK_CONNS)
            rw->n = QUICK_CONNS;
        for (int k = 0; k < ri; k++)
            if (!rows[k].handshakes && rows[k].n == rw->n && rows[k].p == rw->p)
                rw->n = 0; /* the same as row k */
        if (rw->p > 1)
            snprintf(rw->label, sizeof rw->label, "N=%d P=%d", rw->n, rw->p);
        else
            snprintf(rw->label, sizeof rw->label, "N=%d", rw->n);
    }
}

static char build[512], build_b[512];
static char dir[64];                      /* the certificates */
static char crt[NCERT][128], key[NCERT][128];
static int failures;

/* Remove the certificates (also from the watchdog: unlink and rmdir only). */
static void remove_certs(void)
{
    for (int i = 0; i < NCERT; i++) {
        unlink(crt[i]);
        unlink(key[i]);
    }
    if (dir[0])
        rmdir(dir);
}

/* Run openssl with args, quietly; 0 if it exits 0. */
static int openssl(char *const args[])
{
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execvp("openssl", args);
        _exit(127);
    }
    int st;
    return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0
                                                                                       : -1;
}

/* A self-signed certificate for localhost and its key, ECDSA P-256 and RSA-2048. */
static int make_certs(void)
{
    snprintf(dir, sizeof dir, "/tmp/tls_bench.XXXXXX");
    if (!mkdtemp(dir)) {
        dir[0] = 0;
        return -1;
    }
    for (int i = 0; i < NCERT; i++) {
        snprintf(crt[i], sizeof crt[i], "%s/%s.crt", dir, cert_name[i]);
        snprintf(key[i], sizeof key[i], "%s/%s.key", dir, cert_name[i]);
    }
    char *ec[] = {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:P-256", "-nodes", "-keyout", key[CERT_EC], "-out",
                  crt[CERT_EC], "-subj", "/CN=localhost", "-days", "2", NULL};
    char *rsa[] = {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                   key[CERT_RSA], "-out", crt[CERT_RSA], "-subj", "/CN=localhost", "-days", "2",
                   NULL};
    return openssl(ec) == 0 && openssl(rsa) == 0 ? 0 : -1;
}

/* Start server s with certificate cert, pinned to CPU 0: its pid, or -1. */
static pid_t server_start(int s, int cert, int *port, int *outfd)
{
    char path[600];
    if (s == S_BASE_TLS)
        snprintf(path, sizeof path, "%s/bench/base_tls", build);
    else
        snprintf(path, sizeof path, "%s/examples/echo", s >= S_B_EPOLL ? build_b : build);
    char *argv[] = {path, "-q", "-p", "0", "--cert", crt[cert], "--key", key[cert], NULL};
    const char *backend = s == S_WEFT_EPOLL || s == S_B_EPOLL   ? "epoll"
                          : s == S_WEFT_URING || s == S_B_URING ? "uring"
                                                                : NULL;
    return run_server_start(serv_name[s], argv, backend, port, outfd);
}

/* One loadgen run against a fresh server s; out gets its line. 0, or -1 (counted). */
static int run_one(int s, int cert, char **extra, const char *label, char *out, size_t n)
{
    int port, outfd;
    pid_t pid = server_start(s, cert, &port, &outfd);
    if (pid < 0) {
        failures++;
        return -1;
    }
    char lg[600], a_port[16], a_pid[16];
    snprintf(lg, sizeof lg, "%s/bench/loadgen", build);
    snprintf(a_port, sizeof a_port, "%d", port);
    snprintf(a_pid, sizeof a_pid, "%d", (int)pid);
    char *args[32] = {lg, "--tls", "-p", a_port, "-S", a_pid, "-a", "1"};
    int k = 8;
    for (int i = 0; extra[i] && k < 31; i++)
        args[k++] = extra[i];
    args[k] = NULL;
    out[0] = 0;
    int lr = run_loadgen(args, out, n);
    int sr = run_server_stop(serv_name[s], pid, outfd);
    if (lr != 0 || sr != 0) {
        fprintf(stderr, "tls_bench: FAIL: %s, %s: loadgen said: %s\n", serv_name[s], label,
                out[0] ? out : "(nothing)");
        failures++;
        return -1;
    }
    return 0;
}

static struct res measure(int s, const struct row *rw, double secs)
{
    struct res r = {0};
    char a_c[16], a_p[16], a_t[32], out[1024];
    snprintf(a_c, sizeof a_c, "%d", rw->n);
    snprintf(a_p, sizeof a_p, "%d", rw->p);
    snprintf(a_t, sizeof a_t, "%g", secs);
    char *rt[] = {"-c", a_c, "-P", a_p, "-s", "64", "-t", a_t, NULL};
    char *hs[] = {"-H", "-c", a_c, "-t", a_t, rw->resume ? "-R" : NULL, NULL};
    if (run_one(s, rw->cert, rw->handshakes ? hs : rt, rw->label, out, sizeof out) != 0)
        return r;
    if (rw->handshakes) {
        double done = run_field(out, "hs="), resumed = run_field(out, "resumed=");
        if (rw->resume ? resumed < 0.99 * done : resumed > 0) {
            fprintf(stderr, "tls_bench: FAIL: %s, %s: %.0f of %.0f handshakes resumed\n",
                    serv_name[s], rw->label, resumed, done);
            failures++;
            return r;
        }
        r.ops = run_field(out, "hs_per_s=");
        r.opcpu = run_field(out, "hs_per_cpu_s=");
    } else {
        r.ops = run_field(out, "rt_per_s=");
        r.opcpu = run_field(out, "rt_per_cpu_s=");
    }
    r.ok = 1;
    r.p50 = run_field(out, "p50_us=");
    r.p99 = run_field(out, "p99_us=");
    r.p999 = run_field(out, "p999_us=");
    r.cpu = run_field(out, "server_cpu_s=");
    return r;
}

/* Every server REPS times on row ri, in rotating order; the medians into med, printed. */
static void run_row(int ri, int reps, double secs, struct res *med)
{
    const struct row *rw = &rows[ri];
    double v[6][NSERV][MAXREP];
    int nok[NSERV] = {0};
    for (int k = 0; k < reps; k++) {
        for (int j = 0; j < nserv; j++) {
            int s = (j + k + ri) % nserv; /* rotate the order */
            struct res r = measure(s, rw, secs);
            if (!r.ok)
                continue;
            int i = nok[s]++;
            v[0][s][i] = r.ops, v[1][s][i] = r.opcpu, v[2][s][i] = r.p50;
            v[3][s][i] = r.p99, v[4][s][i] = r.p999, v[5][s][i] = r.cpu;
        }
    }
    for (int s = 0; s < nserv; s++) {
        struct res *m = &med[s];
        if (!nok[s])
            continue;
        m->ok = 1;
        m->ops = median(v[0][s], nok[s]);
        m->opcpu = median(v[1][s], nok[s]);
        m->p50 = median(v[2][s], nok[s]);
        m->p99 = median(v[3][s], nok[s]);
        m->p999 = median(v[4][s], nok[s]);
        m->cpu = median(v[5][s], nok[s]);
        char a[16], b[16];
        fmt_num(a, sizeof a, m->ops);
        fmt_num(b, sizeof b, m->opcpu);
        printf("%-14s %-10s %4s %9s %10s %8.0f %8.0f %9.0f %6.2f\n", s == 0 ? rw->label : "",
               serv_name[s], rw->handshakes ? "hs" : "rt", a, b, m->p50, m->p99, m->p999, m->cpu);
    }
    fflush(stdout);
}

static void print_ratios(struct res med[][NSERV], int only_row)
{
    printf("\n== tls ratios: weft / base_tls (same run); target: per cpu-s >= 1.0 on every row ==\n");
    printf("%-14s | %-21s | %-21s | %-21s | %s\n", "", "per cpu-s (>= 1 good)",
           "per s (>= 1 good)", "p99 (<= 1 good)", "");
    printf("%-14s | %10s %10s | %10s %10s | %10s %10s | %s\n", "row", "weft/epoll",
           "weft/uring", "weft/epoll", "weft/uring", "weft/epoll", "weft/uring", "target");
    for (int ri = 0; ri < NROWS; ri++) {
        if ((only_row >= 0 && ri != only_row) || rows[ri].n == 0)
            continue;
        struct res *m = med[ri], *b = &m[S_BASE_TLS], *e = &m[S_WEFT_EPOLL], *u = &m[S_WEFT_URING];
        double bc = b->ok ? b->opcpu : 0, bo = b->ok ? b->ops : 0, bp = b->ok ? b->p99 : 0;
        char r[6][16];
        ratio(r[0], sizeof r[0], e->opcpu, bc, e->ok);
        ratio(r[1], sizeof r[1], u->opcpu, bc, u->ok);
        ratio(r[2], sizeof r[2], e->ops, bo, e->ok);
        ratio(r[3], sizeof r[3], u->ops, bo, u->ok);
        ratio(r[4], sizeof r[4], e->p99, bp, e->ok);
        ratio(r[5], sizeof r[5], u->p99, bp, u->ok);
        const char *target = !e->ok || !u->ok || bc <= 0 ? "-"
                             : e->opcpu >= bc && u->opcpu >= bc ? "met" : "MISSED";
        printf("%-14s | %10s %10s | %10s %10s | %10s %10s | %s\n", rows[ri].label, r[0], r[1],
               r[2], r[3], r[4], r[5], target);
    }
}

/* -B: the other build's ratios to base_tls, and this build's over the other's. */
static void print_ab(struct res med[][NSERV], int only_row)
{
    printf("\n== A/B: the other build (%s) / base_tls, and this build (%s) / the other, "
           "per cpu-s ==\n", build_b, build);
    printf("%-14s | %10s %10s | %10s %10s\n", "row", "B:epoll", "B:uring", "epoll", "uring");
    for (int ri = 0; ri < NROWS; ri++) {
        if ((only_row >= 0 && ri != only_row) || rows[ri].n == 0)
            continue;
        struct res *m = med[ri];
        double base = m[S_BASE_TLS].ok ? m[S_BASE_TLS].opcpu : 0;
        char r[4][16];
        ratio(r[0], sizeof r[0], m[S_B_EPOLL].opcpu, base, m[S_B_EPOLL].ok);
        ratio(r[1], sizeof r[1], m[S_B_URING].opcpu, base, m[S_B_URING].ok);
        ratio(r[2], sizeof r[2], m[S_WEFT_EPOLL].opcpu, m[S_B_EPOLL].ok ? m[S_B_EPOLL].opcpu : 0,
              m[S_WEFT_EPOLL].ok);
        ratio(r[3], sizeof r[3], m[S_WEFT_URING].opcpu, m[S_B_URING].ok ? m[S_B_URING].opcpu : 0,
              m[S_WEFT_URING].ok);
        printf("%-14s | %10s %10s | %10s %10s\n", rows[ri].label, r[0], r[1], r[2], r[3]);
    }
}

/* Idle memory: idle_n connections each handshaken, one verified line, then parked; each
 * server reps times (the order rotating), the median shown. One run's figure moves by 100-200
 * bytes with the free heap its handshakes left resident (docs/tls.md, "Idle memory"). */
static void idle_memory(int idle_n, int reps)
{
    printf("\n== idle TLS memory: server RSS growth / connection, %d connections parked in a "
           "read, median of %d ==\n", idle_n, reps);
    double per[NSERV] = {0}, runs[NSERV][MAXREP];
    int ok[NSERV] = {0};
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < nserv; k++) {
            int s = (k + r) % nserv;
            char a_c[16], out[1024];
            snprintf(a_c, sizeof a_c, "%d", idle_n);
            char *extra[] = {"-I", "-c", a_c, "-t", "1", NULL};
            if (run_one(s, CERT_EC, extra, "idle memory", out, sizeof out) != 0)
                continue;
            runs[s][ok[s]++] = run_field(out, "bytes_per_conn=");
        }
    for (int s = 0; s < nserv; s++) {
        if (ok[s] < reps) {
            ok[s] = 0;
            continue;
        }
        per[s] = median(runs[s], reps); /* (sorts them) */
        printf("%-10s %8.0f bytes/conn  (runs, lowest first:", serv_name[s], per[s]);
        for (int r = 0; r < reps; r++)
            printf(" %.0f", runs[s][r]);
        printf(")\n");
    }
    if (!ok[S_BASE_TLS])
        return;
    printf("target: weft <= base_tls + %d (one stack page):", PAGE);
    for (int s = 0; s < nserv; s++)
        if (ok[s] && s != S_BASE_TLS)
            printf("  %s %+.0f %s", serv_name[s], per[s] - per[S_BASE_TLS],
                   per[s] <= per[S_BASE_TLS] + PAGE ? "met" : "MISSED");
    printf("\n");
}

int main(int argc, char **argv)
{
    int quick = 0, reps = 0, only_row = -1, idle_n = 10000, opt;
    double secs = 0;
    while ((opt = getopt(argc, argv, "b:B:qt:r:R:n:")) != -1) {
        switch (opt) {
        case 'b': snprintf(build, sizeof build, "%s", optarg); break;
        case 'B': snprintf(build_b, sizeof build_b, "%s", optarg); break;
        case 'q': quick = 1; break;
        case 't': secs = atof(optarg); break;
        case 'r': reps = atoi(optarg); break;
        case 'R': only_row = atoi(optarg); break;
        case 'n': idle_n = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: tls_bench -b BUILD_DIR [-B OTHER_BUILD_DIR] [-q] [-t SECONDS] "
                            "[-r REPS] [-R ROW] [-n IDLE_CONNS]\n");
            return 2;
        }
    }
    if (!build[0])
        snprintf(build, sizeof build, "build");
    if (build_b[0])
        nserv = NSERV;
    if (secs <= 0)
        secs = quick ? 1 : 3;
    if (reps <= 0)
        reps = quick ? 1 : 3;
    if (reps > MAXREP)
        reps = MAXREP;
    if (quick && idle_n > QUICK_CONNS * 10)
        idle_n = QUICK_CONNS * 10;
    setup_rows(quick);
    run_prog = "tls_bench";
    run_watchdog(quick ? 300 : 3600, remove_certs);
    if (make_certs() != 0) {
        fprintf(stderr, "tls_bench: FAIL: cannot make certificates with the openssl command\n");
        remove_certs();
        return 1;
    }

    time_t now = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", localtime(&now));
    printf("== tls: servers on CPU 0, loadgen --tls on CPU 1, %g s x %d reps (median), %s ==\n",
           secs, reps, date);
    printf("rt rows: round trips of 64-byte lines (N connections, P in flight each), ECDSA "
           "P-256 certificate;\nhs rows: 32 connections at once, each connect + handshake + "
           "one line + close_notify, p50..p999 = handshake latency;\nper cpu-s: per server "
           "CPU-second (the fair figure)\n\n");
    printf("%-14s %-10s %4s %9s %10s %8s %8s %9s %6s\n", "row", "server", "", "per s",
           "per cpu-s", "p50 us", "p99 us", "p999 us", "cpu s");
    struct res med[NROWS][NSERV];
    memset(med, 0, sizeof med);
    for (int ri = 0; ri < NROWS; ri++)
        if ((only_row < 0 && rows[ri].n > 0) || ri == only_row)
            run_row(ri, reps, secs, med[ri]);
    print_ratios(med, only_row);
    if (build_b[0])
        print_ab(med, only_row);
    if (idle_n > 0)
        idle_memory(idle_n, reps);
    remove_certs();
    if (failures)
        printf("\ntls_bench: %d FAILURE(S): see the messages above\n", failures);
    return failures ? 1 : 0;
}
