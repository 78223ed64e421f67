/* fork(): the child gets a scheduler and offload pool of its own. The parent's coroutines are
 * not run there and its events are not taken there; a coroutine that forks goes on, alone, in
 * the child, and its weft_run returns when it ends. */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <weft.h>

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifdef UNDER_TSAN
/* A child that starts threads (the offload pool) after the fork of a threaded process is
 * something ThreadSanitizer refuses by default; weft does it on purpose. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "die_after_fork=0";
}
#endif

/* Wait for pid up to about timeout_ms; kill it and fail if it does not end. */
static int wait_child(pid_t pid, int timeout_ms)
{
    int status;
    for (int waited = 0; waited < timeout_ms; waited += 10) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        CHECK(r >= 0);
        if (r == pid)
            return status;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    CHECK(!"the forked child did not end");
    return -1;
}

/* ---- A handler that forks ---- */

static pid_t server_pid;
static pid_t forked_child;

/* Every answer names the process that gave it, so a line taken by the wrong process shows. */
static void forking_handler(weft_chan *c, void *arg)
{
    (void)arg;
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len)) != NULL) {
        if (len == 4 && memcmp(line, "fork", 4) == 0) {
            pid_t pid = fork();
            CHECK(pid >= 0);
            if (pid > 0) {
                forked_child = pid;
                return; /* the parent lets go of this client: the child has it now */
            }
            weft_printf(c, "child %d\n", (int)getpid());
            continue; /* the child goes on with this client, alone */
        }
        weft_printf(c, "%d %.*s\n", (int)getpid(), (int)len, line);
    }
}

struct clients {
    int port;
};

static void answer(int fd, const char *q, char *out, size_t cap)
{
    ask_line(fd, q, out, cap, 20000);
}

static void *clients_main(void *arg)
{
    struct clients *cl = arg;
    char buf[128], want[128];
    int b = tcp_connect_loopback(cl->port);
    snprintf(want, sizeof want, "%d b0", (int)server_pid);
    answer(b, "b0", buf, sizeof buf);
    CHECK(strcmp(buf, want) == 0); /* b's handler is parked in the parent from now on */

    int a = tcp_connect_loopback(cl->port);
    answer(a, "fork", buf, sizeof buf);
    int child = 0;
    CHECK(sscanf(buf, "child %d", &child) == 1 && child != (int)server_pid);

    /* The parent serves b; the child (with a copy of b's socket and, before the fix, of the
     * parent's epoll instance and coroutines) must take none of b's lines. */
    for (int i = 1; i <= 50; i++) {
        char q[16];
        snprintf(q, sizeof q, "b%d", i);
        snprintf(want, sizeof want, "%d %s", (int)server_pid, q);
        answer(b, q, buf, sizeof buf);
        CHECK(strcmp(buf, want) == 0);
    }
    /* The child serves a, alone. */
    for (int i = 0; i < 20; i++) {
        char q[16];
        snprintf(q, sizeof q, "a%d", i);
        snprintf(want, sizeof want, "%d %s", child, q);
        answer(a, q, buf, sizeof buf);
        CHECK(strcmp(buf, want) == 0);
    }
    close(a); /* the child's handler ends, and with it the child's weft_run */
    close(b);
    return NULL;
}

static int clients_status = -1;

static void *stop_when_clients_done(void *arg)
{
    pid_t pid = *(pid_t *)arg;
    /* Poll for the clients' process to end without blocking the loop. */
    while (waitpid(pid, &clients_status, WNOHANG) == 0)
        CHECK(weft_sleep(5) == 0);
    weft_stop();
    return NULL;
}

static void a_handler_that_forks_keeps_its_client_and_takes_nothing_else(void)
{
#ifdef UNDER_TSAN
    /* TSan keeps the forking fiber as the child's only thread and takes the switch back to
     * the thread's own stack for one to a finished thread: it cannot follow a fork made in a
     * coroutine (ASan and valgrind run this test). */
    printf("  skipped under ThreadSanitizer: fork from inside a fiber\n");
    return;
#endif
    server_pid = getpid();
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    struct clients cl = {weft_listener_port(l)};
    weft_server *s = weft_server_start(l, forking_handler, NULL);
    CHECK(s);
    /* The clients run in a process of their own: a thread of ours would leave copies of its
     * sockets in the child the handler forks, and closing a would not end a's stream. */
    pid_t clients = fork();
    CHECK(clients >= 0);
    if (clients == 0) {
        clients_main(&cl);
        _exit(0);
    }
    weft_spawn_opts o = {.detached = 1};
    CHECK(weft_spawn_ex(stop_when_clients_done, &clients, &o));
    int rc = weft_run();
    if (getpid() != server_pid) {
        /* The child: its one coroutine (the forking handler) ended when a closed, so its
         * weft_run returned 0 with nothing left to run. */
        _exit(rc == 0 && weft_count() == 0 ? 0 : 1);
    }
    CHECK(rc == 0);
    CHECK(WIFEXITED(clients_status) && WEXITSTATUS(clients_status) == 0);
    CHECK(forked_child > 0);
    int status = wait_child(forked_child, 20000);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(weft_server_close(s) == 0);
}

