/* The io_uring backend. Watching an fd for input arms one multishot poll, which like epoll's
 * edge-triggered registration posts a completion per arrival, so a wait for input costs no
 * submission; output is watched with a one-shot poll per wait. Operations (reads, sends,
 * accepts, connects) are submitted as such, and their completion carries the result. The loop
 * submits everything queued in a turn in the one io_uring_enter that also waits for
 * completions: one system call per turn however many coroutines wait. A poll's completion
 * carries the fd, the direction and a generation, so one that completes after its fd was
 * forgotten (and the number reused) is dropped; an operation's carries the io_op's address,
 * which stays valid until its callback has run. Built when liburing is there; elsewhere
 * uring_backend_new says ENOSYS and the scheduler uses epoll. */
#include "internal.h"

#include <errno.h>

#ifdef WEFT_HAVE_URING

#include <liburing.h>
#include <poll.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
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
#define UD_IGNORE UINT64_MAX   /* cancellations: their completions mean nothing */
#define UD_OP (1ull << 62)     /* an operation: the rest is its io_op's address */

/* What the backend knows of an fd. */
typedef struct ufd {
    io_watcher *w;     /* who hears its polls */
    bool read_armed;   /* a multishot poll for input is active */
    bool write_armed;  /* a poll for output is in flight */
    uint32_t gen;      /* bumped when the fd is forgotten, to drop stale polls */
    unsigned ops;      /* operations in flight on it */
} ufd;

typedef struct uring_backend {
    backend base;
    struct io_uring ring;
    ufd *fds;          /* by fd */
    size_t n;
} uring_backend;

static ufd *ufd_get(uring_backend *u, int fd)
{
    if (fd < 0) {
        errno = EBADF;
        return NULL;
    }
    if ((size_t)fd >= u->n) {
        size_t n = u->n ? u->n : 64;
        while (n <= (size_t)fd)
            n *= 2;
        ufd *f = realloc(u->fds, n * sizeof *f);
        if (!f) {
            errno = ENOMEM;
            return NULL;
        }
        memset(f + u->n, 0, (n - u->n) * sizeof *f);
        u->fds = f;
        u->n = n;
    }
    return &u->fds[fd];
}

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
    free(u->fds);
    free(u);
}

static int uring_watch(backend *b, io_watcher *w, unsigned events)
{
    uring_backend *u = (uring_backend *)b;
    ufd *f = ufd_get(u, w->fd);
    if (!f)
        return -1;
    f->w = w;
    for (int dir = 0; dir < 2; dir++) {
        bool *armed = dir ? &f->write_armed : &f->read_armed;
        if (*armed || (dir && !(events & IO_OUT)))
            continue;
        struct io_uring_sqe *sqe = get_sqe(u);
        if (!sqe)
            return -1;
        /* Input: one multishot poll per fd, so a connection's every wait for input costs no
         * submission; it posts a completion per arrival. Output: one-shot, as it is rare. */
        if (dir)
            io_uring_prep_poll_add(sqe, w->fd, POLLOUT);
        else
            io_uring_prep_poll_multishot(sqe, w->fd, POLLIN | POLLRDHUP);
        io_uring_sqe_set_data64(sqe, user_data(f->gen, w->fd, dir));
        *armed = true;
    }
    return 0;
}

static void complete_op(uring_backend *u, io_op *op, int res)
{
    if ((size_t)op->fd < u->n)
        u->fds[op->fd].ops--;
    op->res = res;
    op->cb(op); /* (may free op) */
}

static void complete(uring_backend *u, const struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    if (ud == UD_IGNORE)
        return;
    if (ud & UD_OP) {
        complete_op(u, (io_op *)(uintptr_t)(ud & ~UD_OP), cqe->res);
        return;
    }
    int fd = (int)((ud >> 1) & 0x7fffffff), dir = (int)(ud & 1);
    if ((size_t)fd >= u->n || (u->fds[fd].gen & 0x1fffffff) != (uint32_t)(ud >> 32))
        return; /* for an fd since forgotten */
    ufd *f = &u->fds[fd];
    if (dir) {
        f->write_armed = false;
        f->w->cb(f->w, IO_OUT);
        return;
    }
    unsigned ev = IO_IN;
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        f->read_armed = false; /* the kernel ended the multishot poll: the next watch arms one */
        ev |= IO_UNWATCHED;
    }
    /* The mask is the socket's wake-up key, POLLPRI always included, so it tells urgent data
     * from an ordinary arrival no better than IO_IN does (edges_show_urgent is false). */
    if (cqe->res > 0 && (cqe->res & (POLLHUP | POLLERR | POLLRDHUP)))
        ev |= IO_HUP;
    f->w->cb(f->w, ev);
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

static int uring_submit(backend *b, io_op *op)
{
    uring_backend *u = (uring_backend *)b;
    ufd *f = ufd_get(u, op->fd);
    struct io_uring_sqe *sqe = f ? get_sqe(u) : NULL;
    if (!sqe)
        return -1;
    switch (op->kind) {
    case IO_OP_RECV:
        io_uring_prep_recv(sqe, op->fd, op->buf, op->len, 0);
        break;
    case IO_OP_SEND:
        io_uring_prep_send(sqe, op->fd, op->buf, op->len, MSG_NOSIGNAL);
        break;
    case IO_OP_READ:
        io_uring_prep_read(sqe, op->fd, op->buf, op->len, (uint64_t)-1);
        break;
    case IO_OP_WRITE:
        io_uring_prep_write(sqe, op->fd, op->buf, op->len, (uint64_t)-1);
        break;
    case IO_OP_ACCEPT:
        io_uring_prep_accept(sqe, op->fd, op->buf, (socklen_t *)op->addrlen,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
        break;
    default:
        io_uring_prep_connect(sqe, op->fd, op->buf, op->len);
        break;
    }
    io_uring_sqe_set_data64(sqe, UD_OP | (uint64_t)(uintptr_t)op);
    f->ops++;
    return 0;
}

/* Ask the kernel to cancel op; its completion still comes (with -ECANCELED, or with its
 * result if it won the race). */
static void uring_cancel(backend *b, io_op *op)
{
    uring_backend *u = (uring_backend *)b;
    struct io_uring_sqe *sqe = get_sqe(u);
    if (sqe) {
        io_uring_prep_cancel64(sqe, UD_OP | (uint64_t)(uintptr_t)op, 0);
        io_uring_sqe_set_data64(sqe, UD_IGNORE);
    }
}

static void uring_forget(backend *b, int fd)
{
    uring_backend *u = (uring_backend *)b;
    if (fd < 0 || (size_t)fd >= u->n)
        return;
    ufd *f = &u->fds[fd];
    if (f->read_armed || f->write_armed || f->ops) {
        /* A poll or an operation in flight holds the file open: cancel it now, before the
         * close (operations then complete with -ECANCELED and their callers go on). */
        struct io_uring_sqe *sqe = get_sqe(u);
        if (sqe) {
            io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
            io_uring_sqe_set_data64(sqe, UD_IGNORE);
            io_uring_submit(&u->ring);
        }
        f->read_armed = f->write_armed = false;
    }
    f->gen++;
    f->w = NULL;
}

static const backend_ops uring_ops = {
    .name = "uring",
    .free = uring_free,
    .watch = uring_watch,
    .forget = uring_forget,
    .poll = uring_poll,
    .submit = uring_submit,
    .cancel = uring_cancel,
    .edges_show_urgent = false,
    .latches_input = true,
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
    return &u->base;
}

#else

backend *uring_backend_new(void)
{
    errno = ENOSYS; /* built without liburing */
    return NULL;
}

#endif
