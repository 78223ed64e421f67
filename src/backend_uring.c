/* The io_uring backend. Reads, sends and accepts that found nothing to do (EAGAIN) are
 * submitted as operations: the coroutine parks, and the completion carries the data, the
 * count or the new fd, so no readiness round trip and retry is needed; connects too, from
 * the start. (The channel layer waits for readiness instead when a socket has nothing
 * buffered: see read_some in chan.c.) Other waits (weft_wait_fd) use polls: for input one
 * multishot poll per fd, armed at its first wait, which like epoll's edge-triggered
 * registration posts a completion per arrival; for output a one-shot poll. The loop submits
 * everything queued in a turn in the one io_uring_enter that also waits for completions: one
 * system call per turn however many coroutines wait. A poll's completion carries the fd, the
 * direction and a generation, so one that completes after its fd was forgotten (and the
 * number reused) is dropped; an operation's carries a pointer to its state on the waiting
 * coroutine's stack, which stays valid because the coroutine never leaves before that
 * completion arrives. Built when liburing is there; elsewhere uring_backend_new says ENOSYS
 * and the scheduler uses epoll. */
#include "internal.h"

#include <errno.h>

#ifdef WEFT_HAVE_URING

#include <liburing.h>
#include <poll.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <unistd.h>

/* ThreadSanitizer does not see liburing map and unmap a ring (raw system calls), so when a
 * thread's ring is unmapped and another thread's new ring lands at the same address, it takes
 * the new owner's writes for races with the old owner's. They are not: the kernel unmapped
 * the one before it mapped the other. A release when a ring goes and an acquire when one is
 * made, on one address, tell TSan exactly that ordering (confirmed with 200 short-lived
 * threads: reports in io_uring_prep_rw on two threads' sqes, none with this). */
#if defined(__SANITIZE_THREAD__)
#define WEFT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define WEFT_TSAN 1
#endif
#endif
#ifdef WEFT_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char ring_lifetimes; /* the sync object */
#define RING_MAPPED() __tsan_acquire(&ring_lifetimes)
#define RING_UNMAPPED() __tsan_release(&ring_lifetimes)
#else
#define RING_MAPPED() ((void)0)
#define RING_UNMAPPED() ((void)0)
#endif

#define RING_ENTRIES 256
#define CQ_ENTRIES 16384
#define MAX_TASKRUN_ENTERS 256 /* per turn; each runs about 20 completions */
#define UD_WAKEUP UINT64_MAX        /* the scheduler's eventfd */
#define UD_IGNORE (UINT64_MAX - 1)  /* cancellations: their completions mean nothing */
#define UD_OP (1ull << 62)          /* an operation: the rest is a pointer to its state */

/* An operation in flight, on its coroutine's stack. */
typedef struct uop {
    weft_co *co;
    int res;
    bool done;
} uop;

typedef struct uring_backend {
    backend base;
    struct io_uring ring;
    slot_table fds;
    int wakeup_fd;
} uring_backend;

static uint64_t user_data(uint32_t gen, int fd, int dir)
{
    /* gen keeps to 29 bits so that the top bits stay free for UD_OP and the specials. */
    return ((uint64_t)(gen & 0x1fffffff) << 32) | ((uint64_t)(uint32_t)fd << 1) | (uint64_t)dir;
}

/* A submission entry, submitting what is queued if the ring is full. */
static struct io_uring_sqe *get_sqe(uring_backend *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (!sqe) {
        io_uring_submit(&u->ring);
        sqe = io_uring_get_sqe(&u->ring);
    }
    if (!sqe)
        errno = EAGAIN;
    return sqe;
}

static void uring_free(backend *b)
{
    uring_backend *u = (uring_backend *)b;
    RING_UNMAPPED();
    io_uring_queue_exit(&u->ring);
    slot_table_free(&u->fds);
    free(u);
}

static int arm_wakeup(uring_backend *u)
{
    struct io_uring_sqe *sqe = get_sqe(u);
    if (!sqe)
        return -1;
    io_uring_prep_poll_multishot(sqe, u->wakeup_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, UD_WAKEUP);
    return 0;
}

