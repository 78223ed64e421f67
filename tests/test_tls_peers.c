/* TLS against peers nobody here wrote: `openssl s_client` and Python's ssl module against
 * build/examples/echo (and echo-blocking) started with --cert/--key, 200 concurrent Python
 * clients with random lines checked byte for byte, and build/examples/client against
 * `openssl s_server`, verifying or, when asked, not. Certificates come from the openssl
 * command line; every program is started here on a free port and stopped by its pid. */
#include "harness.h"
#include "tls_util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TLS_PEER_TESTS(X)                                                                      \
    X(echo_serves_openssl_s_client, 120)                                                       \
    X(echo_blocking_serves_openssl_s_client, 120)                                              \
    X(echo_serves_200_python_clients_every_byte_verified, 600)                                 \
    X(client_example_talks_to_openssl_s_server, 120)                                           \
    X(client_example_verifies_unless_insecure, 120)

#ifdef WEFT_HAVE_TLS

/* Output of a program, collected as it comes. */
struct out {
    int fd;
    char *text;
    size_t len, cap;
};

static void out_init(struct out *o, int fd)
{
    *o = (struct out){fd, malloc(4096), 0, 4096};
    CHECK(o->text);
    o->text[0] = '\0';
}

/* Read until needle is in the text (fails the test after 30 s without it). */
static void out_wait_for(struct out *o, const char *needle)
{
    while (!strstr(o->text, needle)) {
        if (!readable_within(o->fd, 30000)) {
            fprintf(stderr, "  no \"%s\" in:\n%s\n", needle, o->text);
            CHECK(!"output expected");
        }
        if (o->len + 4096 > o->cap) {
            o->cap *= 2;
            o->text = realloc(o->text, o->cap);
            CHECK(o->text);
        }
        ssize_t r = read(o->fd, o->text + o->len, o->cap - o->len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            fprintf(stderr, "  ended without \"%s\":\n%s\n", needle, o->text);
            CHECK(!"output expected");
        }
        o->len += (size_t)r;
        o->text[o->len] = '\0';
    }
}

/* Read the rest, to its end. */
static void out_finish(struct out *o)
{
    size_t n;
    char *rest = read_all_fd(o->fd, 30000, &n);
    if (o->len + n + 1 > o->cap) {
        o->cap = o->len + n + 1;
        o->text = realloc(o->text, o->cap);
        CHECK(o->text);
    }
    memcpy(o->text + o->len, rest, n + 1);
    o->len += n;
    free(rest);
    close(o->fd);
}

static int wait_status(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        CHECK(errno == EINTR);
    return status;
}

