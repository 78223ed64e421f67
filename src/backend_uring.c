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
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
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

/* TSan runs a signal's handler at the thread's next call it intercepts, and io_uring_enter
 * (a raw system call of liburing's) is none: a SIGTERM that ended the loop's wait had its
 * handler run only after the next wait, which nothing ended (examples/echo, idle, never
 * stopped). So in TSan builds the asynchronous signals are blocked from just before a wait,
 * deliverable only inside it (the wait's own mask, set atomically with it), and the mask is
 * put back after it through an intercepted call, which runs the handler of one that came. */
static void tsan_block_async_signals(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    sigdelset(&all, SIGTRAP);
    sigdelset(&all, SIGABRT);
    pthread_sigmask(SIG_BLOCK, &all, old);
}
#else
#define RING_MAPPED() ((void)0)
#define RING_UNMAPPED() ((void)0)
#endif

#define RING_ENTRIES 256
#define CQ_ENTRIES 16384
#define MAX_TASKRUN_ENTERS 256 /* per turn; each runs about 20 completions */
#define UD_IGNORE UINT64_MAX   /* cancellations: their completions mean nothing */
#define UD_OP (1ull << 62)     /* an operation: the rest is its io_op's address */

/* Provided buffers for multishot receives. Where the kernel can (6.12 and later: incremental
 * consumption, IOU_PBUF_RING_INC), each arrival takes only the bytes it needs from the head
 * buffer, so ten thousand connections that each receive one short line share a handful of
 * buffers instead of a page each; a buffer goes back to the ring when the kernel has moved
 * past it and every connection has let go of its slice (refs). Elsewhere each arrival takes
 * a whole (smaller) buffer. The ring is filled PBUF_CHUNK buffers at a time, as receives run
 * out, up to a few per receive: it grows with the connections that have data at once. */
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif
#define PBUF_SIZE_INC (16 * 1024)
#define PBUF_SIZE_WHOLE 4096
#define PBUF_RING 4096     /* ring entries: room for every buffer (PBUF_MAX) */
#define PBUF_MAX 4096      /* buffers at most */
#define PBUF_CHUNK 32
#define PBUF_BGID 0
#define PBUF_PER_RECV 4    /* the ring grows past its first chunk by this many per receive */
#define PBUF_TRIM_MS 200   /* the pages of idle buffers are given back after this long quiet */

/* What the backend knows of an fd: 16 bytes, in a table of one per descriptor number
 * (mapped, so that the pages of numbers never used are never touched). */
typedef struct ufd {
    io_watcher *w;     /* who hears its polls */
    uint32_t gen;      /* bumped when the fd is forgotten, to drop stale polls */
    uint16_t ops;      /* operations in flight on it (a handful: one of each kind at most) */
    bool read_armed;   /* a multishot poll for input is active */
    bool write_armed;  /* a poll for output is in flight */
} ufd;

typedef struct pbufs {
    struct io_uring_buf_ring *br; /* the ring (PBUF_RING entries), NULL until first needed */
    bool inc;          /* incremental consumption */
    size_t size;       /* of each buffer */
    char **chunks;     /* buffer memory, PBUF_CHUNK buffers each */
    uint32_t *off;     /* per buffer: where the next arrival's bytes start */
    uint16_t *refs;    /* per buffer: slices handed out and not yet put back */
    uint8_t *kernel;   /* per buffer: the kernel still fills it (in the ring, or BUF_MORE) */
    uint8_t *dirty;    /* per buffer: written since its pages were last given back */
    unsigned ndirty;   /* dirty buffers */
    unsigned moves;    /* arrivals taken and buffers returned, ever (wraps) */
    unsigned moves_seen; /* moves when pbuf_trim last looked ... */
    int64_t quiet_ms;  /* ... and when it first saw that count */
    bool trimmed;      /* pbuf_trim ran since moves last changed */
    unsigned nbufs;    /* buffers made, ids 0 .. nbufs - 1 */
    unsigned avail;    /* of which in the ring, untouched, now */
    int added;         /* added since the ring's tail last moved */
    io_op *starved;    /* multishot receives that ran out of buffers: started again later */
} pbufs;

