/* serve: the accept loop that gives each client its own coroutine, as the seed does with
 * `coroutine clients::$host:$port`, plus the limits and the graceful shutdown around it.
 * Handlers run in a group the server owns, so stopping them all is one group call; a list of
 * their channels lets a shutdown stop their input first. The server is freed only once its
 * group is empty: by the shutdown, or by a reaper coroutine after a plain close. */
#include "internal.h"
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define BACKOFF_FIRST_MS 10
#define BACKOFF_MAX_MS 1000

typedef struct conn {
    weft_server *srv;
    weft_chan *c;
    weft_co *co;
    struct conn *prev, *next;
    void *tls_room; /* (TLS) where its TLS transport is made, else NULL */
} conn;

struct weft_server {
    weft_listener *l;
    weft_handler handler;
    void *arg;
    weft_server_opts o;
    weft_co *acceptor;
    weft_co *slot_waiter;    /* the acceptor, parked at max_conns */
    weft_group *handlers;
    weft_co *signal_watcher;
    conn *conns;
    bool shutting_down;
    int64_t grace_ms;        /* of the shutdown under way */
    int64_t signal_grace_ms; /* for a shutdown started by SIGINT/SIGTERM */
    int signal_generation;   /* of signals when the watcher started */
    weft_server_stats st;
    /* Clients the kernel had already connected when the server stopped accepting (its
     * listen backlog), accepted then, waiting for a handler: [pending_at, npending). */
    accepted_conn *pending;
    size_t npending, pending_at;
};

static void conn_unlink(weft_server *srv, conn *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        srv->conns = k->next;
    if (k->next)
        k->next->prev = k->prev;
}

static void *conn_main(void *p)
{
    conn *k = p;
    weft_server *srv = k->srv;
    /* TLS: the handshake runs here, in the client's own coroutine, so a slow or hostile
     * client holds up nobody else; a failure costs this connection only. */
    if (!srv->o.tls ||
        tls_accept_in(k->c, srv->o.tls, deadline_after(srv->o.handshake_timeout_ms),
                      k->tls_room) == 0)
        srv->handler(k->c, srv->arg);
    else
        srv->st.tls_failures++;
    if (!chan_closed(k->c)) /* (a handler that closed it itself: not twice) */
        weft_close(k->c);
    conn_unlink(srv, k); /* (k is on this coroutine's stack: nothing to free) */
    srv->st.active--;
    if (srv->slot_waiter)
        sched_wake(srv->slot_waiter, 0);
    chan_wait_gone(k->c); /* (its memory goes with this coroutine's stack) */
    net_chan_settle(k->c);
    return NULL;
}

/* A handler for the client a just accepted (its input stopped first, if stop_input). The
 * connection's record, its channel, socket transport and (TLS) TLS transport live at the top
 * of the handler's stack, in the page its first frames touch anyway, not on the heap; and
 * since they stay there until the handler's coroutine ends, the server can tell whether the
 * channel was closed already (by the handler, say) before it closes it. */
static void start_conn(weft_server *srv, const accepted_conn *a, bool stop_input)
{
    size_t chan_room = net_chan_size(a);
    size_t tls_room = srv->o.tls ? (tls_transport_size() + 63) / 64 * 64 : 0;
    weft_spawn_opts so = {.name = a->peer, .stack_size = srv->o.stack_size,
                          .guard_size = srv->o.guard_size};
    void *room;
    size_t conn_room = (sizeof(conn) + 63) / 64 * 64; /* (the channel after it, aligned) */
    weft_co *co = group_spawn_room(srv->handlers, conn_main, &so,
                                   conn_room + chan_room + tls_room, &room);
    if (!co) {
        /* No memory for this client: it alone pays, with a close; the server goes on. */
        srv->st.spawn_errors++;
        sys_close(a->fd);
        return;
    }
    weft_chan *c = net_chan_of(a, (char *)room + conn_room); /* (nothing to allocate) */
    if (stop_input)
        chan_stop_input(c);
    weft_chan_set_timeouts(c, srv->o.idle_timeout_ms, srv->o.write_timeout_ms);
    weft_chan_set_maxline(c, srv->o.maxline);
    weft_chan_set_wbuf(c, srv->o.wbuf);
    conn *k = room;
    k->srv = srv;
    k->c = c;
    k->co = co;
    k->tls_room = tls_room ? (char *)room + conn_room + chan_room : NULL;
    k->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = k;
    srv->conns = k;
    srv->st.accepted++;
    srv->st.active++;
}

