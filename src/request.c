/* Requests from signal handlers (weft_dump_on_signal), answered by every scheduler's loop at
 * its next turn. A handler may only touch lock-free atomics and make async-signal-safe calls:
 * it bumps requests_made and writes to an eventfd. The eventfd is never read, so it stays
 * readable, and each write is a new edge for every backend that watches it (edge-triggered
 * epoll, io_uring's multishot poll): one signal wakes every sleeping loop of the process, and
 * each compares requests_made with the count it has answered. A backend that starts to watch
 * the eventfd reports it at once: one turn for nothing. */
#include "internal.h"
#include "sys.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <sys/eventfd.h>

atomic_uint requests_made;
static atomic_uint requests_answered; /* the latest request some thread has answered */
static _Atomic int request_fd = -1;
static _Atomic(sched_request_fn) request_fn;
static _Thread_local unsigned seen_outside; /* (a thread without a scheduler) */
static _Atomic uint64_t request_signals; /* bit sig - 1 for each signal that makes requests */
static pthread_mutex_t setup = PTHREAD_MUTEX_INITIALIZER;

static void after_fork_child(void);

static void register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
}

int sched_on_request(sched_request_fn fn)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handler);
    pthread_mutex_lock(&setup);
    int rc = 0;
    if (atomic_load(&request_fd) < 0) {
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0)
            rc = -1;
        else
            atomic_store(&request_fd, fd);
    }
    if (rc == 0)
        atomic_store(&request_fn, fn);
    pthread_mutex_unlock(&setup);
    return rc;
}

void sched_request(void)
{
    atomic_fetch_add_explicit(&requests_made, 1, memory_order_relaxed);
    int fd = atomic_load_explicit(&request_fd, memory_order_relaxed);
    if (fd >= 0) {
        int saved = errno;
        uint64_t one = 1;
        ssize_t w = sys_write(fd, &one, sizeof one);
        (void)w; /* (fails only when the counter is full, and then it is readable anyway) */
        errno = saved;
    }
}

/* Call the callback if requests came since *seen. */
static void answer(unsigned *seen)
{
    unsigned gen = atomic_load_explicit(&requests_made, memory_order_relaxed);
    if (gen == *seen)
        return;
    *seen = gen;
    sched_request_fn fn = atomic_load(&request_fn);
    if (fn)
        fn();
    atomic_store_explicit(&requests_answered, gen, memory_order_relaxed);
}

void requests_init(sched *s)
{
    /* Older requests were not for it, unless no thread has answered them yet: a signal that
     * came before the process's first scheduler started (a server's main thread between
     * weft_dump_on_signal and its loop) is answered by it. */
    s->requests_seen = atomic_load_explicit(&requests_answered, memory_order_relaxed);
}

void requests_run(sched *s)
{
    answer(&s->requests_seen);
}

void sched_poll_requests(void)
{
    sched *s = sched_peek();
    answer(s ? &s->requests_seen : &seen_outside);
}

void sched_request_signal(int sig)
{
    if (sig >= 1 && sig <= 64)
        atomic_fetch_or(&request_signals, (uint64_t)1 << (sig - 1));
}

/* A signal that comes after a check for requests and before the poll starts would not
 * interrupt it, and its request would wait for the poll's end (for ever, in a blocking
 * accept). So the request signals are blocked from before the check until ppoll unblocks
 * them atomically for the sleep: one that came before is answered by the check, one that
 * comes during it interrupts the poll. */
int sched_poll_outside(struct pollfd *p, unsigned n, int timeout_ms)
{
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000};
    const struct timespec *tp = timeout_ms < 0 ? NULL : &ts;
    uint64_t bits = atomic_load_explicit(&request_signals, memory_order_relaxed);
    if (!bits)
        return sys_ppoll(p, (nfds_t)n, tp, NULL);
    sigset_t block, old;
    sigemptyset(&block);
    for (int sig = 1; sig <= 64; sig++)
        if (bits & ((uint64_t)1 << (sig - 1)))
            sigaddset(&block, sig);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    sched_poll_requests();
    int r = sys_ppoll(p, (nfds_t)n, tp, &old);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r < 0 && err == EINTR)
        sched_poll_requests();
    errno = err;
    return r;
}

/* Callback from the backend: a request's write (or an older one, at the first watch). The
 * loop turn that follows answers it. */
static void requests_event(io_watcher *w, unsigned events)
{
    sched *s = (sched *)((char *)w - offsetof(sched, requests_w));
    if (events & IO_UNWATCHED)
        s->requests_watched = false; /* (io_uring ended the poll: armed again before a sleep) */
}

void requests_watch(sched *s)
{
    int fd = atomic_load_explicit(&request_fd, memory_order_relaxed);
    if (fd < 0)
        return;
    s->requests_w = (io_watcher){.cb = requests_event, .fd = fd};
    if (backend_watch(s->be, &s->requests_w, IO_IN) == 0)
        s->requests_watched = true;
}

/* fork(): the eventfd is shared with the parent, whose signals would wake the child's loop and
 * the child's the parent's; the child gets its own (without one, a request is still answered
 * at the next turn, just without waking a sleeping loop). */
static void after_fork_child(void)
{
    pthread_mutex_init(&setup, NULL);
    int fd = atomic_load(&request_fd);
    if (fd < 0)
        return;
    sys_close(fd);
    atomic_store(&request_fd, eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
}
