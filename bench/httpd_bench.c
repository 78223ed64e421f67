/* httpd_bench: examples/httpd against nginx and h2o under wrk (bench/README.md).
 *
 * For each row -- a 13-byte and a 64 KiB file, with 100 and with 1,000 connections -- it
 * starts each server afresh in a temporary directory (its configuration, pid and logs there
 * too) on a free loopback port, pinned to CPU 0: examples/httpd -q; nginx (one process:
 * master_process off, access_log off, sendfile on, keep-alive 300 s and unlimited requests
 * per connection); h2o (num-threads 1). It checks each serves the file byte for byte, runs
 * `wrk -t1 -c N -d T --latency` pinned to CPU 1, and reads the server's CPU time (utime +
 * stime of all its threads, /proc/PID/stat) before and after. Figures: requests per server
 * CPU-second (the fair one: the client has a core of its own), requests per second, and
 * wrk's p99 latency. Every measurement is repeated, rotating the servers' order, and the
 * median shown, with ratios httpd / the better of nginx and h2o (higher req/cpu-s, lower p99).
 *
 * -a ARGS adds examples/httpd started with these extra arguments as one more server (e.g.
 * -a "--fd-cache 0"), to measure a choice in the same run; its ratios are printed too.
 *
 * Exit status 1 only on a real failure (a server that does not start, serves wrong bytes or
 * crashes, wrk failing or seeing errors); without wrk, or without both nginx and h2o, it says
 * so and exits 0.
 *
 * Usage: httpd_bench -b BUILD_DIR [-q] [-r REPS] [-d SECONDS] [-R ROW] [-a ARGS]
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXREP 9
enum { S_HTTPD, S_NGINX, S_H2O, S_VARIANT, NSERV };
static const char *const serv_name[NSERV] = {"httpd", "nginx", "h2o", "variant"};

struct row {
    const char *file; /* in the served directory */
    size_t size;
    int conns;
};
static const struct row rows[] = {
    {"13.txt", 13, 100},
    {"13.txt", 13, 1000},
    {"64k.bin", 65536, 100},
    {"64k.bin", 65536, 1000},
};
#define NROWS (int)(sizeof rows / sizeof rows[0])

struct res {
    int ok;
    double rps, per_cpu, p99_ms;
};

static char build[512], variant_args[256], dir[64];
static pid_t live_server = -1, live_client = -1;
static int failures, have_server[NSERV];

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "httpd_bench: FAIL: watchdog expired\n";
    if (live_client > 0)
        kill(live_client, SIGKILL);
    if (live_server > 0)
        kill(live_server, SIGKILL);
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(1);
}

/* ---- The served directory and the servers' configurations ---- */

static int write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static char *file_bytes(size_t n)
{
    char *p = malloc(n ? n : 1);
    if (!p)
        return NULL;
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        p[i] = (char)(n == 13 ? "hello, world\n"[i] : (char)x);
    }
    return p;
}

static int setup_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/httpd-bench-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    chmod(dir, 0755); /* h2o started as root serves as nobody */
    char path[256];
    snprintf(path, sizeof path, "%s/www", dir);
    if (mkdir(path, 0755) != 0)
        return -1;
    for (int i = 0; i < NROWS; i++) {
        char *p = file_bytes(rows[i].size);
        snprintf(path, sizeof path, "%s/www/%s", dir, rows[i].file);
        int rc = p ? write_file(path, p, rows[i].size) : -1;
        free(p);
        if (rc != 0)
            return -1;
        chmod(path, 0644);
    }
    snprintf(path, sizeof path, "%s/nginx.conf", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f,
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid %s/nginx.pid;\n"
            "error_log %s/nginx-error.log;\nworker_rlimit_nofile 8192;\n"
            "events { worker_connections 4096; }\n"
            "http {\n  access_log off;\n  sendfile on;\n  keepalive_timeout 300s;\n"
            "  keepalive_requests 1000000000;\n  default_type application/octet-stream;\n"
            "  types { text/plain txt; }\n"
            "  client_body_temp_path %s/nb;\n  proxy_temp_path %s/np;\n"
            "  fastcgi_temp_path %s/nf;\n  uwsgi_temp_path %s/nu;\n  scgi_temp_path %s/ns;\n"
            "  server { listen 127.0.0.1:@PORT@; root %s/www; }\n}\n",
            dir, dir, dir, dir, dir, dir, dir, dir);
    fclose(f);
    snprintf(path, sizeof path, "%s/h2o.conf", dir);
    if (!(f = fopen(path, "w")))
        return -1;
    fprintf(f,
            "num-threads: 1\nmax-connections: 4096\nlisten:\n  host: 127.0.0.1\n"
            "  port: @PORT@\nhosts:\n  default:\n    paths:\n      /:\n"
            "        file.dir: %s/www\n",
            dir);
    fclose(f);
    return 0;
}

