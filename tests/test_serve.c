/* serve: one coroutine per client named after the peer, the channel closed when the handler
 * returns, many clients at once, a server that survives running out of descriptors, and a
 * close that stops accepting while running handlers finish. */
#include "harness.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <weft.h>

static weft_server *the_server;

/* Echo, except for two commands: "name" answers the handler's coroutine name, "stats" the
 * server's counters. */
static void handler(weft_chan *c, void *arg)
{
    (void)arg;
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len))) {
        if (strcmp(line, "name") == 0) {
            weft_puts(c, weft_name(weft_self()));
        } else if (strcmp(line, "stats") == 0) {
            weft_server_stats st;
            weft_server_get_stats(the_server, &st);
            weft_printf(c, "%llu %llu %llu\n", (unsigned long long)st.accepted,
                        (unsigned long long)st.active, (unsigned long long)st.accept_errors);
        } else {
            weft_putln(c, line, len);
        }
    }
}

struct client_arg {
    char addr[64];
    int id;
    int lines;
};

static void *client(void *p)
{
    struct client_arg *a = p;
    weft_chan *c = weft_connect(a->addr, weft_now() + 20000);
    CHECK(c);
    char want[64];
    size_t len;
    const char *line;
    for (int i = 0; i < a->lines; i++) {
        int n = snprintf(want, sizeof want, "client %d line %d", a->id, i);
        CHECK(weft_puts(c, want) == 0);
        CHECK((line = weft_gets(c, &len)) && len == (size_t)n && memcmp(line, want, len) == 0);
    }
    /* The server names our coroutine after us, as seen from its side. */
    CHECK(weft_puts(c, "name") == 0);
    CHECK((line = weft_gets(c, &len)));
    char me[64];
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    CHECK(getsockname(weft_chan_fd(c), (struct sockaddr *)&ss, &sl) == 0);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    snprintf(me, sizeof me, "127.0.0.1:%u", ntohs(sin->sin_port));
    CHECK(strcmp(line, me) == 0);
    CHECK(weft_close(c) == 0);
    return NULL;
}

static void many_clients_at_once_each_in_its_own_coroutine(void)
{
    int clients = test_scale(300);
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    the_server = weft_server_start(l, handler, NULL);
    CHECK(the_server);
    static struct client_arg args[300];
    weft_co *cos[300];
    for (int i = 0; i < clients; i++) {
        snprintf(args[i].addr, sizeof args[i].addr, "127.0.0.1:%d", weft_listener_port(l));
        args[i].id = i;
        args[i].lines = 50;
        CHECK((cos[i] = weft_spawn(client, &args[i])));
    }
    for (int i = 0; i < clients; i++)
        CHECK(weft_join(cos[i], NULL, -1) == 0);
    weft_server_stats st;
    weft_server_get_stats(the_server, &st);
    CHECK(st.accepted == (uint64_t)clients && st.accept_errors == 0);
    CHECK(weft_server_close(the_server) == 0);
    CHECK(weft_run() == 0); /* the last handlers see their EOF and end */
    CHECK(weft_count() == 0);
}

static void *quick_return(void *arg)
{
    return arg;
}

