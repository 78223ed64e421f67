/* kv: a Redis-protocol (RESP2) key-value server, written the weft way. Each client gets a
 * coroutine that reads a request, runs it, writes the reply, and loops -- straight-line code
 * on a channel, no callbacks, no state machine. Another coroutine sweeps expired keys ten
 * times a second. With --threads N, N threads each run a scheduler and a server on their
 * own SO_REUSEPORT listener, sharing one store under a mutex.
 *
 * SIGINT/SIGTERM: stop accepting, let clients finish (-g GRACE_MS), exit 0; a second one
 * exits at once. Signals are taken from a signalfd, read by a coroutine like any other fd.
 * SIGUSR1: every thread writes what each of its coroutines is doing to stderr (weft_dump).
 */
#include "commands.h"

#include <weft.h>

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define SWEEP_HZ_DEFAULT 10 /* sweeps a second, as Redis's hz */
#define SWEEP_BATCH 20      /* keys looked at per batch, as Redis's active expire cycle */
#define SWEEP_SHARE 4       /* a sweep takes at most a quarter of its period (25 ms at 10 Hz),
                               yielding to the clients between batches */

static const char usage_text[] =
    "usage: kv [-p PORT] [-h HOST] [-q] [-g GRACE_MS] [--threads N] [--hz N]\n"
    "          [--max-bulk BYTES] [--max-args N] [--max-inline BYTES] [--max-request BYTES]\n"
    "\n"
    "A Redis-protocol (RESP2) key-value server: strings with times to live, in memory.\n"
    "\n"
    "  -p PORT              port to listen on (default 6379; 0 picks a free one)\n"
    "  -h HOST              address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)\n"
    "  -q                   quiet: no line per connection on stderr\n"
    "  -g GRACE_MS          on SIGINT/SIGTERM, how long clients get to finish (default 5000)\n"
    "  --threads N          serve from N threads sharing the store (default 1)\n"
    "  --hz N               sweeps for expired keys per second (default 10, as Redis's hz;\n"
    "                       0: keys expire only when looked up)\n"
    "  --max-bulk BYTES     longest argument and value (default 536870912, Redis's\n"
    "                       proto-max-bulk-len)\n"
    "  --max-args N         most arguments in one request (default 1048576)\n"
    "  --max-inline BYTES   longest inline request or *N/$LEN line (default 65536)\n"
    "  --max-request BYTES  most bytes of arguments in one request (default 1073741824,\n"
    "                       Redis's client-query-buffer-limit)\n"
    "\n"
    "Commands: PING ECHO GET SET GETSET DEL EXISTS INCR INCRBY DECR DECRBY APPEND STRLEN\n"
    "MGET MSET EXPIRE PEXPIRE TTL PTTL PERSIST KEYS DBSIZE FLUSHALL SELECT QUIT HELLO\n"
    "CLIENT (SETNAME GETNAME ID) CONFIG GET COMMAND (COUNT LIST INFO DOCS).\n"
    "Prints \"listening on HOST:PORT\" on stdout once it accepts connections.\n"
    "kill -USR1 PID writes what each coroutine is doing to stderr.\n";

static bool quiet;

/* ---- One client ---- */

static void serve_client(weft_chan *c, void *arg)
{
    struct kv_server *srv = arg;
    struct kv_request rq;
    struct kv_reply rp;
    struct kv_client cl;
    kv_request_init(&rq);
    kv_reply_init(&rp);
    kv_client_init(&cl, srv);
    if (!quiet)
        fprintf(stderr, "connect on fd %d (from %s)\n", weft_chan_fd(c), weft_chan_peer(c));
    for (;;) {
        int rc = kv_request_read(c, &rq, &srv->limits);
        if (rc <= 0) {
            if (rq.error) { /* a protocol error: say what, then close, as Redis does */
                kv_reply_error(&rp, rq.error);
                kv_reply_send(c, &rp);
            }
            break;
        }
        if (rq.argc == 0)
            continue; /* an empty line or "*0": no reply */
        enum kv_after after = kv_command_run(&cl, &rq, &rp);
        if (after == KV_DROP || kv_reply_send(c, &rp) != 0 || after == KV_CLOSE)
            break;
        if (rq.bytes != rq.small_bytes)
            kv_request_release(&rq); /* a large request's memory goes back at once */
    }
    if (!quiet)
        fprintf(stderr, "EOF on fd %d (from %s)\n", weft_chan_fd(c), weft_chan_peer(c));
    kv_request_release(&rq);
    kv_reply_release(&rp);
    kv_client_free(&cl);
}