/* Park the acceptor while max_conns handlers run: the clients wait in the backlog. */
static int wait_for_slot(weft_server *srv)
{
    while (srv->st.active >= srv->o.max_conns) {
        srv->st.limit_waits++;
        srv->slot_waiter = weft_self();
        int rc = sched_park_on(WAIT_SERVER, srv, -1, true);
        srv->slot_waiter = NULL;
        if (rc != 0)
            return -1;
    }
    return 0;
}

static void close_at_thread_exit(weft_server *srv);

/* Out of descriptors or memory: the pending clients stay in the kernel's backlog while we
 * wait for handlers to end and free some; the pause grows so a long shortage costs a few
 * wake-ups a second, not a busy loop. */
static void *accept_loop(void *p)
{
    weft_server *srv = p;
    int64_t backoff = 0;
    while (wait_for_slot(srv) == 0) {
        accepted_conn a;
        if (net_accept_conn(srv->l, -1, &a) == 0) {
            backoff = 0;
            start_conn(srv, &a, false);
            continue;
        }
        if (errno == ECANCELED || errno == EBADF)
            break;
        srv->st.accept_errors++;
        backoff = backoff ? backoff * 2 : BACKOFF_FIRST_MS;
        if (backoff > BACKOFF_MAX_MS)
            backoff = BACKOFF_MAX_MS;
        if (weft_sleep(backoff) != 0)
            break;
    }
    /* Cancelled with nobody stopping the server: its thread is ending. */
    if (!srv->shutting_down && weft_cancelled() && sched_exiting())
        close_at_thread_exit(srv);
    return NULL;
}

/* The soft descriptor limit is often 1024 while the hard one is far higher: a server wants
 * the latter. Once per process; failure is harmless (we keep what we had). */
static void raise_fd_limit_once(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void raise_fd_limit(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, raise_fd_limit_once);
}

weft_server *weft_server_start(weft_listener *l, weft_handler handler, void *arg)
{
    return weft_server_start_ex(l, handler, arg, NULL);
}

weft_server *weft_server_start_ex(weft_listener *l, weft_handler handler, void *arg,
                                  const weft_server_opts *opts)
{
    if (!l || !handler || (opts && !stack_sizes_valid(opts->stack_size, opts->guard_size))) {
        errno = EINVAL;
        return NULL;
    }
    weft_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return NULL;
    if (opts)
        srv->o = *opts;
    if (!srv->o.max_conns)
        srv->o.max_conns = WEFT_MAX_CONNS_DEFAULT;
    if (!srv->o.idle_timeout_ms)
        srv->o.idle_timeout_ms = WEFT_IDLE_TIMEOUT_DEFAULT;
    if (!srv->o.write_timeout_ms)
        srv->o.write_timeout_ms = WEFT_WRITE_TIMEOUT_DEFAULT;
    if (!srv->o.maxline)
        srv->o.maxline = WEFT_MAXLINE_DEFAULT;
    if (!srv->o.wbuf)
        srv->o.wbuf = WEFT_WBUF_DEFAULT;
    if (!srv->o.handshake_timeout_ms)
        srv->o.handshake_timeout_ms = WEFT_HANDSHAKE_TIMEOUT_DEFAULT;
    tls_ref(srv->o.tls); /* (released with the server) */
    srv->l = l;
    srv->handler = handler;
    srv->arg = arg;
    ignore_sigpipe(); /* handlers may write to their sockets' fds directly */
    if (!srv->o.keep_fd_limit)
        raise_fd_limit();
    srv->handlers = weft_group_new();
    weft_spawn_opts so = {.name = weft_listener_addr(l)};
    if (srv->handlers)
        srv->acceptor = weft_spawn_ex(accept_loop, srv, &so);
    if (!srv->acceptor) {
        if (srv->handlers)
            weft_group_close(srv->handlers);
        weft_tls_free(srv->o.tls);
        free(srv);
        errno = ENOMEM;
        return NULL;
    }
    return srv;
}