static void *reap_child(void *arg)
{
    pid_t pid = *(pid_t *)arg;
    int status;
    while (waitpid(pid, &status, WNOHANG) == 0)
        CHECK(weft_sleep(5) == 0);
    return (void *)(intptr_t)(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

static void returns_then_closes(weft_chan *c, void *arg)
{
    (void)arg;
    weft_puts(c, "bye");
}

static void channel_is_closed_when_the_handler_returns(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    int port = weft_listener_port(l);
    weft_server *s = weft_server_start(l, returns_then_closes, NULL);
    CHECK(s);
    weft_co *y = weft_spawn(quick_return, NULL); /* gives the loop a turn to start */
    CHECK(y && weft_join(y, NULL, -1) == 0);
    int fd = tcp_connect_loopback(port);
    pid_t pid = fork();
    if (pid == 0) { /* a plain client in another process: the server needs the loop here */
        char buf[16];
        read_exact_timeout(fd, buf, 4, 10000);
        CHECK(memcmp(buf, "bye\n", 4) == 0);
        CHECK(readable_within(fd, 10000) && read(fd, buf, 1) == 0); /* EOF: closed */
        exit(0);
    }
    close(fd);
    /* Serve until the child has checked what it got. */
    weft_co *w = weft_spawn(reap_child, &pid);
    void *status;
    CHECK(w && weft_join(w, &status, -1) == 0);
    CHECK((intptr_t)status == 0);
    CHECK(weft_server_close(s) == 0);
}

/* ---- A handler that returns while other coroutines are inside its channel ----
 * The channel lives in the handler's room (the top of its stack): the handler's coroutine
 * must not end, and its stack go to the next client, before the others have left it. */

static int inside_errno[2]; /* what the reader and the writer got */
static int inside_done;

static void *inside_reader(void *p)
{
    size_t len;
    const char *line = weft_gets(p, &len);
    inside_errno[0] = line ? 0 : errno;
    inside_done++;
    return NULL;
}

static void *inside_writer(void *p)
{
    static char big[1 << 20];
    int rc = 0;
    for (int i = 0; i < 64 && rc == 0; i++)
        rc = weft_write(p, big, sizeof big) < 0 ? -1 : 0; /* unread: it parks for room */
    inside_errno[1] = rc == 0 ? 0 : errno;
    inside_done++;
    return NULL;
}

static void leaves_others_inside(weft_chan *c, void *arg)
{
    (void)arg;
    weft_spawn_opts o = {.detached = 1};
    CHECK(weft_spawn_ex(inside_reader, c, &o) && weft_spawn_ex(inside_writer, c, &o));
    for (int i = 0; i < 20; i++)
        CHECK(weft_yield() == 0); /* (the reader parks for input, the writer for room) */
}

static void *inside_client(void *p)
{
    weft_chan *c = weft_connect(p, weft_now() + 20000);
    CHECK(c);
    while (inside_done < 2)
        CHECK(weft_sleep(1) == 0);
    char buf[65536];
    while (weft_read(c, buf, sizeof buf) > 0) /* what was sent before the close, then EOF */
        ;
    CHECK(weft_close(c) == 0);
    return NULL;
}

static void a_handler_returning_wakes_those_inside_its_channel(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", weft_listener_port(l));
    weft_server *s = weft_server_start(l, leaves_others_inside, NULL);
    CHECK(s);
    for (int round = 0; round < 20; round++) { /* (the handlers' stacks are reused) */
        inside_done = 0;
        inside_errno[0] = inside_errno[1] = -1;
        weft_co *k = weft_spawn(inside_client, addr);
        CHECK(k && weft_join(k, NULL, -1) == 0);
        CHECK(inside_errno[0] == EBADF);
        CHECK(inside_errno[1] == EBADF);
    }
    CHECK(weft_server_close(s) == 0);
    CHECK(weft_run() == 0);
    CHECK(weft_count() == 0);
}

/* ---- A channel closed before its handler returns: by the handler, or by another coroutine
 * (a chat's kick) while the handler reads it. The server does not close it again. */

static weft_chan *kick_target;

static void closes_itself_or_is_kicked(weft_chan *c, void *arg)
{
    (void)arg;
    size_t len;
    const char *line = weft_gets(c, &len);
    if (line && strcmp(line, "self") == 0) {
        CHECK(weft_puts(c, "bye") == 0);
        CHECK(weft_close(c) == 0);
        return;
    }
    if (line && strcmp(line, "kick") == 0) {
        kick_target = c;
        CHECK(weft_gets(c, &len) == NULL && errno == EBADF); /* the kicker closed it */
        return;
    }
    if (line) /* "kicker": close the other client's channel under its handler's read */
        CHECK(kick_target && weft_close(kick_target) == 0 && weft_puts(c, "kicked") == 0);
}

static void *close_client(void *p)
{
    char buf[64];
    weft_chan *self = weft_connect(p, weft_now() + 20000);
    CHECK(self && weft_puts(self, "self") == 0);
    size_t len;
    const char *line = weft_gets(self, &len);
    CHECK(line && strcmp(line, "bye") == 0);
    CHECK(weft_read(self, buf, sizeof buf) == 0); /* then end of file */
    CHECK(weft_close(self) == 0);

    weft_chan *victim = weft_connect(p, weft_now() + 20000);
    CHECK(victim && weft_puts(victim, "kick") == 0);
    while (!kick_target)
        CHECK(weft_sleep(1) == 0);
    weft_chan *kicker = weft_connect(p, weft_now() + 20000);
    CHECK(kicker && weft_puts(kicker, "kicker") == 0);
    CHECK((line = weft_gets(kicker, &len)) && strcmp(line, "kicked") == 0);
    CHECK(weft_read(victim, buf, sizeof buf) == 0);
    CHECK(weft_close(victim) == 0 && weft_close(kicker) == 0);
    kick_target = NULL;
    return NULL;
}

static void a_channel_closed_before_its_handler_returns_is_not_closed_again(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", weft_listener_port(l));
    weft_server *s = weft_server_start(l, closes_itself_or_is_kicked, NULL);
    CHECK(s);
    for (int round = 0; round < 10; round++) {
        weft_co *k = weft_spawn(close_client, addr);
        CHECK(k && weft_join(k, NULL, -1) == 0);
    }
    weft_server_stats st;
    weft_server_get_stats(s, &st);
    CHECK(st.accepted == 30);
    CHECK(weft_server_close(s) == 0);
    CHECK(weft_run() == 0);
    CHECK(weft_count() == 0);
}

/* ---- A handler that ends after its server was closed, with its client still connected ----
 * On io_uring its socket's receive is in the handler's room, and the handler's coroutine
 * waits for the kernel's last completion of it before its stack goes: weft_run must count
 * that as a wait the loop can end, not report every coroutine parked for good (EDEADLK). */
static _Atomic int outlive_port, outlive_line, outlive_closed;

static void returns_once_its_server_is_closed(weft_chan *c, void *arg)
{
    (void)arg;
    CHECK(weft_gets(c, NULL) != NULL);
    atomic_store(&outlive_line, 1);
    while (!atomic_load(&outlive_closed))
        weft_sleep(5);
    /* returns with the client connected and nothing read since: the receive is armed */
}

static void *outlive_closer(void *p)
{
    while (!atomic_load(&outlive_line))
        weft_sleep(5);
    CHECK(weft_server_close(p) == 0);
    atomic_store(&outlive_closed, 1);
    return NULL;
}

static void *plain_client_until_closed(void *unused)
{
    (void)unused;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atomic_load(&outlive_port))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    CHECK(write(fd, "hi\n", 3) == 3);
    char b;
    CHECK(read(fd, &b, 1) == 0); /* the server closes it when the handler returns */
    close(fd);
    return NULL;
}

static void a_handler_that_outlives_its_server_lets_weft_run_end(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    weft_server *s = weft_server_start(l, returns_once_its_server_is_closed, NULL);
    CHECK(s);
    atomic_store(&outlive_line, 0);
    atomic_store(&outlive_closed, 0);
    atomic_store(&outlive_port, weft_listener_port(l));
    weft_spawn_opts o = {.detached = 1};
    CHECK(weft_spawn_ex(outlive_closer, s, &o));
    pthread_t t;
    CHECK(pthread_create(&t, NULL, plain_client_until_closed, NULL) == 0);
    int rc = weft_run(); /* (no coroutine of ours is left to keep it turning) */
    CHECK(rc == 0);
    CHECK(weft_count() == 0);
    pthread_join(t, NULL);
}

/* ---- A thread that ends while its server's clients are connected ----
 * One handler takes longer than the exit's grace to end after its cancel, so the others'
 * coroutines are dropped with their receives still in the kernel (on io_uring, in their
 * rooms, and the acceptor's accept in its stack). Those must end before the stacks go: before,
 * their completions wrote into unmapped stacks (SIGSEGV) or poisoned ones (ASan). */
#define EXIT_CLIENTS 100

static _Atomic int exit_port, exit_lines, exit_slow = 1;
static weft_server *volatile exit_server; /* (volatile: a store nothing reads is kept) */

static void slow_to_end_when_cancelled(weft_chan *c, void *arg)
{
    (void)arg;
    bool slow = atomic_exchange(&exit_slow, 0);
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len))) {
        atomic_fetch_add(&exit_lines, 1);
        weft_putln(c, line, len);
    }
    if (slow && errno == ECANCELED) {
        int64_t until = weft_now() + 1200; /* past the thread's 1 s exit grace */
        while (weft_now() < until) {
        }
    }
}

