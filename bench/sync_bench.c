/* sync_bench: weft's sync primitives against what a C programmer would write without weft.
 *
 * Every row compares a weft figure with a baseline measured in the same run: each repetition
 * measures every case once (weft and baselines alternate, the order rotating from one
 * repetition to the next), and the table shows the median of the repetitions. The ratio is
 * weft / baseline in operations per second, so above 1 means weft is faster.
 *
 * Cases (a "round trip" is one item there and one back):
 *   queue       two coroutines of one scheduler ping-pong through two weft_queues (capacity 1)
 *   pipe        two threads ping-pong 1 byte through two pipes (write, then blocking read)
 *   condvar     two threads ping-pong a token under a pthread mutex, one condvar per side
 *   tqueue      two threads, each running a scheduler with one coroutine, ping-pong through
 *               two weft_tqueues (capacity 1)
 *   wmutex N    N coroutines take turns on a weft_mutex; each lock is a hand-off (FIFO)
 *   pmutex      two threads take turns on a pthread mutex (turn flag + condvar per side, so
 *               each lock is a real hand-off to the other thread)
 *   offload     a coroutine calls weft_offload(trivial function) in a loop
 *   cvpool      the same job handed to a pool of threads through a mutex + condvar queue, the
 *               caller waiting for the answer on a condvar (weft's pool size: 4 threads)
 *   yield       two coroutines call weft_yield in turn: ns per yield, for information
 *
 * usage: sync_bench [-q] [-r REPS] [-t SECONDS] [-c CASE]
 *   -q  quick (CI): 3 repetitions of 0.05 s per case
 *   -r  repetitions (default 7), -t  seconds per measurement (default 0.3)
 *   -c  measure only the cases, or the rows (both figures), whose name contains CASE (e.g.
 *       -c offload, or -c weft_offload alone for perf); rows missing a figure are not shown
 * Exits 1 if any operation fails or an item comes back wrong. A watchdog alarm bounds the
 * whole run.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <weft.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define MAX_REPS 51
#define CHECK_EVERY 64 /* operations between two clock reads */

static double seconds = 0.3; /* per measurement */

