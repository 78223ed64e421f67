/* Seeing inside: weft_dump names what each coroutine waits on (every kind of wait, on epoll
 * and io_uring), for how long and how much of its stack is in memory, from a coroutine and
 * from outside one; weft_dump_on_signal dumps at the next loop turn, waking a sleeping loop,
 * in every thread, and in a thread blocked outside coroutines; weft_sched_get_stats counts
 * what the loop does. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <weft.h>

/* Set the backend, or say why the test is skipped (false). */
static bool use_backend(const char *backend)
{
    if (strcmp(backend, "uring") == 0 && under_valgrind()) {
        printf("  skipped: valgrind does not follow io_uring's shared rings\n");
        return false;
    }
    CHECK(weft_set_backend(backend) == 0);
    if (strcmp(weft_backend_name(), backend) != 0) {
        printf("  skipped: %s\n", weft_backend_reason());
        return false;
    }
    return true;
}

/* ---- Reading dumps ---- */

/* weft_dump's text, through a memfd. Free it. */
static char *dump_text(void)
{
    int fd = memfd_create("dump", 0);
    CHECK(fd >= 0);
    CHECK(weft_dump(fd) == 0);
    off_t n = lseek(fd, 0, SEEK_END);
    CHECK(n > 0);
    char *s = malloc((size_t)n + 1);
    CHECK(s && pread(fd, s, (size_t)n, 0) == n);
    s[n] = '\0';
    close(fd);
    return s;
}

/* The line of the coroutine named name, into buf; fails the test if there is none. */
static const char *line_of(const char *text, const char *name, char *buf, size_t cap)
{
    char key[96];
    snprintf(key, sizeof key, "\"%s\" ", name);
    const char *p = strstr(text, key);
    if (!p) {
        fprintf(stderr, "  no line for \"%s\" in:\n%s", name, text);
        CHECK(p);
    }
    while (p > text && p[-1] != '\n')
        p--;
    size_t n = strcspn(p, "\n");
    CHECK(n < cap);
    memcpy(buf, p, n);
    buf[n] = '\0';
    return buf;
}

/* The line of name contains each of the NULL-terminated strings. */
static void expect_line(const char *text, const char *name, ...)
{
    char line[512];
    line_of(text, name, line, sizeof line);
    va_list ap;
    va_start(ap, name);
    const char *want;
    while ((want = va_arg(ap, const char *))) {
        if (!strstr(line, want))
            fprintf(stderr, "  \"%s\": wanted \"%s\" in: %s\n", name, want, line);
        CHECK(strstr(line, want));
    }
    va_end(ap);
}

static weft_co *spawn_named(const char *name, weft_fn fn, void *arg)
{
    weft_spawn_opts o = {.name = name};
    weft_co *co = weft_spawn_ex(fn, arg, &o);
    CHECK(co);
    return co;
}

/* Yield until n coroutines are parked. */
static void until_parked(size_t n)
{
    weft_sched_stats st;
    for (int i = 0; i < 10000; i++) {
        weft_sched_get_stats(&st);
        if (st.parked >= n)
            return;
        weft_yield(); /* (outside a coroutine: one loop turn) */
    }
    CHECK(!"the coroutines never all parked");
}