typedef struct uring_backend {
    backend base;
    struct io_uring ring;
    ufd *fds;          /* by fd */
    size_t n;
    pbufs pb;
    bool deferred;     /* DEFER_TASKRUN: the kernel fills buffers only in our enters */
    size_t inflight;   /* operations submitted and not completed (all fds) */
    size_t multishots; /* multishot receives among them */
} uring_backend;

static ufd *ufd_get(uring_backend *u, int fd)
{
    if (fd < 0) {
        errno = EBADF;
        return NULL;
    }
    if ((size_t)fd >= u->n) {
        /* Grown a page at a time at least; new pages come zeroed from the kernel, and
         * mremap moves the old ones without touching them. */
        size_t n = u->n ? u->n : 4096 / sizeof(ufd);
        while (n <= (size_t)fd)
            n *= 2;
        void *f = u->fds ? mremap(u->fds, u->n * sizeof(ufd), n * sizeof(ufd), MREMAP_MAYMOVE)
                         : mmap(NULL, n * sizeof(ufd), PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (f == MAP_FAILED) {
            errno = ENOMEM;
            return NULL;
        }
        u->fds = f;
        u->n = n;
    }
    return &u->fds[fd];
}

static void ufd_table_free(uring_backend *u)
{
    if (u->fds)
        munmap(u->fds, u->n * sizeof(ufd));
    u->fds = NULL;
    u->n = 0;
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

/* ---- Provided buffers ---- */

static char *pbuf_addr(const pbufs *pb, unsigned bid)
{
    return pb->chunks[bid / PBUF_CHUNK] + (size_t)(bid % PBUF_CHUNK) * pb->size;
}

static void pbuf_add(pbufs *pb, unsigned bid)
{
    pb->off[bid] = 0;
    pb->kernel[bid] = 1;
    io_uring_buf_ring_add(pb->br, pbuf_addr(pb, bid), (unsigned)pb->size, (unsigned short)bid,
                          io_uring_buf_ring_mask(PBUF_RING), pb->added++);
    pb->avail++;
    pb->moves++;
}

/* Make the buffers added since last time visible to the kernel. */
static void pbuf_publish(pbufs *pb)
{
    if (pb->added) {
        io_uring_buf_ring_advance(pb->br, pb->added);
        pb->added = 0;
    }
}

/* PBUF_CHUNK more buffers (memory touched by the kernel only as data comes). 0, -1. */
static int pbuf_grow(pbufs *pb)
{
    if (pb->nbufs >= PBUF_MAX)
        return -1;
    unsigned c = pb->nbufs / PBUF_CHUNK, n = pb->nbufs + PBUF_CHUNK;
    char **chunks = realloc(pb->chunks, (c + 1) * sizeof *chunks);
    if (chunks)
        pb->chunks = chunks;
    uint32_t *off = chunks ? realloc(pb->off, n * sizeof *off) : NULL;
    if (off)
        pb->off = off;
    uint16_t *refs = off ? realloc(pb->refs, n * sizeof *refs) : NULL;
    if (refs)
        pb->refs = refs;
    uint8_t *kernel = refs ? realloc(pb->kernel, n) : NULL;
    if (kernel)
        pb->kernel = kernel;
    uint8_t *dirty = kernel ? realloc(pb->dirty, n) : NULL;
    if (!dirty)
        return -1;
    pb->dirty = dirty;
    memset(dirty + pb->nbufs, 0, PBUF_CHUNK);
    /* The first chunk is touched at once (MAP_POPULATE): the kernel fills the ring's buffers
     * in turn, so all of them are touched soon enough; counted from the start, they are a
     * fixed cost of the thread's loop, not a growth that looks like one connection's. Later
     * chunks come in a burst of arrivals, and only what the burst writes is touched. */
    int populate = c == 0 ? MAP_POPULATE : 0;
    void *mem = mmap(NULL, PBUF_CHUNK * pb->size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | populate, -1, 0);
    if (mem == MAP_FAILED)
        return -1;
    chunks[c] = mem;
    for (unsigned i = 0; i < PBUF_CHUNK; i++) {
        refs[pb->nbufs] = 0;
        pbuf_add(pb, pb->nbufs++);
    }
    return 0;
}

/* The ring, registered with the first chunk, when the first multishot receive needs it:
 * with incremental consumption where the kernel has it. */
static int pbuf_init(uring_backend *u)
{
    pbufs *pb = &u->pb;
    if (pb->br)
        return 0;
    size_t size = PBUF_RING * sizeof(struct io_uring_buf);
    void *br = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED)
        return -1;
    /* (liburing 2.3's header still calls the flags field pad) */
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)br,
                                   .ring_entries = PBUF_RING, .bgid = PBUF_BGID,
                                   .pad = IOU_PBUF_RING_INC};
    int rc = io_uring_register_buf_ring(&u->ring, &reg, 0);
    pb->inc = rc == 0;
    if (rc < 0) {
        reg.pad = 0;
        rc = io_uring_register_buf_ring(&u->ring, &reg, 0);
    }
    if (rc < 0) {
        munmap(br, size);
        errno = -rc;
        return -1;
    }
    pb->br = br;
    pb->size = pb->inc ? PBUF_SIZE_INC : PBUF_SIZE_WHOLE;
    io_uring_buf_ring_init(pb->br);
    if (pbuf_grow(pb) != 0)
        return -1;
    pbuf_publish(pb);
    return 0;
}

