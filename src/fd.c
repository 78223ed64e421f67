/* Parking on descriptors and operations. Inside a coroutine a wait parks it in the fd's slot
 * and the backend's events wake it; outside, it is a plain poll(): the seed's "called outside
 * any coroutine, it simply blocks". The slots belong to this layer, one per fd, in chunks
 * that never move (the backend keeps the address of each slot's watcher); each holds at
 * most one waiting reader and one waiting writer (a second gets EBUSY), what the input
 * events said since the last read, and the fd's owner, whose callback hears its events
 * first. The table follows the thread's backend: a new backend (a new scheduler, a forked
 * child) starts from clean slots. */
#include "internal.h"
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* 48 bytes: one per descriptor number ever waited on, so a server pays it per connection.
 * Its flags live in the watcher's own bits (w.bits), in what would be padding. */
typedef struct fd_slot {
    io_watcher w;        /* first: what the backend calls back, and prefetches */
    weft_co *reader;     /* coroutine waiting for input, if any */
    weft_co *writer;     /* coroutine waiting for room, if any */
    fd_owner *owner;     /* hears the fd's events first, if any */
} fd_slot;

/* Flags of a slot, in w.bits. */
#define WATCHED   1u /* the backend reports its input events */
#define IN_SEEN   2u /* an input event came since the last fd_input_hint */
#define IN_STICKY 4u /* hang-up, error or urgent data seen: reads are always tried */
#define IN_LATCH  8u /* (latches_input) an arrival came while nobody waited */

static bool slot_has(const fd_slot *slot, unsigned flag)
{
    return slot->w.bits & flag;
}

static void slot_set(fd_slot *slot, unsigned flag, bool on)
{
    slot->w.bits = on ? slot->w.bits | flag : slot->w.bits & ~flag;
}

#define CHUNK 256

typedef struct fd_table {
    fd_slot **chunks;
    size_t nchunks;
    uint64_t gen;        /* the backend these slots describe (sched->be_gen) */
    bool latches;        /* its latches_input */
} fd_table;

static _Thread_local fd_table tab;
static pthread_key_t tab_key;
static pthread_once_t tab_once = PTHREAD_ONCE_INIT;

int64_t deadline_after(int64_t timeout_ms)
{
    return timeout_ms < 0 ? -1 : weft_now() + timeout_ms;
}

/* ---- The slot table ---- */

static void tab_free(void *unused)
{
    (void)unused;
    for (size_t i = 0; i < tab.nchunks; i++)
        free(tab.chunks[i]);
    free(tab.chunks);
    tab = (fd_table){0};
}

static void tab_init_key(void)
{
    pthread_key_create(&tab_key, tab_free);
}

static void slot_event(io_watcher *w, unsigned events);

_Static_assert(sizeof(fd_slot) <= 48, "a slot per descriptor: keep it small");

/* Clean slots for a new backend: nothing it has not told us can be known. */
static void tab_reset(const sched *s)
{
    for (size_t i = 0; i < tab.nchunks; i++) {
        if (!tab.chunks[i])
            continue;
        memset(tab.chunks[i], 0, CHUNK * sizeof(fd_slot));
        for (int k = 0; k < CHUNK; k++)
            tab.chunks[i][k].w = (io_watcher){.cb = slot_event, .fd = (int)(i * CHUNK) + k};
    }
    tab.gen = s->be_gen;
    tab.latches = s->be->ops->latches_input;
}

/* fd's slot, made: the table grows to reach it. Only for an fd that is open, so that a bad
 * number (the table is indexed by it: weft_wait_fd(1 << 30)) cannot grow it; open ones are
 * below RLIMIT_NOFILE's hard limit, which bounds it. The check costs a system call, on this
 * path only (a new chunk of 256 slots), never on the way to an existing slot. NULL/errno. */
