/* Across threads: offload keeps the loop running and survives cancellation, a slow resolver
 * stalls nothing, thread queues connect schedulers and plain threads, and weft_serve_threads
 * spreads clients over several event loops. Run under ThreadSanitizer in CI. */
#include "harness.h"
#include "echoload.h"
#include "../src/internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int ticks;
static atomic_int busy;

/* Counts loop turns while something else waits: proof the loop kept running. */
static void *ticker(void *arg)
{
    (void)arg;
    while (weft_sleep(2) == 0)
        ticks++;
    return NULL;
}

static void *slow_call(void *arg)
{
    usleep(200 * 1000);
    atomic_store(&busy, 0);
    return arg;
}

static void *offloader(void *arg)
{
    (void)arg;
    void *r;
    atomic_store(&busy, 1);
    CHECK(weft_offload(slow_call, (void *)42, &r) == 0 && (intptr_t)r == 42);
    return NULL;
}

static void offload_parks_only_the_caller(void)
{
    weft_co *t = weft_spawn(ticker, NULL);
    weft_co *o = weft_spawn(offloader, NULL);
    CHECK(t && o && weft_join(o, NULL, -1) == 0);
    CHECK(ticks >= 10); /* 200 ms of 2 ms sleeps went on meanwhile */
    weft_cancel(t);
    CHECK(weft_join(t, NULL, -1) == 0);
    void *r; /* outside a coroutine it simply runs */
    CHECK(weft_offload(slow_call, (void *)7, &r) == 0 && (intptr_t)r == 7);
}

static void *cancelled_offloader(void *arg)
{
    (void)arg;
    void *r;
    atomic_store(&busy, 1);
    CHECK(weft_offload(slow_call, NULL, &r) == -1 && errno == ECANCELED);
    CHECK(atomic_load(&busy) == 1); /* we left before the call ended */
    return NULL;
}

static void offload_cancel_leaves_the_call_behind(void)
{
    weft_co *o = weft_spawn(cancelled_offloader, NULL);
    CHECK(o);
    weft_yield();
    weft_cancel(o);
    CHECK(weft_join(o, NULL, -1) == 0);
    while (atomic_load(&busy)) /* the worker finishes and frees the job on its own */
        usleep(1000);
}

static void *connect_by_name(void *arg)
{
    weft_chan *c = weft_connect(arg, weft_now() + 10000);
    CHECK(c);
    CHECK(weft_puts(c, "hi") == 0);
    weft_close(c);
    return NULL;
}

static void slow_resolver_stalls_nothing(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    char addr[64];
    snprintf(addr, sizeof addr, "localhost:%d", weft_listener_port(l));
    net_resolve_delay_ms = 300; /* every lookup takes 300 ms, on an offload thread */
    ticks = 0;
    weft_co *t = weft_spawn(ticker, NULL);
    weft_co *c = weft_spawn(connect_by_name, addr);
    CHECK(t && c && weft_join(c, NULL, -1) == 0);
    CHECK(ticks >= 20);
    weft_cancel(t);
    CHECK(weft_join(t, NULL, -1) == 0);
    weft_listener_close(l);
    net_resolve_delay_ms = 0;
}

/* weft_connect's deadline covers the name lookup too: the lookup goes on, on the pool, and
 * its result is dropped. In a coroutine and outside one. */
static void *connect_by_name_in_time(void *arg)
{
    CHECK(weft_connect(arg, weft_now() + 100) == NULL && errno == ETIMEDOUT);
    return NULL;
}

static void connect_deadline_covers_the_name_lookup(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    char addr[64];
    snprintf(addr, sizeof addr, "localhost:%d", weft_listener_port(l));
    net_resolve_delay_ms = 600;
    weft_co *c = weft_spawn(connect_by_name_in_time, addr);
    CHECK(c && weft_join(c, NULL, -1) == 0);
    connect_by_name_in_time(addr); /* outside: the same */
    /* Without a deadline the lookup is simply waited for. */
    weft_chan *ch = weft_connect(addr, -1);
    CHECK(ch && weft_close(ch) == 0);
    usleep(700 * 1000); /* the abandoned lookups end and are freed on the pool (ASan sees it) */
    net_resolve_delay_ms = 0;
    weft_listener_close(l);
}