/* ---- Active expiry ---- */

static void *sweep_main(void *arg)
{
    struct kv_server *srv = arg;
    int64_t period = 1000 / srv->hz, budget = period / SWEEP_SHARE;
    while (weft_sleep(period) == 0) {
        int64_t start = weft_now();
        for (;;) {
            size_t looked;
            kv_store_lock(srv->store);
            size_t gone = kv_store_sweep(srv->store, kv_unix_ms(), SWEEP_BATCH, &looked);
            kv_store_unlock(srv->store);
            /* Go on while more than a tenth of what we saw had expired, within the budget. */
            if (gone * 10 <= looked || weft_now() - start >= budget)
                break;
            if (weft_yield() != 0)
                return NULL;
        }
    }
    return NULL; /* cancelled: the server is stopping */
}

/* ---- Threads, signals, shutdown ---- */

struct thread {
    pthread_t tid;
    int index;
    struct kv_server *srv;
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
        fprintf(stderr, "kv: second signal: exiting now\n");
        _exit(1);
    }
    return NULL;
}

/* Each thread's first coroutine: serve until told to stop, then shut down gracefully. */
static void *control_main(void *arg)
{
    struct thread *t = arg;
    weft_server *srv = weft_server_start_ex(t->l, serve_client, t->srv, &t->opts);
    if (!srv) {
        perror("kv: weft_server_start_ex");
        weft_listener_close(t->l);
        weft_tqueue_close(t->stop);
        return NULL;
    }
    weft_co *sweeper = NULL, *hard_stop = NULL;
    if (t->index == 0) {
        weft_spawn_opts so = {.name = "sweep"};
        if (t->srv->hz > 0 && !(sweeper = weft_spawn_ex(sweep_main, t->srv, &so)))
            perror("kv: no sweep coroutine (keys expire on access only)");
        if (wait_signal(t->sigfd) != 0)
            perror("kv: signalfd");
        weft_tqueue_close(t->stop); /* the other threads stop too */
        weft_spawn_opts ho = {.name = "hard-stop"};
        hard_stop = weft_spawn_ex(hard_stop_main, t, &ho);
    } else {
        void *item;
        weft_tqueue_recv(t->stop, &item, -1); /* EPIPE: closed, time to stop */
    }
    weft_server_shutdown(srv, t->grace_ms);
    if (sweeper) {
        weft_cancel(sweeper);
        weft_join(sweeper, NULL, -1);
    }
    if (hard_stop) {
        weft_cancel(hard_stop);
        weft_join(hard_stop, NULL, -1);
    }
    return NULL;
}

static void run_thread(struct thread *t)
{
    weft_spawn_opts so = {.name = "control"};
    weft_co *co = weft_spawn_ex(control_main, t, &so);
    if (!co) {
        perror("kv: weft_spawn");
        weft_listener_close(t->l);
        weft_tqueue_close(t->stop);
        return;
    }
    weft_join(co, NULL, -1); /* runs this thread's scheduler until the coroutine ends */
}

static void *thread_main(void *arg)
{
    struct thread *t = arg;
    t->l = weft_listen_ex(t->addr, 0, WEFT_LISTEN_REUSEPORT);
    if (!t->l)
        fprintf(stderr, "kv: thread %d: listen on %s: %s\n", t->index, t->addr, strerror(errno));
    weft_tqueue_send(t->ready, t, -1);
    if (t->l)
        run_thread(t);
    return NULL;
}

/* ---- Command line ---- */

struct args {
    char addr[300];
    const char *host;
    int threads, hz;
    int64_t grace_ms;
    struct kv_limits limits;
};

static size_t size_arg(const char *name, const char *s, size_t min)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > SIZE_MAX / 4) {
        fprintf(stderr, "kv: bad value for %s: '%s'\n%s", name, s, usage_text);
        exit(2);
    }
    return (size_t)v;
}