static int local_port(int fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    CHECK(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
    return ntohs(sin.sin_port);
}

/* ---- Every kind of wait ---- */

static struct every {
    weft_chan *sc;           /* the server side of a TCP connection */
    weft_listener *idle;     /* a listener nobody connects to */
    weft_co *sleeper;
    weft_queue *empty, *full, *empty2;
    weft_mutex *m, *m2;
    weft_cond *cv;
    weft_waitgroup *wg;
    weft_group *g;
    weft_tqueue *tq;
    int offload_pipe[2];
} ev;

static void *do_gets(void *a)
{
    (void)a;
    size_t len;
    CHECK(weft_gets(ev.sc, &len) == NULL && errno == ECANCELED);
    return NULL;
}

static void *do_write(void *a)
{
    (void)a;
    size_t n = 1 << 20;
    char *big = calloc(1, n);
    CHECK(big);
    CHECK(weft_write(ev.sc, big, n) == -1 && errno == ECANCELED);
    free(big);
    return NULL;
}

static void *do_turn(void *a)
{
    (void)a;
    weft_puts(ev.sc, "x"); /* (cancelled, or handed the turn by the cancelled writer first) */
    return NULL;
}

static void *do_accept(void *a)
{
    (void)a;
    CHECK(weft_accept(ev.idle, -1) == NULL && errno == ECANCELED);
    return NULL;
}

static void *do_sleep(void *a)
{
    (void)a;
    CHECK(weft_sleep(60000) == -1 && errno == ECANCELED);
    return NULL;
}

static void *do_join(void *a)
{
    (void)a;
    CHECK(weft_join(ev.sleeper, NULL, -1) == 0); /* (the sleeper is cancelled in the end) */
    return NULL;
}

static void *do_recv(void *a)
{
    void *item;
    CHECK(weft_queue_recv(a, &item, -1) == -1 && errno == ECANCELED);
    return NULL;
}

static void *do_send(void *a)
{
    CHECK(weft_queue_send(a, NULL, -1) == -1 && errno == ECANCELED);
    return NULL;
}

static void *do_select(void *a)
{
    (void)a;
    weft_select_op op = {.q = ev.empty2, .op = WEFT_RECV};
    CHECK(weft_select(&op, 1, -1) == -1 && errno == ECANCELED);
    return NULL;
}

static void *do_lock(void *a)
{
    (void)a;
    CHECK(weft_mutex_lock(ev.m, -1) == -1 && errno == ECANCELED);
    return NULL;
}

static void *do_cond(void *a)
{
    (void)a;
    CHECK(weft_mutex_lock(ev.m2, -1) == 0);
    CHECK(weft_cond_wait(ev.cv, ev.m2, -1) == -1 && errno == ECANCELED);
    CHECK(weft_mutex_unlock(ev.m2) == 0);
    return NULL;
}

static void *do_wg(void *a)
{
    (void)a;
    CHECK(weft_waitgroup_wait(ev.wg, -1) == -1 && errno == ECANCELED);
    return NULL;
}

static void *do_member(void *a)
{
    (void)a;
    weft_sleep(60000);
    return NULL;
}

static void *do_group_wait(void *a)
{
    (void)a;
    CHECK(weft_group_wait(ev.g, -1) == -1 && errno == ECANCELED);
    return NULL;
}

static void *do_tqueue(void *a)
{
    (void)a;
    void *item;
    CHECK(weft_tqueue_recv(ev.tq, &item, -1) == -1 && errno == ECANCELED);
    return NULL;
}

/* On a pool thread: wait until the test writes to the pipe. */
static void *blocker(void *a)
{
    (void)a;
    char ch;
    CHECK(read(ev.offload_pipe[0], &ch, 1) == 1);
    return (void *)1;
}

static void *do_offload(void *a)
{
    (void)a;
    void *r = NULL;
    CHECK(weft_offload(blocker, NULL, &r) == 0 && r == (void *)1);
    return NULL;
}

static void noop_handler(weft_chan *c, void *arg)
{
    (void)arg;
    size_t len;
    while (weft_gets(c, &len)) {
    }
}

static void *nothing(void *a)
{
    (void)a;
    return NULL;
}

static void *every_kind_main(void *arg)
{
    (void)arg;
    /* A TCP connection whose client never reads, with small buffers, so a write parks. */
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    ev.idle = weft_listen("127.0.0.1:0", 0);
    CHECK(l && ev.idle);
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 4096;
    CHECK(setsockopt(cfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)weft_listener_port(l))};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(cfd, (struct sockaddr *)&sin, sizeof sin) == 0);
    ev.sc = weft_accept(l, -1);
    CHECK(ev.sc);
    CHECK(setsockopt(weft_chan_fd(ev.sc), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);

    /* A server at its limit of one connection, whose acceptor waits for a free slot. */
    weft_listener *sl = weft_listen("127.0.0.1:0", 0);
    CHECK(sl);
    char server_name[64];
    snprintf(server_name, sizeof server_name, "%s", weft_listener_addr(sl));
    weft_server_opts so = {.max_conns = 1};
    weft_server *srv = weft_server_start_ex(sl, noop_handler, NULL, &so);
    CHECK(srv);
    int c1 = tcp_connect_loopback(weft_listener_port(sl));
    int c2 = tcp_connect_loopback(weft_listener_port(sl));

    ev.empty = weft_queue_new(1);
    ev.empty2 = weft_queue_new(1);
    ev.full = weft_queue_new(1);
    CHECK(weft_queue_send(ev.full, NULL, -1) == 0);
    ev.m = weft_mutex_new();
    ev.m2 = weft_mutex_new();
    ev.cv = weft_cond_new();
    ev.wg = weft_waitgroup_new();
    CHECK(weft_waitgroup_add(ev.wg, 1) == 0);
    ev.g = weft_group_new();
    weft_spawn_opts mo = {.name = "member"};
    CHECK(weft_group_spawn(ev.g, do_member, NULL, &mo));
    ev.tq = weft_tqueue_new(1);
    CHECK(pipe(ev.offload_pipe) == 0);
    CHECK(weft_mutex_lock(ev.m, -1) == 0); /* held by this coroutine */

    weft_co *cos[32];
    int n = 0;
    cos[n++] = spawn_named("reader", do_gets, NULL);
    cos[n++] = spawn_named("writer", do_write, NULL);
    cos[n++] = spawn_named("acceptor", do_accept, NULL);
    ev.sleeper = spawn_named("sleeper", do_sleep, NULL); /* joined by the joiner */
    cos[n++] = spawn_named("joiner", do_join, NULL);
    cos[n++] = spawn_named("receiver", do_recv, ev.empty);
    cos[n++] = spawn_named("sender", do_send, ev.full);
    cos[n++] = spawn_named("selector", do_select, NULL);
    cos[n++] = spawn_named("locker", do_lock, NULL);
    cos[n++] = spawn_named("waiter", do_cond, NULL);
    cos[n++] = spawn_named("wg", do_wg, NULL);
    cos[n++] = spawn_named("grouper", do_group_wait, NULL);
    cos[n++] = spawn_named("tq", do_tqueue, NULL);
    weft_co *offloader = spawn_named("offloader", do_offload, NULL);
    /* These 14, the group's member, the server's acceptor and its one handler. */
    until_parked(17);
    cos[n++] = spawn_named("turner", do_turn, NULL); /* the writer has the turn by now */
    until_parked(18);
    weft_co *ready = spawn_named("not yet run", nothing, NULL);

    char *text = dump_text();
    if (getenv("WEFT_TEST_SHOW"))
        fputs(text, stdout);
    char peer[64], lis[64], fd_word[32];
    snprintf(peer, sizeof peer, "peer 127.0.0.1:%d", local_port(cfd));
    snprintf(lis, sizeof lis, "listening on %s", weft_listener_addr(ev.idle));
    snprintf(fd_word, sizeof fd_word, " fd %d", weft_chan_fd(ev.sc));
    bool uring = strcmp(weft_backend_name(), "uring") == 0;
    expect_line(text, "reader", "parked ", "read", fd_word, peer, NULL);
    expect_line(text, "writer", "parked ", "write", fd_word, peer, NULL);
    expect_line(text, "turner", "parked ", "write turn of channel", fd_word, "(peer 127.0.0.1:",
                NULL);
    /* io_uring accepts with an operation; epoll waits for the listener to be readable. */
    expect_line(text, "acceptor", "parked ", uring ? "accept on fd" : "read fd", lis, NULL);
    expect_line(text, "sleeper", "parked ", ": sleep, wakes in ", NULL);
    expect_line(text, "joiner", "parked ", ": join #", "\"sleeper\"", NULL);
    expect_line(text, "receiver", ": queue 0x", "(receive, 0 queued)", NULL);
    expect_line(text, "sender", ": queue 0x", "(send, 1 queued)", NULL);
    expect_line(text, "selector", ": select on queues", NULL);
    expect_line(text, "locker", ": mutex 0x", ", held by #", "\"every\"", NULL);
    expect_line(text, "waiter", ": condition 0x", NULL);
    expect_line(text, "wg", ": wait group 0x", "(count 1)", NULL);
    expect_line(text, "grouper", ": group 0x", "(1 running)", NULL);
    expect_line(text, "member", ": sleep", NULL);
    expect_line(text, "tq", ": thread queue 0x", "(receive)", NULL);
    expect_line(text, "offloader", ": offloaded call ", NULL);
    expect_line(text, server_name, ": a handler of server 0x", NULL);
    expect_line(text, "not yet run", "\" ready; stack ", NULL);
    expect_line(text, "every", "\" running; stack ", NULL);
    CHECK(strstr(text, "20 coroutines: 1 running, 1 ready, 18 parked"));
    free(text);

    /* Undo it all: every wait above ends with ECANCELED, the offload by its call's end. */
    for (int i = 0; i < n; i++)
        if (strcmp(weft_name(cos[i]), "joiner") != 0) /* it ends when the sleeper does */
            weft_cancel(cos[i]);
    weft_cancel(ev.sleeper);
    for (int i = 0; i < n; i++)
        CHECK(weft_join(cos[i], NULL, -1) == 0);
    CHECK(write(ev.offload_pipe[1], "x", 1) == 1);
    CHECK(weft_join(offloader, NULL, -1) == 0 && weft_join(ready, NULL, -1) == 0);
    CHECK(weft_mutex_unlock(ev.m) == 0);
    CHECK(weft_group_close(ev.g) == 0);
    close(cfd);
    close(c1);
    close(c2);
    CHECK(weft_server_shutdown(srv, 0) == 0);
    weft_close(ev.sc);
    weft_listener_close(l);
    weft_listener_close(ev.idle);
    weft_queue_free(ev.empty);
    weft_queue_free(ev.empty2);
    void *item;
    CHECK(weft_queue_try_recv(ev.full, &item) == 0);
    weft_queue_free(ev.full);
    weft_mutex_free(ev.m);
    weft_mutex_free(ev.m2);
    weft_cond_free(ev.cv);
    weft_waitgroup_free(ev.wg);
    weft_tqueue_free(ev.tq);
    close(ev.offload_pipe[0]);
    close(ev.offload_pipe[1]);
    return NULL;
}

