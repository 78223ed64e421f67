/* weft internals shared between the subsystem files; nothing here is public.
 * Layers, bottom up: ctx (switch), stack, buf, timer, sched, backend, chan, net. Each file only
 * calls into the ones listed before it. */
#ifndef WEFT_INTERNAL_H
#define WEFT_INTERNAL_H

#include "weft.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

/* ---- Context switch (src/ctx/) ---- */
#if defined(WEFT_CTX_UCONTEXT)
#include <ucontext.h>
typedef struct ctx {
    ucontext_t uc;
} ctx;
#else
typedef struct ctx {
    void *sp; /* saved stack pointer; the registers are on that stack */
} ctx;
#endif

/* Prepare c so that the first switch to it runs fn(arg) on [stack_lo, stack_lo + size).
 * fn must never return: it switches away for the last time instead. */
void ctx_make(ctx *c, void *stack_lo, size_t size, void (*fn)(void *), void *arg);
/* Save the caller's registers in from and resume to. Returns when someone switches back. */
void ctx_switch(ctx *from, ctx *to);

/* ---- Stacks (stack.c) ---- */
typedef struct stack {
    void *lo;        /* lowest usable byte (just above the guard page, if any) */
    size_t size;     /* usable bytes */
    struct stack *next_free;
    void *map;       /* the whole mapping, guard included */
    size_t map_size;
    bool guarded;    /* else a canary at lo, checked whenever its coroutine switches out */
    size_t guard;    /* bytes of PROT_NONE gap below lo, when guarded (whole pages) */
    unsigned valgrind_id;
} stack;

/* A stack of at least size bytes with a guard gap of guard bytes below it (0: one page;
 * rounded up to pages), from the pool or a new mapping. NULL/ENOMEM. */
stack *stack_take(size_t size, size_t guard);
/* Give s back to the pool (or unmap it when the pool is full). */
void stack_give(stack *s);
/* For an unguarded stack: false if its canary was overwritten (the stack overflowed). */
bool stack_canary_ok(const stack *s);
/* Report an overflow of co's stack on stderr and end the process (SIGABRT). */
_Noreturn void stack_overflow_abort(const weft_co *co);
/* Unmap every pooled stack of this thread. */
void stack_pool_drain(void);
/* Install the SIGSEGV handler (on an alternate stack) that reports overflows. Per thread. */
int stack_guard_init(void);
/* Fault injection for tests: while positive, each stack_take fails with ENOMEM and
 * decrements it. Per thread; zero in normal use. */
extern _Thread_local unsigned stack_fail_next;

/* ---- I/O buffers (buf.c), pooled per thread ---- */
#define BUF_SIZE 4096
/* A buffer of BUF_SIZE bytes (from this thread's pool, else malloc). NULL/ENOMEM. */
void *buf_take(void);
/* Give back a malloc'd buffer of size bytes: pooled if BUF_SIZE and the pool has room. */
void buf_give(void *p, size_t size);
/* Free this thread's pooled buffers. */
void buf_pool_drain(void);

/* ---- Timers (timer.c): a binary min-heap of deadlines ---- */
typedef struct timer {
    int64_t deadline;
    size_t index; /* position in the heap; SIZE_MAX when not armed */
} timer;

typedef struct timer_heap {
    timer **items;
    size_t len, cap;
} timer_heap;

/* Arm t (its deadline already set). -1/ENOMEM only if the heap cannot grow. */
int timer_heap_add(timer_heap *h, timer *t);
/* Disarm t if armed. */
void timer_heap_remove(timer_heap *h, timer *t);
/* The earliest armed timer, or NULL. */
timer *timer_heap_peek(const timer_heap *h);
void timer_heap_free(timer_heap *h);
static inline bool timer_armed(const timer *t) { return t->index != SIZE_MAX; }

/* ---- Scheduler (sched.c) ---- */
/* ORPHAN: a coroutine of the parent process, in a child forked from it: never run again. */
enum co_state { CO_READY, CO_RUNNING, CO_PARKED, CO_DONE, CO_ORPHAN };

typedef struct weft_group weft_group;

/* The first 64 bytes are what a wake-up, a park and a switch touch. The struct is allocated
 * on a cache line, so with thousands of connections resuming one costs one miss here, which
 * the loop prefetches while the coroutine before it runs. */