static fd_slot *slot_make(int fd)
{
    if (sys_fcntl(fd, F_GETFD, 0) < 0) {
        errno = EBADF; /* (valgrind says EPERM for numbers above the ones it lets us use) */
        return NULL;
    }
    size_t c = (size_t)fd / CHUNK;
    if (c >= tab.nchunks) {
        pthread_once(&tab_once, tab_init_key);
        size_t n = tab.nchunks ? tab.nchunks : 4;
        while (n <= c)
            n *= 2;
        fd_slot **chunks = realloc(tab.chunks, n * sizeof *chunks);
        if (!chunks) {
            errno = ENOMEM;
            return NULL;
        }
        memset(chunks + tab.nchunks, 0, (n - tab.nchunks) * sizeof *chunks);
        tab.chunks = chunks;
        tab.nchunks = n;
        pthread_setspecific(tab_key, &tab); /* freed at thread exit */
    }
    if (!tab.chunks[c]) {
        fd_slot *chunk = calloc(CHUNK, sizeof *chunk);
        if (!chunk) {
            errno = ENOMEM;
            return NULL;
        }
        for (int k = 0; k < CHUNK; k++)
            chunk[k].w = (io_watcher){.cb = slot_event, .fd = (int)(c * CHUNK) + k};
        tab.chunks[c] = chunk;
    }
    return &tab.chunks[c][fd % CHUNK];
}

/* fd's slot for scheduler s, made as needed; NULL/errno (EBADF: fd is not open). */
static fd_slot *slot_get(sched *s, int fd)
{
    if (fd < 0) {
        errno = EBADF;
        return NULL;
    }
    if (tab.gen != s->be_gen)
        tab_reset(s);
    size_t c = (size_t)fd / CHUNK;
    if (c < tab.nchunks && tab.chunks[c])
        return &tab.chunks[c][fd % CHUNK];
    return slot_make(fd);
}

/* fd's slot if it exists for s's backend, else NULL. */
static fd_slot *slot_find(const sched *s, int fd)
{
    size_t c = (size_t)fd / CHUNK;
    if (fd < 0 || tab.gen != s->be_gen || c >= tab.nchunks || !tab.chunks[c])
        return NULL;
    return &tab.chunks[c][fd % CHUNK];
}

static void slot_wake(weft_co **w, int err)
{
    weft_co *co = *w;
    if (co) {
        *w = NULL;
        sched_wake(co, err);
    }
}

/* Callback from the backend: events of the slot's fd. Its owner hears them first (its queued
 * output moves on), then the waiters wake; a hang-up or error wakes both sides, and the
 * call they retry reports it; an fd that is not open wakes them with EBADF. */
static void slot_event(io_watcher *w, unsigned events)
{
    fd_slot *slot = (fd_slot *)w; /* (w is its first member) */
    if (events & IO_IN) /* (noted with nobody waiting too: a reader may be about to read) */
        slot_set(slot, IN_SEEN, true);
    if (events & (IO_HUP | IO_PRI)) /* (a hang-up's edge comes once; urgent data stops reads) */
        slot_set(slot, IN_STICKY, true);
    if (events & IO_UNWATCHED)
        slot_set(slot, WATCHED, false);
    if (slot->owner)
        slot->owner->fn(slot->owner, events);
    if (events & IO_BADF) {
        slot_wake(&slot->reader, EBADF);
        slot_wake(&slot->writer, EBADF);
        return;
    }
    if (events & (IO_IN | IO_PRI | IO_HUP)) {
        if (slot->reader)
            slot_wake(&slot->reader, 0);
        else if ((events & IO_IN) && tab.latches)
            slot_set(slot, IN_LATCH, true);
    }
    if (events & (IO_OUT | IO_HUP))
        slot_wake(&slot->writer, 0);
}

/* ---- Waiting ---- */

