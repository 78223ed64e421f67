/* run.c: servers and loadgen runs for the benchmark drivers (run.h). Every process started
 * here is remembered by PID while it lives, so the watchdog can end exactly those. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "run.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

const char *run_prog = "bench";
static pid_t live_server = -1, live_loadgen = -1;
static void (*on_watchdog)(void);

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = ": FAIL: watchdog expired\n";
    if (live_loadgen > 0)
        kill(live_loadgen, SIGKILL);
    if (live_server > 0)
        kill(live_server, SIGKILL);
    if (on_watchdog)
        on_watchdog();
    write(2, run_prog, strlen(run_prog));
    write(2, msg, sizeof msg - 1);
    _exit(1);
}

void run_watchdog(unsigned seconds, void (*cleanup)(void))
{
    on_watchdog = cleanup;
    signal(SIGALRM, on_alarm);
    alarm(seconds);
    signal(SIGPIPE, SIG_IGN);
}

/* The port of a "listening on HOST:PORT" line read from fd within 10 s, or 0. */
static int read_port(int fd)
{
    char line[256];
    size_t len = 0;
    while (len < sizeof line - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) <= 0)
            break;
        ssize_t r = read(fd, line + len, sizeof line - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
        line[len] = 0;
        char *nl = strchr(line, '\n'), *colon;
        if (nl && (colon = strrchr(line, ':')) && strstr(line, "listening on"))
            return atoi(colon + 1);
    }
    return 0;
}

pid_t run_server_start(const char *name, char *const argv[], const char *backend, int *port,
                       int *outfd)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        sched_setaffinity(0, sizeof set, &set);
        if (backend)
            setenv("WEFT_BACKEND", backend, 1);
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        execv(argv[0], argv);
        fprintf(stderr, "%s: exec %s: %s\n", run_prog, argv[0], strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    live_server = pid;
    *port = read_port(pfd[0]);
    if (*port <= 0) {
        fprintf(stderr, "%s: FAIL: %s did not start (no \"listening on\")\n", run_prog, name);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        live_server = -1;
        close(pfd[0]);
        return -1;
    }
    *outfd = pfd[0];
    return pid;
}

int run_server_stop(const char *name, pid_t pid, int outfd)
{
    int st = 0, crashed = 0;
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) {
        crashed = 1; /* it ended before we asked */
    } else {
        kill(pid, SIGTERM);
        for (int i = 0; i < 300 && (w = waitpid(pid, &st, WNOHANG)) == 0; i++)
            usleep(10000);
        if (w == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
        } else if (WIFSIGNALED(st) && WTERMSIG(st) != SIGTERM) {
            crashed = 1;
        }
    }
    live_server = -1;
    close(outfd);
    if (crashed) {
        fprintf(stderr, "%s: FAIL: %s ended on its own (status 0x%x)\n", run_prog, name, st);
        return -1;
    }
    return 0;
}

int run_loadgen(char *const args[], char *out, size_t n)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        execv(args[0], args);
        _exit(127);
    }
    close(pfd[1]);
    live_loadgen = pid;
    size_t len = 0;
    ssize_t r;
    while (len < n - 1 && (r = read(pfd[0], out + len, n - 1 - len)) > 0)
        len += (size_t)r;
    out[len] = 0;
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    live_loadgen = -1;
    return (WIFEXITED(st) && WEXITSTATUS(st) == 0 && strstr(out, "status=OK")) ? 0 : -1;
}

double run_field(const char *out, const char *key)
{
    const char *p = strstr(out, key);
    return p ? atof(p + strlen(key)) : 0;
}

void run_pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

int run_have(const char *prog)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", prog);
    return system(cmd) == 0;
}

int run_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sin.sin_port);
}

int run_connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    return -1;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double median(double *v, int n)
{
    if (n == 0)
        return 0;
    qsort(v, (size_t)n, sizeof *v, cmpd);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void fmt_num(char *b, size_t n, double v)
{
    if (v >= 1e6)
        snprintf(b, n, "%.2fM", v / 1e6);
    else if (v >= 1e3)
        snprintf(b, n, "%.1fk", v / 1e3);
    else
        snprintf(b, n, "%.0f", v);
}

void ratio(char *b, size_t n, double x, double best, int ok)
{
    if (!ok || best <= 0)
        snprintf(b, n, "-");
    else
        snprintf(b, n, "%.2f", x / best);
}