struct weft_co {
    ctx ctx;
    weft_co *next;        /* run-queue link */
    weft_chan *held_output; /* a channel whose line output it holds back (coalescing) */
    int64_t deadline;     /* of the current park; -1: none */
    timer timer;          /* in the heap at or before deadline (see sched.c: lazy timers) */
    uint8_t state;        /* enum co_state; small, so that what a switch touches fits a line */
    uint8_t io_streak;    /* I/O calls done since it last gave up the CPU (fairness) */
    int16_t wake_errno;   /* why a park ended: 0, ETIMEDOUT, ECANCELED, EBADF */
    bool guarded;         /* its stack has a guard page; else the canary is checked */
    bool cancelled;
    bool nocancel;        /* parked in a wait that cancellation must not cut short */
    bool detached;
    const void *resume_hint; /* what it touches first when resumed (its channel), or NULL */
    /* cold: spawn, join, end */
    stack *stack;
    bool in_stack;        /* lives at the top of its own stack (detached ones) */
    weft_co *joiner;      /* coroutine parked in weft_join on this one */
    bool joined_outside;  /* the thread itself joins it, from outside any coroutine */
    weft_group *group;    /* owning group, if any, and the links of its member list */
    weft_co *group_prev, *group_next;
    weft_co *all_prev, *all_next; /* every live coroutine of the scheduler (sched->all) */
    weft_fn fn;
    void *arg;
    void *result;
    void *asan_fake_stack;
    void *tsan_fiber;
    char name[64];
};

/* Room at the top of every stack for a coroutine struct (detached coroutines keep theirs
 * there); the stack proper, as valgrind is told, ends below it. */
#define CO_ROOM ((sizeof(weft_co) + 63) / 64 * 64)

typedef struct backend backend;

typedef struct sched sched;

/* A wait that another thread ends: the other thread claims it under its own lock, then
 * hands it to the waiter's scheduler through that scheduler's inbox and eventfd. delivered is
 * only touched on the waiter's thread, so the waiter knows when the wake-up has arrived. */
typedef struct rwait {
    weft_co *co;
    sched *s;
    bool delivered;
    struct rwait *inbox_next;
} rwait;

struct sched {
    ctx main_ctx;          /* the thread's own stack, where the loop runs */
    weft_co *current;      /* NULL while the loop itself runs */
    weft_co *runq_head, *runq_tail;
    weft_co *batch;        /* the rest of the turn's run list (see loop_turn) */
    weft_co *reap;         /* ended, still to be reaped by whoever runs after it */
    bool from_main;        /* the last switch came from the loop's own stack */
    timer_heap timers;
    backend *be;
    size_t live;           /* coroutines spawned and not yet ended */
    weft_co *all;          /* those coroutines, linked through all_next */
    bool stop;
    int loop_depth;        /* nested weft_run/join-from-outside loops */
    const void *main_stack_lo; /* for AddressSanitizer's fiber switch */
    size_t main_stack_size;
    char backend_reason[96];   /* why this backend (a fallback says so) */
    size_t external_waits; /* coroutines waiting for another thread (rwait) */
    int wake_fd;           /* eventfd other threads write to; -1 until first needed */
    pthread_mutex_t inbox_mu;
    rwait *inbox;          /* wake-ups delivered by other threads */
};

/* This thread's scheduler, created on first use; NULL/ENOMEM. */
sched *sched_get(void);
/* This thread's scheduler if it exists. */
sched *sched_peek(void);
/* Park the running coroutine until woken or the deadline. 0 when woken normally, else -1
 * with errno set from the waker (EBADF), ETIMEDOUT, or ECANCELED (already cancelled). */
int sched_park(int64_t deadline);
/* Make a parked coroutine runnable; its sched_park returns with err (0 = success). */
void sched_wake(weft_co *co, int err);
/* Like sched_park, but neither a pending nor a new cancel ends it. */
int sched_park_nocancel(int64_t deadline);
/* Count one I/O call of the running coroutine; after IO_BUDGET calls that all found data or
 * room without waiting, yield, so a client whose input never runs dry cannot starve the
 * others. A no-op outside coroutines. */