static void pbuf_unmap(pbufs *pb)
{
    for (unsigned c = 0; c < pb->nbufs / PBUF_CHUNK; c++)
        munmap(pb->chunks[c], PBUF_CHUNK * pb->size);
    free(pb->chunks);
    free(pb->off);
    free(pb->refs);
    free(pb->kernel);
    free(pb->dirty);
    munmap(pb->br, PBUF_RING * sizeof(struct io_uring_buf));
    memset(pb, 0, sizeof *pb);
}

static void pbuf_free(uring_backend *u)
{
    if (u->pb.br) {
        io_uring_unregister_buf_ring(&u->ring, PBUF_BGID);
        pbuf_unmap(&u->pb);
    }
}

/* An arrival of len bytes in buffer bid, the kernel done with it unless more: where the bytes
 * are; the slice counts in refs until put back. */
static char *pbuf_take(pbufs *pb, unsigned bid, unsigned len, bool more)
{
    char *p = pbuf_addr(pb, bid) + pb->off[bid];
    if (pb->off[bid] == 0)
        pb->avail--; /* (first use of a fresh buffer) */
    if (!pb->dirty[bid]) {
        pb->dirty[bid] = 1;
        pb->ndirty++;
    }
    pb->off[bid] += pb->inc ? len : 0;
    pb->refs[bid]++;
    pb->moves++;
    pb->kernel[bid] = pb->inc && more;
    return p;
}

static char *uring_pbuf(backend *b, uint16_t bid)
{
    return pbuf_addr(&((uring_backend *)b)->pb, bid);
}

/* A slice of buffer bid is consumed: the buffer goes back to the ring once nobody (the kernel
 * included) uses it. */
static void uring_pbuf_put(backend *b, uint16_t bid)
{
    pbufs *pb = &((uring_backend *)b)->pb;
    if (--pb->refs[bid] == 0 && !pb->kernel[bid])
        pbuf_add(pb, bid); /* published before the next enter */
}

static int uring_poll(backend *b, int timeout_ms);

/* Operations still in flight (a transport's multishot receive, a send the loop owns, an
 * accept): cancel them and reap their completions, so that their owners hear of the end. A
 * completion's callback may start another operation (a send's next part): cancelled too. */