static void every_kind_on(const char *backend)
{
    if (!use_backend(backend))
        return;
    weft_co *co = spawn_named("every", every_kind_main, NULL);
    CHECK(weft_join(co, NULL, -1) == 0);
}

static void dump_names_every_kind_of_wait_epoll(void)
{
    every_kind_on("epoll");
}

static void dump_names_every_kind_of_wait_uring(void)
{
    every_kind_on("uring");
}

/* ---- From outside a coroutine; times and stacks ---- */

static void *touch_stack(void *a)
{
    volatile char big[100 * 1024];
    for (size_t i = 0; i < sizeof big; i += 256)
        big[i] = 1; /* (volatile: every page is written) */
    void *item;
    weft_queue_recv(a, &item, -1);
    return (void *)(uintptr_t)big[12345];
}

static void *idle_recv(void *a)
{
    void *item;
    weft_queue_recv(a, &item, -1);
    return NULL;
}

static long stack_k(const char *text, const char *name)
{
    char line[512];
    line_of(text, name, line, sizeof line);
    const char *p = strstr(line, "; stack ");
    CHECK(p);
    return atol(p + 8);
}

static void dump_from_outside_shows_time_parked_and_stack_in_memory(void)
{
    weft_queue *q = weft_queue_new(2);
    weft_co *deep = spawn_named("deep", touch_stack, q);
    weft_co *shallow = spawn_named("shallow", idle_recv, q);
    until_parked(2);
    weft_sleep(300); /* outside a coroutine: a plain sleep; the two stay parked */
    char *text = dump_text();
    /* Parked since the start of the loop turn in which it parked: at least 300 ms ago. */
    char line[512];
    line_of(text, "shallow", line, sizeof line);
    const char *p = strstr(line, "parked ");
    CHECK(p && atof(p + 7) >= 0.3);
    CHECK(strstr(line, "/256K"));
    CHECK(stack_k(text, "deep") >= 100);    /* it touched 100 KiB of its stack */
    CHECK(stack_k(text, "shallow") < 256);  /* pages never touched are not counted */
    CHECK(strstr(text, "0 running, 0 ready, 2 parked (0 on I/O)"));
    char tid[64];
    snprintf(tid, sizeof tid, "weft: thread %d, backend ", (int)gettid());
    CHECK(strncmp(text, tid, strlen(tid)) == 0);
    free(text);
    CHECK(weft_queue_send(q, NULL, -1) == 0 && weft_queue_send(q, NULL, -1) == 0);
    CHECK(weft_join(deep, NULL, -1) == 0 && weft_join(shallow, NULL, -1) == 0);
    weft_queue_free(q);
}