static int uring_watch_wakeup(backend *b, int fd)
{
    uring_backend *u = (uring_backend *)b;
    u->wakeup_fd = fd;
    return arm_wakeup(u);
}

static int uring_wait_fd(backend *b, int fd, int events, int64_t deadline)
{
    uring_backend *u = (uring_backend *)b;
    fd_slot *slot = slot_table_get(&u->fds, fd);
    if (!slot)
        return -1;
    int dir = (events & WEFT_READABLE) ? 0 : 1;
    if (!dir && slot->read_armed && slot->in_edge) {
        slot->in_edge = false; /* input arrived since the caller's failed read: retry it */
        return 0;
    }
    bool *armed = dir ? &slot->write_armed : &slot->read_armed;
    if (!*armed) {
        struct io_uring_sqe *sqe = get_sqe(u);
        if (!sqe)
            return -1;
        /* Input: one multishot poll per fd, like epoll's edge-triggered registration, so a
         * connection's every wait for input costs no submission; it posts a completion per
         * arrival. (Arming it checks the fd's state, so an older in_edge means nothing.)
         * Output: one-shot, as it is rare. */
        if (dir) {
            io_uring_prep_poll_add(sqe, fd, POLLOUT);
        } else {
            io_uring_prep_poll_multishot(sqe, fd, POLLIN | POLLRDHUP);
            slot->in_edge = false;
        }
        io_uring_sqe_set_data64(sqe, user_data(slot->gen, fd, dir));
        *armed = true;
    }
    return slot_park(b, &u->fds, fd, events, deadline);
}

/* Like epoll's: while a multishot poll watches fd, input can only have come with a completion
 * since the last call. (Its own flag, not in_edge: a completion that woke a waiter, perhaps
 * one in weft_wait_fd that reads nothing, still counts here.) */
static bool uring_input_hint(backend *b, int fd)
{
    uring_backend *u = (uring_backend *)b;
    if (fd < 0 || (size_t)fd >= u->fds.n)
        return true;
    fd_slot *slot = &u->fds.slots[fd];
    if (!slot->read_armed)
        return true; /* no poll watches it (yet, or the kernel ended it) */
    bool edge = slot->in_hint;
    slot->in_hint = false;
    return edge;
}

static void complete(uring_backend *u, const struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    if (ud == UD_WAKEUP) {
        sched_drain_inbox(sched_peek());
        if (!(cqe->flags & IORING_CQE_F_MORE))
            arm_wakeup(u); /* the kernel ended the multishot poll: start another */
        return;
    }
    if (ud == UD_IGNORE)
        return;
    if (ud & UD_OP) {
        uop *op = (uop *)(uintptr_t)(ud & ~UD_OP);
        op->res = cqe->res;
        op->done = true;
        sched_wake(op->co, 0);
        return;
    }
    int fd = (int)((ud >> 1) & 0x7fffffff), dir = (int)(ud & 1);
    if ((size_t)fd >= u->fds.n || (u->fds.slots[fd].gen & 0x1fffffff) != (uint32_t)(ud >> 32))
        return; /* for an fd since forgotten */
    fd_slot *slot = &u->fds.slots[fd];
    if (dir) {
        slot->write_armed = false;
        slot_wake(&u->base, &slot->writer, 0);
        return;
    }
    if (!(cqe->flags & IORING_CQE_F_MORE))
        slot->read_armed = false; /* the kernel ended the multishot poll: the next wait arms one */
    /* Every arrival counts for the next input_hint; one while nobody waits is also kept for
     * the next wait (it may follow an EAGAIN that came before this arrival was reaped), which
     * then returns at once. The mask is the socket's wake-up key, POLLPRI always included,
     * so it tells nothing more: see hint_needs_empty. */
    slot->in_hint = true;
    if (slot->reader)
        slot_wake(&u->base, &slot->reader, 0);
    else
        slot->in_edge = true;
}

/* Deferred completions wait for us to enter the kernel (IORING_SETUP_TASKRUN_FLAG). */
static bool taskrun_pending(const uring_backend *u)
{
    return IO_URING_READ_ONCE(*u->ring.sq.kflags) & IORING_SQ_TASKRUN;
}