void weft_server_get_stats(const weft_server *srv, weft_server_stats *st)
{
    *st = srv->st;
}

/* ---- Stopping ---- */

static void stop_signal_watcher(weft_server *srv);

/* Take every connection waiting in the listen backlog, without waiting: closing the listener
 * would reset them, losing what their clients already sent. No switch happens between the
 * last accept and the close, so only a handshake that completes in between is lost. */
static void drain_backlog(weft_server *srv)
{
    size_t cap = 0;
    accepted_conn a;
    while (net_accept_now(srv->l, &a) == 0) {
        if (srv->npending == cap) {
            cap = cap ? cap * 2 : 16;
            accepted_conn *p = realloc(srv->pending, cap * sizeof *p);
            if (!p) {
                sys_close(a.fd); /* no memory: this one (and those after it) pay */
                break;
            }
            srv->pending = p;
        }
        srv->pending[srv->npending++] = a;
    }
}

/* End the accept loop, take what waits in the backlog, and close the listener. */
static int stop_accepting(weft_server *srv)
{
    stop_signal_watcher(srv);
    if (!srv->acceptor)
        return 0;
    /* The acceptor touches srv until it ends, so wait for it even if we are cancelled. */
    weft_cancel(srv->acceptor);
    while (weft_join(srv->acceptor, NULL, -1) != 0 && weft_self())
        sched_park_nocancel(weft_now() + 1);
    int rc = 0;
    srv->acceptor = NULL;
    drain_backlog(srv);
    if (weft_listener_close(srv->l) != 0)
        rc = -1;
    return rc;
}

/* Give backlog clients a handler: while there are free slots, or all of them (force), with
 * their input stopped (stop_input) so that they answer what was sent and end. */
static void start_pending(weft_server *srv, bool force, bool stop_input)
{
    while (srv->pending_at < srv->npending && (force || srv->st.active < srv->o.max_conns)) {
        start_conn(srv, &srv->pending[srv->pending_at++], stop_input);
    }
}

/* Start backlog clients as handlers end, until none is left (0) or the deadline (-1). */
static int serve_pending(weft_server *srv, int64_t deadline)
{
    for (;;) {
        start_pending(srv, false, false);
        if (srv->pending_at == srv->npending)
            return 0;
        srv->slot_waiter = weft_self();
        int rc = sched_park_on(WAIT_SERVER, srv, deadline, true);
        srv->slot_waiter = NULL;
        if (rc != 0)
            return -1;
    }
}

/* Close the (empty, or cancelled and drained) group and free the server. */
static void server_free(weft_server *srv)
{
    weft_group_close(srv->handlers);
    while (srv->pending_at < srv->npending) /* (only if starting them failed) */
        sys_close(srv->pending[srv->pending_at++].fd);
    free(srv->pending);
    weft_tls_free(srv->o.tls);
    free(srv);
}

/* After a plain close: serve the backlog's clients as slots free, wait for the handlers to
 * end on their own, then free the server. Nobody can cancel us: no one holds our handle. */
static void *reap_when_done(void *p)
{
    weft_server *srv = p;
    serve_pending(srv, -1);
    weft_group_wait(srv->handlers, -1);
    server_free(srv);
    return NULL;
}