static void uring_quiesce(backend *b)
{
    uring_backend *u = (uring_backend *)b;
    for (int i = 0; i < 100 && u->inflight > 0; i++) {
        struct io_uring_sqe *sqe = get_sqe(u);
        if (sqe) {
            io_uring_prep_cancel(sqe, NULL, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
            io_uring_sqe_set_data64(sqe, UD_IGNORE);
        }
        uring_poll(b, 10);
    }
}

static void uring_free(backend *b)
{
    uring_backend *u = (uring_backend *)b;
    uring_quiesce(b);
    RING_UNMAPPED();
    pbuf_free(u);
    io_uring_queue_exit(&u->ring);
    ufd_table_free(u);
    free(u);
}

/* In a forked child: the ring is the parent's too, so nothing may be submitted to it or
 * unregistered from it; only our mappings and descriptor go. */
static void uring_abandon(backend *b)
{
    uring_backend *u = (uring_backend *)b;
    if (u->pb.br) {
        /* The buffers stay mapped: arrivals received before the fork may still be read from
         * them (a channel's adopted buffer, a transport's queue), as the parent's were. */
        free(u->pb.chunks);
        free(u->pb.off);
        free(u->pb.refs);
        free(u->pb.kernel);
        free(u->pb.dirty);
        munmap(u->pb.br, PBUF_RING * sizeof(struct io_uring_buf));
    }
    RING_UNMAPPED();
    io_uring_queue_exit(&u->ring); /* (munmap and close: nothing reaches the kernel's ring) */
    ufd_table_free(u);
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

static int submit_op(uring_backend *u, io_op *op);

static void complete_op(uring_backend *u, io_op *op, const struct io_uring_cqe *cqe)
{
    op->more = op->kind == IO_OP_RECV_MULTI && (cqe->flags & IORING_CQE_F_MORE);
    if (!op->more) {
        u->inflight--;
        if ((size_t)op->fd < u->n)
            u->fds[op->fd].ops--;
    }
    if (op->kind == IO_OP_RECV_MULTI && !op->more)
        u->multishots--;
    if (op->kind == IO_OP_RECV_MULTI && cqe->res == -ENOBUFS && !op->more) {
        /* Out of buffers: more are made, up to a few per receive (so one connection that
         * floods us cannot grow the ring for all), and the receive starts again once some
         * are in the ring; its owner need not know. */
        if (u->pb.nbufs <= PBUF_PER_RECV * u->multishots)
            pbuf_grow(&u->pb);
        op->next = u->pb.starved;
        u->pb.starved = op;
        return;
    }
    op->res = cqe->res;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        op->bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        op->buf = pbuf_take(&u->pb, op->bid, cqe->res > 0 ? (unsigned)cqe->res : 0,
                            cqe->flags & IORING_CQE_F_BUF_MORE);
        if (cqe->res <= 0) /* (a buffer with no data in it: straight back) */
            uring_pbuf_put(&u->base, op->bid);
    }
    op->cb(op); /* (may free op, once more is false) */
}

/* Start again the receives that ran out of buffers, now that there are some. */
static void restart_starved(uring_backend *u)
{
    while (u->pb.starved && u->pb.avail > 0) {
        io_op *op = u->pb.starved;
        u->pb.starved = op->next;
        if (submit_op(u, op) != 0) { /* no room in the ring now: next turn */
            op->next = u->pb.starved;
            u->pb.starved = op;
            break;
        }
    }
}

static void complete(uring_backend *u, const struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    if (ud == UD_IGNORE)
        return;
    u->base.dispatched++;
    if (ud & UD_OP) {
        complete_op(u, (io_op *)(uintptr_t)(ud & ~UD_OP), cqe);
        return;
    }
    int fd = (int)((ud >> 1) & 0x7fffffff), dir = (int)(ud & 1);
    if ((size_t)fd >= u->n || (u->fds[fd].gen & 0x1fffffff) != (uint32_t)(ud >> 32))
        return; /* for an fd since forgotten */
    ufd *f = &u->fds[fd];
    /* A poll on a descriptor that is not open fails at once (epoll's registration would). */
    unsigned bad = cqe->res == -EBADF ? IO_HUP | IO_BADF : 0;
    if (dir) {
        f->write_armed = false;
        f->w->cb(f->w, IO_OUT | bad);
        return;
    }
    unsigned ev = IO_IN | bad;
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

/* A burst of arrivals grows the ring past its first chunk, and the pages the kernel wrote stay
 * resident after the burst: megabytes, for a server back to idle. Once no buffer has been
 * taken or returned for PBUF_TRIM_MS, before the loop sleeps, the pages of buffers that sit
 * in the ring unused, and the consumed pages of those still being filled, are given back (MADV_DONTNEED: the mapping stays, the kernel's next
 * write gets zeroed pages), once per quiet spell. Never under load: pages given back there
 * would only be faulted in again. Only with DEFER_TASKRUN, and only when every completion
 * posted has been taken: then the kernel writes buffers only inside our own io_uring_enter, so
 * what pbufs says of each is exact. A loop that would sleep for longer wakes for it. Returns
 * the ms until it wants to run again, or -1. */
/* A buffer the kernel still fills from off on (incremental consumption), every slice before
 * off consumed: its whole pages below off will not be written again until it comes back to
 * the ring, and are given back. (Where idle connections' last arrivals sat.) */
static void pbuf_trim_consumed(pbufs *pb, unsigned bid)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t done = page > 0 ? pb->off[bid] / (size_t)page * (size_t)page : 0;
    if (pb->dirty[bid] && pb->kernel[bid] && pb->refs[bid] == 0 && done > 0)
        madvise(pbuf_addr(pb, bid), done, MADV_DONTNEED);
}

static int pbuf_trim(uring_backend *u)
{
    pbufs *pb = &u->pb;
    if (!u->deferred || !pb->ndirty)
        return -1;
    if (pb->moves == pb->moves_seen && pb->trimmed)
        return -1; /* (this quiet spell's pass is done: nothing changed since) */
    if (io_uring_cq_ready(&u->ring) != 0)
        return PBUF_TRIM_MS; /* (completions to take first: the next sleep, then) */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    int64_t ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    if (pb->moves != pb->moves_seen) {
        pb->moves_seen = pb->moves;
        pb->quiet_ms = ms;
        pb->trimmed = false;
    }
    if (ms - pb->quiet_ms < PBUF_TRIM_MS)
        return (int)(PBUF_TRIM_MS - (ms - pb->quiet_ms));
    pb->trimmed = true;
    for (unsigned c = 0; c < pb->nbufs / PBUF_CHUNK; c++) {
        unsigned run = 0, first = c * PBUF_CHUNK;
        for (unsigned i = 0; i <= PBUF_CHUNK; i++) { /* (one past the end closes a run) */
            unsigned bid = c * PBUF_CHUNK + i;
            bool idle = i < PBUF_CHUNK && pb->dirty[bid] && pb->kernel[bid] &&
                        pb->off[bid] == 0 && pb->refs[bid] == 0;
            if (idle) {
                if (run++ == 0)
                    first = bid;
                continue;
            }
            if (run && madvise(pbuf_addr(pb, first), run * pb->size, MADV_DONTNEED) == 0) {
                memset(pb->dirty + first, 0, run);
                pb->ndirty -= run;
            }
            run = 0;
            if (i < PBUF_CHUNK)
                pbuf_trim_consumed(pb, bid);
        }
    }
    /* Buffers still in use are looked at again after the next quiet spell, not woken for. */
    return -1;
}

static int uring_poll(backend *b, int timeout_ms)
{
    uring_backend *u = (uring_backend *)b;
    struct io_uring_cqe *cqe;
    int rc;
    if (u->pb.br) {
        if (timeout_ms != 0) { /* (before the publish: the kernel takes none of them meanwhile) */
            int again = pbuf_trim(u);
            if (again >= 0 && (timeout_ms < 0 || timeout_ms > again))
                timeout_ms = again > 0 ? again : 1;
        }
        pbuf_publish(&u->pb); /* the buffers given back this turn */
        restart_starved(u);
    }
    if (timeout_ms == 0) {
        /* Not a plain submit: with DEFER_TASKRUN, completions are only posted when we ask
         * for events, and a busy loop (always something runnable) would never see them. */
        rc = io_uring_submit_and_get_events(&u->ring);
    } else {
        struct __kernel_timespec ts = {timeout_ms / 1000, (long long)(timeout_ms % 1000) * 1000000};
#ifdef WEFT_TSAN
        /* (Submitted first: an enter that submits says how many, not EINTR, when a signal
         * ends its wait, and liburing waits again: the handler would wait with it.) */
        io_uring_submit(&u->ring);
        sigset_t old;
        tsan_block_async_signals(&old);
        rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, timeout_ms < 0 ? NULL : &ts, &old);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
#else
        rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, timeout_ms < 0 ? NULL : &ts, NULL);
#endif
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
    if (op->kind == IO_OP_RECV_MULTI && pbuf_init(u) != 0)
        return -1;
    return submit_op(u, op);
}

