/* See tls_util.h. */
#include "tls_util.h"
#include "harness.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int tls_built(void)
{
    errno = 0;
    weft_tls *t = weft_tls_server("/nonexistent/cert.pem", "/nonexistent/key.pem");
    CHECK(t == NULL);
    if (errno == ENOTSUP)
        return 0;
    CHECK(errno == ENOENT);
    return 1;
}

/* The certificates' directory, named after the harness process (the parent of each test's
 * process), so every test of a run shares it. */
static void cert_dir(char *dir, size_t n, pid_t harness)
{
    snprintf(dir, n, "/tmp/weft-tls-%d", (int)harness);
}

static void remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
    rmdir(dir);
}

void test_teardown(void)
{
    char dir[64];
    cert_dir(dir, sizeof dir, getpid());
    remove_flat_dir(dir);
}

#ifdef WEFT_HAVE_TLS
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>

/* Make group ("" for the base set, "rsa", "big") unless a run of this harness made it. */
static void make_certs(const char *dir, const char *group)
{
    char marker[128];
    snprintf(marker, sizeof marker, "%s/done-%s", dir, *group ? group : "base");
    struct stat st;
    if (stat(marker, &st) == 0 && time(NULL) - st.st_mtime < 12 * 3600)
        return; /* (older: a dead run's, whose pid came back; its certificates expire soon) */
    if (!*group) {
        remove_flat_dir(dir);
        CHECK(mkdir(dir, 0700) == 0);
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "sh tests/tls_certs.sh '%s' %s", dir, group);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "  tls_certs.sh %s failed (status %d)\n", group, rc);
    CHECK(rc == 0);
}

/* (Client threads of a test ask too: one at a time.) */
static pthread_mutex_t cert_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *cert_locked(const char *name)
{
    static char dir[64];
    static char paths[16][128];
    static int used;
    if (!dir[0]) {
        cert_dir(dir, sizeof dir, getppid());
        make_certs(dir, "");
    }
    if (strncmp(name, "rsa.", 4) == 0)
        make_certs(dir, "rsa");
    if (strcmp(name, "big.pem") == 0)
        make_certs(dir, "big");
    for (int i = 0; i < used; i++)
        if (strcmp(strrchr(paths[i], '/') + 1, name) == 0)
            return paths[i];
    CHECK(used < 16);
    snprintf(paths[used], sizeof paths[used], "%s/%s", dir, name);
    CHECK(access(paths[used], R_OK) == 0);
    return paths[used++];
}

const char *cert(const char *name)
{
    pthread_mutex_lock(&cert_lock);
    const char *path = cert_locked(name);
    pthread_mutex_unlock(&cert_lock);
    return path;
}

