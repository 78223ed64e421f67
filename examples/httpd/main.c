/* httpd: an HTTP/1.1 static file server, written the weft way. Each client gets a coroutine
 * that reads a request, answers it, and loops while the connection is kept alive --
 * straight-line code on a channel, no callbacks, no state machine. With --threads N, N
 * threads each run a scheduler and a server on their own SO_REUSEPORT listener, each with
 * its own cache of open files.
 *
 * SIGINT/SIGTERM: stop accepting, let clients finish (-g GRACE_MS), exit 0; a second one
 * exits at once. Signals are taken from a signalfd, read by a coroutine like any other fd.
 * SIGUSR1: every thread writes what each of its coroutines is doing to stderr (weft_dump).
 */
#include "httpd.h"

#include <weft.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define LINGER_MS 1000           /* after an error response, how long its client's bytes are */
#define LINGER_BYTES (256u * 1024u) /* still read (and dropped), at most, before closing */

static const char usage_text[] =
    "usage: httpd [-p PORT] [-h HOST] [-q] [-r DIR] [-g GRACE_MS] [--threads N]\n"
    "             [--idle-timeout MS] [--write-timeout MS] [--max-line BYTES]\n"
    "             [--max-headers BYTES] [--max-body BYTES] [--fd-cache N] [--read-max BYTES]\n"
    "\n"
    "An HTTP/1.1 static file server: GET and HEAD of the files under DIR.\n"
    "\n"
    "  -p PORT              port to listen on (default 8080; 0 picks a free one)\n"
    "  -h HOST              address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)\n"
    "  -q                   quiet: no line per connection on stderr\n"
    "  -r DIR               the directory served (default: the current one)\n"
    "  -g GRACE_MS          on SIGINT/SIGTERM, how long clients get to finish (default 5000)\n"
    "  --threads N          serve from N threads (default 1)\n"
    "  --idle-timeout MS    how long a connection may wait for its next request, and a\n"
    "                       request take to arrive after its first line: then 408 and close\n"
    "                       (default 60000; 0: no limit)\n"
    "  --write-timeout MS   a client that takes no response bytes for this long (and at least\n"
    "                       1 MiB of a file per such time) is dropped (default 60000; 0: none)\n"
    "  --max-line BYTES     longest request line: 414 past it (default 8192)\n"
    "  --max-headers BYTES  most bytes of header lines in a request: 431 past it (default\n"
    "                       16384; at most 100 lines)\n"
    "  --max-body BYTES     longest request body, read and dropped: 413 past it (default\n"
    "                       1048576)\n"
    "  --fd-cache N         files kept open per thread, each for a second (default 1024;\n"
    "                       0: open and close the file for every request)\n"
    "  --read-max BYTES     bodies up to this size are read and sent with the headers in one\n"
    "                       write; larger ones go by sendfile(2) (default 16384)\n"
    "\n"
    "Prints \"listening on HOST:PORT\" on stdout once it accepts connections.\n"
    "kill -USR1 PID writes what each coroutine is doing to stderr.\n";

/* ---- One client ---- */

/* After an error response: stop sending (the client reads our answer, then the end), and
 * drop what the client still sends for a moment, so that closing with its bytes unread does
 * not reset the connection under the answer before the client has read it. */
static void linger(weft_chan *c)
{
    if (weft_shutdown(c) != 0)
        return;
    int64_t end = weft_now() + LINGER_MS;
    char sink[512]; /* (small: every connection's stack keeps what its deepest call touched) */
    for (size_t total = 0; total < LINGER_BYTES;) {
        int64_t left = end - weft_now();
        if (left <= 0)
            break;
        weft_chan_set_timeouts(c, left, left);
        ssize_t r = weft_read(c, sink, sizeof sink);
        if (r <= 0)
            break;
        total += (size_t)r;
    }
}

/* The log line of a connection's end: the status it was sent before closing, the error that
 * ended it, or a plain end of file. */