/* A copy of DIR/NAME.conf with the port filled in, as DIR/NAME-PORT.conf. */
static int conf_for_port(const char *name, int port, char *out, size_t n)
{
    char in[256], text[4096], portstr[16];
    snprintf(in, sizeof in, "%s/%s.conf", dir, name);
    snprintf(out, n, "%s/%s-%d.conf", dir, name, port);
    snprintf(portstr, sizeof portstr, "%d", port);
    FILE *f = fopen(in, "r");
    if (!f)
        return -1;
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = '\0';
    char *at = strstr(text, "@PORT@"), done[4200];
    if (!at)
        return -1;
    snprintf(done, sizeof done, "%.*s%s%s", (int)(at - text), text, portstr, at + 6);
    return write_file(out, done, strlen(done));
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (dir[0] && system(cmd) != 0)
        fprintf(stderr, "httpd_bench: could not remove %s\n", dir);
}

/* ---- Servers ---- */

static void exec_server(int s, int port)
{
    char portstr[16], prog[600], root[128], conf[256];
    snprintf(portstr, sizeof portstr, "%d", port);
    snprintf(prog, sizeof prog, "%s/examples/httpd", build);
    snprintf(root, sizeof root, "%s/www", dir);
    if (s == S_HTTPD) {
        execl(prog, prog, "-q", "-p", portstr, "-r", root, (char *)NULL);
    } else if (s == S_VARIANT) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "exec '%s' -q -p %s -r '%s' %s", prog, portstr, root,
                 variant_args);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    } else if (s == S_NGINX && conf_for_port("nginx", port, conf, sizeof conf) == 0) {
        char elog[128];
        snprintf(elog, sizeof elog, "%s/nginx-error.log", dir);
        execlp("nginx", "nginx", "-e", elog, "-p", dir, "-c", conf, (char *)NULL);
    } else if (s == S_H2O && conf_for_port("h2o", port, conf, sizeof conf) == 0) {
        execlp("h2o", "h2o", "-c", conf, (char *)NULL);
    }
    fprintf(stderr, "httpd_bench: exec %s: %s\n", serv_name[s], strerror(errno));
    _exit(127);
}

/* Start server s pinned to CPU 0 on a free port; its pid, or -1. */
static pid_t server_start(int s, int *port)
{
    *port = run_free_port();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        run_pin(0);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        exec_server(s, *port);
    }
    live_server = pid;
    for (int i = 0; i < 500; i++) { /* up to 10 s */
        if (waitpid(pid, NULL, WNOHANG) == pid)
            break;
        int fd = run_connect_port(*port);
        if (fd >= 0) {
            close(fd);
            return pid;
        }
        usleep(20000);
    }
    fprintf(stderr, "httpd_bench: FAIL: %s did not start\n", serv_name[s]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    live_server = -1;
    return -1;
}

/* Stop it; 0 if it was still running, -1 if it had died. */
static int server_stop(int s, pid_t pid)
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
    if (crashed) {
        fprintf(stderr, "httpd_bench: FAIL: %s ended on its own (status 0x%x)\n", serv_name[s],
                st);
        return -1;
    }
    return 0;
}