int weft_server_close(weft_server *srv)
{
    if (srv->shutting_down) {
        errno = EALREADY;
        return -1;
    }
    srv->shutting_down = true; /* from now on, one way out only */
    int rc = stop_accepting(srv);
    if (weft_group_count(srv->handlers) == 0 && srv->npending == 0) {
        server_free(srv);
        return rc;
    }
    weft_spawn_opts so = {.name = "weft-reaper", .detached = 1};
    if (!weft_spawn_ex(reap_when_done, srv, &so))
        return -1; /* no memory: the server stays allocated, harmless */
    return rc;
}

/* The server's thread is ending (every coroutine of it is cancelled) and nobody stopped the
 * server: the acceptor, ending, closes the listener so the port stops taking clients that
 * nobody would serve (those still in its backlog are refused), and the server is freed once
 * its handlers, cancelled too, have closed their channels and ended. */
static void close_at_thread_exit(weft_server *srv)
{
    srv->shutting_down = true;
    srv->acceptor = NULL;       /* (it is us, ending: nobody joins it) */
    srv->signal_watcher = NULL; /* (cancelled too: it ends without touching srv again) */
    weft_listener_close(srv->l);
    if (weft_group_count(srv->handlers) == 0) {
        server_free(srv);
        return;
    }
    /* Spawned after the exit's cancels: it waits for the handlers; if they outlast the exit's
     * grace it is dropped with them, and srv with it. */
    weft_spawn_opts so = {.name = "weft-reaper", .detached = 1};
    weft_spawn_ex(reap_when_done, srv, &so); /* (no memory: srv stays, harmlessly) */
}

static int64_t after(int64_t ms)
{
    return ms < 0 ? -1 : weft_now() + ms;
}

/* Backlog clients are served like the others: as slots free within the grace period, and
 * those still waiting at its end with their input stopped, so every line they sent before
 * the shutdown is answered too. */
static void *shutdown_main(void *p)
{
    weft_server *srv = p;
    int rc = stop_accepting(srv);
    int64_t grace = after(srv->grace_ms);
    if (serve_pending(srv, grace) != 0 || weft_group_wait(srv->handlers, grace) != 0) {
        for (conn *k = srv->conns; k; k = k->next)
            chan_stop_input(k->c);
        start_pending(srv, true, true);
        weft_group_wait(srv->handlers, after(srv->o.write_timeout_ms));
    }
    server_free(srv); /* cancels what is left and waits for it */
    return (void *)(intptr_t)rc;
}

int weft_server_shutdown(weft_server *srv, int64_t grace_ms)
{
    if (srv->shutting_down) {
        errno = EALREADY;
        return -1;
    }
    srv->shutting_down = true;
    srv->grace_ms = grace_ms < 0 ? WEFT_GRACE_DEFAULT : grace_ms;
    /* The work runs in a coroutine of its own, so it can wait the same way whether the caller
     * is a coroutine, the main program, or one of the handlers it waits for. */
    weft_spawn_opts so = {.name = "weft-shutdown"};
    weft_co *co = weft_spawn_ex(shutdown_main, srv, &so);
    if (!co) {
        srv->shutting_down = false;
        return -1;
    }
    weft_co *self = weft_self();
    for (conn *k = srv->conns; k && self; k = k->next) {
        if (k->co == self) { /* a handler shutting down its own server: don't wait for us */
            weft_detach(co);
            return 0;
        }
    }
    void *rc;
    if (weft_join(co, &rc, -1) != 0)
        return -1;
    return rc ? -1 : 0;
}

/* ---- Signals ---- */

/* A signal handler may only write to a pipe and touch lock-free atomics; coroutines parked on
 * the pipe do the shutdown in ordinary context. Each signal bumps a generation and writes a
 * byte; every server's watcher (one per thread at most) waits for the pipe to become readable
 * again without emptying it (edge-triggered: each write is a new edge for every thread's
 * event loop) and acts when the generation moved past the one it started with. */
static int sig_pipe[2] = {-1, -1};
static _Thread_local weft_co *tls_watcher; /* this thread's watcher: one per thread */
static atomic_int sig_generation;
static atomic_int sig_shutdowns; /* signal-started shutdowns under way */
static pthread_mutex_t sig_setup = PTHREAD_MUTEX_INITIALIZER;