static void *exit_stopper(void *unused)
{
    (void)unused;
    while (atomic_load(&exit_lines) < EXIT_CLIENTS)
        weft_sleep(5);
    weft_stop();
    return NULL;
}

static void *server_thread_that_exits(void *unused)
{
    (void)unused;
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    /* (The server stays: a dropped acceptor frees nothing it holds, as weft.h says.) */
    exit_server = weft_server_start(l, slow_to_end_when_cancelled, NULL);
    CHECK(exit_server);
    weft_spawn_opts o = {.detached = 1};
    CHECK(weft_spawn_ex(exit_stopper, NULL, &o));
    atomic_store(&exit_port, weft_listener_port(l));
    CHECK(weft_run() == 0);
    return NULL; /* the thread's end cancels the handlers, waits 1 s, then drops the rest */
}

static void a_thread_ending_with_connected_clients_leaves_no_kernel_write_behind(void)
{
    atomic_store(&exit_port, 0);
    atomic_store(&exit_lines, 0);
    atomic_store(&exit_slow, 1);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, server_thread_that_exits, NULL) == 0);
    while (!atomic_load(&exit_port))
        usleep(1000);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atomic_load(&exit_port))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fds[EXIT_CLIENTS];
    char b[3];
    for (int i = 0; i < EXIT_CLIENTS; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        CHECK(fds[i] >= 0 && connect(fds[i], (struct sockaddr *)&sa, sizeof sa) == 0);
        CHECK(write(fds[i], "hi\n", 3) == 3);
        CHECK(read(fds[i], b, 3) == 3 && memcmp(b, "hi\n", 3) == 0);
    }
    CHECK(pthread_join(t, NULL) == 0); /* (the process is still here: nothing wrote late) */
    for (int i = 0; i < EXIT_CLIENTS; i++)
        close(fds[i]);
}