/* GET the row's file once, with Connection: close, and compare the body byte for byte. */
static int serves_file(int port, const struct row *rw)
{
    int fd = run_connect_port(port);
    if (fd < 0)
        return -1;
    char req[256];
    int n = snprintf(req, sizeof req, "GET /%s HTTP/1.1\r\nHost: localhost\r\n"
                     "Connection: close\r\n\r\n", rw->file);
    size_t cap = rw->size + 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf || write(fd, req, (size_t)n) != n) {
        free(buf);
        close(fd);
        return -1;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (len < cap && poll(&p, 1, 10000) == 1) {
        ssize_t r = read(fd, buf + len, cap - len);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    char *want = file_bytes(rw->size);
    const char *body = len ? memmem(buf, len, "\r\n\r\n", 4) : NULL;
    int ok = want && body && len >= 12 && memcmp(buf + 9, "200", 3) == 0 &&
             (size_t)(buf + len - (body + 4)) == rw->size && memcmp(body + 4, want, rw->size) == 0;
    free(want);
    free(buf);
    return ok ? 0 : -1;
}

/* utime + stime of pid in seconds (all its threads). */
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

/* wrk's latency figures: "1.23ms", "456.78us", "1.02s". */
static double wrk_ms(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    return strncmp(end, "us", 2) == 0 ? v / 1000 : strncmp(end, "ms", 2) == 0 ? v
           : *end == 's'                                                    ? v * 1000
                                                                            : -1;
}

/* Run wrk for row rw on CPU 1; fill rps, p99 and *requests from its report. 0 on success. */
static int run_client(const struct row *rw, int port, int seconds, struct res *r, long *requests)
{
    char url[128], a_c[16], a_d[16];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/%s", port, rw->file);
    snprintf(a_c, sizeof a_c, "%d", rw->conns);
    snprintf(a_d, sizeof a_d, "%ds", seconds);
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
        execlp("wrk", "wrk", "-t1", "-c", a_c, "-d", a_d, "--latency", url, (char *)NULL);
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
    const char *p99 = strstr(out, " 99% "), *reqs = strstr(out, " requests in "),
               *rps = strstr(out, "Requests/sec:");
    const char *bad = strstr(out, "Non-2xx"), *errs = strstr(out, "Socket errors");
    while (reqs && reqs > out && reqs[-1] >= '0' && reqs[-1] <= '9')
        reqs--;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || !p99 || !reqs || !rps || bad) {
        fprintf(stderr, "httpd_bench: FAIL: wrk -c %d %s said: %s\n", rw->conns, url, out);
        return -1;
    }
    if (errs)
        fprintf(stderr, "httpd_bench: note: wrk -c %d %s: %.*s\n", rw->conns, url,
                (int)strcspn(errs, "\n"), errs);
    r->p99_ms = wrk_ms(p99 + 5 + strspn(p99 + 5, " "));
    r->rps = strtod(rps + 13, NULL);
    *requests = strtol(reqs, NULL, 10);
    return r->p99_ms < 0 || *requests <= 0 ? -1 : 0;
}

static struct res measure(int s, const struct row *rw, int seconds)
{
    struct res r = {0};
    int port;
    pid_t pid = server_start(s, &port);
    if (pid < 0) {
        failures++;
        return r;
    }
    if (serves_file(port, rw) != 0) {
        fprintf(stderr, "httpd_bench: FAIL: %s did not serve /%s byte for byte\n",
                serv_name[s], rw->file);
        server_stop(s, pid);
        failures++;
        return r;
    }
    long requests = 0;
    double before = cpu_seconds(pid);
    int cr = run_client(rw, port, seconds, &r, &requests);
    double after = cpu_seconds(pid);
    int sr = server_stop(s, pid);
    if (cr != 0 || sr != 0 || before < 0 || after < 0) {
        failures++;
        return r;
    }
    double cpu = after - before;
    r.per_cpu = cpu > 0 ? (double)requests / cpu : 0;
    r.ok = 1;
    return r;
}

/* One table line: a server's medians, and its ratios to the better of nginx and h2o. */
static void print_line(const char *label, const char *name, const double m[3], const double best[2])
{
    char a[16], b[16];
    fmt_num(a, sizeof a, m[0]);
    fmt_num(b, sizeof b, m[2]);
    printf("%-20s %-22s %10s %9.2f %8s", label, name, a, m[1], b);
    if (best)
        printf(" %7.2f %7.2f", best[0] > 0 ? m[0] / best[0] : 0, m[1] > 0 ? best[1] / m[1] : 0);
    printf("\n");
}