static int uring_poll(backend *b, int timeout_ms)
{
    uring_backend *u = (uring_backend *)b;
    struct io_uring_cqe *cqe;
    int rc;
    if (timeout_ms == 0) {
        /* Not a plain submit: with DEFER_TASKRUN, completions are only posted when we ask
         * for events, and a busy loop (always something runnable) would never see them. */
        rc = io_uring_submit_and_get_events(&u->ring);
    } else {
        struct __kernel_timespec ts = {timeout_ms / 1000, (long long)(timeout_ms % 1000) * 1000000};
        rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, timeout_ms < 0 ? NULL : &ts, NULL);
    }
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
        errno = -rc;
        return -1;
    }
    /* One enter runs only a few (20 on 6.x kernels) of the completions deferred to us; the
     * rest would wait for later turns while reads that completed at submission jump ahead
     * of them, starving some connections. Run them all, in order, before taking any. */
    for (int i = 0; i < MAX_TASKRUN_ENTERS && taskrun_pending(u); i++)
        io_uring_get_events(&u->ring);
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&u->ring, head, cqe) {
        complete(u, cqe);
        seen++;
    }
    io_uring_cq_advance(&u->ring, seen);
    return 0;
}

/* Ask the kernel to cancel the operation op; its completion still comes (with -ECANCELED, or
 * with its result if it won the race). */
static void cancel_op(uring_backend *u, uop *op)
{
    struct io_uring_sqe *sqe = get_sqe(u);
    if (sqe) {
        io_uring_prep_cancel64(sqe, UD_OP | (uint64_t)(uintptr_t)op, 0);
        io_uring_sqe_set_data64(sqe, UD_IGNORE);
    }
}

static void uring_cancel_wait(backend *b, int fd, int events, int err)
{
    uring_backend *u = (uring_backend *)b;
    if (fd < 0 || (size_t)fd >= u->fds.n)
        return;
    fd_slot *slot = &u->fds.slots[fd];
    if ((events & WEFT_READABLE) && slot->read_op)
        cancel_op(u, slot->read_op); /* the reader gets its data, or ECANCELED */
    slot_wake(b, (events & WEFT_READABLE) ? &slot->reader : &slot->writer, err);
}

/* Submit sqe as op and park until its completion. A timeout or cancel asks the kernel to
 * cancel it and still waits for the completion: the kernel may be writing into our buffer. */
static int run_op(uring_backend *u, int fd, struct io_uring_sqe *sqe, uop *op, int64_t deadline)
{
    fd_slot *slot = slot_table_get(&u->fds, fd);
    if (!slot)
        return -1;
    slot->ops++;
    op->co = weft_self();
    op->done = false;
    io_uring_sqe_set_data64(sqe, UD_OP | (uint64_t)(uintptr_t)op);
    u->base.waiting++;
    int rc = 0, err = 0;
    while (!op->done) {
        rc = sched_park(deadline);
        if (rc != 0 && !op->done) {
            err = errno;
            cancel_op(u, op);
            while (!op->done)
                sched_park_nocancel(-1);
        }
    }
    u->base.waiting--;
    u->fds.slots[fd].ops--; /* the table may have moved */
    if (op->res >= 0)
        return op->res; /* done, even if a timeout came too: nothing is lost */
    errno = op->res == -ECANCELED && err ? err : -op->res;
    return -1;
}

static ssize_t uring_read(backend *b, int fd, void *buf, size_t n, bool socket,
                          int64_t deadline)
{
    uring_backend *u = (uring_backend *)b;
    fd_slot *slot = slot_table_get(&u->fds, fd);
    struct io_uring_sqe *sqe = slot ? get_sqe(u) : NULL;
    if (!sqe)
        return -1;
    uop op;
    unsigned len = (unsigned)(n > UINT32_MAX ? UINT32_MAX : n);
    if (socket)
        io_uring_prep_recv(sqe, fd, buf, len, 0);
    else
        io_uring_prep_read(sqe, fd, buf, len, (uint64_t)-1);
    slot->read_op = &op;
    int r = run_op(u, fd, sqe, &op, deadline);
    if (u->fds.slots[fd].read_op == &op) /* (the table may have moved; the fd been reused) */
        u->fds.slots[fd].read_op = NULL;
    return r;
}