/* A blocking-style program: one weft_connect to a host name with a deadline, outside any
 * coroutine. The lookup's wait on the pool needs the thread's scheduler (its loop and
 * inbox); once the call returns nothing of it may be left: no descriptor (epoll, eventfd),
 * no memory (LeakSanitizer), and weft_set_backend still free to choose. Before the fix the
 * scheduler was released while the wait still counted, and stayed. */
static void a_connect_by_name_outside_any_coroutine_leaves_nothing(void)
{
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l);
    char addr[64];
    snprintf(addr, sizeof addr, "localhost:%d", weft_listener_port(l));
    int before = count_open_fds();
    weft_chan *c = weft_connect(addr, weft_now() + 10000);
    CHECK(c && weft_close(c) == 0);
    CHECK(count_open_fds() == before && weft_count() == 0);
    CHECK(weft_set_backend("auto") == 0); /* no scheduler runs on this thread */
    /* The same when the deadline ends the wait before the lookup does. */
    net_resolve_delay_ms = 300;
    CHECK(weft_connect(addr, weft_now() + 50) == NULL && errno == ETIMEDOUT);
    CHECK(count_open_fds() == before && weft_set_backend("auto") == 0);
    usleep(400 * 1000); /* the abandoned lookup ends and is freed on the pool */
    net_resolve_delay_ms = 0;
    weft_listener_close(l);
}

/* ---- thread queues ---- */

struct pingpong {
    weft_tqueue *ping, *pong;
    int rounds;
};

static void *echo_items(void *arg)
{
    struct pingpong *pp = arg;
    void *item;
    while (weft_tqueue_recv(pp->ping, &item, -1) == 0)
        CHECK(weft_tqueue_send(pp->pong, (void *)((intptr_t)item + 1), -1) == 0);
    CHECK(errno == EPIPE);
    return NULL;
}

static void *other_scheduler(void *arg)
{
    weft_co *co = weft_spawn(echo_items, arg); /* this thread's own scheduler */
    CHECK(co && weft_join(co, NULL, -1) == 0);
    return NULL;
}

static void *ping(void *arg)
{
    struct pingpong *pp = arg;
    for (intptr_t i = 0; i < pp->rounds; i++) {
        void *back;
        CHECK(weft_tqueue_send(pp->ping, (void *)i, -1) == 0);
        CHECK(weft_tqueue_recv(pp->pong, &back, -1) == 0 && (intptr_t)back == i + 1);
    }
    return NULL;
}

static void tqueue_ping_pong_between_schedulers(void)
{
    struct pingpong pp = {weft_tqueue_new(4), weft_tqueue_new(4), test_scale(20000)};
    CHECK(pp.ping && pp.pong);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, other_scheduler, &pp) == 0);
    ticks = 0;
    weft_co *tk = weft_spawn(ticker, NULL);
    weft_co *p = weft_spawn(ping, &pp);
    CHECK(tk && p && weft_join(p, NULL, -1) == 0);
    weft_tqueue_close(pp.ping);
    CHECK(pthread_join(t, NULL) == 0);
    weft_cancel(tk);
    CHECK(weft_join(tk, NULL, -1) == 0);
    CHECK(weft_tqueue_free(pp.ping) == 0 && weft_tqueue_free(pp.pong) == 0);
}

static void *plain_producer(void *arg)
{
    weft_tqueue *q = arg;
    for (intptr_t i = 1; i <= 1000; i++)
        CHECK(weft_tqueue_send(q, (void *)i, -1) == 0); /* blocks: no scheduler here */
    weft_tqueue_close(q);
    return NULL;
}

static void *coroutine_consumer(void *arg)
{
    weft_tqueue *q = arg;
    intptr_t expect = 1;
    void *item;
    while (weft_tqueue_recv(q, &item, -1) == 0)
        CHECK((intptr_t)item == expect++);
    CHECK(errno == EPIPE && expect == 1001);
    return NULL;
}

static void *plain_consumer(void *arg)
{
    weft_tqueue *q = arg;
    void *item;
    intptr_t sum = 0;
    while (weft_tqueue_recv(q, &item, -1) == 0)
        sum += (intptr_t)item;
    return (void *)sum;
}