void tcp_pair(int sv[2])
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    CHECK(l >= 0 && bind(l, (struct sockaddr *)&sin, sizeof sin) == 0 && listen(l, 1) == 0);
    CHECK(getsockname(l, (struct sockaddr *)&sin, &len) == 0);
    sv[1] = tcp_connect_loopback(ntohs(sin.sin_port));
    sv[0] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    CHECK(sv[0] >= 0);
    int one = 1; /* as weft's own sockets: channels and TLS records do their own batching */
    setsockopt(sv[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    close(l);
}

/* ---- The raw peer ---- */

/* A blocking peer must not hang a test: its calls give up after 30 s. */
static void bound_waits(int fd)
{
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void count_record(int write_p, int version, int content_type, const void *buf,
                         size_t len, SSL *ssl, void *arg)
{
    (void)version, (void)buf, (void)len, (void)ssl;
    raw_tls *r = arg;
    if (!write_p && content_type == SSL3_RT_HEADER)
        r->records_in++;
}

/* Why OpenSSL failed, as text. */
static void ssl_reason(SSL *ssl, char *err, size_t errlen)
{
    if (!err)
        return;
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = ERR_peek_last_error();
    if (v != X509_V_OK)
        snprintf(err, errlen, "verify: %s", X509_verify_cert_error_string(v));
    else
        snprintf(err, errlen, "%s", e ? ERR_reason_error_string(e) : "no reason (EOF?)");
    ERR_clear_error();
}

/* Whether the blocking SSL call that returned ret was only interrupted, to be made again:
 * io_uring's task work for this process's ring (a test's weft side) interrupts a system
 * call that sleeps with a timeout (ours have SO_RCVTIMEO) with EINTR. */
static int interrupted(SSL *ssl, int ret)
{
    int saved = errno;
    int e = SSL_get_error(ssl, ret);
    errno = saved;
    return (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && saved == EINTR;
}

static raw_tls *raw_new(int fd, SSL_CTX *ctx)
{
    signal(SIGPIPE, SIG_IGN); /* a peer gone fails the test with a reason, not a signal */
    raw_tls *r = calloc(1, sizeof *r);
    CHECK(r);
    r->fd = fd;
    r->ssl = SSL_new(ctx);
    CHECK(r->ssl);
    SSL_CTX_free(ctx); /* (the SSL keeps its own reference) */
    return r;
}

static void raw_free(raw_tls *r)
{
    SSL_free(r->ssl);
    close(r->fd);
    free(r);
}

raw_tls *raw_client(int fd, const raw_opts *o, char *err, size_t errlen)
{
    static const raw_opts none;
    if (!o)
        o = &none;
    bound_waits(fd);
    if (o->rcvbuf)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &o->rcvbuf, sizeof o->rcvbuf);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    CHECK(ctx);
    if (o->cafile) {
        CHECK(SSL_CTX_load_verify_locations(ctx, o->cafile, NULL) == 1);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    if (o->max_version)
        CHECK(SSL_CTX_set_max_proto_version(ctx, o->max_version) == 1);
    if (o->alpn) {
        unsigned char wire[256];
        size_t n = strlen(o->alpn);
        CHECK(n > 0 && n < sizeof wire);
        wire[0] = (unsigned char)n;
        memcpy(wire + 1, o->alpn, n);
        CHECK(SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)n + 1) == 0);
    }
    raw_tls *r = raw_new(fd, ctx);
    if (o->servername) {
        CHECK(SSL_set_tlsext_host_name(r->ssl, o->servername) == 1);
        CHECK(SSL_set1_host(r->ssl, o->servername) == 1);
    }
    if (o->count_records) {
        SSL_set_msg_callback(r->ssl, count_record);
        SSL_set_msg_callback_arg(r->ssl, r);
    }
    CHECK(SSL_set_fd(r->ssl, fd) == 1);
    int rc;
    while ((rc = SSL_connect(r->ssl)) != 1 && interrupted(r->ssl, rc)) {
    }
    if (rc != 1) {
        ssl_reason(r->ssl, err, errlen);
        raw_free(r);
        return NULL;
    }
    return r;
}

raw_tls *raw_server(int fd, const char *certfile, const char *keyfile)
{
    bound_waits(fd);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    CHECK(ctx);
    CHECK(SSL_CTX_use_certificate_chain_file(ctx, certfile) == 1);
    CHECK(SSL_CTX_use_PrivateKey_file(ctx, keyfile, SSL_FILETYPE_PEM) == 1);
    raw_tls *r = raw_new(fd, ctx);
    CHECK(SSL_set_fd(r->ssl, fd) == 1);
    int rc;
    while ((rc = SSL_accept(r->ssl)) != 1 && interrupted(r->ssl, rc)) {
    }
    if (rc != 1) {
        ERR_clear_error();
        raw_free(r);
        return NULL;
    }
    return r;
}

void raw_write(raw_tls *r, const void *p, size_t n)
{
    size_t done = 0;
    if (n == 0)
        return;
    int rc;
    while ((rc = SSL_write_ex(r->ssl, p, n, &done)) != 1 && interrupted(r->ssl, rc)) {
    }
    if (rc != 1 || done != n) {
        char why[160];
        ssl_reason(NULL, why, sizeof why);
        fprintf(stderr, "  raw_write: %s (errno %d)\n", why, errno);
        CHECK(!"raw_write");
    }
}

void raw_puts(raw_tls *r, const char *s)
{
    raw_write(r, s, strlen(s));
}

void raw_read_exact(raw_tls *r, void *p, size_t n)
{
    char *at = p;
    while (n > 0) {
        size_t got = 0;
        int rc = SSL_read_ex(r->ssl, at, n, &got);
        if (rc != 1 && interrupted(r->ssl, rc))
            continue;
        if (rc != 1) {
            char why[160];
            ssl_reason(NULL, why, sizeof why);
            fprintf(stderr, "  raw_read_exact: SSL error %d: %s (errno %d), %zu bytes short\n",
                    SSL_get_error(r->ssl, 0), why, errno, n);
            CHECK(!"raw_read_exact");
        }
        at += got;
        n -= got;
    }
}

void raw_expect(raw_tls *r, const char *s)
{
    size_t n = strlen(s);
    char *back = malloc(n + 1);
    CHECK(back);
    raw_read_exact(r, back, n);
    back[n] = '\0';
    if (memcmp(back, s, n) != 0)
        fprintf(stderr, "  raw_expect: wanted \"%.60s\", got \"%.60s\"\n", s, back);
    CHECK(memcmp(back, s, n) == 0);
    free(back);
}

int raw_read_to_end(raw_tls *r)
{
    char buf[4096];
    for (;;) {
        size_t got;
        int rc = SSL_read_ex(r->ssl, buf, sizeof buf, &got);
        if (rc == 1 || interrupted(r->ssl, rc))
            continue;
        int e = SSL_get_error(r->ssl, 0);
        ERR_clear_error();
        CHECK(e != SSL_ERROR_WANT_READ); /* (a 30 s receive timeout: the peer never ended) */
        return e == SSL_ERROR_ZERO_RETURN;
    }
}

/* Take in, without waiting, what the peer has sent (a TLS 1.3 server's session tickets,
 * which a client that never read has not taken): a socket closed with unread input sends
 * a reset, not the FIN a test means. */
static void take_pending_input(raw_tls *r)
{
    int fl = fcntl(r->fd, F_GETFL);
    fcntl(r->fd, F_SETFL, fl | O_NONBLOCK);
    char buf[4096];
    size_t got;
    while (SSL_read_ex(r->ssl, buf, sizeof buf, &got) == 1) {
    }
    ERR_clear_error();
    fcntl(r->fd, F_SETFL, fl);
}

int raw_quiet_for(raw_tls *r, int ms)
{
    if (SSL_pending(r->ssl) > 0)
        return 0;
    int64_t end = weft_now() + ms;
    for (int64_t left = ms; left >= 0; left = end - weft_now()) {
        if (!readable_within(r->fd, (int)left))
            return 1;
        /* Something came: a record of data, or one of the handshake's (tickets)? */
        int fl = fcntl(r->fd, F_GETFL);
        fcntl(r->fd, F_SETFL, fl | O_NONBLOCK);
        char b;
        size_t got;
        int data = SSL_peek_ex(r->ssl, &b, 1, &got) == 1;
        ERR_clear_error();
        fcntl(r->fd, F_SETFL, fl);
        if (data)
            return 0;
    }
    return 1;
}

void raw_close(raw_tls *r, int how)
{
    if (how != RAW_RESET)
        take_pending_input(r);
    if (how == RAW_NOTIFY)
        SSL_shutdown(r->ssl);
    if (how == RAW_RESET) {
        struct linger lg = {1, 0};
        setsockopt(r->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    ERR_clear_error();
    raw_free(r);
}

void fill_pattern(unsigned char *p, size_t off, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t x = (off + i) * 0x9E3779B97F4A7C15ull + seed;
        p[i] = (unsigned char)(x >> 29 ^ x >> 47);
    }
}

void check_pattern(const unsigned char *p, size_t off, size_t n, unsigned seed)
{
    unsigned char want[4096];
    for (size_t done = 0; done < n;) {
        size_t k = n - done < sizeof want ? n - done : sizeof want;
        fill_pattern(want, off + done, k, seed);
        if (memcmp(p + done, want, k) != 0) {
            size_t i = 0;
            while (p[done + i] == want[i])
                i++;
            fprintf(stderr, "  pattern %u differs at byte %zu\n", seed, off + done + i);
            CHECK(!"pattern");
        }
        done += k;
    }
}

void raw_pump(raw_tls *r, size_t n_out, unsigned seed_out, size_t n_in, unsigned seed_in)
{
    static unsigned char out[16384], in[16384];
    size_t sent = 0, got = 0, chunk = 0;
    int fl = fcntl(r->fd, F_GETFL);
    CHECK(fcntl(r->fd, F_SETFL, fl | O_NONBLOCK) == 0);
    while (sent < n_out || got < n_in) {
        short want = 0;
        if (sent < n_out) {
            if (chunk == 0) { /* (a retried write must pass the same bytes) */
                chunk = n_out - sent < sizeof out ? n_out - sent : sizeof out;
                fill_pattern(out, sent, chunk, seed_out);
            }
            size_t w = 0;
            if (SSL_write_ex(r->ssl, out, chunk, &w) == 1) {
                sent += w;
                chunk = 0;
            } else {
                int e = SSL_get_error(r->ssl, 0);
                CHECK(e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ);
                want |= e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
            }
        }
        if (got < n_in) {
            size_t k = 0;
            if (SSL_read_ex(r->ssl, in, sizeof in, &k) == 1) {
                CHECK(got + k <= n_in);
                check_pattern(in, got, k, seed_in);
                got += k;
            } else {
                int e = SSL_get_error(r->ssl, 0);
                CHECK(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE);
                want |= e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
            }
        }
        if (want) {
            struct pollfd p = {.fd = r->fd, .events = want};
            CHECK(poll(&p, 1, 30000) > 0);
        }
    }
    CHECK(fcntl(r->fd, F_SETFL, fl) == 0);
}

unsigned char *client_hello(size_t *n, SSL **ssl_out)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    CHECK(ctx);
    CHECK(SSL_CTX_load_verify_locations(ctx, cert("ca.pem"), NULL) == 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL *ssl = SSL_new(ctx);
    CHECK(ssl);
    SSL_CTX_free(ctx);
    CHECK(SSL_set_tlsext_host_name(ssl, "localhost") == 1 && SSL_set1_host(ssl, "localhost") == 1);
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
    CHECK(in && out);
    SSL_set_bio(ssl, in, out);
    CHECK(SSL_connect(ssl) == -1 && SSL_get_error(ssl, -1) == SSL_ERROR_WANT_READ);
    char *data;
    long len = BIO_get_mem_data(out, &data);
    CHECK(len > 0);
    unsigned char *hello = malloc((size_t)len);
    CHECK(hello);
    memcpy(hello, data, (size_t)len);
    *n = (size_t)len;
    if (ssl_out)
        *ssl_out = ssl;
    else
        SSL_free(ssl);
    return hello;
}

raw_tls *raw_client_resume(SSL *ssl, int fd)
{
    bound_waits(fd);
    raw_tls *r = calloc(1, sizeof *r);
    CHECK(r);
    r->fd = fd;
    r->ssl = ssl;
    CHECK(SSL_set_fd(ssl, fd) == 1); /* (frees the memory BIOs) */
    int rc;
    while ((rc = SSL_connect(ssl)) != 1 && interrupted(ssl, rc)) {
    }
    if (rc != 1) {
        char why[160];
        ssl_reason(ssl, why, sizeof why);
        fprintf(stderr, "  raw_client_resume: %s\n", why);
        CHECK(!"handshake");
    }
    return r;
}

struct peer {
    pthread_t tid;
};

peer *peer_start(void *(*fn)(void *), void *arg)
{
    peer *p = malloc(sizeof *p);
    CHECK(p && pthread_create(&p->tid, NULL, fn, arg) == 0);
    return p;
}

void *peer_join(peer *p)
{
    void *result;
    CHECK(pthread_join(p->tid, &result) == 0);
    free(p);
    return result;
}

int handshake_ms(int ms)
{
    return test_scale(10) < 10 ? 5 * ms : ms;
}

/* ---- weft contexts ---- */

weft_tls *server_ctx(const char *name)
{
    char c[32], k[32];
    snprintf(c, sizeof c, "%s.pem", name);
    snprintf(k, sizeof k, "%s.key", name);
    weft_tls *t = weft_tls_server(cert(c), cert(k));
    CHECK(t);
    return t;
}

weft_tls *client_ctx(void)
{
    weft_tls *t = weft_tls_client(cert("ca.pem"), NULL);
    CHECK(t);
    return t;
}

raw_tls *raw_connect(int port, const raw_opts *o)
{
    static const raw_opts trusting = {.servername = "localhost"};
    raw_opts with_ca = o ? *o : trusting;
    if (!with_ca.cafile)
        with_ca.cafile = cert("ca.pem");
    char why[160];
    raw_tls *r = raw_client(tcp_connect_loopback(port), &with_ca, why, sizeof why);
    if (!r)
        fprintf(stderr, "  raw_connect: %s\n", why);
    CHECK(r);
    return r;
}

void raw_expect_echo(raw_tls *r, const char *line)
{
    size_t n = strlen(line);
    char *out = malloc(n + 2);
    CHECK(out);
    memcpy(out, line, n);
    out[n] = '\n';
    out[n + 1] = '\0';
    raw_write(r, out, n + 1);
    raw_expect(r, out);
    free(out);
}

void tls_ask(int port, const char *q, char *answer, size_t cap)
{
    raw_tls *r = raw_connect(port, NULL);
    raw_puts(r, q);
    raw_puts(r, "\n");
    size_t n = 0;
    while (n < cap - 1) {
        raw_read_exact(r, answer + n, 1);
        if (answer[n] == '\n')
            break;
        n++;
    }
    answer[n] = '\0';
    raw_close(r, RAW_NOTIFY);
}

/* ---- Other programs ---- */

pid_t spawn_tool(char *const argv[], int *in_fd, int *out_fd, int *err_fd)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, er[2] = {-1, -1};
    if (in_fd)
        CHECK(pipe2(in, O_CLOEXEC) == 0);
    if (out_fd)
        CHECK(pipe2(out, O_CLOEXEC) == 0);
    if (err_fd)
        CHECK(pipe2(er, O_CLOEXEC) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(in_fd ? in[0] : null, 0);
        dup2(out_fd ? out[1] : null, 1);
        dup2(err_fd ? er[1] : null, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    if (in_fd) {
        close(in[0]);
        *in_fd = in[1];
    }
    if (out_fd) {
        close(out[1]);
        *out_fd = out[0];
    }
    if (err_fd) {
        close(er[1]);
        *err_fd = er[0];
    }
    return pid;
}

pid_t spawn_built(char *const argv[], int *in_fd, int *out_fd, int *err_fd)
{
    const char *build = getenv("WEFT_BUILD") ? getenv("WEFT_BUILD") : "build";
    const char *run = getenv("WEFT_RUN");
    char cmd[2048];
    int len = snprintf(cmd, sizeof cmd, "exec %s '%s/%s'", run ? run : "", build, argv[0]);
    for (int i = 1; argv[i]; i++)
        len += snprintf(cmd + len, sizeof cmd - (size_t)len, " '%s'", argv[i]);
    CHECK(len < (int)sizeof cmd);
    char *sh[] = {"/bin/sh", "-c", cmd, NULL};
    return spawn_tool(sh, in_fd, out_fd, err_fd);
}

void write_pipe(int fd, const void *buf, size_t n)
{
    signal(SIGPIPE, SIG_IGN);
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        CHECK(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

char *read_all_fd(int fd, int timeout_ms, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    CHECK(buf);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            CHECK(buf);
        }
        if (!readable_within(fd, timeout_ms))
            break;
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

int tool_works(char *const argv[])
{
    pid_t pid = spawn_tool(argv, NULL, NULL, NULL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}
#endif