static void run_row(int ri, int reps, int seconds)
{
    const struct row *rw = &rows[ri];
    double v[3][NSERV][MAXREP];
    int nok[NSERV] = {0};
    for (int k = 0; k < reps; k++) {
        for (int j = 0; j < NSERV; j++) {
            int s = (j + k + ri) % NSERV; /* rotate which goes first */
            if (!have_server[s])
                continue;
            struct res r = measure(s, rw, seconds);
            if (!r.ok)
                continue;
            int i = nok[s]++;
            v[0][s][i] = r.per_cpu, v[1][s][i] = r.p99_ms, v[2][s][i] = r.rps;
        }
    }
    double m[NSERV][3];
    for (int s = 0; s < NSERV; s++)
        for (int f = 0; f < 3; f++)
            m[s][f] = median(v[f][s], nok[s]);
    /* The better rival: the higher req/cpu-s; the lower p99 (each may come from either). */
    double best[2] = {0, 0};
    for (int s = S_NGINX; s <= S_H2O; s++) {
        if (!nok[s])
            continue;
        if (m[s][0] > best[0])
            best[0] = m[s][0];
        if (best[1] == 0 || m[s][1] < best[1])
            best[1] = m[s][1];
    }
    char label[64];
    snprintf(label, sizeof label, "%s -c %d", rw->size == 13 ? "13 B" : "64 KiB", rw->conns);
    for (int s = 0; s < NSERV; s++) {
        if (!have_server[s])
            continue;
        const char *name = s == S_VARIANT ? variant_args : serv_name[s];
        if (!nok[s])
            printf("%-20s %-22s (failed)\n", label, name);
        else
            print_line(label, name, m[s], s == S_HTTPD || s == S_VARIANT ? best : NULL);
        label[0] = '\0';
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int quick = 0, reps = 0, seconds = 0, only_row = -1, opt;
    while ((opt = getopt(argc, argv, "b:qr:d:R:a:")) != -1) {
        switch (opt) {
        case 'b': snprintf(build, sizeof build, "%s", optarg); break;
        case 'q': quick = 1; break;
        case 'r': reps = atoi(optarg); break;
        case 'd': seconds = atoi(optarg); break;
        case 'R': only_row = atoi(optarg); break;
        case 'a': snprintf(variant_args, sizeof variant_args, "%s", optarg); break;
        default:
            fprintf(stderr, "usage: httpd_bench -b BUILD_DIR [-q] [-r REPS] [-d SECONDS] "
                            "[-R ROW] [-a ARGS]\n");
            return 2;
        }
    }
    if (!build[0])
        snprintf(build, sizeof build, "build");
    if (reps <= 0)
        reps = quick ? 1 : 3;
    if (reps > MAXREP)
        reps = MAXREP;
    if (seconds <= 0)
        seconds = quick ? 1 : 10;
    have_server[S_HTTPD] = 1;
    have_server[S_NGINX] = run_have("nginx");
    have_server[S_H2O] = run_have("h2o");
    have_server[S_VARIANT] = variant_args[0] != '\0';
    if (!run_have("wrk") || (!have_server[S_NGINX] && !have_server[S_H2O])) {
        printf("httpd_bench: skipped: wrk, or both nginx and h2o, not installed "
               "(Debian packages wrk, nginx-light, h2o)\n");
        return 0;
    }
    signal(SIGALRM, on_alarm);
    alarm(quick ? 300 : 7200);
    signal(SIGPIPE, SIG_IGN);
    if (setup_dir() != 0) {
        fprintf(stderr, "httpd_bench: FAIL: cannot set up %s: %s\n", dir, strerror(errno));
        remove_dir();
        return 1;
    }

    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", localtime(&now));
    double load[3] = {0};
    if (getloadavg(load, 3) < 0)
        load[0] = -1;
    printf("== httpd vs nginx and h2o: wrk -t1 for %d s, servers on CPU 0, wrk on CPU 1, "
           "median of %d%s, %s, load %.2f ==\n", seconds, reps,
           quick ? " (QUICK: short)" : "", date, load[0]);
    printf("req/cpu-s: requests per server CPU-second (the fair figure); ratios: httpd / the "
           "better of nginx and h2o (both: higher is better)\n\n");
    printf("%-20s %-22s %10s %9s %8s %7s %7s\n", "row", "server", "req/cpu-s", "p99 ms",
           "req/s", "cpu x", "p99 x");
    for (int ri = 0; ri < NROWS; ri++)
        if (only_row < 0 || ri == only_row)
            run_row(ri, reps, seconds);
    remove_dir();
    if (failures)
        fprintf(stderr, "httpd_bench: %d measurement(s) failed\n", failures);
    return failures ? 1 : 0;
}