static void log_end(weft_chan *c, int status, int err)
{
    int fd = weft_chan_fd(c);
    const char *peer = weft_chan_peer(c);
    if (status)
        fprintf(stderr, "close on fd %d (from %s): sent %d\n", fd, peer, status);
    else if (err)
        fprintf(stderr, "close on fd %d (from %s): %s\n", fd, peer, strerror(err));
    else
        fprintf(stderr, "EOF on fd %d (from %s)\n", fd, peer);
}

static void serve_client(weft_chan *c, void *arg)
{
    struct site *s = arg;
    struct http_request rq;
    http_request_init(&rq);
    if (!s->cfg->quiet)
        fprintf(stderr, "connect on fd %d (from %s)\n", weft_chan_fd(c), weft_chan_peer(c));
    int err = 0;
    for (;;) {
        int rc = http_request_read(c, &rq, &s->cfg->limits);
        if (rc < 0 && rq.status) {
            http_respond_error(c, &rq, s);
            linger(c);
        }
        if (rc <= 0)
            break;
        if (http_respond(c, &rq, s) != 0) {
            err = errno;
            break;
        }
        if (!rq.keep_alive)
            break;
    }
    if (!s->cfg->quiet)
        log_end(c, rq.status, err);
    http_request_release(&rq);
}

/* Files kept open past their second are closed, once a second. */
static void *sweep_main(void *arg)
{
    struct site *s = arg;
    while (weft_sleep(FCACHE_TTL_MS) == 0)
        fcache_sweep(s->files);
    return NULL; /* cancelled: the server is stopping */
}

/* ---- Threads, signals, shutdown ---- */

struct thread {
    pthread_t tid;
    int index;
    struct site site;
    weft_listener *l;
    char addr[320];      /* where the threads after the first listen */
    int sigfd;           /* the first thread's: SIGINT/SIGTERM */
    weft_tqueue *stop;   /* closed by the first thread to stop the others */
    weft_tqueue *ready;  /* each other thread says here that it listens (or could not) */
    int64_t grace_ms;
    weft_server_opts opts;
};

/* Park until a SIGINT or SIGTERM arrives. -1 if cancelled or the fd failed. */
static int wait_signal(int fd)
{
    for (;;) {
        struct signalfd_siginfo si;
        ssize_t r = read(fd, &si, sizeof si);
        if (r == (ssize_t)sizeof si)
            return 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            return -1;
        if (weft_wait_fd(fd, WEFT_READABLE, -1) != 0)
            return -1;
    }
}

static void *hard_stop_main(void *arg)
{
    struct thread *t = arg;
    if (wait_signal(t->sigfd) == 0) {
        fprintf(stderr, "httpd: second signal: exiting now\n");
        _exit(1);
    }
    return NULL;
}

static void stop_and_join(weft_co *co)
{
    if (co) {
        weft_cancel(co);
        weft_join(co, NULL, -1);
    }
}

/* Each thread's first coroutine: serve until told to stop, then shut down gracefully. */
static void *control_main(void *arg)
{
    struct thread *t = arg;
    weft_server *srv = weft_server_start_ex(t->l, serve_client, &t->site, &t->opts);
    if (!srv) {
        perror("httpd: weft_server_start_ex");
        weft_listener_close(t->l);
        weft_tqueue_close(t->stop);
        return NULL;
    }
    weft_co *sweeper = NULL, *hard_stop = NULL;
    weft_spawn_opts so = {.name = "fd-sweep"};
    if (t->site.cfg->fd_cache > 0 && !(sweeper = weft_spawn_ex(sweep_main, &t->site, &so)))
        perror("httpd: no sweep coroutine (cached files close when pushed out)");
    if (t->index == 0) {
        if (wait_signal(t->sigfd) != 0)
            perror("httpd: signalfd");
        weft_tqueue_close(t->stop); /* the other threads stop too */
        weft_spawn_opts ho = {.name = "hard-stop"};
        hard_stop = weft_spawn_ex(hard_stop_main, t, &ho);
    } else {
        void *item;
        weft_tqueue_recv(t->stop, &item, -1); /* EPIPE: closed, time to stop */
    }
    weft_server_shutdown(srv, t->grace_ms);
    stop_and_join(sweeper);
    stop_and_join(hard_stop);
    return NULL;
}

