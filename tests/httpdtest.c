/* Helpers for the httpd tests (see httpdtest.h). */
#include "httpdtest.h"
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- The served tree ---- */

void tree_new(struct tree *t)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/weft-httpd-XXXXXX");
    CHECK(mkdtemp(t->dir) != NULL);
    snprintf(t->root, sizeof t->root, "%s/root", t->dir);
    CHECK(mkdir(t->root, 0755) == 0);
}

const char *tree_path(const struct tree *t, const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", t->root, name);
    return path;
}

void tree_file(struct tree *t, const char *name, const void *data, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s", tree_path(t, name));
    for (char *s = strchr(path + strlen(t->root) + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = '\0';
        CHECK(mkdir(path, 0755) == 0 || errno == EEXIST);
        *s = '/';
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        CHECK(w > 0);
        p += w;
        n -= (size_t)w;
    }
    CHECK(close(fd) == 0);
}

void tree_mtime(struct tree *t, const char *name, time_t when)
{
    struct timespec ts[2] = {{when, 0}, {when, 0}};
    CHECK(utimensat(AT_FDCWD, tree_path(t, name), ts, AT_SYMLINK_NOFOLLOW) == 0);
}

void tree_remove(struct tree *t)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
    CHECK(system(cmd) == 0);
}

/* ---- The server ---- */

static void start(struct httpd_proc *p, const struct tree *t, const char *const *extra,
                  bool logged)
{
    char *argv[40] = {"examples/httpd", "-p", "0", "-r", (char *)t->root};
    int n = 5;
    if (!logged)
        argv[n++] = "-q";
    for (; extra && *extra && n < 39; extra++)
        argv[n++] = (char *)*extra;
    argv[n] = NULL;
    int out;
    p->err_fd = -1;
    p->pid = spawn_program(argv, &out, logged ? &p->err_fd : NULL);
    p->port = read_listen_port(out);
    close(out);
}

void httpd_start(struct httpd_proc *p, const struct tree *t, const char *const *extra)
{
    start(p, t, extra, false);
}

void httpd_start_logged(struct httpd_proc *p, const struct tree *t, const char *const *extra)
{
    start(p, t, extra, true);
}

bool httpd_log_has(struct httpd_proc *p, const char *text, int timeout_ms)
{
    char line[512];
    size_t n = 0;
    for (;;) {
        if (!readable_within(p->err_fd, timeout_ms))
            return false;
        char ch;
        if (read(p->err_fd, &ch, 1) != 1)
            return false;
        if (ch != '\n') {
            if (n < sizeof line - 1)
                line[n++] = ch;
            continue;
        }
        line[n] = '\0';
        n = 0;
        if (strstr(line, text))
            return true;
    }
}