static int exited_0(int status)
{
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

struct server {
    pid_t pid;
    int port;
    struct out err;
};

static void start_echo(struct server *s, const char *prog, const char *certname,
                       const char *keyname)
{
    char *argv[] = {(char *)prog, "-p", "0", "--cert", (char *)cert(certname), "--key",
                    (char *)cert(keyname), NULL};
    int out, err;
    s->pid = spawn_built(argv, NULL, &out, &err);
    s->port = read_listen_port(out);
    close(out);
    out_init(&s->err, err);
}

static void stop_echo(struct server *s, int expect_clean_exit)
{
    int status = stop_program(s->pid, SIGTERM);
    if (expect_clean_exit)
        CHECK(exited_0(status));
    out_finish(&s->err);
}

/* `openssl s_client` sends two lines, reads their echo, and ends at its input's end with
 * close_notify; the server logs a clean end. */
static void s_client_session(struct server *s)
{
    char connect[64];
    snprintf(connect, sizeof connect, "127.0.0.1:%d", s->port);
    char *argv[] = {"openssl", "s_client", "-connect", connect, "-CAfile", (char *)cert("ca.pem"),
                    "-verify_hostname", "localhost", "-verify_return_error", "-quiet",
                    "-no_ign_eof", NULL};
    int in, outfd;
    pid_t pid = spawn_tool(argv, &in, &outfd, NULL);
    struct out o;
    out_init(&o, outfd);
    static const char lines[] = "line one\n\0two\r\n"; /* a NUL and a CR go through too */
    write_pipe(in, lines, sizeof lines - 1);
    out_wait_for(&o, "line one\n");
    while (o.len < sizeof lines - 1) { /* (strstr stops at the NUL) */
        CHECK(readable_within(o.fd, 30000));
        ssize_t r = read(o.fd, o.text + o.len, o.cap - o.len - 1);
        CHECK(r > 0);
        o.len += (size_t)r;
    }
    close(in); /* s_client sends close_notify and leaves */
    CHECK(exited_0(wait_status(pid)));
    out_finish(&o);
    CHECK(o.len == sizeof lines - 1 && memcmp(o.text, lines, o.len) == 0);
    free(o.text);
}

static void echo_serves_openssl_s_client(void)
{
    static const char *const kinds[][2] = {{"leaf.pem", "leaf.key"}, {"rsa.pem", "rsa.key"}};
    for (int k = 0; k < 2; k++) {
        struct server s;
        start_echo(&s, "examples/echo", kinds[k][0], kinds[k][1]);
        s_client_session(&s);
        s_client_session(&s);
        out_wait_for(&s.err, "EOF on fd"); /* the end was clean (close_notify) */
        stop_echo(&s, 1);
        CHECK(strstr(s.err.text, "connect on fd") && !strstr(s.err.text, "error on fd"));
        free(s.err.text);
    }
}

static void echo_blocking_serves_openssl_s_client(void)
{
    struct server s;
    start_echo(&s, "examples/echo-blocking", "leaf.pem", "leaf.key");
    s_client_session(&s);
    s_client_session(&s);
    out_wait_for(&s.err, "EOF on fd");
    stop_echo(&s, 0);
    CHECK(!strstr(s.err.text, "error on fd") && !strstr(s.err.text, "handshake"));
    free(s.err.text);
}

static int python_ssl_works(void)
{
    char *argv[] = {"python3", "-c", "import ssl, asyncio", NULL};
    return tool_works(argv);
}

static void run_python(char *argv[])
{
    int out;
    pid_t pid = spawn_tool(argv, NULL, &out, NULL);
    size_t n;
    char *said = read_all_fd(out, 600000, &n);
    close(out);
    int status = wait_status(pid);
    fprintf(stderr, "  python: %s", said);
    CHECK(exited_0(status) && strncmp(said, "ok ", 3) == 0);
    free(said);
}

static void echo_serves_200_python_clients_every_byte_verified(void)
{
    if (!python_ssl_works())
        fprintf(stderr, "  python3 (with ssl and asyncio) is needed: apt-get install python3\n");
    CHECK(python_ssl_works());
    struct server s;
    start_echo(&s, "examples/echo", "leaf.pem", "leaf.key");
    char port[16], conns[16];
    snprintf(port, sizeof port, "%d", s.port);
    snprintf(conns, sizeof conns, "%d", test_scale(200));
    char *session[] = {"python3", "tests/tls_clients.py", "session", port,
                       (char *)cert("ca.pem"), NULL};
    run_python(session);
    char *load[] = {"python3", "tests/tls_clients.py", "load", port, (char *)cert("ca.pem"),
                    conns, "50", "20261206", NULL};
    run_python(load);
    stop_echo(&s, 1);
    CHECK(!strstr(s.err.text, "error on fd")); /* every client ended with close_notify */
    free(s.err.text);
}

struct s_server {
    pid_t pid;
    int port;
    int in;
    struct out out;
};

static void start_s_server(struct s_server *s, const char *certname, const char *keyname)
{
    char *argv[] = {"openssl", "s_server", "-accept", "127.0.0.1:0", "-cert",
                    (char *)cert(certname), "-key", (char *)cert(keyname), "-naccept", "1",
                    NULL};
    int outfd;
    s->pid = spawn_tool(argv, &s->in, &outfd, NULL);
    out_init(&s->out, outfd);
    out_wait_for(&s->out, "ACCEPT 127.0.0.1:");
    out_wait_for(&s->out, "\n");
    s->port = atoi(strstr(s->out.text, "ACCEPT 127.0.0.1:") + 17);
    CHECK(s->port > 0);
}

static void stop_s_server(struct s_server *s)
{
    close(s->in);
    if (waitpid(s->pid, NULL, WNOHANG) == 0)
        stop_program(s->pid, SIGTERM);
    out_finish(&s->out);
    free(s->out.text);
}

/* Start the client example on port with extra arguments. */
static pid_t start_client(int port, char *const extra[], int *in, int *out, int *err)
{
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    char *argv[16] = {"examples/client", addr};
    int n = 2;
    for (int i = 0; extra[i]; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return spawn_built(argv, in, out, err);
}

static void client_example_talks_to_openssl_s_server(void)
{
    struct s_server s;
    start_s_server(&s, "leaf.pem", "leaf.key");
    char *extra[] = {"--cafile", (char *)cert("ca.pem"), NULL}; /* the name: from 127.0.0.1 */
    int in, outfd, errfd;
    pid_t pid = start_client(s.port, extra, &in, &outfd, &errfd);
    struct out o, e;
    out_init(&o, outfd);
    out_init(&e, errfd);
    write_pipe(in, "to the server\n", 14);
    out_wait_for(&s.out, "to the server\n"); /* s_server prints what it receives */
    write_pipe(s.in, "to the client\n", 14);
    out_wait_for(&o, "to the client\n");
    close(in); /* the client ends its side (close_notify); s_server then ends the connection */
    int status = wait_status(pid);
    out_finish(&o);
    out_finish(&e);
    if (!exited_0(status))
        fprintf(stderr, "  client said: %s\n", e.text);
    CHECK(exited_0(status));
    CHECK(strcmp(o.text, "to the client\n") == 0);
    out_wait_for(&s.out, "DONE"); /* s_server saw our close_notify */
    stop_s_server(&s);
    free(o.text);
    free(e.text);
}

/* One client run against an s_server showing certname: its exit status and what it said. */
static int client_against(const char *certname, const char *keyname, char *const extra[],
                          char *said, size_t saidlen)
{
    struct s_server s;
    start_s_server(&s, certname, keyname);
    int in, outfd, errfd;
    pid_t pid = start_client(s.port, extra, &in, &outfd, &errfd);
    write_pipe(in, "hello\n", 6);
    close(in);
    int status = wait_status(pid);
    char *out = read_all_fd(outfd, 1000, NULL), *err = read_all_fd(errfd, 1000, NULL);
    close(outfd);
    close(errfd);
    snprintf(said, saidlen, "%s", err);
    char *nl = strchr(said, '\n');
    if (nl)
        *nl = '\0';
    free(out);
    free(err);
    stop_s_server(&s);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void client_example_verifies_unless_insecure(void)
{
    char said[256];
    char *ca = (char *)cert("ca.pem");
    struct {
        const char *cert, *key, *name, *reason;
    } bad[] = {
        {"rogue.pem", "rogue.key", "localhost", "unable to get local issuer certificate"},
        {"expired.pem", "leaf.key", "localhost", "certificate has expired"},
        {"other.pem", "other.key", "localhost", "hostname mismatch"},
        {"leaf.pem", "leaf.key", "127.0.0.2", "IP address mismatch"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *verify[] = {"--cafile", ca, "--servername", (char *)bad[i].name, NULL};
        CHECK(client_against(bad[i].cert, bad[i].key, verify, said, sizeof said) == 1);
        fprintf(stderr, "  %s: \"%s\"\n", bad[i].cert, said);
        char want[160];
        snprintf(want, sizeof want, "TLS handshake: certificate verify failed: %s",
                 bad[i].reason);
        CHECK(strcmp(said, want) == 0);
        /* only when asked: --insecure (once where programs run slowly: valgrind) */
        char *insecure[] = {"--cafile", ca, "--servername", (char *)bad[i].name, "--insecure",
                            NULL};
        if (i == 0 || test_scale(10) == 10)
            CHECK(client_against(bad[i].cert, bad[i].key, insecure, said, sizeof said) == 0);
    }
    /* The system's CAs do not know ours either (no --cafile). */
    char *system_store[] = {"--tls", "--servername", "localhost", NULL};
    CHECK(client_against("leaf.pem", "leaf.key", system_store, said, sizeof said) == 1);
    CHECK(strncmp(said, "TLS handshake: certificate verify failed: ", 42) == 0);
}

#define AS_TEST(name, timeout) {#name, name, timeout},
const struct test tests[] = {TLS_PEER_TESTS(AS_TEST)};

#else

static void without_tls(void)
{
    CHECK(!tls_built());
    fputs(TLS_SKIPPED, stderr);
}

#define AS_SKIP(name, timeout) {#name, without_tls, timeout},
const struct test tests[] = {TLS_PEER_TESTS(AS_SKIP)};
#endif
const size_t tests_count = sizeof tests / sizeof tests[0];