/* ---- Under ASan: a channel used after its handler returned is reported ----
 * The channel lives in the handler's room (the top of its stack); an ended coroutine's stack
 * is poisoned and kept out of use for a while, so a helper that keeps the pointer and writes
 * to it later is caught at the write, not silently sent to the next client. */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

#ifdef TEST_ASAN
static void *late_writer(void *p)
{
    weft_sleep(100);
    weft_puts(p, "for the first client only"); /* the handler returned: c is gone */
    return NULL;
}

static void hands_its_channel_on(weft_chan *c, void *arg)
{
    (void)arg;
    weft_spawn_opts o = {.detached = 1};
    CHECK(weft_spawn_ex(late_writer, c, &o));
}

static void *two_clients(void *p)
{
    weft_chan *a = weft_connect(p, weft_now() + 20000);
    CHECK(a && weft_close(a) == 0);
    weft_sleep(20);
    weft_chan *b = weft_connect(p, weft_now() + 20000); /* its handler takes a fresh stack */
    CHECK(b);
    weft_sleep(500);
    return NULL;
}

static void a_channel_used_after_its_handler_returned_is_reported(void)
{
    int errp[2];
    CHECK(pipe(errp) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(errp[1], 2);
        weft_listener *l = weft_listen("127.0.0.1:0", 0);
        CHECK(l);
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", weft_listener_port(l));
        CHECK(weft_server_start(l, hands_its_channel_on, NULL));
        weft_co *k = weft_spawn(two_clients, addr);
        CHECK(k && weft_join(k, NULL, -1) == 0);
        _exit(0); /* (not reached: ASan ends the process at the late write) */
    }
    close(errp[1]);
    char buf[8192];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(errp[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = 0;
    close(errp[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0));
    CHECK(strstr(buf, "use-after-poison") != NULL);
}
#endif

/* ---- Running out of file descriptors ---- */

static void serve_with_few_fds(int port_pipe)
{
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    rl.rlim_cur = 24; /* the soft limit only: valgrind refuses to lower the hard one */
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    weft_listener *l = weft_listen("127.0.0.1:0", 64);
    CHECK(l);
    weft_server_opts o = {.keep_fd_limit = 1}; /* or it would raise the limit we just set */
    the_server = weft_server_start_ex(l, handler, NULL, &o);
    CHECK(the_server);
    char msg[16];
    int n = snprintf(msg, sizeof msg, "%d\n", weft_listener_port(l));
    CHECK(write(port_pipe, msg, (size_t)n) == n);
    weft_run();
    exit(0);
}

static void keeps_serving_through_emfile_and_recovers(void)
{
    if (under_valgrind()) {
        /* valgrind emulates RLIMIT_NOFILE by closing accepted fds above it, so the kernel's
         * EMFILE, the thing under test, never happens there. Every other build runs it. */
        fprintf(stderr, "  skipped under valgrind\n");
        return;
    }
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        serve_with_few_fds(p[1]);
    }
    close(p[1]);
    char buf[256];
    ssize_t r = read(p[0], buf, sizeof buf - 1);
    CHECK(r > 0);
    buf[r] = '\0';
    int port = atoi(buf);

    /* 30 clients: the server has room for 18 at a time (24 fds minus 6 of its own); after
     * 15 leave, the 12 that waited fit. */
    enum { N = 30 };
    int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = tcp_connect_loopback(port); /* completes in the kernel's backlog */
    char answer[256];
    ask_line(fds[0], "first", answer, sizeof answer, 10000);
    CHECK(strcmp(answer, "first") == 0);
    /* The last clients are not accepted yet: their line waits unanswered. */
    write_all(fds[N - 1], "late\n", 5);
    CHECK(!readable_within(fds[N - 1], 300));
    /* Meanwhile the accepted clients are served normally, and the server is not spinning:
     * over that 300 ms a backoff loop retried accept a handful of times, not thousands. */
    unsigned long long acc, active, errs;
    ask_line(fds[0], "stats", answer, sizeof answer, 10000);
    CHECK(sscanf(answer, "%llu %llu %llu", &acc, &active, &errs) == 3);
    CHECK(acc < N && errs >= 1 && errs < 100);
    ask_line(fds[1], "still here", answer, sizeof answer, 10000);
    CHECK(strcmp(answer, "still here") == 0);
    /* Free descriptors: every waiting client gets served. */
    for (int i = 0; i < N / 2; i++)
        close(fds[i]);
    for (int i = N / 2; i < N - 1; i++) {
        ask_line(fds[i], "recovered", answer, sizeof answer, 10000);
        CHECK(strcmp(answer, "recovered") == 0);
    }
    read_exact_timeout(fds[N - 1], answer, 5, 10000);
    CHECK(memcmp(answer, "late\n", 5) == 0);
    for (int i = N / 2; i < N; i++)
        close(fds[i]);
    int status = stop_program(pid, SIGKILL);
    CHECK(WIFSIGNALED(status)); /* it was still serving, not dead */
    close(p[0]);
}

static void server_raises_the_soft_fd_limit_unless_told_not_to(void)
{
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_max < 200) {
        fprintf(stderr, "  hard limit too low to tell\n");
        return;
    }
    rl.rlim_cur = 100;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    weft_server_opts keep = {.keep_fd_limit = 1};
    weft_server *s = weft_server_start_ex(l, handler, NULL, &keep);
    CHECK(s && getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur == 100);
    CHECK(weft_server_close(s) == 0);
    l = weft_listen("127.0.0.1:0", 0);
    s = weft_server_start(l, handler, NULL);
    CHECK(s && getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur == rl.rlim_max);
    CHECK(weft_server_close(s) == 0);
}

