/* Offload: a small process-wide pool of threads that run blocking calls (name resolution,
 * file I/O, CPU-heavy steps) while the calling coroutine parks and its scheduler serves the
 * others. A job lives on the heap: if its coroutine is cancelled it leaves at once, marks the
 * job abandoned, and the worker frees it when the call returns. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

#define DEFAULT_THREADS 4
#define MAX_THREADS 64

typedef struct job {
    void *(*fn)(void *);
    void *arg;
    void (*drop)(void *arg, void *result); /* cleans up after an abandoned call */
    void *result;
    bool done;       /* under pool.mu */
    bool abandoned;  /* under pool.mu: the coroutine left; the worker frees the job */
    rwait rw;
    struct job *next;
} job;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail;
    int threads;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0};

static void *worker(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&pool.mu);
    for (;;) {
        while (!pool.head)
            pthread_cond_wait(&pool.cv, &pool.mu);
        job *j = pool.head;
        pool.head = j->next;
        if (!pool.head)
            pool.tail = NULL;
        pthread_mutex_unlock(&pool.mu);

        void *r = j->fn(j->arg);

        pthread_mutex_lock(&pool.mu);
        j->result = r;
        j->done = true;
        if (j->abandoned) {
            if (j->drop)
                j->drop(j->arg, r);
            free(j);
        }
        else
            rwait_wake(&j->rw); /* claimed: the coroutine waits for exactly this */
    }
    return NULL;
}

/* fork(): the child has none of the pool's threads. Its queue is emptied (the jobs are the
 * parent's, their coroutines orphans there) and the next call starts new threads. The lock is
 * held across the fork so that the child's copy is consistent. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&pool.mu);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&pool.mu);
}

static void fork_child(void)
{
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv, NULL);
    pool.head = pool.tail = NULL;
    pool.threads = 0;
}

static void register_fork_handlers(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* Start the threads on first use (under pool.mu). */
static int pool_start(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handlers);
    if (pool.threads > 0)
        return 0;
    int n = DEFAULT_THREADS;
    const char *env = getenv("WEFT_OFFLOAD_THREADS");
    if (env && atoi(env) > 0)
        n = atoi(env) < MAX_THREADS ? atoi(env) : MAX_THREADS;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, worker, NULL) != 0)
            break;
        pool.threads++;
    }
    pthread_attr_destroy(&attr);
    if (pool.threads == 0) {
        errno = EAGAIN;
        return -1;
    }
    return 0;
}

/* A call that failed before it was handed to the pool: arg goes to drop (with no result)
 * here, as it would on the worker after a call left behind. -1, errno kept. */
static int never_started(job *j, void *arg, void (*drop)(void *arg, void *result))
{
    int err = errno;
    free(j);
    if (drop)
        drop(arg, NULL);
    errno = err;
    return -1;
}

int weft_offload(void *(*fn)(void *), void *arg, void **result)
{
    return offload_call(fn, arg, result, NULL, -1);
}

int offload_call(void *(*fn)(void *), void *arg, void **result,
                 void (*drop)(void *arg, void *result), int64_t deadline)
{
    bool inside = weft_self() != NULL;
    if (!inside && deadline < 0) { /* outside a coroutine, blocking is what was asked for */
        void *r = fn(arg);
        if (result)
            *result = r;
        return 0;
    }
    job *j = NULL;
    if (weft_cancelled()) { /* don't start what we could not wait for */
        errno = ECANCELED;
        return never_started(j, arg, drop);
    }
    j = calloc(1, sizeof *j);
    if (!j)
        return never_started(j, arg, drop);
    j->fn = fn;
    j->arg = arg;
    j->drop = drop;
    if (rwait_begin(&j->rw) != 0)
        return never_started(j, arg, drop);
    pthread_mutex_lock(&pool.mu);
    if (pool_start() != 0) {
        pthread_mutex_unlock(&pool.mu);
        rwait_end(&j->rw);
        return never_started(j, arg, drop);
    }
    if (pool.tail)
        pool.tail->next = j;
    else
        pool.head = j;
    pool.tail = j;
    pthread_cond_signal(&pool.cv);
    pthread_mutex_unlock(&pool.mu);

    for (;;) {
        /* Outside a coroutine (a call with a deadline) the loop runs while we wait. */
        int rc = inside ? sched_park_on(WAIT_OFFLOAD, (const void *)fn, deadline, true)
                        : sched_drive(&j->rw.delivered, deadline);
        int err = errno;
        pthread_mutex_lock(&pool.mu);
        bool done = j->done;
        if (!done && rc != 0) { /* cancelled or out of time: leave the call behind */
            rwait_end(&j->rw); /* before the unlock: from then on the worker owns j */
            j->abandoned = true;
            pthread_mutex_unlock(&pool.mu);
            errno = err;
            return -1;
        }
        pthread_mutex_unlock(&pool.mu);
        if (done)
            break;
    }
    rwait_settle(&j->rw);
    if (result)
        *result = j->result;
    free(j);
    return 0;
}