static int poll_wait(int fd, int events, int64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = (events & WEFT_READABLE) ? POLLIN : POLLOUT};
    for (;;) {
        int timeout = -1;
        if (deadline >= 0) {
            int64_t left = deadline - weft_now();
            if (left <= 0) {
                errno = ETIMEDOUT;
                return -1;
            }
            timeout = left > INT_MAX ? INT_MAX : (int)left;
        }
        int n = sched_poll_outside(&p, 1, timeout); /* (answering a signal's dump) */
        if (n > 0) {
            if (p.revents & POLLNVAL) {
                errno = EBADF;
                return -1;
            }
            return 0; /* ready, or an error/hang-up the retried call will report */
        }
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

/* Park the running coroutine in slot until an event for events, the deadline, or a wake. */
static int slot_park(fd_slot *slot, int events, int64_t deadline)
{
    weft_co *self = weft_self();
    bool input = events & WEFT_READABLE;
    weft_co **w = input ? &slot->reader : &slot->writer;
    if (*w) {
        errno = EBUSY;
        return -1;
    }
    *w = self;
    slot->w.hint = self;
    int rc = sched_park_io(input ? WAIT_READ : WAIT_WRITE, (wait_on){.fd = slot->w.fd},
                           deadline, true);
    if (*w == self) /* a timeout or cancel: take ourselves out */
        *w = NULL;
    return rc;
}

int fd_wait(int fd, int events, int64_t deadline)
{
    sched *s = sched_peek();
    if (!s || !s->current)
        return poll_wait(fd, events, deadline);
    fd_slot *slot = slot_get(s, fd);
    if (!slot)
        return -1;
    bool input = events & WEFT_READABLE;
    if (input && slot_has(slot, IN_LATCH) && slot_has(slot, WATCHED)) {
        slot_set(slot, IN_LATCH, false); /* input came since the caller's failed read: retry it */
        return 0;
    }
    bool arming = input && !slot_has(slot, WATCHED);
    if (backend_watch(s->be, &slot->w, input ? IO_IN : IO_OUT) != 0)
        return errno == EPERM ? 0 : -1; /* a regular file cannot be polled: always ready */
    if (input) {
        if (arming) /* (arming looks at the fd's state: older news is moot) */
            slot_set(slot, IN_LATCH, false);
        slot_set(slot, WATCHED, true);
    }
    return slot_park(slot, events, deadline);
}

int fd_park(int fd, int events, int64_t deadline)
{
    sched *s = sched_peek();
    fd_slot *slot = slot_get(s, fd);
    return slot ? slot_park(slot, events, deadline) : -1;
}

void fd_cancel_wait(int fd, int events, int err)
{
    sched *s = sched_peek();
    fd_slot *slot = s ? slot_find(s, fd) : NULL;
    if (slot)
        slot_wake((events & WEFT_READABLE) ? &slot->reader : &slot->writer, err);
}

bool fd_input_hint(int fd)
{
    sched *s = sched_peek();
    fd_slot *slot = s && s->current ? slot_find(s, fd) : NULL;
    if (!slot || !slot_has(slot, WATCHED) || slot_has(slot, IN_STICKY))
        return true; /* no edges known for it, or the last one is spent */
    bool seen = slot_has(slot, IN_SEEN);
    slot_set(slot, IN_SEEN, false);
    return seen;
}

bool fd_edges_show_urgent(void)
{
    backend *b = sched_backend();
    return !b || b->ops->edges_show_urgent;
}

int fd_set_owner(int fd, fd_owner *owner)
{
    sched *s = sched_peek();
    if (!s)
        return 0; /* no loop to call it from: whoever waits on fd moves its output itself */
    fd_slot *slot = owner ? slot_get(s, fd) : slot_find(s, fd);
    if (!slot)
        return owner ? -1 : 0;
    slot->owner = owner;
    return 0;
}

int fd_watch_output(int fd)
{
    sched *s = sched_peek();
    if (!s)
        return 0;
    fd_slot *slot = slot_get(s, fd);
    if (!slot)
        return -1;
    return backend_watch(s->be, &slot->w, IO_OUT) != 0 && errno != EPERM ? -1 : 0;
}

/* ---- Operations ---- */

typedef struct op_wait {
    weft_co *co;
    bool done;
} op_wait;

bool fd_ops_available(void)
{
    backend *b = sched_backend();
    return b && b->ops->submit;
}

/* Callback from the backend: a parked coroutine's operation is done. */
static void op_done(io_op *op)
{
    op_wait *ow = op->data;
    ow->done = true;
    sched_wake(ow->co, 0);
}

/* Park until op, submitted with op_done and ow, is done; see fd_op. */
static ssize_t op_wait_done(backend *b, io_op *op, op_wait *ow, int64_t deadline)
{
    int err = 0;
    wait_on on = {.obj = op};
    while (!ow->done) {
        if (sched_park_io(WAIT_OP, on, deadline, true) != 0 && !ow->done) {
            /* The kernel may still be using the buffer: cancel and wait for the end. */
            err = errno;
            b->ops->cancel(b, op);
            while (!ow->done)
                sched_park_io(WAIT_OP, on, -1, false);
        }
    }
    if (op->res >= 0)
        return op->res; /* done, even if a timeout came too: nothing is lost */
    errno = op->res == -ECANCELED && err ? err : -op->res;
    return -1;
}

ssize_t fd_op(io_op *op, int64_t deadline)
{
    backend *b = sched_backend();
    op_wait ow = {weft_self(), false};
    op->cb = op_done;
    op->data = &ow;
    if (b->ops->submit(b, op) != 0)
        return -1;
    return op_wait_done(b, op, &ow, deadline);
}

ssize_t fd_recv_op(int fd, void *buf, size_t len, int64_t deadline)
{
    sched *s = sched_peek();
    if (!s || !s->current || !s->be->ops->submit) {
        errno = ENOSYS;
        return -2;
    }
    op_wait ow = {s->current, false};
    io_op op = {.kind = IO_OP_RECV, .fd = fd, .buf = buf,
                .len = len > INT_MAX ? INT_MAX : (unsigned)len, .cb = op_done, .data = &ow};
    if (s->be->ops->submit(s->be, &op) != 0)
        return -2;
    return op_wait_done(s->be, &op, &ow, deadline);
}

int fd_op_start(io_op *op)
{
    backend *b = sched_backend();
    if (!b || !b->ops->submit) {
        errno = ENOSYS;
        return -1;
    }
    return b->ops->submit(b, op);
}

/* ---- Public: waiting on fds, closing ---- */

int weft_wait_fd(int fd, int events, int64_t deadline)
{
    if (events != WEFT_READABLE && events != WEFT_WRITABLE) {
        errno = EINVAL;
        return -1;
    }
    if (fd < 0) { /* poll() would ignore it and sleep until the deadline */
        errno = EBADF;
        return -1;
    }
    return fd_wait(fd, events, deadline);
}

void fd_forget(int fd)
{
    sched *s = sched_peek();
    fd_slot *slot = s ? slot_find(s, fd) : NULL;
    if (s)
        backend_forget(s->be, fd);
    if (slot) {
        slot->w.bits = 0;
        slot->owner = NULL;
        slot_wake(&slot->reader, EBADF);
        slot_wake(&slot->writer, EBADF);
    }
}

int fd_close(int fd)
{
    fd_forget(fd);
    return sys_close(fd);
}

int fd_watch_input(int fd, fd_owner *owner)
{
    sched *s = sched_peek();
    if (!s)
        return 0; /* no loop to call it from */
    fd_slot *slot = slot_get(s, fd);
    if (!slot)
        return -1;
    slot->owner = owner;
    if (slot_has(slot, WATCHED))
        return 0;
    if (backend_watch(s->be, &slot->w, IO_IN) != 0)
        return -1;
    slot_set(slot, WATCHED, true);
    return 0;
}

int weft_fd_close(int fd)
{
    return fd_close(fd);
}

/* ---- Small utilities ---- */

int fd_set_nonblock(int fd)
{
    /* Only O_NONBLOCK: the descriptor is the caller's, and its other flags (close-on-exec
     * among them) are theirs to keep. (Descriptors weft makes itself are close-on-exec.) */
    int fl = sys_fcntl(fd, F_GETFL, 0);
    if (fl < 0)
        return -1;
    if (!(fl & O_NONBLOCK) && sys_fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -1;
    return 0;
}

static void ignore_sigpipe_once(void)
{
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL &&
        !(old.sa_flags & SA_SIGINFO))
        signal(SIGPIPE, SIG_IGN);
}

void ignore_sigpipe(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, ignore_sigpipe_once);
}