/* ---- Statistics ---- */

static void *yield_and_count(void *a)
{
    (void)a;
    weft_sched_stats s0, s1;
    weft_sched_get_stats(&s0);
    CHECK(s0.running == 1 && s0.coroutines == 1 && s0.ready == 0 && s0.parked == 0);
    CHECK(weft_yield() == 0);
    weft_sched_get_stats(&s1);
    /* Alone, a yield is one switch to the loop, one turn, one switch back. */
    CHECK(s1.turns == s0.turns + 1 && s1.switches == s0.switches + 2);
    return NULL;
}

static int stats_fds[2];

static void *wait_readable(void *a)
{
    (void)a;
    CHECK(weft_wait_fd(stats_fds[0], WEFT_READABLE, -1) == 0);
    return NULL;
}

static void *sleep_a_while(void *a)
{
    (void)a;
    weft_sleep(60000);
    return NULL;
}

static void *watch_stats(void *a)
{
    (void)a;
    weft_sched_stats st;
    weft_sched_get_stats(&st);
    /* This one runs; the fd waiter and the sleeper are parked, one of them on I/O. */
    CHECK(st.coroutines == 3 && st.running == 1 && st.ready == 0);
    CHECK(st.parked == 2 && st.parked_io == 1 && st.timers >= 1);
    uint64_t events = st.events;
    CHECK(write(stats_fds[1], "x", 1) == 1);
    while (st.parked_io == 1) {
        weft_yield();
        weft_sched_get_stats(&st);
    }
    CHECK(st.events > events); /* the fd's readiness was dispatched */
    return NULL;
}