static void run_thread(struct thread *t)
{
    const struct httpd_config *cfg = t->site.cfg;
    t->site.files = fcache_new(cfg->rootfd, cfg->fd_cache);
    weft_spawn_opts so = {.name = "control"};
    weft_co *co = t->site.files ? weft_spawn_ex(control_main, t, &so) : NULL;
    if (!co) {
        perror("httpd: thread start");
        weft_listener_close(t->l);
        weft_tqueue_close(t->stop);
    } else {
        weft_join(co, NULL, -1); /* runs this thread's scheduler until the coroutine ends */
    }
    if (t->site.files)
        fcache_free(t->site.files);
}

static void *thread_main(void *arg)
{
    struct thread *t = arg;
    t->l = weft_listen_ex(t->addr, 0, WEFT_LISTEN_REUSEPORT);
    if (!t->l)
        fprintf(stderr, "httpd: thread %d: listen on %s: %s\n", t->index, t->addr,
                strerror(errno));
    weft_tqueue_send(t->ready, t, -1);
    if (t->l)
        run_thread(t);
    return NULL;
}

/* ---- Command line ---- */

struct args {
    char addr[300];
    const char *root;
    int threads;
    int64_t grace_ms;
    struct httpd_config cfg;
};

static size_t size_arg(const char *name, const char *s, size_t min)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > SIZE_MAX / 4) {
        fprintf(stderr, "httpd: bad value for %s: '%s'\n%s", name, s, usage_text);
        exit(2);
    }
    return (size_t)v;
}

/* A timeout flag: 0 means none (-1 to weft). */
static int64_t ms_arg(const char *name, const char *s)
{
    size_t v = size_arg(name, s, 0);
    return v == 0 ? -1 : (int64_t)v;
}

static void parse_args(int argc, char **argv, struct args *a)
{
    enum { OPT_THREADS = 256, OPT_IDLE, OPT_WRITE, OPT_LINE, OPT_HEADERS, OPT_BODY, OPT_CACHE,
           OPT_READ_MAX, OPT_HELP };
    static const struct option longs[] = {
        {"threads", required_argument, NULL, OPT_THREADS},
        {"idle-timeout", required_argument, NULL, OPT_IDLE},
        {"write-timeout", required_argument, NULL, OPT_WRITE},
        {"max-line", required_argument, NULL, OPT_LINE},
        {"max-headers", required_argument, NULL, OPT_HEADERS},
        {"max-body", required_argument, NULL, OPT_BODY},
        {"fd-cache", required_argument, NULL, OPT_CACHE},
        {"read-max", required_argument, NULL, OPT_READ_MAX},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *port = "8080", *host = "127.0.0.1";
    struct http_limits *lim = &a->cfg.limits;
    a->root = ".";
    a->threads = 1;
    a->grace_ms = -1;
    *lim = (struct http_limits){HTTP_MAX_LINE_DEFAULT, HTTP_MAX_HEADERS_DEFAULT,
                                HTTP_MAX_BODY_DEFAULT, HTTP_IDLE_TIMEOUT_DEFAULT,
                                HTTP_WRITE_TIMEOUT_DEFAULT};
    a->cfg.fd_cache = FCACHE_DEFAULT;
    a->cfg.read_max = HTTPD_READ_MAX_DEFAULT;
    a->cfg.quiet = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "p:h:qr:g:", longs, NULL)) != -1) {
        switch (opt) {
        case 'p': port = optarg; break;
        case 'h': host = optarg; break;
        case 'q': a->cfg.quiet = true; break;
        case 'r': a->root = optarg; break;
        case 'g': a->grace_ms = (int64_t)size_arg("-g", optarg, 0); break;
        case OPT_THREADS: a->threads = (int)size_arg("--threads", optarg, 1); break;
        case OPT_IDLE: lim->idle_timeout_ms = ms_arg("--idle-timeout", optarg); break;
        case OPT_WRITE: lim->write_timeout_ms = ms_arg("--write-timeout", optarg); break;
        case OPT_LINE: lim->max_line = size_arg("--max-line", optarg, 16); break;
        case OPT_HEADERS: lim->max_headers = size_arg("--max-headers", optarg, 16); break;
        case OPT_BODY: lim->max_body = size_arg("--max-body", optarg, 0); break;
        case OPT_CACHE: a->cfg.fd_cache = size_arg("--fd-cache", optarg, 0); break;
        case OPT_READ_MAX: a->cfg.read_max = size_arg("--read-max", optarg, 0); break;
        case OPT_HELP: fputs(usage_text, stdout); exit(0);
        default: fputs(usage_text, stderr); exit(2);
        }
    }
    if (optind < argc || a->threads > 1024 || a->cfg.fd_cache > 1000000) {
        fputs(usage_text, stderr);
        exit(2);
    }
    bool bare_v6 = host[0] != '[' && strchr(host, ':') != NULL;
    snprintf(a->addr, sizeof a->addr, bare_v6 ? "[%s]:%s" : "%s:%s", host, port);
}