static void *coroutine_producer(void *arg)
{
    for (intptr_t i = 1; i <= 1000; i++)
        CHECK(weft_tqueue_send(arg, (void *)i, -1) == 0);
    weft_tqueue_close(arg);
    return NULL;
}

static void tqueue_with_plain_threads(void)
{
    weft_tqueue *q = weft_tqueue_new(2);
    pthread_t t;
    CHECK(q && pthread_create(&t, NULL, plain_producer, q) == 0);
    weft_co *c = weft_spawn(coroutine_consumer, q);
    CHECK(c && weft_join(c, NULL, -1) == 0);
    CHECK(pthread_join(t, NULL) == 0 && weft_tqueue_free(q) == 0);

    q = weft_tqueue_new(2);
    void *sum;
    CHECK(q && pthread_create(&t, NULL, plain_consumer, q) == 0);
    weft_co *p = weft_spawn(coroutine_producer, q);
    CHECK(p && weft_join(p, NULL, -1) == 0);
    CHECK(pthread_join(t, &sum) == 0 && (intptr_t)sum == 500500);
    CHECK(weft_tqueue_free(q) == 0);
}

static int tq_phase;

static void *tq_timeout_then_cancel(void *arg)
{
    weft_tqueue *q = arg;
    void *item;
    int64_t deadline = weft_now() + 20;
    CHECK(weft_tqueue_recv(q, &item, deadline) == -1 && errno == ETIMEDOUT);
    CHECK(weft_now() >= deadline);
    tq_phase = 1;
    CHECK(weft_tqueue_recv(q, &item, -1) == -1 && errno == ECANCELED);
    return NULL;
}

static void *plain_waits_for_close(void *arg)
{
    void *item;
    CHECK(weft_tqueue_recv(arg, &item, -1) == -1 && errno == EPIPE);
    return NULL;
}

static void tqueue_timeouts_cancel_and_close(void)
{
    weft_tqueue *q = weft_tqueue_new(1);
    weft_co *c = weft_spawn(tq_timeout_then_cancel, q);
    CHECK(q && c);
    while (tq_phase == 0)
        weft_yield();
    CHECK(weft_tqueue_free(q) == -1 && errno == EBUSY); /* it waits in its second recv */
    weft_cancel(c);
    CHECK(weft_join(c, NULL, -1) == 0);
    void *item;
    CHECK(weft_tqueue_recv(q, &item, weft_now() + 20) == -1 && errno == ETIMEDOUT); /* plain */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, plain_waits_for_close, q) == 0);
    usleep(20000);
    weft_tqueue_close(q);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(weft_tqueue_free(q) == 0);
}

/* Outside any coroutine, a thread-queue wait on a thread that has coroutines runs them
 * meanwhile, as weft_queue's waits do: here the sender is one of them. */
static void *send_three(void *arg)
{
    for (intptr_t i = 1; i <= 3; i++)
        CHECK(weft_tqueue_send(arg, (void *)i, -1) == 0); /* capacity 1: parks twice */
    return NULL;
}

static void *recv_three(void *arg)
{
    void *item;
    for (intptr_t i = 1; i <= 3; i++)
        CHECK(weft_tqueue_recv(arg, &item, -1) == 0 && (intptr_t)item == i);
    return NULL;
}

static void *send_from_thread(void *arg)
{
    usleep(20000);
    CHECK(weft_tqueue_send(arg, (void *)(intptr_t)7, -1) == 0);
    return NULL;
}

static void tqueue_waits_outside_a_coroutine_run_the_scheduler(void)
{
    weft_tqueue *q = weft_tqueue_new(1);
    CHECK(q);
    weft_co *p = weft_spawn(send_three, q);
    CHECK(p);
    void *item;
    for (intptr_t i = 1; i <= 3; i++)
        CHECK(weft_tqueue_recv(q, &item, -1) == 0 && (intptr_t)item == i);
    CHECK(weft_join(p, NULL, -1) == 0);

    /* The other way round, and with a deadline. */
    weft_co *r = weft_spawn(recv_three, q);
    CHECK(r);
    for (intptr_t i = 1; i <= 3; i++)
        CHECK(weft_tqueue_send(q, (void *)i, weft_now() + 10000) == 0);
    CHECK(weft_join(r, NULL, -1) == 0);

    /* A wait that times out while a coroutine lives, then one ended by another thread. */
    weft_co *tk = weft_spawn(ticker, NULL);
    CHECK(tk);
    ticks = 0;
    int64_t deadline = weft_now() + 30;
    CHECK(weft_tqueue_recv(q, &item, deadline) == -1 && errno == ETIMEDOUT);
    CHECK(weft_now() >= deadline && ticks > 0); /* the ticker ran while we waited */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, send_from_thread, q) == 0);
    CHECK(weft_tqueue_recv(q, &item, -1) == 0 && (intptr_t)item == 7);
    CHECK(pthread_join(t, NULL) == 0);
    weft_cancel(tk);
    CHECK(weft_join(tk, NULL, -1) == 0);
    CHECK(weft_tqueue_free(q) == 0);
}