static void stats_count_states_switches_turns_events_timers(void)
{
    weft_sched_stats st;
    weft_sched_get_stats(&st); /* no scheduler yet: zeros, and the backend it would get */
    CHECK(st.coroutines == 0 && st.turns == 0 && st.switches == 0 && st.events == 0);
    CHECK(strcmp(st.backend, weft_backend_name()) == 0);

    weft_co *y = spawn_named("y", yield_and_count, NULL);
    weft_sched_get_stats(&st);
    CHECK(st.coroutines == 1 && st.ready == 1 && st.running == 0);
    CHECK(weft_join(y, NULL, -1) == 0);

    CHECK(pipe2(stats_fds, O_NONBLOCK) == 0);
    weft_co *w = spawn_named("fd", wait_readable, NULL);
    weft_co *s = spawn_named("sleep", sleep_a_while, NULL);
    weft_yield(); /* outside: one turn, in which both park */
    weft_sched_get_stats(&st);
    CHECK(st.parked == 2 && st.parked_io == 1);
    CHECK(strcmp(st.backend, weft_backend_name()) == 0);
    weft_co *watcher = spawn_named("watch", watch_stats, NULL);
    CHECK(weft_join(watcher, NULL, -1) == 0 && weft_join(w, NULL, -1) == 0);
    weft_cancel(s);
    CHECK(weft_join(s, NULL, -1) == 0);
    weft_fd_close(stats_fds[0]);
    close(stats_fds[1]);
}

/* ---- On a signal ---- */

/* Standard error goes to a pipe while a test reads the dumps; CHECK's reports go back to it. */
static int err_read = -1, err_saved = -1;

static void stderr_to_pipe(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    err_saved = dup(2);
    CHECK(err_saved >= 0 && dup2(p[1], 2) == 2);
    close(p[1]);
    err_read = p[0];
}

static void stderr_back(void)
{
    dup2(err_saved, 2);
    close(err_saved);
}

/* Read standard error's pipe until it holds `lines` summary lines of dumps. Free it. */
static char *read_dumps(int lines)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = calloc(1, cap);
    CHECK(buf);
    for (;;) {
        int seen = 0;
        for (const char *p = buf; (p = strstr(p, " coroutines: ")); p++)
            seen++;
        if (seen >= lines)
            return buf;
        CHECK(len + 1 < cap);
        ssize_t r = read(err_read, buf + len, cap - 1 - len);
        CHECK(r > 0);
        len += (size_t)r;
    }
}

static void block_sigusr1(int how)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(how, &set, NULL);
}

static weft_tqueue *to_loop, *from_loop;
static char *sig_text;

/* In the loop's thread: says it is about to park, then parks until told to end. */
static void *park_on_tqueue(void *a)
{
    (void)a;
    void *item;
    CHECK(weft_tqueue_send(from_loop, NULL, -1) == 0);
    CHECK(weft_tqueue_recv(to_loop, &item, -1) == 0);
    return NULL;
}

