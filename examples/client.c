/* client: a netcat-like client on weft. Two coroutines: one copies standard input to the
 * server, the other everything the server sends to standard output; it exits when both
 * directions are done (standard input ended and the server closed). With --tls it speaks TLS,
 * verifying the server's certificate (against the system's CAs, or --cafile) and its name
 * (--servername, else the host of HOST:PORT) unless --insecure.
 *
 *     client HOST:PORT [--tls] [--cafile FILE] [--servername NAME] [--insecure] [-t SECONDS]
 *
 * kill -USR1 PID writes what each coroutine is doing to stderr.
 */
#include <weft.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pipe_ends {
    weft_chan *from, *to;
    const char *what;
    int half_close; /* at the end, shut down to's sending side (the server's) */
    int err;
};

/* Copy from -> to until end of file; then end to's output: a half-close of the server's
 * side (the server reads end of file, and TLS sends close_notify), or a flush of stdout. */
static void *copy(void *arg)
{
    struct pipe_ends *p = arg;
    char buf[16384];
    ssize_t n;
    while ((n = weft_read(p->from, buf, sizeof buf)) > 0) {
        if (weft_write(p->to, buf, (size_t)n) != n || weft_flush(p->to) != 0) {
            p->err = errno;
            return NULL;
        }
    }
    if (n < 0)
        p->err = errno;
    else if (p->half_close ? weft_shutdown(p->to) : weft_flush(p->to))
        p->err = errno;
    return NULL;
}

static _Noreturn void usage(const char *prog)
{
    fprintf(stderr, "usage: %s HOST:PORT [--tls] [--cafile FILE] [--servername NAME] "
                    "[--insecure] [-t CONNECT_TIMEOUT_SECONDS]\n"
                    "  kill -USR1 PID writes what each coroutine is doing to stderr\n", prog);
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"tls", no_argument, NULL, 'T'},
        {"cafile", required_argument, NULL, 'A'},
        {"servername", required_argument, NULL, 'N'},
        {"insecure", no_argument, NULL, 'I'},
        {NULL, 0, NULL, 0},
    };
    int tls = 0, insecure = 0, opt;
    const char *cafile = NULL, *servername = NULL;
    double timeout = 10;
    while ((opt = getopt_long(argc, argv, "t:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'T': tls = 1; break;
        case 'A': cafile = optarg; tls = 1; break;
        case 'N': servername = optarg; tls = 1; break;
        case 'I': insecure = 1; tls = 1; break;
        case 't': timeout = atof(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (optind != argc - 1)
        usage(argv[0]);
    const char *addr = argv[optind];
    int64_t deadline = weft_now() + (int64_t)(timeout * 1000);
    weft_dump_on_signal(SIGUSR1); /* kill -USR1: what each coroutine is doing, on stderr */

    weft_chan *server = weft_connect(addr, deadline);
    if (!server) {
        fprintf(stderr, "%s: %s\n", addr, strerror(errno));
        return 1;
    }
    if (tls) {
        char host[256];
        if (!servername) { /* the host part of HOST:PORT, without brackets */
            const char *colon = strrchr(addr, ':');
            size_t n = colon ? (size_t)(colon - addr) : strlen(addr);
            if (n >= 2 && addr[0] == '[')
                addr++, n -= 2;
            snprintf(host, sizeof host, "%.*s", (int)n, addr);
            servername = host;
        }
        weft_tls *ctx = weft_tls_client(cafile, NULL);
        if (!ctx || (insecure && weft_tls_set_verify(ctx, 0) != 0)) {
            fprintf(stderr, "TLS: %s\n", strerror(errno));
            return 1;
        }
        if (weft_tls_connect(server, ctx, servername, deadline) != 0) {
            fprintf(stderr, "TLS handshake: %s\n",
                    errno == EPROTO ? weft_tls_error(server) : strerror(errno));
            weft_close(server); /* (valgrind's leak check runs at exit) */
            weft_tls_free(ctx);
            return 1;
        }
        weft_tls_free(ctx);
    }
    weft_chan *in = weft_chan_open(0), *out = weft_chan_open(1);
    if (!in || !out) {
        fprintf(stderr, "stdin/stdout: %s\n", strerror(errno));
        return 1;
    }
    weft_chan_set_buffering(out, WEFT_BUF_NONE);
    struct pipe_ends up = {in, server, "stdin -> server", 1, 0};
    struct pipe_ends down = {server, out, "server -> stdout", 0, 0};
    weft_co *a = weft_spawn(copy, &up), *b = weft_spawn(copy, &down);
    if (!a || !b || weft_join(b, NULL, -1) != 0 || weft_join(a, NULL, -1) != 0) {
        fprintf(stderr, "client: %s\n", strerror(errno));
        return 1;
    }
    int rc = 0;
    struct pipe_ends *dirs[] = {&up, &down};
    for (int i = 0; i < 2; i++)
        if (dirs[i]->err) {
            fprintf(stderr, "%s: %s\n", dirs[i]->what, strerror(dirs[i]->err));
            rc = 1;
        }
    weft_close(server);
    weft_close(in);
    weft_close(out);
    return rc;
}