/* ---- weft_serve: listen, serve, stop on a signal ---- */

static void echo_handler(weft_chan *c, void *arg)
{
    (void)arg;
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len)))
        weft_putln(c, line, len);
}

static void serve_runs_until_a_signal_and_returns_0(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0); /* a free port for the child to take */
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sin;
    CHECK(bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&sin, &sl) == 0);
    close(fd);
    int port = ntohs(sin.sin_port);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
        exit(weft_serve(addr, echo_handler, NULL) == 0 ? 0 : 1);
    }
    int c = -1;
    for (int i = 0; i < 500 && c < 0; i++) { /* until it listens */
        c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&sin, sizeof sin) != 0) {
            close(c);
            c = -1;
            usleep(10000);
        }
    }
    CHECK(c >= 0);
    write_all(c, "served\n", 7);
    char back[7];
    read_exact_timeout(c, back, 7, 20000);
    CHECK(memcmp(back, "served\n", 7) == 0);
    close(c);
    int status = stop_program(pid, SIGTERM);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* Asking twice, or for a second server of the thread, fails with EBUSY and changes nothing:
 * the first watcher still stops its server, and nothing is used after it is freed (ASan). */
static void *raise_term_soon(void *arg)
{
    (void)arg;
    CHECK(weft_sleep(20) == 0);
    kill(getpid(), SIGTERM);
    return NULL;
}