/* Another thread, the only one that takes SIGUSR1: signals while the loop sleeps. */
static void *signaller(void *a)
{
    (void)a;
    block_sigusr1(SIG_UNBLOCK);
    void *item;
    CHECK(weft_tqueue_recv(from_loop, &item, -1) == 0);
    kill(getpid(), SIGUSR1);
    sig_text = read_dumps(1);
    CHECK(weft_tqueue_send(to_loop, NULL, -1) == 0);
    return NULL;
}

static void dump_on_signal_wakes_a_sleeping_loop(const char *backend)
{
    if (!use_backend(backend))
        return;
    CHECK(weft_dump_on_signal(SIGUSR1) == 0);
    to_loop = weft_tqueue_new(1);
    from_loop = weft_tqueue_new(1);
    /* The loop's thread never takes the signal, so only the eventfd can wake its loop. */
    block_sigusr1(SIG_BLOCK);
    stderr_to_pipe();
    pthread_t t;
    CHECK(pthread_create(&t, NULL, signaller, NULL) == 0);
    weft_spawn_opts o = {.name = "parked", .detached = 1};
    CHECK(weft_spawn_ex(park_on_tqueue, NULL, &o));
    int rc = weft_run();
    pthread_join(t, NULL);
    stderr_back();
    CHECK(rc == 0);
    char tid[64];
    snprintf(tid, sizeof tid, "weft: thread %d, backend %s, 1 coroutines", (int)gettid(), backend);
    CHECK(strstr(sig_text, tid));
    CHECK(strstr(sig_text, "\"parked\" parked ") && strstr(sig_text, ": thread queue 0x"));
    free(sig_text);
    weft_tqueue_free(to_loop);
    weft_tqueue_free(from_loop);
}

static void dump_on_signal_wakes_a_sleeping_loop_epoll(void)
{
    dump_on_signal_wakes_a_sleeping_loop("epoll");
}

static void dump_on_signal_wakes_a_sleeping_loop_uring(void)
{
    dump_on_signal_wakes_a_sleeping_loop("uring");
}

/* Two threads with a scheduler each: one signal, two dumps. */
struct looper {
    pthread_t t;
    weft_tqueue *stop, *parked;
    int tid;
};

static void *looper_co(void *a)
{
    struct looper *l = a;
    void *item;
    CHECK(weft_tqueue_send(l->parked, NULL, -1) == 0);
    CHECK(weft_tqueue_recv(l->stop, &item, -1) == 0);
    return NULL;
}

static void *looper_main(void *a)
{
    struct looper *l = a;
    l->tid = (int)gettid();
    weft_spawn_opts o = {.name = "looper", .detached = 1};
    CHECK(weft_spawn_ex(looper_co, l, &o));
    CHECK(weft_run() == 0);
    return NULL;
}

static void dump_on_signal_reaches_every_thread(void)
{
    CHECK(weft_dump_on_signal(SIGUSR1) == 0);
    struct looper l[2];
    block_sigusr1(SIG_BLOCK); /* the loops' threads inherit this: only this one takes it */
    for (int i = 0; i < 2; i++) {
        l[i].stop = weft_tqueue_new(1);
        l[i].parked = weft_tqueue_new(1);
        CHECK(pthread_create(&l[i].t, NULL, looper_main, &l[i]) == 0);
    }
    block_sigusr1(SIG_UNBLOCK);
    void *item;
    for (int i = 0; i < 2; i++)
        CHECK(weft_tqueue_recv(l[i].parked, &item, -1) == 0);
    stderr_to_pipe();
    kill(getpid(), SIGUSR1);
    char *text = read_dumps(2);
    for (int i = 0; i < 2; i++)
        CHECK(weft_tqueue_send(l[i].stop, NULL, -1) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(l[i].t, NULL);
    stderr_back();
    for (int i = 0; i < 2; i++) {
        char tid[64];
        snprintf(tid, sizeof tid, "weft: thread %d, backend ", l[i].tid);
        CHECK(strstr(text, tid));
        weft_tqueue_free(l[i].stop);
        weft_tqueue_free(l[i].parked);
    }
    CHECK(strstr(text, "\"looper\" parked "));
    free(text);
}

/* A thread blocked in a weft wait outside any coroutine dumps when the signal interrupts it. */
static int block_pipe[2];
static int blocked_tid;

static void *blocked_outside(void *a)
{
    (void)a;
    blocked_tid = (int)gettid();
    CHECK(weft_wait_fd(block_pipe[0], WEFT_READABLE, -1) == 0);
    return NULL;
}

static void dump_on_signal_in_a_wait_outside_coroutines(void)
{
    CHECK(weft_dump_on_signal(SIGUSR1) == 0);
    CHECK(pipe2(block_pipe, O_NONBLOCK) == 0);
    stderr_to_pipe();
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_outside, NULL) == 0);
    /* Until the signal lands inside the wait: a signal that comes before it is answered by
     * nothing (no loop turns there), so send it again until a dump comes. */
    char *text = NULL;
    for (int i = 0; i < 1000 && !text; i++) {
        pthread_kill(t, SIGUSR1);
        if (readable_within(err_read, 50))
            text = read_dumps(1);
    }
    CHECK(write(block_pipe[1], "x", 1) == 1);
    pthread_join(t, NULL);
    stderr_back();
    CHECK(text);
    char tid[64];
    snprintf(tid, sizeof tid, "weft: thread %d, backend ", blocked_tid);
    CHECK(strstr(text, tid) && strstr(text, ": 0 coroutines: "));
    free(text);
    close(block_pipe[0]);
    close(block_pipe[1]);
}

