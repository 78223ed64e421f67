/* Test runner and helpers shared by the test programs (see harness.h). */
#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *current_test = "?";

_Noreturn void check_failed(const char *expr, const char *file, int line)
{
    fprintf(stderr, "  %s: CHECK(%s) failed at %s:%d (errno %d: %s)\n", current_test, expr, file,
            line, errno, strerror(errno));
    fflush(stderr);
    exit(1);
}

static int run_one(const struct test *t)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 0;
    }
    if (pid == 0) {
        setpgid(0, 0); /* its own group: a timeout ends everything it started */
        current_test = t->name;
        alarm(t->timeout_s ? (unsigned)t->timeout_s : 60);
        t->fn();
        exit(0); /* exit(), not _exit(): LeakSanitizer checks at exit */
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    kill(-pid, SIGKILL); /* whatever it left running */
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 1;
    if (WIFSIGNALED(status))
        fprintf(stderr, "  %s: killed by signal %d%s\n", t->name, WTERMSIG(status),
                WTERMSIG(status) == SIGALRM ? " (timed out)" : "");
    return 0;
}

int main(int argc, char **argv)
{
    const char *prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    int passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < tests_count; i++) {
        if (argc > 1 && !strstr(tests[i].name, argv[1]))
            continue;
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int ok = run_one(&tests[i]);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
        printf("%s %s.%s (%.0f ms)\n", ok ? "ok  " : "FAIL", prog, tests[i].name, ms);
        ok ? passed++ : failed++;
    }
    if (test_teardown)
        test_teardown();
    printf("%s: %d passed, %d failed\n", prog, passed, failed);
    return failed ? 1 : 0;
}

/* ---- Helpers for tests that talk to programs over sockets ---- */

pid_t spawn_program(char *const argv[], int *stdout_fd, int *stderr_fd)
{
    const char *build = getenv("WEFT_BUILD") ? getenv("WEFT_BUILD") : "build";
    const char *run = getenv("WEFT_RUN");
    char path[512], cmd[2048];
    snprintf(path, sizeof path, "%s/%s", build, argv[0]);
    int len = snprintf(cmd, sizeof cmd, "exec %s '%s'", run ? run : "", path);
    for (int i = 1; argv[i]; i++)
        len += snprintf(cmd + len, sizeof cmd - (size_t)len, " '%s'", argv[i]);

    int p[2], e[2] = {-1, -1};
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    if (stderr_fd)
        CHECK(pipe2(e, O_CLOEXEC) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 1);
        if (stderr_fd) {
            dup2(e[1], 2);
        } else {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 2);
        }
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    *stdout_fd = p[0];
    if (stderr_fd) {
        close(e[1]);
        *stderr_fd = e[0];
    }
    return pid;
}

int read_listen_port(int fd)
{
    char line[256];
    size_t n = 0;
    while (n < sizeof line - 1) {
        CHECK(readable_within(fd, 30000));
        ssize_t r = read(fd, line + n, 1);
        CHECK(r == 1);
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    const char *colon = strrchr(line, ':');
    CHECK(strncmp(line, "listening on ", 13) == 0 && colon);
    return atoi(colon + 1);
}

int stop_program(pid_t pid, int sig)
{
    int status = 0;
    kill(pid, sig);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}

int tcp_connect_loopback(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int connect_nonblocking(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (struct sockaddr *)&sin, sizeof sin);
    CHECK(rc == 0 || errno == EINPROGRESS);
    return fd;
}

int closed_by_server(int fd)
{
    char buf[4096];
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            return 1;
        if (r < 0)
            return 0;
    }
}

void write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        CHECK(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

int readable_within(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n;
    while ((n = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR) {
    }
    return n > 0;
}

void read_exact_timeout(int fd, void *buf, size_t n, int timeout_ms)
{
    char *p = buf;
    while (n > 0) {
        CHECK(readable_within(fd, timeout_ms));
        ssize_t r = read(fd, p, n);
        CHECK(r > 0);
        p += r;
        n -= (size_t)r;
    }
}

/* Resident memory measures weft only in a plain native build: the sanitizers keep freed
 * memory in quarantine and add shadow pages, and under an emulator ($WEFT_RUN, e.g. qemu)
 * the process also holds the emulator's translation caches. There the figures are printed but
 * not asserted; the gcc, clang and ucontext builds assert them. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define WEFT_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define WEFT_TEST_SANITIZED 1
#endif
#endif

int memory_is_measurable(void)
{
#ifdef WEFT_TEST_SANITIZED
    return 0;
#else
    const char *run = getenv("WEFT_RUN");
    return !run || !*run;
#endif
}

int test_scale(int n)
{
    const char *light = getenv("WEFT_TEST_LIGHT");
    if (light && strcmp(light, "1") == 0)
        return n / 10 > 0 ? n / 10 : 1;
    return n;
}

int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n - 3; /* ".", ".." and the directory's own fd */
}

long proc_status_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    CHECK(f);
    long v = -1;
    size_t flen = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, flen) == 0)
            v = atol(line + flen);
    fclose(f);
    CHECK(v >= 0);
    return v;
}

void ask_line(int fd, const char *q, char *answer, size_t cap, int timeout_ms)
{
    write_all(fd, q, strlen(q));
    write_all(fd, "\n", 1);
    size_t n = 0;
    while (n < cap - 1) {
        read_exact_timeout(fd, answer + n, 1, timeout_ms);
        if (answer[n] == '\n')
            break;
        n++;
    }
    answer[n] = '\0';
}

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

int under_valgrind(void)
{
    return RUNNING_ON_VALGRIND != 0;
}

int under_qemu(void)
{
    const char *run = getenv("WEFT_RUN");
    return run && strstr(run, "qemu") != NULL;
}

int have_program(const char *name)
{
    if (strchr(name, '/'))
        return access(name, X_OK) == 0;
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/bin:/bin";
    char dir[1024];
    while (*path) {
        size_t n = strcspn(path, ":");
        char full[1200];
        snprintf(dir, sizeof dir, "%.*s", (int)n, path);
        snprintf(full, sizeof full, "%s/%s", dir[0] ? dir : ".", name);
        if (access(full, X_OK) == 0)
            return 1;
        path += n + (path[n] == ':');
    }
    return 0;
}