/* ---- A fresh pool and scheduler in the child ---- */

static void *identity(void *arg)
{
    return arg;
}

static int child_port;
static bool child_ok;

static void *child_work(void *arg)
{
    (void)arg;
    void *r = NULL;
    CHECK(weft_offload(identity, (void *)(intptr_t)42, &r) == 0 && (intptr_t)r == 42);
    char addr[64];
    snprintf(addr, sizeof addr, "localhost:%d", child_port); /* a lookup on the pool */
    weft_chan *c = weft_connect(addr, weft_now() + 10000);
    CHECK(c && weft_close(c) == 0);
    child_ok = true;
    return NULL;
}

static bool ran_in_child;

static void *must_not_run_in_the_child(void *arg)
{
    (void)arg;
    if (getpid() != server_pid)
        ran_in_child = true;
    return NULL;
}

static void a_forked_child_gets_its_own_pool_and_scheduler(void)
{
    if (under_qemu()) { /* qemu-user aborts (cpu_exec assertion) when a child forked from a
                         * process with threads starts one: the pool's, here */
        printf("  skipped under qemu-user\n");
        return;
    }
    server_pid = getpid();
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    child_port = weft_listener_port(l);
    void *r;
    weft_co *w = weft_spawn(child_work, NULL); /* the pool and scheduler exist in the parent */
    CHECK(w && weft_join(w, &r, -1) == 0 && child_ok);
    child_ok = false;
    CHECK(weft_offload(identity, NULL, &r) == 0);

    /* Coroutines spawned but not run yet, and one parked: the child runs none of them. */
    weft_co *pending = weft_spawn(must_not_run_in_the_child, NULL);
    CHECK(pending);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        bool ok = weft_count() == 0 && weft_run() == 0 && !ran_in_child;
        weft_co *cw = weft_spawn(child_work, NULL);
        ok = ok && cw && weft_join(cw, NULL, -1) == 0 && child_ok;
        weft_listener_close(l); /* (its copy: valgrind's leak check runs at _exit too) */
        _exit(ok ? 0 : 1);
    }
    int status = wait_child(pid, 20000);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(weft_join(pending, NULL, -1) == 0); /* the parent's still runs, here */
    weft_listener_close(l);
}

/* ---- A wait of the thread's own, outside any coroutine, across a fork ----
 * The thread waits on a thread queue outside any coroutine, running its coroutines meanwhile,
 * when one of them forks. The thread is still there in the child, and so is its wait: it
 * ends when something sends there (a coroutine of the child), at its deadline, or with what
 * another thread of the parent had handed it before the fork; and the child's scheduler stays
 * sound afterwards (a coroutine parked for good is a deadlock weft_run reports). Before the
 * fix the child forgot the wait: its end ran on a freed scheduler (ASan), or left the wait
 * count wrapped so that weft_run slept through the deadlock, or waited forever for a
 * wake-up lost with the parent's inbox. */
enum { CHILD_SENDS, NOBODY_SENDS, THREAD_SENT_BEFORE };
static weft_tqueue *fq;
static atomic_int fq_waiting, fq_sent;

static void *fork_and_send(void *arg)
{
    intptr_t mode = (intptr_t)arg;
    if (mode == THREAD_SENT_BEFORE) {
        /* The thread's wait began (we run inside it): another thread hands it an item, and
         * we fork before the loop has delivered that wake-up. */
        atomic_store(&fq_waiting, 1);
        while (!atomic_load(&fq_sent))
            usleep(100);
    } else {
        CHECK(weft_sleep(10) == 0);
    }
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(20);
        if (mode == CHILD_SENDS)
            CHECK(weft_tqueue_send(fq, (void *)7, -1) == 0);
        return NULL;
    }
    forked_child = pid;
    if (mode != THREAD_SENT_BEFORE)
        CHECK(weft_tqueue_send(fq, (void *)1, -1) == 0);
    return NULL;
}

static void *send_five_once_waited_for(void *arg)
{
    (void)arg;
    while (!atomic_load(&fq_waiting))
        usleep(100);
    CHECK(weft_tqueue_send(fq, (void *)5, -1) == 0); /* to the waiting thread: a claim */
    atomic_store(&fq_sent, 1);
    return NULL;
}