static void on_stop_signal(int sig)
{
    if (atomic_load(&sig_shutdowns) > 0) { /* asked again while stopping: stop now */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    atomic_fetch_add(&sig_generation, 1);
    int saved = errno;
    ssize_t w = sys_write(sig_pipe[1], "", 1);
    (void)w; /* a full pipe is readable already */
    errno = saved;
}

/* The watcher is leaving: it no longer holds this thread's place. */
static void *watcher_done(void)
{
    if (tls_watcher == weft_self())
        tls_watcher = NULL;
    return NULL;
}

static void *signal_watch(void *p)
{
    weft_server *srv = p;
    int start = srv->signal_generation;
    while (atomic_load(&sig_generation) == start) {
        if (weft_wait_fd(sig_pipe[0], WEFT_READABLE, -1) != 0) {
            /* EBUSY: an earlier watcher of this thread was cancelled but has not run yet
             * to leave the pipe's wait slot; let it. */
            if (errno == EBUSY && weft_yield() == 0)
                continue;
            /* Cancelled: the server stopped some other way and may be gone already. Any
             * other failure leaves it running: it must not keep a handle to us. */
            if (errno != ECANCELED)
                srv->signal_watcher = NULL;
            return watcher_done();
        }
        /* A poll armed anew (the first wait, or io_uring re-arming an ended multishot poll)
         * reports the never-drained pipe of an older signal at once: pace those wake-ups
         * instead of spinning. */
        if (atomic_load(&sig_generation) == start && weft_sleep(100) != 0)
            return watcher_done();
    }
    srv->signal_watcher = NULL;
    watcher_done();
    atomic_fetch_add(&sig_shutdowns, 1);
    weft_server_shutdown(srv, srv->signal_grace_ms);
    atomic_fetch_sub(&sig_shutdowns, 1);
    return NULL;
}

static void stop_signal_watcher(weft_server *srv)
{
    weft_co *w = srv->signal_watcher;
    if (w && w != weft_self()) {
        srv->signal_watcher = NULL;
        if (tls_watcher == w)
            tls_watcher = NULL; /* another server of this thread may watch from now on */
        weft_cancel(w); /* detached: it ends on its own */
    }
}

static struct sigaction sig_old_int, sig_old_term; /* what SIGINT/SIGTERM did before us */
static void fork_prepare(void);
static void fork_parent(void);
static void signals_fork_child(void);

static void register_fork_handlers(void)
{
    pthread_atfork(fork_prepare, fork_parent, signals_fork_child);
}

/* fork(): the child has no watcher (the parent's are orphans there), and the pipe is shared
 * with the parent, so a signal to the child would only wake the parent's watchers: the child
 * gets the signals' old actions back and a pipe of its own if it stops on signals again. */
static void signals_fork_child(void)
{
    pthread_mutex_init(&sig_setup, NULL);
    tls_watcher = NULL;
    atomic_store(&sig_shutdowns, 0);
    if (sig_pipe[0] >= 0) {
        sigaction(SIGINT, &sig_old_int, NULL);
        sigaction(SIGTERM, &sig_old_term, NULL);
        sys_close(sig_pipe[0]);
        sys_close(sig_pipe[1]);
        sig_pipe[0] = sig_pipe[1] = -1;
    }
}

static void fork_prepare(void)
{
    pthread_mutex_lock(&sig_setup);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&sig_setup);
}

/* Install the handlers and the pipe, once per process (again in a forked child). */
static int signals_setup(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handlers);
    pthread_mutex_lock(&sig_setup);
    int rc = 0;
    if (sig_pipe[0] < 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_stop_signal;
        sigemptyset(&sa.sa_mask);
        if (sys_pipe2(sig_pipe, O_NONBLOCK | O_CLOEXEC) != 0 ||
            sigaction(SIGINT, &sa, &sig_old_int) != 0 || sigaction(SIGTERM, &sa, &sig_old_term) != 0)
            rc = -1;
        else {
            sched_note_handled_signal(SIGINT);
            sched_note_handled_signal(SIGTERM);
        }
    }
    pthread_mutex_unlock(&sig_setup);
    return rc;
}