void sched_spend_io(void);
#define IO_BUDGET 64
_Static_assert(IO_BUDGET <= UINT8_MAX, "weft_co.io_streak counts up to IO_BUDGET");
/* serve.c has installed its SIGINT/SIGTERM handlers (ThreadSanitizer builds: see loop_turn). */
void sched_note_stop_handlers(void);
/* Tell the scheduler what the running coroutine will touch first when it is resumed (the
 * channel it is about to wait on), so that it can be fetched before the switch needs it. */
void sched_resume_hint(const void *p);
/* Set by the channel layer: send co->held_output (without waiting unless may_wait). The
 * scheduler calls it when co parks or ends, so held-back output never waits on a coroutine
 * that is itself waiting. */
extern void (*sched_held_output_hook)(weft_co *co, bool may_wait);

/* Waiting on something other than an fd (queues, locks, groups): the waiter is a node, on
 * the waiting side's stack, in the object's list; whoever satisfies the wait marks it done.
 * Outside a coroutine the waiting side runs the scheduler until then. */
typedef struct selector {
    bool done;
    int index;                   /* the operation that completed */
} selector;
typedef struct waiter {
    weft_co *co;                 /* NULL: waiting outside any coroutine */
    struct waiter *prev, *next;
    bool linked;                 /* in some wait list now */
    bool done;
    int err;                     /* set with done: 0, or why the wait failed (EPIPE, EBADF) */
    void *item;                  /* what is handed over (queues) */
    selector *sel;               /* set when this node is one of a weft_select's */
    int index;                   /* its operation's index in that select */
} waiter;

typedef struct wait_list {
    waiter *head, *tail;
} wait_list;

/* The bounded FIFO of items behind both queues (weft_queue, weft_tqueue). */
typedef struct item_ring {
    void **items;
    size_t cap, head, len;
} item_ring;

/* Room for cap (> 0) items. -1/ENOMEM. */
int item_ring_init(item_ring *r, size_t cap);
void item_ring_free(item_ring *r);
/* Add at the tail; only when len < cap. */
void item_ring_push(item_ring *r, void *item);
/* Take from the head; only when len > 0. */
void *item_ring_pop(item_ring *r);

void wait_list_push(wait_list *l, waiter *w);
void wait_list_remove(wait_list *l, waiter *w);
/* The first waiter that can still be satisfied (skipping the nodes of a select that another
 * operation already completed), taken off the list; NULL if none. */
waiter *wait_list_pop(wait_list *l);
/* Mark w done with err and wake its side. */
void waiter_done(waiter *w, int err);
/* Wait until w is done, the deadline passes or the caller is cancelled. 0 when done (w->err
 * then tells the outcome); -1 with ETIMEDOUT/ECANCELED otherwise, and the caller must take w
 * off its list. cancellable=false ignores cancellation. */
int waiter_wait(waiter *w, int64_t deadline, bool cancellable);
/* Initialise w for the calling side. */
void waiter_init(waiter *w);

/* ---- Offload (offload.c) ---- */
/* weft_offload with a deadline (-1: none; ETIMEDOUT), plus drop(arg, result): when the call
 * fails, arg is drop's (heap memory it frees): called on the worker thread once fn returns if
 * the caller was cancelled or ran out of time, or at once with result NULL if fn never started.
 * With a deadline, a caller outside any coroutine also waits for the pool (running its
 * thread's loop meanwhile) instead of calling fn itself. */
int offload_call(void *(*fn)(void *), void *arg, void **result,
                 void (*drop)(void *arg, void *result), int64_t deadline);

/* ---- Name resolution (net.c) ---- */
/* Tests: delay every resolver call by this many ms, to prove a slow resolver stalls nothing. */
extern _Atomic unsigned net_resolve_delay_ms;

/* ---- Groups (group.c) ---- */
/* Called by the scheduler when a coroutine that belongs to a group ends. */
void group_member_ended(weft_co *co);

/* Outside any coroutine: run this thread's loop until *flag is set (0) or the deadline
 * passes (-1/ETIMEDOUT; EDEADLK if nothing can ever set it). */
int sched_drive(const bool *flag, int64_t deadline);

/* Prepare r for the running coroutine, or for the thread itself outside any coroutine (which
 * then waits with sched_drive on r->delivered), and count it as waiting on another thread
 * (this creates the scheduler's eventfd on first use). -1/errno on failure. */