static void *recv_forever(void *arg)
{
    void *item;
    weft_queue_recv(arg, &item, -1);
    return NULL;
}

/* In the child, after its wait: nothing is left, and weft_run still sees a deadlock. */
static bool child_scheduler_is_sound(void)
{
    if (weft_count() != 0)
        return false;
    weft_queue *lq = weft_queue_new(1);
    weft_spawn_opts o = {.detached = 1};
    if (!lq || !weft_spawn_ex(recv_forever, lq, &o))
        return false;
    return weft_run() == -1 && errno == EDEADLK;
}

static void wait_across_fork(intptr_t mode, intptr_t parent_gets, intptr_t child_gets)
{
    server_pid = getpid();
    forked_child = 0;
    CHECK((fq = weft_tqueue_new(1)));
    weft_spawn_opts o = {.detached = 1};
    CHECK(weft_spawn_ex(fork_and_send, (void *)mode, &o));
    pthread_t t;
    if (mode == THREAD_SENT_BEFORE)
        CHECK(pthread_create(&t, NULL, send_five_once_waited_for, NULL) == 0);
    void *item = NULL;
    int rc = weft_tqueue_recv(fq, &item, weft_now() + 1500);
    if (getpid() != server_pid) {
        bool got = child_gets ? rc == 0 && (intptr_t)item == child_gets
                              : rc == -1 && errno == ETIMEDOUT;
        _exit(got && child_scheduler_is_sound() ? 0 : 1);
    }
    CHECK(rc == 0 && (intptr_t)item == parent_gets);
    if (mode == THREAD_SENT_BEFORE)
        CHECK(pthread_join(t, NULL) == 0);
    CHECK(forked_child > 0);
    int status = wait_child(forked_child, 30000);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(weft_count() == 0 && weft_tqueue_free(fq) == 0);
}

static void a_wait_outside_any_coroutine_goes_on_in_a_forked_child(void)
{
#ifdef UNDER_TSAN
    printf("  skipped under ThreadSanitizer: fork from inside a fiber\n");
    return;
#endif
    wait_across_fork(CHILD_SENDS, 1, 7);
    wait_across_fork(NOBODY_SENDS, 1, 0);
    wait_across_fork(THREAD_SENT_BEFORE, 5, 5);
}


/* ---- Channels in a forked child ---- */

/* The audit's case: a coroutine holds a channel's turn in a long write (the peer reads late)
 * when another forks. In the child that channel must be usable: the line it had already
 * received is read (on io_uring, from the parent's buffer ring, which the child no longer
 * uses), the child's line goes out once, and the parent's record is not sent twice. Before
 * the fix the child's write waited for a turn nobody would give back. */
#define INHERIT_BIG (1 << 20)

static weft_chan *inh_c;
static atomic_int inh_writing;
static pid_t inh_child;

struct inh_peer {
    int fd;
    char *data;
    size_t len;
};

static void *inh_peer_main(void *arg)
{
    struct inh_peer *p = arg;
    write_all(p->fd, "req1\nreq2\n", 10);
    usleep(300 * 1000); /* the writer fills the socket and parks, holding the turn */
    size_t cap = INHERIT_BIG + 4096;
    p->data = malloc(cap);
    CHECK(p->data);
    for (;;) {
        CHECK(p->len < cap);
        ssize_t r = read(p->fd, p->data + p->len, cap - p->len);
        CHECK(r >= 0);
        if (r == 0)
            return NULL;
        p->len += (size_t)r;
    }
}

static void *inh_writer(void *arg)
{
    (void)arg;
    size_t len;
    const char *l = weft_gets(inh_c, &len); /* req1; req2 stays in the read buffer */
    CHECK(l && len == 4 && memcmp(l, "req1", 4) == 0);
    char *big = malloc(INHERIT_BIG);
    CHECK(big);
    memset(big, 'a', INHERIT_BIG);
    atomic_store(&inh_writing, 1);
    CHECK(weft_write(inh_c, big, INHERIT_BIG) == INHERIT_BIG);
    free(big);
    return NULL;
}

static void *inh_forker(void *arg)
{
    (void)arg;
    while (!atomic_load(&inh_writing))
        CHECK(weft_sleep(1) == 0);
    CHECK(weft_sleep(50) == 0); /* the writer is parked inside its write */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(20);
        size_t len;
        const char *l = weft_gets(inh_c, &len);
        bool ok = l && len == 4 && memcmp(l, "req2", 4) == 0;
        ok = ok && weft_puts(inh_c, "child") == 0 && weft_close(inh_c) == 0;
        _exit(ok ? 0 : 1);
    }
    inh_child = pid;
    return NULL;
}