void httpd_stop(struct httpd_proc *p)
{
    int status = stop_program(p->pid, SIGTERM);
    if (p->err_fd >= 0)
        close(p->err_fd);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fprintf(stderr, "  httpd exited with status 0x%x\n", status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- HTTP over a socket ---- */

void http_open(struct http_conn *c, int port)
{
    c->fd = tcp_connect_loopback(port);
    c->len = 0;
    c->cap = 16384;
    c->buf = malloc(c->cap);
    CHECK(c->buf);
}

void http_close(struct http_conn *c)
{
    close(c->fd);
    free(c->buf);
    c->buf = NULL;
}

void http_send(struct http_conn *c, const char *data)
{
    write_all(c->fd, data, strlen(data));
}

/* Read more into c's buffer within timeout_ms; fails the test at end of file. */
static void read_more(struct http_conn *c, int timeout_ms)
{
    if (c->len == c->cap) {
        c->cap *= 2;
        CHECK((c->buf = realloc(c->buf, c->cap)) != NULL);
    }
    CHECK(readable_within(c->fd, timeout_ms));
    ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
    if (r <= 0)
        fprintf(stderr, "  connection closed with %zu bytes of a response: %.*s\n", c->len,
                (int)(c->len < 300 ? c->len : 300), c->buf);
    CHECK(r > 0);
    c->len += (size_t)r;
}

static char *copy(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    CHECK(s);
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

char *http_header(const struct http_resp *r, const char *name)
{
    size_t n = strlen(name);
    for (const char *l = strstr(r->head, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
        const char *line = l + 2;
        if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1;
            while (*v == ' ')
                v++;
            return copy(v, strcspn(v, "\r"));
        }
    }
    return NULL;
}

void http_read(struct http_conn *c, struct http_resp *r, bool head_request, int timeout_ms)
{
    char *end;
    while (!(end = c->len ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL))
        read_more(c, timeout_ms);
    size_t head_len = (size_t)(end - c->buf) + 4;
    r->head = copy(c->buf, head_len - 2);
    CHECK(strncmp(r->head, "HTTP/1.1 ", 9) == 0);
    r->status = atoi(r->head + 9);
    char *cl = http_header(r, "Content-Length");
    size_t body = 0;
    if (cl && !head_request && r->status != 304)
        body = strtoull(cl, NULL, 10);
    free(cl);
    while (c->len < head_len + body)
        read_more(c, timeout_ms);
    r->body = copy(c->buf + head_len, body);
    r->body_len = body;
    memmove(c->buf, c->buf + head_len + body, c->len - head_len - body);
    c->len -= head_len + body;
}

void http_resp_free(struct http_resp *r)
{
    free(r->head);
    free(r->body);
    r->head = r->body = NULL;
}

void http_get(int port, const char *request, struct http_resp *r)
{
    struct http_conn c;
    http_open(&c, port);
    http_send(&c, request);
    http_read(&c, r, strncmp(request, "HEAD ", 5) == 0, 20000);
    http_close(&c);
}

bool http_closed(struct http_conn *c, int timeout_ms)
{
    for (;;) {
        if (c->len == c->cap) {
            c->cap *= 2;
            CHECK((c->buf = realloc(c->buf, c->cap)) != NULL);
        }
        if (!readable_within(c->fd, timeout_ms))
            return false;
        ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return true;
        if (r < 0)
            return false;
        c->len += (size_t)r;
    }
}

/* ---- curl ---- */

char *curl(const char *const *args, size_t *n)
{
    const char *argv[48] = {"curl", "-s", "-S", "--max-time", "60"};
    int k = 5;
    for (; *args && k < 47; args++)
        argv[k++] = *args;
    argv[k] = NULL;
    int out[2];
    CHECK(pipe2(out, O_CLOEXEC) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(out[1], 1);
        execvp("curl", (char *const *)argv);
        _exit(127);
    }
    close(out[1]);
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap);
    CHECK(buf);
    for (;;) {
        if (len + 1 == cap)
            CHECK((buf = realloc(buf, cap *= 2)) != NULL);
        CHECK(readable_within(out[0], 60000));
        ssize_t r = read(out[0], buf + len, cap - 1 - len);
        CHECK(r >= 0);
        if (r == 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    close(out[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fprintf(stderr, "  curl %s exited with status 0x%x\n", argv[5], status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (n)
        *n = len;
    return buf;
}

const char *url(int port, const char *path)
{
    static char bufs[4][512];
    static int next;
    char *u = bufs[next++ % 4];
    snprintf(u, sizeof bufs[0], "http://127.0.0.1:%d%s", port, path);
    return u;
}

/* ---- Files ---- */

bool same_as_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    bool same = (size_t)st.st_size == n;
    char buf[65536];
    for (size_t at = 0; same && at < n;) {
        ssize_t r = read(fd, buf, sizeof buf);
        CHECK(r > 0);
        same = memcmp(buf, (const char *)p + at, (size_t)r) == 0;
        at += (size_t)r;
    }
    close(fd);
    return same;
}

void fill_random(void *p, size_t n, unsigned seed)
{
    uint32_t x = seed ? seed : 1;
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b[i] = (unsigned char)(x >> 7);
    }
}