static _Noreturn void die(const char *what)
{
    fprintf(stderr, "sync_bench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static _Noreturn void die_msg(const char *what)
{
    fprintf(stderr, "sync_bench: %s\n", what);
    exit(1);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}


static void xpthread_create(pthread_t *t, void *(*fn)(void *), void *arg)
{
    int e = pthread_create(t, NULL, fn, arg);
    if (e != 0) {
        errno = e;
        die("pthread_create");
    }
}

/* A measurement's outcome: ops completed over ns. */
typedef struct {
    uint64_t ops;
    int64_t ns;
} result;

static double rate(result r)
{
    return r.ns > 0 ? (double)r.ops * 1e9 / (double)r.ns : 0;
}

/* ---- weft_queue ping-pong: two coroutines, one scheduler ---------------------------- */

typedef struct {
    weft_queue *there, *back;
    weft_tqueue *tthere, *tback;
    result r;
} pingpong;

static void *queue_echoer(void *p)
{
    pingpong *pp = p;
    for (;;) {
        void *item;
        if (weft_queue_recv(pp->there, &item, -1) != 0)
            die("weft_queue_recv");
        if (weft_queue_send(pp->back, item, -1) != 0)
            die("weft_queue_send");
        if (!item)
            return NULL;
    }
}

static void *queue_starter(void *p)
{
    pingpong *pp = p;
    int64_t t0 = now_ns(), end = t0 + (int64_t)(seconds * 1e9), t;
    uint64_t n = 0;
    for (;;) {
        void *item = (void *)(uintptr_t)(n + 1), *got;
        if (weft_queue_send(pp->there, item, -1) != 0 || weft_queue_recv(pp->back, &got, -1) != 0)
            die("weft_queue ping-pong");
        if (got != item)
            die_msg("weft_queue: wrong item back");
        n++;
        if (n % CHECK_EVERY == 0 && (t = now_ns()) >= end)
            break;
    }
    pp->r = (result){n, t - t0};
    void *got;
    if (weft_queue_send(pp->there, NULL, -1) != 0 || weft_queue_recv(pp->back, &got, -1) != 0)
        die("weft_queue stop");
    return NULL;
}

static result m_queue(void)
{
    pingpong pp = {.there = weft_queue_new(1), .back = weft_queue_new(1)};
    if (!pp.there || !pp.back)
        die("weft_queue_new");
    weft_co *a = weft_spawn(queue_echoer, &pp), *b = weft_spawn(queue_starter, &pp);
    if (!a || !b)
        die("weft_spawn");
    if (weft_join(b, NULL, -1) != 0 || weft_join(a, NULL, -1) != 0)
        die("weft_join");
    weft_queue_free(pp.there);
    weft_queue_free(pp.back);
    return pp.r;
}

/* ---- weft_tqueue ping-pong: two schedulers on two threads ---------------------------- */

static void *tqueue_echoer(void *p)
{
    pingpong *pp = p;
    for (;;) {
        void *item;
        if (weft_tqueue_recv(pp->tthere, &item, -1) != 0)
            die("weft_tqueue_recv");
        if (weft_tqueue_send(pp->tback, item, -1) != 0)
            die("weft_tqueue_send");
        if (!item)
            return NULL;
    }
}

static void *tqueue_starter(void *p)
{
    pingpong *pp = p;
    int64_t t0 = now_ns(), end = t0 + (int64_t)(seconds * 1e9), t;
    uint64_t n = 0;
    for (;;) {
        void *item = (void *)(uintptr_t)(n + 1), *got;
        if (weft_tqueue_send(pp->tthere, item, -1) != 0 ||
            weft_tqueue_recv(pp->tback, &got, -1) != 0)
            die("weft_tqueue ping-pong");
        if (got != item)
            die_msg("weft_tqueue: wrong item back");
        n++;
        if (n % CHECK_EVERY == 0 && (t = now_ns()) >= end)
            break;
    }
    pp->r = (result){n, t - t0};
    void *got;
    if (weft_tqueue_send(pp->tthere, NULL, -1) != 0 ||
        weft_tqueue_recv(pp->tback, &got, -1) != 0)
        die("weft_tqueue stop");
    return NULL;
}

/* A thread that runs one coroutine on its own scheduler. */
typedef struct {
    weft_fn fn;
    void *arg;
} sched_thread;

static void *sched_thread_main(void *p)
{
    sched_thread *st = p;
    if (!weft_spawn(st->fn, st->arg))
        die("weft_spawn");
    if (weft_run() != 0)
        die("weft_run");
    return NULL;
}

static result m_tqueue(void)
{
    pingpong pp = {.tthere = weft_tqueue_new(1), .tback = weft_tqueue_new(1)};
    if (!pp.tthere || !pp.tback)
        die("weft_tqueue_new");
    sched_thread echoer = {tqueue_echoer, &pp}, starter = {tqueue_starter, &pp};
    pthread_t t;
    xpthread_create(&t, sched_thread_main, &echoer);
    sched_thread_main(&starter);
    pthread_join(t, NULL);
    if (weft_tqueue_free(pp.tthere) != 0 || weft_tqueue_free(pp.tback) != 0)
        die("weft_tqueue_free");
    return pp.r;
}

/* ---- Pipe ping-pong: two threads ----------------------------------------------------- */

typedef struct {
    int there[2], back[2];
} pipes;

static void *pipe_echoer(void *p)
{
    pipes *pp = p;
    for (;;) {
        char c;
        if (read(pp->there[0], &c, 1) != 1)
            die("pipe read");
        if (write(pp->back[1], &c, 1) != 1)
            die("pipe write");
        if (c == 0)
            return NULL;
    }
}

static result m_pipe(void)
{
    pipes pp;
    if (pipe(pp.there) != 0 || pipe(pp.back) != 0)
        die("pipe");
    pthread_t t;
    xpthread_create(&t, pipe_echoer, &pp);
    int64_t t0 = now_ns(), end = t0 + (int64_t)(seconds * 1e9), tn;
    uint64_t n = 0;
    for (;;) {
        char c = (char)(n % 255 + 1), got;
        if (write(pp.there[1], &c, 1) != 1 || read(pp.back[0], &got, 1) != 1)
            die("pipe ping-pong");
        if (got != c)
            die_msg("pipe: wrong byte back");
        n++;
        if (n % CHECK_EVERY == 0 && (tn = now_ns()) >= end)
            break;
    }
    char c = 0;
    if (write(pp.there[1], &c, 1) != 1 || read(pp.back[0], &c, 1) != 1)
        die("pipe stop");
    pthread_join(t, NULL);
    close(pp.there[0]);
    close(pp.there[1]);
    close(pp.back[0]);
    close(pp.back[1]);
    return (result){n, tn - t0};
}

/* ---- Mutex + condvar ping-pong (also the pthread mutex hand-off): two threads ---------- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv[2];
    int turn;      /* whose move it is: 0 or 1 */
    uint64_t item; /* the token being passed */
    int stop;
} cvpair;

/* Side 1: wait for its turn, take the token, hand it back. */
static void *cv_echoer(void *p)
{
    cvpair *cp = p;
    pthread_mutex_lock(&cp->mu);
    for (;;) {
        while (cp->turn != 1)
            pthread_cond_wait(&cp->cv[1], &cp->mu);
        int stop = cp->stop;
        cp->turn = 0;
        pthread_cond_signal(&cp->cv[0]);
        if (stop)
            break;
    }
    pthread_mutex_unlock(&cp->mu);
    return NULL;
}

static result m_condvar(void)
{
    cvpair cp = {.mu = PTHREAD_MUTEX_INITIALIZER,
                 .cv = {PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER}};
    pthread_t t;
    xpthread_create(&t, cv_echoer, &cp);
    int64_t t0 = now_ns(), end = t0 + (int64_t)(seconds * 1e9), tn;
    uint64_t n = 0;
    pthread_mutex_lock(&cp.mu);
    for (;;) {
        cp.item = n + 1;
        cp.turn = 1;
        pthread_cond_signal(&cp.cv[1]);
        while (cp.turn != 0)
            pthread_cond_wait(&cp.cv[0], &cp.mu);
        if (cp.item != n + 1)
            die_msg("condvar: wrong item back");
        n++;
        if (n % CHECK_EVERY == 0 && (tn = now_ns()) >= end)
            break;
    }
    cp.stop = 1;
    cp.turn = 1;
    pthread_cond_signal(&cp.cv[1]);
    while (cp.turn != 0)
        pthread_cond_wait(&cp.cv[0], &cp.mu);
    pthread_mutex_unlock(&cp.mu);
    pthread_join(t, NULL);
    return (result){n, tn - t0};
}

/* pthread mutex hand-off: two threads alternate holding the mutex; each increments the shared
 * counter once per turn, so every acquisition follows the other thread's release. */
typedef struct {
    cvpair cp;
    uint64_t handoffs;
    int64_t t0, t1;
} pmutex_run;

typedef struct {
    pmutex_run *pr;
    int me;
} pmutex_arg;

static void *pmutex_thread(void *p)
{
    pmutex_arg *a = p;
    pmutex_run *pr = a->pr;
    cvpair *cp = &pr->cp;
    int me = a->me, other = 1 - me;
    int64_t end = pr->t0 + (int64_t)(seconds * 1e9);
    pthread_mutex_lock(&cp->mu);
    for (;;) {
        while (cp->turn != me && !cp->stop)
            pthread_cond_wait(&cp->cv[me], &cp->mu);
        if (cp->stop)
            break;
        pr->handoffs++; /* the critical section: we hold the mutex on our turn */
        if (pr->handoffs % CHECK_EVERY == 0 && (pr->t1 = now_ns()) >= end) {
            cp->stop = 1;
            pthread_cond_signal(&cp->cv[other]);
            break;
        }
        cp->turn = other;
        pthread_cond_signal(&cp->cv[other]);
    }
    pthread_mutex_unlock(&cp->mu);
    return NULL;
}

static result m_pmutex(void)
{
    pmutex_run pr = {.cp = {.mu = PTHREAD_MUTEX_INITIALIZER,
                            .cv = {PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER}}};
    pmutex_arg a0 = {&pr, 0}, a1 = {&pr, 1};
    pthread_t t;
    pr.t0 = now_ns();
    xpthread_create(&t, pmutex_thread, &a1);
    pmutex_thread(&a0);
    pthread_join(t, NULL);
    return (result){pr.handoffs, pr.t1 - pr.t0};
}

/* ---- weft_mutex hand-off: N coroutines --------------------------------------------- */

typedef struct {
    weft_mutex *m;
    uint64_t handoffs;
    int stop;
    int64_t t0, t1, end;
} wmutex_run;

static void *wmutex_worker(void *p)
{
    wmutex_run *wr = p;
    for (;;) {
        if (weft_mutex_lock(wr->m, -1) != 0)
            die("weft_mutex_lock");
        int stop = wr->stop;
        if (!stop) {
            wr->handoffs++;
            if (wr->handoffs % CHECK_EVERY == 0 && (wr->t1 = now_ns()) >= wr->end)
                wr->stop = 1;
        }
        if (weft_mutex_unlock(wr->m) != 0) /* hands the mutex to the longest waiter */
            die("weft_mutex_unlock");
        if (stop)
            return NULL;
    }
}

typedef struct {
    int n;
    result r;
} wmutex_args;

static void *wmutex_main(void *p)
{
    wmutex_args *a = p;
    wmutex_run wr = {.m = weft_mutex_new()};
    weft_co *co[64];
    if (!wr.m)
        die("weft_mutex_new");
    /* Hold the mutex while the workers start, so they all queue on it; from then on every
     * unlock hands it to the next in line and the unlocker queues again behind the others. */
    if (weft_mutex_lock(wr.m, -1) != 0)
        die("weft_mutex_lock");
    for (int i = 0; i < a->n; i++)
        if (!(co[i] = weft_spawn(wmutex_worker, &wr)))
            die("weft_spawn");
    if (weft_yield() != 0)
        die("weft_yield");
    wr.t0 = now_ns();
    wr.end = wr.t0 + (int64_t)(seconds * 1e9);
    if (weft_mutex_unlock(wr.m) != 0)
        die("weft_mutex_unlock");
    for (int i = 0; i < a->n; i++)
        if (weft_join(co[i], NULL, -1) != 0)
            die("weft_join");
    if (weft_mutex_free(wr.m) != 0)
        die("weft_mutex_free");
    a->r = (result){wr.handoffs, wr.t1 - wr.t0};
    return NULL;
}

static result m_wmutex(int n)
{
    wmutex_args a = {.n = n};
    weft_co *co = weft_spawn(wmutex_main, &a);
    if (!co || weft_join(co, NULL, -1) != 0)
        die("wmutex");
    return a.r;
}

static result m_wmutex2(void) { return m_wmutex(2); }
static result m_wmutex8(void) { return m_wmutex(8); }

/* ---- Yield: two coroutines ------------------------------------------------------------ */

typedef struct {
    int stop;
    uint64_t yields;
    int64_t t0, t1, end;
} yield_run;

static void *yielder(void *p)
{
    yield_run *yr = p;
    while (!yr->stop) {
        if (weft_yield() != 0)
            die("weft_yield");
        yr->yields++;
        if (yr->yields % CHECK_EVERY == 0 && (yr->t1 = now_ns()) >= yr->end)
            yr->stop = 1;
    }
    return NULL;
}

static result m_yield(void)
{
    yield_run yr = {0};
    yr.t0 = now_ns();
    yr.end = yr.t0 + (int64_t)(seconds * 1e9);
    weft_co *a = weft_spawn(yielder, &yr), *b = weft_spawn(yielder, &yr);
    if (!a || !b || weft_join(a, NULL, -1) != 0 || weft_join(b, NULL, -1) != 0)
        die("yield");
    return (result){yr.yields, yr.t1 - yr.t0};
}

/* ---- Offload: weft_offload vs. a mutex + condvar thread pool ------------------------- */

static void *trivial(void *arg)
{
    return (void *)((uintptr_t)arg + 1);
}

static void *offload_loop(void *p)
{
    result *r = p;
    void *res;
    if (weft_offload(trivial, (void *)1, &res) != 0) /* starts the pool: not timed */
        die("weft_offload");
    int64_t t0 = now_ns(), end = t0 + (int64_t)(seconds * 1e9), t;
    uint64_t n = 0;
    for (;;) {
        if (weft_offload(trivial, (void *)(uintptr_t)n, &res) != 0)
            die("weft_offload");
        if (res != (void *)(uintptr_t)(n + 1))
            die_msg("weft_offload: wrong result");
        n++;
        if (n % CHECK_EVERY == 0 && (t = now_ns()) >= end)
            break;
    }
    *r = (result){n, t - t0};
    return NULL;
}

static result m_offload(void)
{
    result r;
    weft_co *co = weft_spawn(offload_loop, &r);
    if (!co || weft_join(co, NULL, -1) != 0)
        die("offload");
    return r;
}

#define POOL_THREADS 4 /* as weft's default offload pool */

typedef struct pjob {
    void *(*fn)(void *);
    void *arg, *result;
    int done;
    pthread_cond_t *done_cv;
    struct pjob *next;
} pjob;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pjob *head, *tail;
    int quit;
} cvpool;