/* A thread that ends with coroutines parked frees its scheduler: they are cancelled and
 * close what they hold; the backend's descriptors and the stacks go. */
static void *read_until_cancelled(void *arg)
{
    weft_chan *c = weft_chan_open(*(int *)arg);
    CHECK(c);
    size_t len;
    CHECK(weft_gets(c, &len) == NULL && errno == ECANCELED);
    weft_close(c); /* its descriptor goes with it */
    return NULL;
}

static void *sleep_forever(void *arg)
{
    (void)arg;
    while (weft_sleep(1000000) == 0) {
    }
    return NULL;
}

static void *thread_leaving_parked_coroutines(void *arg)
{
    int *fds = arg;
    weft_spawn_opts o = {.detached = 1};
    CHECK(weft_spawn_ex(read_until_cancelled, &fds[0], &o));
    CHECK(weft_spawn(sleep_forever, NULL)); /* joinable, never joined */
    CHECK(weft_yield() == 0); /* both run and park */
    CHECK(weft_count() == 2);
    return NULL; /* ends with both parked */
}

static void a_thread_that_ends_with_coroutines_parked_frees_its_scheduler(void)
{
    int before = count_open_fds();
    int n = test_scale(300);
    for (int i = 0; i < n; i++) {
        int p[2];
        CHECK(pipe(p) == 0);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, thread_leaving_parked_coroutines, p) == 0);
        CHECK(pthread_join(t, NULL) == 0);
        close(p[1]); /* (p[0] was closed by its coroutine, cancelled at the thread's exit) */
    }
    CHECK(count_open_fds() == before); /* no backend, ring, eventfd or pipe left behind */
}

/* A thread that ends while a coroutine joins another: the joiner, cancelled, gives up first
 * (it was spawned last, so the exit cancels it first), and the joinee ends after it with
 * nobody left to join it: its struct must be freed too. Before the fix it leaked (256 bytes
 * a thread: LeakSanitizer, and the heap's growth in plain builds). */
static void *join_until_cancelled(void *arg)
{
    CHECK(weft_join(arg, NULL, -1) == -1 && errno == ECANCELED);
    return NULL;
}

static void *thread_whose_joiner_gives_up(void *arg)
{
    (void)arg;
    weft_co *joinee = weft_spawn(sleep_forever, NULL);
    weft_spawn_opts o = {.detached = 1};
    CHECK(joinee && weft_spawn_ex(join_until_cancelled, joinee, &o));
    CHECK(weft_yield() == 0); /* both park */
    return NULL;
}

static size_t heap_in_use(void)
{
    return mallinfo2().uordblks;
}

static void a_joinee_whose_joiner_gave_up_at_thread_exit_is_freed(void)
{
    pthread_t t;
    CHECK(pthread_create(&t, NULL, thread_whose_joiner_gives_up, NULL) == 0); /* warm-up */
    CHECK(pthread_join(t, NULL) == 0);
    size_t before = heap_in_use();
    int n = test_scale(200);
    for (int i = 0; i < n; i++) {
        CHECK(pthread_create(&t, NULL, thread_whose_joiner_gives_up, NULL) == 0);
        CHECK(pthread_join(t, NULL) == 0);
    }
    size_t after = heap_in_use();
    printf("  heap in use: %zu -> %zu bytes after %d threads\n", before, after, n);
    if (memory_is_measurable())
        CHECK(after < before + (size_t)n * 64); /* a leaked struct is 256 bytes a thread */
}