static void dump_on_signal_refuses_what_cannot_be_caught(void)
{
    CHECK(weft_dump_on_signal(SIGKILL) == -1 && errno == EINVAL);
    CHECK(weft_dump_on_signal(0) == -1 && errno == EINVAL);
}

/* A standard error nobody reads: a signal's dump into a full pipe gives up (weft.h: after 2 s
 * without progress) instead of stopping the loop for good; the coroutines go on. */
static void *raise_then_tick(void *arg)
{
    int *ticks = arg;
    raise(SIGUSR1);
    for (int i = 0; i < 20; i++) {
        CHECK(weft_sleep(10) == 0);
        (*ticks)++;
    }
    return NULL;
}

static void dump_on_signal_into_a_full_pipe_does_not_stop_the_loop(void)
{
    CHECK(weft_dump_on_signal(SIGUSR1) == 0);
    stderr_to_pipe();
    int flags = fcntl(2, F_GETFL);
    CHECK(fcntl(2, F_SETFL, flags | O_NONBLOCK) == 0);
    char junk[4096];
    memset(junk, 'x', sizeof junk);
    while (write(2, junk, sizeof junk) > 0) {
    }
    CHECK(errno == EAGAIN);
    CHECK(fcntl(2, F_SETFL, flags) == 0); /* full, and blocking, as a program's stderr is */
    int ticks = 0;
    weft_co *co = weft_spawn(raise_then_tick, &ticks);
    CHECK(co && weft_join(co, NULL, -1) == 0);
    stderr_back();
    CHECK(ticks == 20);
    close(err_read);
}

const struct test tests[] = {
    {"dump_names_every_kind_of_wait_epoll", dump_names_every_kind_of_wait_epoll, 0},
    {"dump_names_every_kind_of_wait_uring", dump_names_every_kind_of_wait_uring, 0},
    {"dump_from_outside_shows_time_parked_and_stack_in_memory",
     dump_from_outside_shows_time_parked_and_stack_in_memory, 0},
    {"stats_count_states_switches_turns_events_timers",
     stats_count_states_switches_turns_events_timers, 0},
    {"dump_on_signal_wakes_a_sleeping_loop_epoll", dump_on_signal_wakes_a_sleeping_loop_epoll, 0},
    {"dump_on_signal_wakes_a_sleeping_loop_uring", dump_on_signal_wakes_a_sleeping_loop_uring, 0},
    {"dump_on_signal_reaches_every_thread", dump_on_signal_reaches_every_thread, 0},
    {"dump_on_signal_in_a_wait_outside_coroutines", dump_on_signal_in_a_wait_outside_coroutines, 0},
    {"dump_on_signal_into_a_full_pipe_does_not_stop_the_loop",
     dump_on_signal_into_a_full_pipe_does_not_stop_the_loop, 0},
    {"dump_on_signal_refuses_what_cannot_be_caught", dump_on_signal_refuses_what_cannot_be_caught,
     0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