/* Watch for signals newer than generation gen (taken when the caller began serving, so a
 * signal that came while this thread was still starting is not missed). */
static int stop_on_signals_since(weft_server *srv, int64_t grace_ms, int gen)
{
    if (srv->signal_watcher || tls_watcher || srv->shutting_down) {
        errno = EBUSY; /* (this server already, or another one of this thread) */
        return -1;
    }
    if (signals_setup() != 0)
        return -1;
    srv->signal_grace_ms = grace_ms;
    srv->signal_generation = gen;
    weft_spawn_opts so = {.name = "weft-signals", .detached = 1};
    srv->signal_watcher = weft_spawn_ex(signal_watch, srv, &so);
    tls_watcher = srv->signal_watcher;
    return srv->signal_watcher ? 0 : -1;
}

int weft_server_stop_on_signals(weft_server *srv, int64_t grace_ms)
{
    return stop_on_signals_since(srv, grace_ms, atomic_load(&sig_generation));
}

int weft_serve(const char *addr, weft_handler handler, void *arg)
{
    weft_listener *l = weft_listen(addr, 0);
    if (!l)
        return -1;
    weft_server *srv = weft_server_start(l, handler, arg);
    if (!srv) {
        weft_listener_close(l);
        return -1;
    }
    if (weft_server_stop_on_signals(srv, -1) != 0) {
        weft_server_close(srv);
        return -1;
    }
    return weft_run();
}

/* ---- Several threads ---- */

typedef struct serve_thread {
    pthread_t tid;
    char addr[160];
    weft_handler handler;
    void *arg;
    int gen;     /* signal generation when serving began */
    int rc;
} serve_thread;

/* One thread's share: its own listener on the shared port, server, scheduler and loop. */
static int serve_here(weft_listener *l, weft_handler handler, void *arg, int gen)
{
    weft_server *srv = weft_server_start(l, handler, arg);
    if (!srv) {
        weft_listener_close(l);
        return -1;
    }
    if (stop_on_signals_since(srv, -1, gen) != 0) {
        weft_server_close(srv);
        return -1;
    }
    return weft_run();
}

static void *serve_thread_main(void *p)
{
    serve_thread *t = p;
    weft_listener *l = net_listen(t->addr, 0, true);
    t->rc = l ? serve_here(l, t->handler, t->arg, t->gen) : -1;
    return NULL;
}

int weft_serve_threads(const char *addr, weft_handler handler, void *arg, int nthreads)
{
    if (nthreads <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = cpus > 0 ? (int)cpus : 1;
    }
    if (strncmp(addr, "unix:", 5) == 0)
        nthreads = 1; /* SO_REUSEPORT is for TCP: a Unix socket is served by one thread */
    if (signals_setup() != 0) /* before any thread listens: a signal must never kill us */
        return -1;
    int gen = atomic_load(&sig_generation);
    weft_listener *l = net_listen(addr, 0, true);
    if (!l)
        return -1;
    serve_thread *threads = calloc((size_t)nthreads, sizeof *threads);
    if (!threads) {
        weft_listener_close(l);
        return -1;
    }
    /* The others bind the port this one got (port 0 asks for any). */
    int started = 0;
    for (int i = 1; i < nthreads; i++) {
        serve_thread *t = &threads[i];
        snprintf(t->addr, sizeof t->addr, "%s", weft_listener_addr(l));
        t->handler = handler;
        t->arg = arg;
        t->gen = gen;
        if (pthread_create(&t->tid, NULL, serve_thread_main, t) != 0)
            break;
        started++;
    }
    int rc = serve_here(l, handler, arg, gen);
    for (int i = 1; i <= started; i++) {
        pthread_join(threads[i].tid, NULL);
        if (threads[i].rc != 0)
            rc = -1;
    }
    free(threads);
    return rc;
}