/* A thread that ends with a server still running (as a thread of weft_serve_threads would
 * if its loop were left): its acceptor, cancelled, closes the listener, so the port stops
 * taking clients nobody would serve, and the handlers' channels close; the server is freed
 * and no descriptor stays. Before the fix the port kept accepting connections that hung. */
static atomic_int exit_server_port, exit_server_go;

static void echo_lines(weft_chan *c, void *arg)
{
    (void)arg;
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len)) != NULL)
        weft_putln(c, line, len);
}

static void *stop_when_told(void *arg)
{
    (void)arg;
    while (!atomic_load(&exit_server_go))
        CHECK(weft_sleep(1) == 0);
    weft_stop();
    return NULL;
}

static void *thread_serving_then_leaving(void *arg)
{
    (void)arg;
    weft_listener *l = weft_listen("127.0.0.1:0", 0);
    CHECK(l && weft_server_start(l, echo_lines, NULL));
    atomic_store(&exit_server_port, weft_listener_port(l));
    weft_spawn_opts o = {.detached = 1};
    CHECK(weft_spawn_ex(stop_when_told, NULL, &o));
    CHECK(weft_run() == 0); /* serves until told to stop */
    return NULL; /* ends: the acceptor and a handler are parked */
}

static void a_thread_that_ends_with_a_server_running_closes_its_listener(void)
{
    int before = count_open_fds();
    atomic_store(&exit_server_port, 0);
    atomic_store(&exit_server_go, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, thread_serving_then_leaving, NULL) == 0);
    while (!atomic_load(&exit_server_port))
        usleep(1000);
    int port = atomic_load(&exit_server_port);
    int fd = tcp_connect_loopback(port);
    char answer[16];
    ask_line(fd, "hello", answer, sizeof answer, 10000); /* a handler serves it */
    CHECK(strcmp(answer, "hello") == 0);
    atomic_store(&exit_server_go, 1);
    CHECK(pthread_join(t, NULL) == 0);
    char b;
    CHECK(readable_within(fd, 10000) && read(fd, &b, 1) == 0); /* its channel was closed */
    close(fd);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(c, (struct sockaddr *)&sin, sizeof sin) == -1 && errno == ECONNREFUSED);
    close(c);
    CHECK(count_open_fds() == before);
}

/* Threads come and go, four at a time, each with its own scheduler (and, on io_uring, its
 * own ring, often mapped where an ended thread's was): every round trip completes, and under
 * ThreadSanitizer nothing is reported (the ring's reuse is ordered; see backend_uring.c). */
static void *echo_one_line(void *arg)
{
    weft_chan *c = weft_chan_open(*(int *)arg);
    CHECK(c);
    size_t len;
    const char *l = weft_gets(c, &len);
    CHECK(l && weft_putln(c, l, len) == 0);
    CHECK(weft_close(c) == 0);
    return NULL;
}

static void *short_lived_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++) {
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        weft_co *co = weft_spawn(echo_one_line, &sv[0]);
        CHECK(co && weft_yield() == 0);
        write_all(sv[1], "hi\n", 3);
        CHECK(weft_join(co, NULL, -1) == 0);
        char b[3];
        read_exact_timeout(sv[1], b, 3, 10000);
        CHECK(memcmp(b, "hi\n", 3) == 0);
        close(sv[1]);
    }
    return NULL;
}

static void schedulers_of_short_lived_threads_come_and_go(void)
{
    int rounds = test_scale(50);
    for (int r = 0; r < rounds; r++) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            CHECK(pthread_create(&t[i], NULL, short_lived_thread, NULL) == 0);
        for (int i = 0; i < 4; i++)
            CHECK(pthread_join(t[i], NULL) == 0);
    }
}

/* ---- weft_serve_threads ---- */

static pthread_t served_by[2];
static pthread_mutex_t served_mu = PTHREAD_MUTEX_INITIALIZER;

static void note_thread_and_echo(weft_chan *c, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&served_mu);
    pthread_t me = pthread_self();
    if (!pthread_equal(served_by[0], me) && !served_by[0])
        served_by[0] = me;
    else if (!pthread_equal(served_by[0], me))
        served_by[1] = me;
    pthread_mutex_unlock(&served_mu);
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len))) {
        if (strcmp(line, "threads") == 0) {
            pthread_mutex_lock(&served_mu);
            int n = (served_by[0] != 0) + (served_by[1] != 0);
            pthread_mutex_unlock(&served_mu);
            weft_printf(c, "%d\n", n);
        } else {
            weft_putln(c, line, len);
        }
    }
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    CHECK(bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
    close(fd);
    return ntohs(sin.sin_port);
}