static int submit_op(uring_backend *u, io_op *op)
{
    ufd *f = ufd_get(u, op->fd);
    if (f && f->ops == UINT16_MAX) { /* (weft keeps a few per fd: a guard) */
        errno = EAGAIN;
        return -1;
    }
    struct io_uring_sqe *sqe = f ? get_sqe(u) : NULL;
    if (!sqe)
        return -1;
    switch (op->kind) {
    case IO_OP_RECV_MULTI:
        io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = PBUF_BGID;
        break;
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
    u->inflight++;
    u->multishots += op->kind == IO_OP_RECV_MULTI;
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

static void uring_flush(backend *b)
{
    io_uring_submit(&((uring_backend *)b)->ring);
}

static void uring_forget(backend *b, int fd)
{
    uring_backend *u = (uring_backend *)b;
    if (fd < 0 || (size_t)fd >= u->n)
        return;
    ufd *f = &u->fds[fd];
    if (f->read_armed || f->write_armed || f->ops) {
        /* A poll or an operation in flight holds the file open: cancel it now, before the
         * close (operations then complete with -ECANCELED and their callers go on). With
         * deferred task work the cancelled requests let go of the file only when the thread
         * next asks for events, so ask now: the close then ends the connection at once, even
         * if the loop does not run again soon (their completions wait in the ring). */
        struct io_uring_sqe *sqe = get_sqe(u);
        if (sqe) {
            io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
            io_uring_sqe_set_data64(sqe, UD_IGNORE);
            io_uring_submit_and_get_events(&u->ring);
        }
        f->read_armed = f->write_armed = false;
    }
    f->gen++;
    f->w = NULL;
    /* A receive waiting for buffers must not start on whatever takes the number next. */
    for (io_op **p = &u->pb.starved; *p;) {
        io_op *op = *p;
        if (op->fd != fd) {
            p = &op->next;
            continue;
        }
        *p = op->next;
        op->res = -ECANCELED;
        op->more = false;
        op->cb(op);
    }
}

static const backend_ops uring_ops = {
    .name = "uring",
    .free = uring_free,
    .quiesce = uring_quiesce,
    .abandon = uring_abandon,
    .watch = uring_watch,
    .forget = uring_forget,
    .poll = uring_poll,
    .submit = uring_submit,
    .cancel = uring_cancel,
    .flush = uring_flush,
    .pbuf = uring_pbuf,
    .pbuf_put = uring_pbuf_put,
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
    u->deferred = rc == 0;
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
    /* Now, with the ring: its memory is the loop's fixed cost. Without it (an old kernel),
     * receives use readiness, as on epoll. */
    u->base.multishot_rx = pbuf_init(u) == 0;
    return &u->base;
}

#else

backend *uring_backend_new(void)
{
    errno = ENOSYS; /* built without liburing */
    return NULL;
}

#endif