int main(int argc, char **argv)
{
    struct args a;
    parse_args(argc, argv, &a);
    a.cfg.rootfd = open(a.root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (a.cfg.rootfd < 0) {
        fprintf(stderr, "httpd: %s: %s\n", a.root, strerror(errno));
        return 1;
    }

    /* Block the stop signals in every thread (the ones weft starts inherit it) and read them
     * from a signalfd instead: no handler runs inside a coroutine. */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    weft_dump_on_signal(SIGUSR1); /* kill -USR1: what each coroutine is doing, on stderr */
    int sigfd = signalfd(-1, &stop_set, SFD_NONBLOCK | SFD_CLOEXEC);

    weft_tqueue *stop = weft_tqueue_new(1), *ready = weft_tqueue_new((size_t)a.threads);
    struct thread *t = calloc((size_t)a.threads, sizeof *t);
    if (sigfd < 0 || !stop || !ready || !t) {
        perror("httpd");
        return 1;
    }
    weft_listener *l = weft_listen_ex(a.addr, 0, a.threads > 1 ? WEFT_LISTEN_REUSEPORT : 0);
    if (!l) {
        fprintf(stderr, "httpd: listen on %s: %s\n", a.addr, strerror(errno));
        return 1;
    }
    const struct http_limits *lim = &a.cfg.limits;
    weft_server_opts opts = {
        .idle_timeout_ms = lim->idle_timeout_ms,   /* (each request sets its own) */
        .write_timeout_ms = lim->write_timeout_ms,
        .maxline = lim->max_line,
    };
    for (int i = 0; i < a.threads; i++) {
        t[i] = (struct thread){.index = i, .site = {.cfg = &a.cfg}, .sigfd = sigfd,
                               .stop = stop, .ready = ready, .grace_ms = a.grace_ms,
                               .opts = opts};
        snprintf(t[i].addr, sizeof t[i].addr, "%s", weft_listener_addr(l));
    }
    t[0].l = l;
    int started = 1;
    for (; started < a.threads; started++)
        if (pthread_create(&t[started].tid, NULL, thread_main, &t[started]) != 0)
            break;
    /* Say we listen once every thread does: a client connecting right after is then spread
     * over all of them, not given to the first thread alone. */
    for (int i = 1; i < started; i++) {
        void *item;
        weft_tqueue_recv(ready, &item, -1);
    }
    printf("listening on %s\n", weft_listener_addr(l));
    fflush(stdout);
    run_thread(&t[0]);
    for (int i = 1; i < started; i++)
        pthread_join(t[i].tid, NULL);

    weft_fd_close(sigfd);
    weft_tqueue_free(stop);
    weft_tqueue_free(ready);
    close(a.cfg.rootfd);
    free(t);
    return 0;
}