/* Listening TCP sockets on port, from /proc/net/tcp (state 0A is LISTEN). */
static int listeners_on(int port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    CHECK(f);
    char line[512];
    int n = 0;
    unsigned lport, state;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, " %*d: %*x:%x %*x:%*x %x", &lport, &state) == 2 && lport == (unsigned)port &&
            state == 0x0A)
            n++;
    fclose(f);
    return n;
}

static void serve_threads_spreads_clients_over_loops(void)
{
    int port = free_port();
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char addr[64];
        snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
        exit(weft_serve_threads(addr, note_thread_and_echo, NULL, 2) == 0 ? 0 : 1);
    }
    int fd = -1;
    for (int i = 0; i < 500 && fd < 0; i++) { /* until it listens */
        fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0) {
            close(fd);
            fd = -1;
            usleep(10000);
        }
    }
    CHECK(fd >= 0);
    for (int i = 0; i < 1000 && listeners_on(port) < 2; i++) /* both threads listen */
        usleep(10000);
    CHECK(listeners_on(port) == 2);
    struct echoload_opts o = {.host = "127.0.0.1", .port = port, .conns = test_scale(200),
                              .lines = 50, .max_len = 1000, .seed = 5, .random_chunks = 1,
                              .timeout_ms = 120000};
    struct echoload_result r;
    int rc = echoload_run(&o, &r);
    if (rc != 0)
        fprintf(stderr, "  echoload: %s\n", r.error);
    CHECK(rc == 0);
    write_all(fd, "threads\n", 8);
    char answer[8];
    read_exact_timeout(fd, answer, 2, 20000);
    CHECK(answer[0] == '2'); /* both loops served clients */
    close(fd);
    kill(pid, SIGTERM);
    int status = 0;
    pid_t done = 0;
    for (int i = 0; i < 600 && (done = waitpid(pid, &status, WNOHANG)) == 0; i++)
        usleep(100000); /* up to 60 s: the grace period is 5 */
    if (done == 0) {
        fprintf(stderr, "  the server did not stop on SIGTERM\n");
        stop_program(pid, SIGKILL);
    }
    CHECK(done == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

const struct test tests[] = {
    {"offload_parks_only_the_caller", offload_parks_only_the_caller, 0},
    {"offload_cancel_leaves_the_call_behind", offload_cancel_leaves_the_call_behind, 0},
    {"slow_resolver_stalls_nothing", slow_resolver_stalls_nothing, 0},
    {"connect_deadline_covers_the_name_lookup", connect_deadline_covers_the_name_lookup, 0},
    {"tqueue_ping_pong_between_schedulers", tqueue_ping_pong_between_schedulers, 120},
    {"tqueue_with_plain_threads", tqueue_with_plain_threads, 0},
    {"tqueue_timeouts_cancel_and_close", tqueue_timeouts_cancel_and_close, 0},
    {"a_thread_that_ends_with_coroutines_parked_frees_its_scheduler",
     a_thread_that_ends_with_coroutines_parked_frees_its_scheduler, 0},
    {"schedulers_of_short_lived_threads_come_and_go",
     schedulers_of_short_lived_threads_come_and_go, 0},
    {"a_joinee_whose_joiner_gave_up_at_thread_exit_is_freed",
     a_joinee_whose_joiner_gave_up_at_thread_exit_is_freed, 0},
    {"a_thread_that_ends_with_a_server_running_closes_its_listener",
     a_thread_that_ends_with_a_server_running_closes_its_listener, 0},
    {"a_connect_by_name_outside_any_coroutine_leaves_nothing",
     a_connect_by_name_outside_any_coroutine_leaves_nothing, 0},
    {"tqueue_waits_outside_a_coroutine_run_the_scheduler",
     tqueue_waits_outside_a_coroutine_run_the_scheduler, 20},
    {"serve_threads_spreads_clients_over_loops", serve_threads_spreads_clients_over_loops, 120},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
