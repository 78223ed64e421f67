/* Helpers for the kv tests (see kvtest.h). */
#include "kvtest.h"
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void write_all_fd(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        CHECK(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

void kv_start(struct kv_proc *p, const char *const *extra)
{
    char *argv[32] = {"examples/kv", "-p", "0", "-q"};
    int n = 4;
    for (; extra && *extra && n < 31; extra++)
        argv[n++] = (char *)*extra;
    argv[n] = NULL;
    int out;
    p->pid = spawn_program(argv, &out, NULL);
    p->port = read_listen_port(out);
    close(out);
    p->dir[0] = '\0';
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    CHECK(bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
    close(fd);
    return ntohs(sin.sin_port);
}

static bool accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0;
    close(fd);
    return ok;
}

void redis_start(struct kv_proc *p)
{
    snprintf(p->dir, sizeof p->dir, "/tmp/weft-redis-XXXXXX");
    CHECK(mkdtemp(p->dir) != NULL);
    for (int attempt = 0; attempt < 5; attempt++) {
        p->port = free_port();
        char port[16];
        snprintf(port, sizeof port, "%d", p->port);
        p->pid = fork();
        CHECK(p->pid >= 0);
        if (p->pid == 0) {
            int null = open("/dev/null", O_RDWR);
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
            execlp("redis-server", "redis-server", "--save", "", "--appendonly", "no", "--port",
                   port, "--bind", "127.0.0.1", "--dir", p->dir, (char *)NULL);
            _exit(127);
        }
        for (int i = 0; i < 200; i++) { /* up to 10 s */
            int status;
            if (waitpid(p->pid, &status, WNOHANG) == p->pid)
                break; /* exited: most likely the port was taken meanwhile */
            if (accepts(p->port))
                return;
            usleep(50000);
        }
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    }
    CHECK(!"redis-server did not start");
}

void kv_stop(struct kv_proc *p)
{
    int status = stop_program(p->pid, SIGTERM);
    if (p->dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", p->dir);
        CHECK(system(cmd) == 0);
    } else {
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fprintf(stderr, "  kv exited with status 0x%x\n", status);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
}

void resp_open(struct resp_conn *c, int port)
{
    c->fd = tcp_connect_loopback(port);
    c->len = 0;
    c->cap = 4096;
    c->buf = malloc(c->cap);
    CHECK(c->buf);
}

void resp_close(struct resp_conn *c)
{
    close(c->fd);
    free(c->buf);
    c->buf = NULL;
}

size_t resp_encode(char *out, size_t cap, int argc, const char *const *argv, const size_t *lens)
{
    size_t n = (size_t)snprintf(out, cap, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++) {
        size_t len = lens ? lens[i] : strlen(argv[i]);
        n += (size_t)snprintf(out + n, cap - n, "$%zu\r\n", len);
        CHECK(n + len + 2 < cap);
        memcpy(out + n, argv[i], len);
        memcpy(out + n + len, "\r\n", 2);
        n += len + 2;
    }
    CHECK(n < cap);
    return n;
}

static void send_va(struct resp_conn *c, const char *arg0, va_list ap)
{
    const char *argv[64];
    int argc = 0;
    size_t cap = 64;
    for (const char *a = arg0; a && argc < 64; a = va_arg(ap, const char *)) {
        argv[argc++] = a;
        cap += strlen(a) + 32;
    }
    char *out = malloc(cap);
    CHECK(out);
    write_all(c->fd, out, resp_encode(out, cap, argc, argv, NULL));
    free(out);
}

void resp_send(struct resp_conn *c, const char *arg0, ...)
{
    va_list ap;
    va_start(ap, arg0);
    send_va(c, arg0, ap);
    va_end(ap);
}

/* The length of the line at p (up to and including CRLF), 0 if incomplete. */
static size_t line_len(const char *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++)
        if (p[i] == '\r' && p[i + 1] == '\n')
            return i + 2;
    return 0;
}

long resp_complete(const char *p, size_t n)
{
    size_t l = line_len(p, n);
    if (l == 0)
        return 0;
    long long v = strtoll(p + 1, NULL, 10);
    switch (p[0]) {
    case '+':
    case '-':
    case ':':
        return (long)l;
    case '$':
        if (v < 0)
            return (long)l;
        return n >= l + (size_t)v + 2 ? (long)(l + (size_t)v + 2) : 0;
    case '*': {
        size_t at = l;
        for (long long i = 0; i < v; i++) {
            long k = resp_complete(p + at, n - at);
            if (k <= 0)
                return k;
            at += (size_t)k;
        }
        return (long)at;
    }
    default:
        return -1;
    }
}

char *resp_read(struct resp_conn *c, size_t *n, int timeout_ms)
{
    for (;;) {
        long k = c->len ? resp_complete(c->buf, c->len) : 0;
        CHECK(k >= 0);
        if (k > 0) {
            char *r = malloc((size_t)k + 1);
            CHECK(r);
            memcpy(r, c->buf, (size_t)k);
            r[k] = '\0';
            memmove(c->buf, c->buf + k, c->len - (size_t)k);
            c->len -= (size_t)k;
            *n = (size_t)k;
            return r;
        }
        if (c->len == c->cap) {
            c->cap *= 2;
            c->buf = realloc(c->buf, c->cap);
            CHECK(c->buf);
        }
        CHECK(readable_within(c->fd, timeout_ms));
        ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
        if (r <= 0)
            fprintf(stderr, "  connection closed with %zu bytes of a reply: %.*s\n", c->len,
                    (int)(c->len < 200 ? c->len : 200), c->buf);
        CHECK(r > 0);
        c->len += (size_t)r;
    }
}

void resp_expect(struct resp_conn *c, const char *want, const char *arg0, ...)
{
    va_list ap;
    va_start(ap, arg0);
    send_va(c, arg0, ap);
    va_end(ap);
    size_t n;
    char *got = resp_read(c, &n, 20000);
    if (n != strlen(want) || memcmp(got, want, n) != 0)
        fprintf(stderr, "  %s: want %s, got %s\n", arg0, want, got);
    CHECK(n == strlen(want) && memcmp(got, want, n) == 0);
    free(got);
}

bool resp_closed(struct resp_conn *c, int timeout_ms)
{
    char tmp[4096];
    for (;;) {
        if (!readable_within(c->fd, timeout_ms))
            return false;
        ssize_t r = read(c->fd, tmp, sizeof tmp);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return true;
        if (r < 0)
            return false;
    }
}

char *redis_cli(int port, const char *const *args, const char *input)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    const char *argv[40] = {"redis-cli", "-p", portstr};
    int n = 3;
    for (; *args && n < 39; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    int out_pipe[2], in_pipe[2];
    CHECK(pipe2(out_pipe, O_CLOEXEC) == 0 && pipe2(in_pipe, O_CLOEXEC) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(out_pipe[1], 1);
        dup2(in_pipe[0], 0);
        execvp("redis-cli", (char *const *)argv);
        _exit(127);
    }
    close(out_pipe[1]);
    close(in_pipe[0]);
    if (input) /* small: fits in the pipe */
        write_all_fd(in_pipe[1], input, strlen(input));
    close(in_pipe[1]);
    size_t len = 0, cap = 1024;
    char *out = malloc(cap);
    CHECK(out);
    for (;;) {
        if (len + 1 == cap)
            CHECK((out = realloc(out, cap *= 2)) != NULL);
        CHECK(readable_within(out_pipe[0], 20000));
        ssize_t r = read(out_pipe[0], out + len, cap - 1 - len);
        CHECK(r >= 0);
        if (r == 0)
            break;
        len += (size_t)r;
    }
    out[len] = '\0';
    close(out_pipe[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return out;
}