int rwait_begin(rwait *r);
/* From any thread, once r has been claimed: deliver the wake-up to r's coroutine. */
void rwait_wake(rwait *r);
/* On the waiter's thread, after a claim: wait (not cancellable) until the wake-up has been
 * delivered, so none is left in flight; then stop counting r. */
void rwait_settle(rwait *r);
/* Stop counting r when it was never claimed. */
void rwait_end(rwait *r);
/* Called by the backend when the scheduler's eventfd is readable. */
void sched_drain_inbox(sched *s);

/* ---- Event backends (backend.c picks one; backend_epoll.c, backend_uring.c) ---- */
/* The only code that talks to the kernel's event interface. It parks coroutines until an fd
 * is ready; what it offers is the same whichever is built. */
typedef struct backend_ops {
    const char *name;
    void (*free)(backend *b);
    /* Park the running coroutine until fd has one of events, the deadline passes, or the fd
     * is forgotten; errors as weft_wait_fd. Called only after the fd said EAGAIN. */
    int (*wait)(backend *b, int fd, int events, int64_t deadline);
    /* Wait up to timeout_ms (-1: forever) for events and wake their waiters. */
    int (*poll)(backend *b, int timeout_ms);
    /* fd is about to be closed: wake its waiters with EBADF and drop it. */
    void (*forget)(backend *b, int fd);
    /* Watch fd (the scheduler's eventfd) and call sched_drain_inbox when it is readable. */
    int (*watch_wakeup)(backend *b, int fd);
    /* Wake the coroutine waiting for events (one WEFT_ flag) on fd, if any, with err. */
    void (*cancel_wait)(backend *b, int fd, int events, int err);
    /* Optional (io_uring; NULL for epoll): after the fd said EAGAIN, perform the read, send
     * or accept itself (a connect from the start) and park until it completes; the result is
     * the system call's (-1 with errno), or ETIMEDOUT/ECANCELED if the deadline or a cancel
     * ended it first (data that had already arrived is returned, never dropped). */
    ssize_t (*read)(backend *b, int fd, void *buf, size_t n, bool socket, int64_t deadline);
    ssize_t (*send)(backend *b, int fd, const void *buf, size_t n, bool socket, int64_t deadline);
    int (*accept)(backend *b, int fd, void *sa, unsigned *salen, int64_t deadline);
    int (*connect)(backend *b, int fd, const void *sa, unsigned salen, int64_t deadline);
    /* Optional: a read is about to be tried on fd. False if no input can have come since the
     * last call (the fd is watched for edges and raised none), so a reader whose last read
     * left it drained may park without trying; true otherwise. Without it, reads are always
     * tried. */
    bool (*input_hint)(backend *b, int fd);
    /* io_uring: its poll completions cannot tell urgent data (after which a TCP read stops
     * short with more queued) from an ordinary arrival, so a short read does not count as
     * drained; only a read after which the kernel reported nothing queued (TCP_INQ) does. */
    bool hint_needs_empty;
} backend_ops;

/* Every backend starts with this. */
struct backend {
    const backend_ops *ops;
    size_t waiting; /* coroutines parked on an fd: zero means no event can wake anyone */
};

/* The per-fd waiters both backends keep. */
typedef struct fd_slot {
    weft_co *reader;   /* coroutine waiting for input, if any */
    weft_co *writer;   /* coroutine waiting for output space, if any */
    bool registered;   /* epoll: in the interest list */
    bool in_edge;      /* epoll: input arrived since the last input_hint; io_uring: an
                        * arrival reported while nobody waited */
    bool in_hint;      /* io_uring: input arrived since the last input_hint */
    bool in_hup;       /* epoll: hang-up, error or urgent data seen: always try reads */
    bool read_armed;   /* io_uring: a (multishot) poll for input is active */
    bool write_armed;  /* io_uring: a poll for output is in flight */
    uint32_t gen;      /* io_uring: bumped when the fd is forgotten, to drop stale polls */
    void *read_op;     /* io_uring: the read in flight, so a shutdown can cancel it */
    unsigned ops;      /* io_uring: operations in flight on this fd */
} fd_slot;

typedef struct slot_table {
    fd_slot *slots;    /* indexed by fd */
    size_t n;
} slot_table;