static void parse_args(int argc, char **argv, struct args *a)
{
    enum { OPT_THREADS = 256, OPT_HZ, OPT_BULK, OPT_ARGS, OPT_INLINE, OPT_REQUEST, OPT_HELP };
    static const struct option longs[] = {
        {"threads", required_argument, NULL, OPT_THREADS},
        {"hz", required_argument, NULL, OPT_HZ},
        {"max-bulk", required_argument, NULL, OPT_BULK},
        {"max-args", required_argument, NULL, OPT_ARGS},
        {"max-inline", required_argument, NULL, OPT_INLINE},
        {"max-request", required_argument, NULL, OPT_REQUEST},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *port = "6379";
    a->host = "127.0.0.1";
    a->threads = 1;
    a->hz = SWEEP_HZ_DEFAULT;
    a->grace_ms = -1;
    a->limits = (struct kv_limits){KV_MAX_BULK_DEFAULT, KV_MAX_ARGS_DEFAULT,
                                   KV_MAX_INLINE_DEFAULT, KV_MAX_REQUEST_DEFAULT};
    int opt;
    while ((opt = getopt_long(argc, argv, "p:h:qg:", longs, NULL)) != -1) {
        switch (opt) {
        case 'p': port = optarg; break;
        case 'h': a->host = optarg; break;
        case 'q': quiet = true; break;
        case 'g': a->grace_ms = (int64_t)size_arg("-g", optarg, 0); break;
        case OPT_THREADS: a->threads = (int)size_arg("--threads", optarg, 1); break;
        case OPT_HZ: a->hz = (int)size_arg("--hz", optarg, 0); break;
        case OPT_BULK: a->limits.max_bulk = size_arg("--max-bulk", optarg, 1); break;
        case OPT_ARGS: a->limits.max_args = size_arg("--max-args", optarg, 1); break;
        case OPT_INLINE: a->limits.max_inline = size_arg("--max-inline", optarg, 16); break;
        case OPT_REQUEST: a->limits.max_request = size_arg("--max-request", optarg, 1); break;
        case OPT_HELP: fputs(usage_text, stdout); exit(0);
        default: fputs(usage_text, stderr); exit(2);
        }
    }
    if (optind < argc || a->threads > 1024 || a->hz > 500) {
        fputs(usage_text, stderr);
        exit(2);
    }
    const char *h = a->host;
    bool bare_v6 = h[0] != '[' && strchr(h, ':') != NULL;
    snprintf(a->addr, sizeof a->addr, bare_v6 ? "[%s]:%s" : "%s:%s", h, port);
}

int main(int argc, char **argv)
{
    struct args a;
    parse_args(argc, argv, &a);

    /* Block the stop signals in every thread (the ones weft starts inherit it) and read them
     * from a signalfd instead: no handler runs inside a coroutine. */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    int sigfd = signalfd(-1, &stop_set, SFD_NONBLOCK | SFD_CLOEXEC);
    weft_dump_on_signal(SIGUSR1); /* (its handler only wakes the loops, which dump) */

    struct kv_server srv = {.limits = a.limits, .bind = a.host, .threads = a.threads,
                            .hz = a.hz, .max_conns = WEFT_MAX_CONNS_DEFAULT};
    atomic_init(&srv.next_id, 0);
    srv.store = kv_store_new(a.threads > 1);
    weft_tqueue *stop = weft_tqueue_new(1), *ready = weft_tqueue_new((size_t)a.threads);
    struct thread *t = calloc((size_t)a.threads, sizeof *t);
    if (sigfd < 0 || !srv.store || !stop || !ready || !t) {
        perror("kv");
        return 1;
    }
    weft_listener *l = weft_listen_ex(a.addr, 0, a.threads > 1 ? WEFT_LISTEN_REUSEPORT : 0);
    if (!l) {
        fprintf(stderr, "kv: listen on %s: %s\n", a.addr, strerror(errno));
        return 1;
    }
    srv.port = weft_listener_port(l);

    weft_server_opts opts = {
        .idle_timeout_ms = -1,           /* Redis's default: clients may idle forever */
        .maxline = a.limits.max_inline,  /* bounds every line weft_gets reads */
    };
    for (int i = 0; i < a.threads; i++) {
        t[i] = (struct thread){.index = i, .srv = &srv, .sigfd = sigfd, .stop = stop,
                               .ready = ready, .grace_ms = a.grace_ms, .opts = opts};
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
    kv_store_free(srv.store);
    free(t);
    return 0;
}