static void an_inherited_channel_is_usable_in_the_child(void)
{
#ifdef UNDER_TSAN
    printf("  skipped under ThreadSanitizer: fork from inside a fiber\n");
    return;
#endif
    server_pid = getpid();
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    struct inh_peer peer = {.fd = sv[1]};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, inh_peer_main, &peer) == 0);
    CHECK((inh_c = weft_chan_open(sv[0])));
    CHECK(weft_chan_set_timeouts(inh_c, 10000, 10000) == 0);
    weft_co *w = weft_spawn(inh_writer, NULL), *f = weft_spawn(inh_forker, NULL);
    CHECK(w && f);
    CHECK(weft_join(f, NULL, -1) == 0);
    if (getpid() != server_pid)
        _exit(1); /* (the child ends in inh_forker) */
    CHECK(weft_join(w, NULL, -1) == 0);
    int status = wait_child(inh_child, 20000);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(weft_close(inh_c) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    /* The parent's record once, whole, and the child's line once (the two processes share
     * the socket, so the line may fall anywhere between the record's sends). */
    size_t as = 0, others = 0;
    char rest[16];
    for (size_t i = 0; i < peer.len; i++) {
        if (peer.data[i] == 'a')
            as++;
        else if (others < sizeof rest)
            rest[others++] = peer.data[i];
        else
            others++;
    }
    CHECK(as == INHERIT_BIG && others == 6 && memcmp(rest, "child\n", 6) == 0);
    free(peer.data);
    close(sv[1]);
}

/* ---- A parent that keeps a channel it has read from takes none of the child's input ----
 * On io_uring the parent's multishot receive, armed by its read, would go on taking what
 * arrives after the fork, on the socket the child now reads: a fork pauses it. */

static void *line_echo_peer(void *arg)
{
    int fd = *(int *)arg;
    char line[64];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, line + n, 1);
        if (r <= 0)
            return NULL;
        if (line[n++] == '\n' || n == sizeof line) {
            write_all(fd, line, n);
            n = 0;
        }
    }
}

static bool echoes(weft_chan *c, const char *what)
{
    size_t len;
    const char *l;
    return weft_puts(c, what) == 0 && (l = weft_gets(c, &len)) && len == strlen(what) &&
           memcmp(l, what, len) == 0;
}

static void *parent_keeps_child_reads(void *arg)
{
    weft_chan *c = arg;
    CHECK(echoes(c, "parent before the fork")); /* (the parent's receive is armed now) */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(10); /* (a child whose echo the parent took waits for it until then) */
        _exit(echoes(c, "the child's") ? 0 : 1);
    }
    int status;
    while (waitpid(pid, &status, WNOHANG) == 0)
        CHECK(weft_sleep(2) == 0); /* (the parent's loop runs: its ring takes what it may) */
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(echoes(c, "parent after the fork")); /* its receive starts again */
    return NULL;
}

static void a_parent_that_keeps_a_channel_takes_none_of_the_childs_input(void)
{
#ifdef UNDER_TSAN
    printf("  skipped under ThreadSanitizer: fork from inside a fiber\n");
    return;
#endif
    for (int round = 0; round < 10; round++) {
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, line_echo_peer, &sv[1]) == 0);
        weft_chan *c = weft_chan_open(sv[0]);
        CHECK(c && weft_chan_set_timeouts(c, 10000, 10000) == 0);
        weft_co *k = weft_spawn(parent_keeps_child_reads, c);
        CHECK(k && weft_join(k, NULL, -1) == 0);
        CHECK(weft_close(c) == 0);
        shutdown(sv[1], SHUT_RDWR);
        CHECK(pthread_join(t, NULL) == 0);
        close(sv[1]);
    }
}

const struct test tests[] = {
    {"a_handler_that_forks_keeps_its_client_and_takes_nothing_else",
     a_handler_that_forks_keeps_its_client_and_takes_nothing_else, 0},
    {"a_forked_child_gets_its_own_pool_and_scheduler",
     a_forked_child_gets_its_own_pool_and_scheduler, 0},
    {"a_wait_outside_any_coroutine_goes_on_in_a_forked_child",
     a_wait_outside_any_coroutine_goes_on_in_a_forked_child, 0},
    {"an_inherited_channel_is_usable_in_the_child", an_inherited_channel_is_usable_in_the_child,
     0},
    {"a_parent_that_keeps_a_channel_takes_none_of_the_childs_input",
     a_parent_that_keeps_a_channel_takes_none_of_the_childs_input, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