static ssize_t uring_send(backend *b, int fd, const void *buf, size_t n, bool socket,
                          int64_t deadline)
{
    uring_backend *u = (uring_backend *)b;
    struct io_uring_sqe *sqe = get_sqe(u);
    if (!sqe)
        return -1;
    unsigned len = (unsigned)(n > UINT32_MAX ? UINT32_MAX : n);
    if (socket)
        io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
    else
        io_uring_prep_write(sqe, fd, buf, len, (uint64_t)-1);
    uop op;
    return run_op(u, fd, sqe, &op, deadline);
}

static int uring_accept(backend *b, int fd, void *sa, unsigned *salen, int64_t deadline)
{
    uring_backend *u = (uring_backend *)b;
    struct io_uring_sqe *sqe = get_sqe(u);
    if (!sqe)
        return -1;
    io_uring_prep_accept(sqe, fd, sa, (socklen_t *)salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    uop op;
    return run_op(u, fd, sqe, &op, deadline);
}

static int uring_connect(backend *b, int fd, const void *sa, unsigned salen, int64_t deadline)
{
    uring_backend *u = (uring_backend *)b;
    struct io_uring_sqe *sqe = get_sqe(u);
    if (!sqe)
        return -1;
    io_uring_prep_connect(sqe, fd, sa, salen);
    uop op;
    return run_op(u, fd, sqe, &op, deadline) < 0 ? -1 : 0;
}

static void uring_forget(backend *b, int fd)
{
    uring_backend *u = (uring_backend *)b;
    if (fd < 0 || (size_t)fd >= u->fds.n)
        return;
    fd_slot *slot = &u->fds.slots[fd];
    if (slot->read_armed || slot->write_armed || slot->ops) {
        /* A poll or an operation in flight holds the file open: cancel it now, before the
         * close (operations then complete with -ECANCELED and their coroutines go on). */
        struct io_uring_sqe *sqe = get_sqe(u);
        if (sqe) {
            io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
            io_uring_sqe_set_data64(sqe, UD_IGNORE);
            io_uring_submit(&u->ring);
        }
        slot->read_armed = slot->write_armed = false;
    }
    slot->in_edge = slot->in_hint = false;
    slot->gen++;
    slot_wake(b, &slot->reader, EBADF);
    slot_wake(b, &slot->writer, EBADF);
}

static const backend_ops uring_ops = {
    .name = "uring",
    .free = uring_free,
    .wait = uring_wait_fd,
    .poll = uring_poll,
    .forget = uring_forget,
    .watch_wakeup = uring_watch_wakeup,
    .cancel_wait = uring_cancel_wait,
    .read = uring_read,
    .send = uring_send,
    .accept = uring_accept,
    .connect = uring_connect,
    .input_hint = uring_input_hint,
    .hint_needs_empty = true,
};

backend *uring_backend_new(void)
{
    uring_backend *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    /* One thread submits and reaps, so the kernel may defer work to our own io_uring_enter
     * (and flag when it has); older kernels refuse these flags: then a ring without them. */
    struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER |
                                         IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
                                         IORING_SETUP_CQSIZE,
                                .cq_entries = CQ_ENTRIES};
    int rc = io_uring_queue_init_params(RING_ENTRIES, &u->ring, &p);
    if (rc == -EINVAL) {
        p = (struct io_uring_params){.flags = IORING_SETUP_CQSIZE, .cq_entries = CQ_ENTRIES};
        rc = io_uring_queue_init_params(RING_ENTRIES, &u->ring, &p);
    }
    if (rc < 0) {
        free(u);
        errno = -rc;
        return NULL;
    }
    RING_MAPPED();
    u->base.ops = &uring_ops;
    u->wakeup_fd = -1;
    return &u->base;
}

#else

backend *uring_backend_new(void)
{
    errno = ENOSYS; /* built without liburing */
    return NULL;
}

#endif