/* The slot of fd, growing the table as needed; NULL/ENOMEM. */
fd_slot *slot_table_get(slot_table *t, int fd);
void slot_table_free(slot_table *t);
/* Take the coroutine out of *w (if any) and wake it with err. */
void slot_wake(backend *b, weft_co **w, int err);
/* Park in *w (reader or writer slot) until woken or the deadline; EBUSY if taken. The slot
 * may move while parked: it is found again through t and fd. */
int slot_park(backend *b, slot_table *t, int fd, int events, int64_t deadline);

/* This thread's choice (weft_set_backend, $WEFT_BACKEND, else auto), with a reason when it
 * fell back; NULL/ENOMEM only if no backend at all could start. */
backend *backend_new(char *reason, size_t reason_len);
backend *epoll_backend_new(void);
/* NULL with errno when io_uring cannot start here (ENOSYS, EPERM, ENOMEM, ...). */
backend *uring_backend_new(void);

static inline void backend_free(backend *b) { b->ops->free(b); }
static inline int backend_wait(backend *b, int fd, int events, int64_t deadline)
{
    return b->ops->wait(b, fd, events, deadline);
}
static inline int backend_poll(backend *b, int timeout_ms) { return b->ops->poll(b, timeout_ms); }
static inline void backend_forget(backend *b, int fd) { b->ops->forget(b, fd); }
static inline int backend_watch_wakeup(backend *b, int fd) { return b->ops->watch_wakeup(b, fd); }
static inline size_t backend_waiting(const backend *b) { return b->waiting; }
static inline void backend_cancel_wait(backend *b, int fd, int events, int err)
{
    b->ops->cancel_wait(b, fd, events, err);
}

/* ---- Channels (chan.c) ---- */
/* A channel over fd, already non-blocking; peer is its "host:port" name (copied). tcp: a
 * TCP socket, whose short reads mean "no more input for now" (urgent data aside, which epoll
 * reports apart) and so may skip a read that would find nothing. Not for Unix sockets: their
 * reads also stop short at passed fds and credentials. */
weft_chan *chan_new(int fd, bool is_socket, bool tcp, const char *peer);
/* Stop input for a graceful shutdown: reads still return what has already arrived (in the
 * buffer or the kernel), but instead of waiting for more they fail with ECANCELED; a reader
 * parked now wakes, takes what has arrived, else fails with ECANCELED. Writes go on. */
void chan_stop_input(weft_chan *c);

/* ---- Shared helpers ---- */
/* Wait for fd: parks inside a coroutine, poll()s outside one. */
int fd_wait(int fd, int events, int64_t deadline);
/* True when the running coroutine's backend performs I/O itself (see backend_ops.read). */
bool io_ops_available(void);
/* Those operations, for after EAGAIN or, for connect, instead of the system call (only when
 * io_ops_available()). */
ssize_t io_read(int fd, void *buf, size_t n, bool socket, int64_t deadline);
ssize_t io_send(int fd, const void *buf, size_t n, bool socket, int64_t deadline);
int io_accept(int fd, void *sa, unsigned *salen, int64_t deadline);
int io_connect(int fd, const void *sa, unsigned salen, int64_t deadline);
/* Deadline for a relative timeout in ms (-1 stays -1). */
int64_t deadline_after(int64_t timeout_ms);
/* Make fd non-blocking; nothing else about it changes. */
int fd_set_nonblock(int fd);
/* Ignore SIGPIPE once per process if it still has its default action. */
void ignore_sigpipe(void);
/* Format a socket address as "host:port", "[v6]:port" or "unix:path". */
void sockaddr_format(const void *sa, size_t salen, char *out, size_t outlen);

/* ---- Address strings (net.c) ---- */
typedef struct parsed_addr {
    bool is_unix;
    bool wildcard;      /* "" or "*" as host: every interface */
    char host[256];
    char port[32];
    char path[108];     /* sizeof sockaddr_un.sun_path */
} parsed_addr;

/* Split "host:port", "[v6]:port", ":port", "*:port" or "unix:/path" into pa. EINVAL. */
int net_parse_addr(const char *addr, parsed_addr *pa);
/* weft_listen, optionally with SO_REUSEPORT so several threads can listen on one port. */
weft_listener *net_listen(const char *addr, int backlog, bool reuseport);
/* Accept a connection already waiting, without waiting: a channel, or NULL with errno
 * (EAGAIN: none is waiting). */
weft_chan *net_accept_now(weft_listener *l);

#endif
