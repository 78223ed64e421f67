/* Parking a hooked call. A call that would block parks its coroutine in weft_wait_fd (or
 * weft_sleep_until) instead; every parked call is on this thread's list, so that a signal
 * handler that ran here (signal.c) can wake them all with EINTR, each then deciding as the
 * kernel would. weft lets one coroutine per thread wait for each direction of a descriptor;
 * a second hooked call on the same descriptor and direction (two coroutines accepting on one
 * listener) waits for its turn instead: the first hands it over when it leaves, and the
 * queued one also looks again every QUEUE_RETRY_MS in case the first waiter was not a
 * hook's (a weft channel on the same descriptor). */
#include "hook.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define QUEUE_RETRY_MS 10

typedef struct hook_waiter {
    struct hook_waiter *prev, *next;
    weft_co *co;
    int fd;      /* -1: a sleep */
    int events;
    bool queued; /* waits for its turn on (fd, events) */
} hook_waiter;

static HOOK_TLS hook_waiter *parked;      /* this thread's parked hooked calls */
static HOOK_TLS unsigned queued_count;

/* ---- Time ---- */

int64_t hook_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t hook_ms_deadline(int64_t t_ns)
{
    return (t_ns + 999999) / 1000000; /* weft_now is the same clock, in whole ms */
}

int64_t hook_deadline(int32_t timeout_ms)
{
    if (timeout_ms == 0)
        return -1;
    return weft_now() + (timeout_ms < 0 ? 0 : timeout_ms);
}

/* ---- Calls and signals ---- */

void hook_call_begin(hook_call *c)
{
    c->sigs = hook_sig_count();
    c->nonrestart = hook_sig_nonrestart();
}

bool hook_call_interrupted(const hook_call *c)
{
    return hook_sig_count() != c->sigs;
}

bool hook_call_restart(hook_call *c, bool restartable)
{
    if (!restartable || hook_sig_nonrestart() != c->nonrestart)
        return false;
    c->sigs = hook_sig_count(); /* SA_RESTART: the kernel starts the call afresh */
    return true;
}

/* From the loop: an event on this thread's eventfd. If a handler wrote it (an eventfd is
 * always writable, and that is reported too), wake every parked hooked call. */
static void on_signal(fd_owner *self, unsigned events)
{
    (void)self, (void)events;
    uint64_t n;
    if (syscall(SYS_read, hook_sig_eventfd(), &n, sizeof n) != sizeof n)
        return;
    for (hook_waiter *w = parked; w; w = w->next)
        sched_wake(w->co, EINTR);
}

static fd_owner signal_owner = {on_signal};

/* Have this thread's loop hear the handlers: cheap after the first time. */
static void watch_signals(void)
{
    int efd = hook_sig_eventfd();
    if (efd >= 0)
        fd_watch_input(efd, &signal_owner);
}

static void link_waiter(hook_waiter *w)
{
    w->prev = NULL;
    w->next = parked;
    if (parked)
        parked->prev = w;
    parked = w;
}

static void unlink_waiter(hook_waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        parked = w->next;
    if (w->next)
        w->next->prev = w->prev;
}

/* The first queued call on (fd, events) gets the turn. */
static void hand_turn(int fd, int events)
{
    for (hook_waiter *w = parked; w; w = w->next)
        if (w->queued && w->fd == fd && w->events == events) {
            sched_wake(w->co, 0);
            return;
        }
}

/* A forked child keeps only the forking coroutine, which is not parked. */
static void after_fork(void)
{
    parked = NULL;
    queued_count = 0;
}

static void register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, after_fork);
}

static int park_prepare(hook_call *c, hook_waiter *w, int fd, int events)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handler);
    watch_signals();
    if (hook_call_interrupted(c)) {
        errno = EINTR;
        return -1;
    }
    *w = (hook_waiter){.co = weft_self(), .fd = fd, .events = events};
    link_waiter(w);
    return 0;
}

int hook_wait_fd(hook_call *c, int fd, int events, int64_t deadline)
{
    hook_fd *e = hook_fd_get(fd);
    if (e)
        hook_sync_backend(fd, e);
    return hook_wait_own_fd(c, fd, events, deadline);
}

int hook_wait_own_fd(hook_call *c, int fd, int events, int64_t deadline)
{
    hook_waiter w;
    if (park_prepare(c, &w, fd, events) != 0)
        return -1;
    int rc = weft_wait_fd(fd, events, deadline);
    if (rc != 0 && errno == EBUSY) {
        /* Another coroutine waits on (fd, events): wait for the turn, looking again now
         * and then. Returning 0 has the call try again. */
        w.queued = true;
        queued_count++;
        int64_t until = weft_now() + QUEUE_RETRY_MS;
        rc = weft_sleep_until(deadline >= 0 && deadline < until ? deadline : until);
        queued_count--;
        if (rc == 0 && deadline >= 0 && weft_now() >= deadline) {
            errno = ETIMEDOUT;
            rc = -1;
        }
    }
    int err = errno;
    unlink_waiter(&w);
    if (!w.queued && queued_count)
        hand_turn(fd, events);
    errno = err;
    return rc;
}

int hook_sleep_until(hook_call *c, int64_t deadline)
{
    hook_waiter w;
    if (park_prepare(c, &w, -1, 0) != 0)
        return -1;
    int rc = weft_sleep_until(deadline);
    int err = errno;
    unlink_waiter(&w);
    errno = err;
    return rc;
}

ssize_t hook_recv_op(hook_call *c, int fd, const hook_fd *e, void *buf, size_t len,
                     int64_t deadline)
{
    hook_sync_backend(fd, e);
    hook_waiter w;
    if (park_prepare(c, &w, fd, 0) != 0) /* (events 0: it takes nobody's turn) */
        return -1;
    ssize_t r = fd_recv_op(fd, buf, len, deadline);
    int err = errno;
    unlink_waiter(&w);
    errno = err;
    return r;
}