static void *cvpool_worker(void *p)
{
    cvpool *pool = p;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (!pool->head && !pool->quit)
            pthread_cond_wait(&pool->cv, &pool->mu);
        if (!pool->head)
            break;
        pjob *j = pool->head;
        pool->head = j->next;
        if (!pool->head)
            pool->tail = NULL;
        pthread_mutex_unlock(&pool->mu);
        void *r = j->fn(j->arg);
        pthread_mutex_lock(&pool->mu);
        j->result = r;
        j->done = 1;
        pthread_cond_signal(j->done_cv);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

/* What the caller would write: queue the job, wake a worker, wait for the answer. */
static void *cvpool_call(cvpool *pool, pthread_cond_t *done_cv, void *(*fn)(void *), void *arg)
{
    pjob j = {.fn = fn, .arg = arg, .done_cv = done_cv};
    pthread_mutex_lock(&pool->mu);
    if (pool->tail)
        pool->tail->next = &j;
    else
        pool->head = &j;
    pool->tail = &j;
    pthread_cond_signal(&pool->cv);
    while (!j.done)
        pthread_cond_wait(done_cv, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
    return j.result;
}

static result m_cvpool(void)
{
    cvpool pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
    pthread_t t[POOL_THREADS];
    for (int i = 0; i < POOL_THREADS; i++)
        xpthread_create(&t[i], cvpool_worker, &pool);
    cvpool_call(&pool, &done_cv, trivial, (void *)1); /* warm up, as for weft */
    int64_t t0 = now_ns(), end = t0 + (int64_t)(seconds * 1e9), tn;
    uint64_t n = 0;
    for (;;) {
        if (cvpool_call(&pool, &done_cv, trivial, (void *)(uintptr_t)n) != (void *)(uintptr_t)(n + 1))
            die_msg("cvpool: wrong result");
        n++;
        if (n % CHECK_EVERY == 0 && (tn = now_ns()) >= end)
            break;
    }
    pthread_mutex_lock(&pool.mu);
    pool.quit = 1;
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < POOL_THREADS; i++)
        pthread_join(t[i], NULL);
    return (result){n, tn - t0};
}

/* ---- The table ------------------------------------------------------------------------ */

enum { M_QUEUE, M_PIPE, M_CONDVAR, M_TQUEUE, M_WMUTEX2, M_WMUTEX8, M_PMUTEX, M_OFFLOAD,
       M_CVPOOL, M_YIELD, M_COUNT };

static const struct {
    const char *name;
    result (*fn)(void);
} measures[M_COUNT] = {
    [M_QUEUE] = {"weft_queue ping-pong", m_queue},
    [M_PIPE] = {"pipe ping-pong", m_pipe},
    [M_CONDVAR] = {"mutex+condvar ping-pong", m_condvar},
    [M_TQUEUE] = {"weft_tqueue ping-pong", m_tqueue},
    [M_WMUTEX2] = {"weft_mutex hand-off x2", m_wmutex2},
    [M_WMUTEX8] = {"weft_mutex hand-off x8", m_wmutex8},
    [M_PMUTEX] = {"pthread mutex hand-off", m_pmutex},
    [M_OFFLOAD] = {"weft_offload", m_offload},
    [M_CVPOOL] = {"mutex+condvar pool", m_cvpool},
    [M_YIELD] = {"weft_yield", m_yield},
};

static const struct {
    const char *name;  /* what weft does */
    int weft;
    const char *base_name;
    int base;          /* -1: no baseline (figure for information) */
    const char *unit;
} rows[] = {
    {"queue ping-pong, 2 coroutines/1 sched", M_QUEUE, "2 threads, 2 pipes", M_PIPE, "rt/s"},
    {"queue ping-pong, 2 coroutines/1 sched", M_QUEUE, "2 threads, mutex+condvar", M_CONDVAR, "rt/s"},
    {"tqueue ping-pong, 2 schedulers/threads", M_TQUEUE, "2 threads, 2 pipes", M_PIPE, "rt/s"},
    {"tqueue ping-pong, 2 schedulers/threads", M_TQUEUE, "2 threads, mutex+condvar", M_CONDVAR, "rt/s"},
    {"mutex hand-off, 2 coroutines", M_WMUTEX2, "2 threads, pthread mutex", M_PMUTEX, "hand-offs/s"},
    {"mutex hand-off, 8 coroutines", M_WMUTEX8, "2 threads, pthread mutex", M_PMUTEX, "hand-offs/s"},
    {"offload round trip (trivial fn)", M_OFFLOAD, "mutex+condvar pool, 4 thr", M_CVPOOL, "calls/s"},
    {"yield, 2 coroutines", M_YIELD, "-", -1, "ns/yield"},
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* "1.23 M" style, 4 significant digits. */
static const char *si(double v, char *buf, size_t n)
{
    const char *suffix = "";
    if (v >= 1e9) {
        v /= 1e9;
        suffix = " G";
    } else if (v >= 1e6) {
        v /= 1e6;
        suffix = " M";
    } else if (v >= 1e3) {
        v /= 1e3;
        suffix = " k";
    }
    snprintf(buf, n, "%.*f%s", v >= 100 ? 1 : v >= 10 ? 2 : 3, v, suffix);
    return buf;
}

int main(int argc, char **argv)
{
    int reps = 7, quick = 0, opt;
    const char *only = NULL;
    while ((opt = getopt(argc, argv, "qr:t:c:")) != -1) {
        switch (opt) {
        case 'q': quick = 1; break;
        case 'c': only = optarg; break;
        case 'r': reps = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-q] [-r REPS] [-t SECONDS] [-c CASE]\n", argv[0]);
            return 2;
        }
    }
    if (quick) {
        reps = 3;
        seconds = 0.05;
    }
    if (reps < 1 || reps > MAX_REPS || !(seconds > 0 && seconds <= 10)) {
        fprintf(stderr, "sync_bench: -r 1..%d, -t in (0, 10]\n", MAX_REPS);
        return 2;
    }
    /* Watchdog: every measurement is time-bounded; a hang (a bug) ends the process. */
    alarm((unsigned)(reps * M_COUNT * (seconds + 0.5) * 3) + 30);

    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", localtime(&now));
    struct utsname u;
    uname(&u);
    printf("sync_bench %s, %s %s, %ld CPUs online, weft %s\n", date, u.sysname, u.release,
           sysconf(_SC_NPROCESSORS_ONLN), WEFT_VERSION);
    printf("%d repetitions x %.2f s per case, weft and baselines alternating; medians shown;\n"
           "ratio = weft / baseline in ops/s (> 1: weft faster). rt = round trip.\n\n",
           reps, seconds);
    fflush(stdout);

    static double samples[M_COUNT][MAX_REPS];
    int wanted[M_COUNT];
    for (int m = 0; m < M_COUNT; m++)
        wanted[m] = !only || strstr(measures[m].name, only) != NULL;
    for (size_t i = 0; only && i < sizeof rows / sizeof rows[0]; i++)
        if (strstr(rows[i].name, only)) { /* a row: both of its figures */
            wanted[rows[i].weft] = 1;
            if (rows[i].base >= 0)
                wanted[rows[i].base] = 1;
        }
    for (int rep = 0; rep < reps; rep++)
        for (int k = 0; k < M_COUNT; k++) {
            int m = (k + rep) % M_COUNT; /* rotate the order so no case always goes first */
            if (wanted[m])
                samples[m][rep] = rate(measures[m].fn());
        }

    double median[M_COUNT], lo[M_COUNT], hi[M_COUNT];
    for (int m = 0; m < M_COUNT; m++) {
        qsort(samples[m], (size_t)reps, sizeof(double), cmp_double);
        median[m] = reps % 2 ? samples[m][reps / 2]
                             : (samples[m][reps / 2 - 1] + samples[m][reps / 2]) / 2;
        lo[m] = samples[m][0];
        hi[m] = samples[m][reps - 1];
    }

    printf("%-39s %-19s %-26s %-19s %6s\n", "weft", "figure", "baseline", "figure", "ratio");
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char a[32], b[32], wf[64], bf[64];
        int w = rows[i].weft, bs = rows[i].base;
        if (!wanted[w] || (bs >= 0 && !wanted[bs]))
            continue;
        if (bs < 0) {
            snprintf(wf, sizeof wf, "%.1f %s", 1e9 / median[w], rows[i].unit);
            printf("%-39s %-19s %-26s %-19s %6s\n", rows[i].name, wf, rows[i].base_name, "-",
                   "-");
            continue;
        }
        snprintf(wf, sizeof wf, "%s %s", si(median[w], a, sizeof a), rows[i].unit);
        snprintf(bf, sizeof bf, "%s %s", si(median[bs], b, sizeof b), rows[i].unit);
        printf("%-39s %-19s %-26s %-19s %6.2f\n", rows[i].name, wf, rows[i].base_name, bf,
               median[w] / median[bs]);
    }
    printf("spread (min..max over repetitions, per second):\n");
    for (int m = 0; m < M_COUNT; m++) {
        char a[32], b[32];
        if (!wanted[m])
            continue;
        printf("  %-26s %s .. %s\n", measures[m].name, si(lo[m], a, sizeof a),
               si(hi[m], b, sizeof b));
    }
    return 0;
}