static void stop_on_signals_twice_is_refused_harmlessly(void)
{
    weft_listener *la = weft_listen("127.0.0.1:0", 0), *lb = weft_listen("127.0.0.1:0", 0);
    CHECK(la && lb);
    weft_server *a = weft_server_start(la, echo_handler, NULL);
    weft_server *b = weft_server_start(lb, echo_handler, NULL);
    CHECK(a && b);
    CHECK(weft_server_stop_on_signals(a, 100) == 0);
    CHECK(weft_server_stop_on_signals(a, 100) == -1 && errno == EBUSY);
    CHECK(weft_server_stop_on_signals(b, 100) == -1 && errno == EBUSY); /* one per thread */
    CHECK(weft_server_close(a) == 0);
    CHECK(weft_server_stop_on_signals(b, 100) == 0); /* a's place is free again */
    CHECK(weft_server_stop_on_signals(b, 100) == -1 && errno == EBUSY);
    weft_co *k = weft_spawn(raise_term_soon, NULL);
    CHECK(k);
    CHECK(weft_join(k, NULL, -1) == 0);
    CHECK(weft_run() == 0); /* b shuts down on the signal; then nothing is left */
    CHECK(weft_count() == 0);
}

/* ---- Close ---- */

static void *close_server_soon(void *arg)
{
    weft_sleep(20);
    CHECK(weft_server_close(arg) == 0);
    return NULL;
}

static void *long_client(void *arg)
{
    int port = *(int *)arg;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    weft_chan *c = weft_connect(addr, weft_now() + 10000);
    CHECK(c);
    CHECK(weft_puts(c, "before") == 0);
    size_t len;
    CHECK(weft_gets(c, &len) && len == 6);
    weft_sleep(60); /* the server closes meanwhile */
    CHECK(weft_puts(c, "after") == 0); /* our handler still runs */
    CHECK(weft_gets(c, &len) && len == 5);
    weft_close(c);
    /* New connections are refused now. */
    CHECK(weft_connect(addr, weft_now() + 5000) == NULL && errno == ECONNREFUSED);
    return NULL;
}

static void close_stops_accepting_and_lets_handlers_finish(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    int port = weft_listener_port(l);
    the_server = weft_server_start(l, handler, NULL);
    weft_co *c = weft_spawn(long_client, &port);
    weft_co *k = weft_spawn(close_server_soon, the_server);
    CHECK(the_server && c && k);
    CHECK(weft_join(c, NULL, -1) == 0 && weft_join(k, NULL, -1) == 0);
    CHECK(weft_run() == 0);
}

const struct test tests[] = {
    {"many_clients_at_once_each_in_its_own_coroutine", many_clients_at_once_each_in_its_own_coroutine, 0},
    {"channel_is_closed_when_the_handler_returns", channel_is_closed_when_the_handler_returns, 0},
    {"a_handler_returning_wakes_those_inside_its_channel", a_handler_returning_wakes_those_inside_its_channel, 0},
    {"a_channel_closed_before_its_handler_returns_is_not_closed_again", a_channel_closed_before_its_handler_returns_is_not_closed_again, 0},
    {"a_handler_that_outlives_its_server_lets_weft_run_end", a_handler_that_outlives_its_server_lets_weft_run_end, 0},
    {"a_thread_ending_with_connected_clients_leaves_no_kernel_write_behind", a_thread_ending_with_connected_clients_leaves_no_kernel_write_behind, 0},
#ifdef TEST_ASAN
    {"a_channel_used_after_its_handler_returned_is_reported", a_channel_used_after_its_handler_returned_is_reported, 0},
#endif
    {"keeps_serving_through_emfile_and_recovers", keeps_serving_through_emfile_and_recovers, 0},
    {"close_stops_accepting_and_lets_handlers_finish", close_stops_accepting_and_lets_handlers_finish, 0},
    {"server_raises_the_soft_fd_limit_unless_told_not_to", server_raises_the_soft_fd_limit_unless_told_not_to, 0},
    {"serve_runs_until_a_signal_and_returns_0", serve_runs_until_a_signal_and_returns_0, 0},
    {"stop_on_signals_twice_is_refused_harmlessly", stop_on_signals_twice_is_refused_harmlessly, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
