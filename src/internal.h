/* weft internals shared between the subsystem files; nothing here is public.
 *
 * Layers, bottom up. A file calls only files of the layers before its own (or of its own
 * layer, where the table in docs/architecture.md says so); a lower layer reaches a higher one
 * only through a callback that the higher one registered, each documented where it is
 * declared here:
 *   1. ctx (src/ctx/), stack, buf, timer, addr       leaves
 *   2. backend, backend_epoll, backend_uring        the kernel's event interface; report
 *                                                   through io_watcher.cb and io_op.cb
 *   3. sched, request, deep                         coroutines and the loop (calls 1, 2; and
 *                                                   chan_hold, which calls nothing of 3+);
 *                                                   requests from signal handlers; deep calls
 *   4. wait, inbox                                  waits on objects and across threads
 *   5. fd                                           parking on descriptors and operations
 *   6. sock (transport.h)                           the plain descriptor transport
 *   7. chan, chan_hold                              buffered channels over a transport
 *   8. net, serve, sync, group, offload, tqueue     sockets, serving, sync, pool, queues
 *   9. dump                                         weft_dump, its signal, the statistics
 * stack's fault handler asks which coroutine runs through a callback sched registers;
 * group learns of a member's end through co->on_end; the loop answers a signal's request
 * through the sched_request_fn dump registers. */
#ifndef WEFT_INTERNAL_H
#define WEFT_INTERNAL_H

#include "weft.h"
#include "hook_entry.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/uio.h>

/* ---- Checks ----
 * WEFT_ASSERT states an invariant the code relies on. Active in debug and sanitizer builds
 * (WEFT_DEBUG, set by the Makefile for SAN=1 and TSAN=1): a failure prints where and aborts.
 * Compiled out otherwise: nothing on the hot path pays for it. */
#ifdef WEFT_DEBUG
_Noreturn void weft_assert_failed(const char *expr, const char *file, int line);
#define WEFT_ASSERT(cond) ((cond) ? (void)0 : weft_assert_failed(#cond, __FILE__, __LINE__))
#else
#define WEFT_ASSERT(cond) ((void)0)
#endif

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
typedef struct stack { /* (at the top of its own mapping; tools/weft-gdb.py reads lo, size,
                        * map_size, guarded and guard) */
    void *lo;        /* lowest usable byte (just above the guard page, if any) */
    size_t size;     /* usable bytes, from lo up to this record */
    struct stack *next_free;
    void *map;       /* the whole mapping, guard included */
    size_t map_size;
    bool guarded;    /* else a canary at lo, checked whenever its coroutine switches out */
    size_t guard;    /* bytes of PROT_NONE gap below lo, when guarded (whole pages) */
    unsigned valgrind_id;
} stack;

/* A stack of at least size bytes with a guard gap of guard bytes below it (0: one page;
 * rounded up to pages), from the pool or a new mapping. Valgrind is told the stack ends
 * top_reserve bytes below its top (room kept there for other data). NULL: EINVAL (sizes
 * that stack_sizes_valid refuses), ENOMEM. */
stack *stack_take(size_t size, size_t guard, size_t top_reserve);
/* Whether a stack size and guard gap could be mapped at all: each at most SIZE_MAX / 4. */
bool stack_sizes_valid(size_t size, size_t guard);
/* Give s back to the pool (or unmap it when the pool is full). */
void stack_give(stack *s);
/* For an unguarded stack: false if its canary was overwritten (the stack overflowed). */
bool stack_canary_ok(const stack *s);
/* Report an overflow of the stack of the coroutine called name and end the process. */
_Noreturn void stack_overflow_abort(const char *name);
/* Unmap every pooled stack of this thread. */
void stack_pool_drain(void);
/* Callback: the stack running on this thread and the name of its coroutine, or NULL; *deep
 * is set when it is the thread's deep-call stack (deep.c), which the coroutine is in. */
typedef const stack *(*stack_running_fn)(const char **name, bool *deep);
/* Install the SIGSEGV handler (on an alternate stack) that reports overflows, asking running
 * (registered by the scheduler; called in the signal handler) whose stack was hit. Per
 * thread. -1 with errno. */
int stack_guard_init(stack_running_fn running);
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
    size_t len, cap; /* (len read by tools/weft-gdb.py) */
} timer_heap;

/* Arm t (its deadline already set). -1/ENOMEM only if the heap cannot grow. */
int timer_heap_add(timer_heap *h, timer *t);
/* Disarm t if armed. */
void timer_heap_remove(timer_heap *h, timer *t);
/* The earliest armed timer, or NULL. */
timer *timer_heap_peek(const timer_heap *h);
void timer_heap_free(timer_heap *h);
static inline bool timer_armed(const timer *t) { return t->index != SIZE_MAX; }

/* ---- Address strings and socket addresses (addr.c) ---- */
typedef struct parsed_addr {
    bool is_unix;
    bool wildcard;      /* "" or "*" as host: every interface */
    char host[256];
    char port[32];
    char path[108];     /* sizeof sockaddr_un.sun_path */
} parsed_addr;

/* Split "host:port", "[v6]:port", ":port", "*:port" or "unix:/path" into pa; a port is a
 * number from 0 to 65535 or a service name. EINVAL. */
int net_parse_addr(const char *addr, parsed_addr *pa);
/* Format a socket address as "host:port", "[v6]:port" or "unix:path". */
void sockaddr_format(const void *sa, size_t salen, char *out, size_t outlen);

/* ---- Event backends (backend.c picks one; backend_epoll.c, backend_uring.c) ----
 * The only code that talks to the kernel's event interface. A backend knows descriptors and
 * operations, not coroutines: it reports readiness and completions upward through the
 * callback in each io_watcher and io_op, from backend_poll, as libuv's uv__io_t and Redis's
 * ae do. Each backend keeps its own per-descriptor state. */

/* Events a watcher hears. */
#define IO_IN  1u  /* input arrived (io_uring: or urgent data, which it cannot tell apart) */
#define IO_OUT 2u  /* room for output */
#define IO_PRI 4u  /* urgent data (epoll only) */
#define IO_HUP 8u  /* hang-up, peer's half-close, or an error: the next call reports it */
#define IO_UNWATCHED 16u /* the backend stopped reporting input (the kernel ended its poll):
                          * no event is no news until the fd is watched again */
#define IO_BADF 32u      /* the fd is not open (io_uring: its poll failed with EBADF); comes
                          * with IO_HUP, so the next call on it reports the error too */

typedef struct io_watcher io_watcher;
struct io_watcher {
    /* Callback, from backend_poll: events (IO_ bits) happened on fd. */
    void (*cb)(io_watcher *w, unsigned events);
    const void *hint;   /* what cb will touch first (a waiting coroutine), fetched ahead */
    int fd;
    uint32_t bits;      /* the watcher's maker's own flags: a backend never reads them */
};

enum io_op_kind {
    IO_OP_RECV, IO_OP_SEND, IO_OP_READ, IO_OP_WRITE, IO_OP_ACCEPT, IO_OP_CONNECT,
    IO_OP_RECV_MULTI, /* receive whenever data comes, into buffers the backend provides */
};

/* An operation the backend performs itself (io_uring). */
typedef struct io_op io_op;
struct io_op {
    /* Callback, from backend_poll: the operation is done and res holds the system call's
     * result (or -errno). A multishot receive calls back once per arrival, each with a
     * provided buffer (bid) while res > 0, and is over when more is false. */
    void (*cb)(io_op *op);
    int res;
    uint8_t kind;        /* enum io_op_kind (kind and fd read by tools/weft-gdb.py) */
    bool more;           /* (multishot) more completions will come */
    uint16_t bid;        /* (multishot, res > 0) the provided buffer holding the data */
    int fd;
    void *buf;           /* recv/read into, send/write from; accept/connect: the address;
                            (multishot) where each arrival's bytes are */
    unsigned len;        /* bytes; connect: the address length */
    unsigned *addrlen;   /* accept: in/out */
    void *data;          /* the callback's own */
    io_op *next;         /* the backend's: ops waiting for provided buffers */
};

typedef struct backend backend;
typedef struct backend_ops {
    const char *name;    /* (read by tools/weft-gdb.py) */
    void (*free)(backend *b);
    /* Optional (backends that perform operations): cancel every operation in flight and reap
     * their completions, their callbacks running now, so that none comes later into memory
     * about to go (a thread's end, before it drops the coroutines that did not end). */
    void (*quiesce)(backend *b);
    /* Free b in a forked child, where its kernel objects are the parent's too: release only
     * this process's mappings and descriptors, asking nothing of the kernel's instance. */
    void (*abandon)(backend *b);
    /* Report w->fd's events to w->cb from now on: input (IO_IN, IO_PRI, IO_HUP) as long as it
     * is watched, output (IO_OUT) at least once after this call if events has IO_OUT. The
     * watcher must stay where it is until forget. Called at each wait (cheap once armed).
     * EPERM: the fd cannot be polled (a regular file): it is always ready. */
    int (*watch)(backend *b, io_watcher *w, unsigned events);
    /* fd is about to be closed: stop watching it and cancel its operations (they complete
     * with -ECANCELED, or with their result if it won the race). */
    void (*forget)(backend *b, int fd);
    /* Wait up to timeout_ms (-1: forever) for events and completions and report them. */
    int (*poll)(backend *b, int timeout_ms);
    /* Optional (io_uring; NULL for epoll): start op; its completion is reported later. */
    int (*submit)(backend *b, io_op *op);
    /* Ask the kernel to cancel op; its completion still comes. */
    void (*cancel)(backend *b, io_op *op);
    /* Optional: hand what was asked so far (operations, cancels) to the kernel now, without
     * waiting or reporting anything (before a fork). */
    void (*flush)(backend *b);
    /* Optional, with multishot receives: each arrival's bytes are a slice of provided buffer
     * op->bid, at op->buf; pbuf_put gives a slice back once consumed (a buffer may hold
     * several connections' slices). A multishot receive that ran out of buffers is started
     * again by the backend when some come back (its callback is not told). */
    char *(*pbuf)(backend *b, uint16_t bid);
    void (*pbuf_put)(backend *b, uint16_t bid);
    /* Edges show urgent data apart (IO_PRI): a short TCP read then means drained. */
    bool edges_show_urgent;
    /* An arrival reported while nobody waits may come before the failed call it answers:
     * the next wait for input returns at once (io_uring's multishot polls). */
    bool latches_input;
} backend_ops;

/* Every backend starts with this. */
struct backend {
    const backend_ops *ops;
    bool multishot_rx; /* multishot receives into provided buffers work here (io_uring, with
                          its buffer ring set up): transports receive that way */
    uint64_t dispatched; /* events and completions it reported to watchers and operations
                          * (weft_sched_get_stats; read by tools/weft-gdb.py) */
};

/* A backend chosen by name ("epoll", "uring", "auto", or NULL for $WEFT_BACKEND), with a
 * reason when it fell back; NULL/errno only if none at all could start. */
backend *backend_new(const char *choice, char *reason, size_t reason_len);
backend *epoll_backend_new(void);
/* NULL with errno when io_uring cannot start here (ENOSYS, EPERM, ENOMEM, ...). */
backend *uring_backend_new(void);

static inline void backend_free(backend *b) { b->ops->free(b); }
static inline int backend_watch(backend *b, io_watcher *w, unsigned events)
{
    return b->ops->watch(b, w, events);
}
static inline void backend_forget(backend *b, int fd) { b->ops->forget(b, fd); }
static inline int backend_poll(backend *b, int timeout_ms) { return b->ops->poll(b, timeout_ms); }

/* ---- Scheduler (sched.c) ---- */
/* ORPHAN: a coroutine of the parent process, in a child forked from it: never run again.
 * (Read by tools/weft-gdb.py, by name.) */
enum co_state { CO_READY, CO_RUNNING, CO_PARKED, CO_DONE, CO_ORPHAN };

/* What a parked coroutine waits on, noted at each park for weft_dump (dump.c) and
 * tools/weft-gdb.py, which reads the names (and has their order as a fallback); wait_on says
 * which one. */
enum wait_kind {
    WAIT_OTHER,       /* a park that did not say */
    WAIT_READ,        /* descriptor wait_on.fd readable */
    WAIT_WRITE,       /* descriptor wait_on.fd writable */
    WAIT_OP,          /* an I/O operation (io_uring: accept, connect); wait_on.obj: the io_op */
    WAIT_SLEEP,       /* weft_sleep, until co->deadline */
    WAIT_JOIN,        /* weft_join; wait_on.obj: the coroutine joined */
    WAIT_QUEUE_SEND,  /* room in a weft_queue (wait_on.obj) */
    WAIT_QUEUE_RECV,  /* an item in a weft_queue */
    WAIT_SELECT,      /* weft_select; wait_on.obj: its weft_select_op array */
    WAIT_MUTEX,       /* a weft_mutex */
    WAIT_COND,        /* a weft_cond */
    WAIT_WAITGROUP,   /* a weft_waitgroup */
    WAIT_GROUP,       /* a weft_group's coroutines to end */
    WAIT_TURN,        /* a channel's write turn; wait_on.obj: the weft_chan */
    WAIT_TQUEUE_SEND, /* room in a weft_tqueue */
    WAIT_TQUEUE_RECV, /* an item in a weft_tqueue */
    WAIT_OFFLOAD,     /* a call on the offload pool; wait_on.obj: the function */
    WAIT_DELIVERY,    /* a wake-up from another thread, already on its way (rwait_settle) */
    WAIT_SERVER,      /* a server's handlers (a free slot, or their end); obj: the server */
    WAIT_KINDS
};

typedef union wait_on {
    const void *obj;
    int fd;
} wait_on;

/* co->wait_mark: the kind in the low 8 bits, and above them the loop's clock (sched.turn_ms)
 * when the coroutine parked: one store for both. */
static inline uint64_t wait_mark(uint8_t kind, int64_t since_ms)
{
    return (uint64_t)since_ms << 8 | kind;
}
static inline uint8_t wait_mark_kind(uint64_t mark) { return (uint8_t)(mark & 0xff); }
static inline int64_t wait_mark_since(uint64_t mark) { return (int64_t)(mark >> 8); }

typedef struct weft_group weft_group;

/* The first 64 bytes are what a wake-up, a park and a switch touch. The struct is allocated
 * on a cache line, so with thousands of connections resuming one costs one miss here, which
 * the loop prefetches while the coroutine before it runs. Fields marked [gdb] are read by
 * tools/weft-gdb.py by name: renaming one means changing it there. */
struct weft_co {
    ctx ctx;              /* [gdb] its saved stack pointer (ctx.sp; ucontext: ctx.uc) */
    weft_co *next;        /* run-queue link */
    weft_chan *held_output; /* a channel whose line output it holds back (coalescing) */
    int64_t deadline;     /* [gdb] of the current park; -1: none */
    timer timer;          /* in the heap at or before deadline (see sched.c: lazy timers) */
    uint8_t state;        /* [gdb] enum co_state; small, so that what a switch touches fits a line */
    uint8_t io_streak;    /* I/O calls done since it last gave up the CPU (fairness) */
    int16_t wake_errno;   /* why a park ended: 0, ETIMEDOUT, ECANCELED, EBADF */
    bool guarded;         /* its stack has a guard page; else the canary is checked */
    bool cancelled;
    bool nocancel;        /* parked in a wait that cancellation must not cut short */
    bool detached;
    const void *resume_hint; /* what it touches first when resumed (its channel), or NULL */
    /* cold: spawn, join, end; and the notes of a park, for weft_dump and gdb */
    stack *stack;         /* [gdb] lo and size */
    bool in_stack;        /* lives at the top of its own stack (detached ones) */
    uint64_t wait_mark;   /* [gdb] what a park waits on and since when (see wait_mark()) */
    wait_on wait_on;      /* [gdb] which one (see enum wait_kind) */
    uint64_t id;          /* [gdb] 1, 2, ...: unique in the process, never reused */
    weft_co *joiner;      /* coroutine parked in weft_join on this one */
    bool joined_outside;  /* the thread itself joins it, from outside any coroutine */
    bool exit_listed;     /* ended during thread exit, not joined yet: in sched->exit_ended */
    /* Callback, when it has ended (before its joiner wakes): its group's bookkeeping. */
    void (*on_end)(weft_co *co);
    weft_group *group;    /* owning group, if any, and the links of its member list */
    weft_co *group_prev, *group_next;
    weft_co *all_prev, *all_next; /* [gdb] every live coroutine of the scheduler (sched->all);
                                   * once ended during thread exit, sched->exit_ended */
    weft_fn fn;
    void *arg;
    void *result;
    void *asan_fake_stack;
    void *tsan_fiber;
    char name[64];        /* [gdb] */
};

/* Room at the top of every stack for a coroutine struct (detached coroutines keep theirs
 * there); the stack proper, as valgrind is told, ends below it. */
#define CO_ROOM ((sizeof(weft_co) + 63) / 64 * 64)

typedef struct sched sched;

/* A wait that another thread ends: the other thread claims it under its own lock, then
 * hands it to the waiter's scheduler through that scheduler's inbox and eventfd. delivered is
 * only touched on the waiter's thread, so the waiter knows when the wake-up has arrived. */
typedef struct rwait {
    weft_co *co;         /* NULL: the thread itself waits, outside any coroutine */
    sched *s;
    bool delivered;
    struct rwait *inbox_next;
} rwait;

/* The scheduler's inbox: wake-ups from other threads (inbox.c), created on first use. */
typedef struct inbox {
    int fd;                /* eventfd other threads write to; -1 until first needed */
    io_watcher w;          /* its watcher in the backend */
    pthread_mutex_t mu;
    rwait *list;
} inbox;

/* Callback: the loop has run nothing for SCHED_QUIET_MS (see sched_on_quiet). */
typedef void (*sched_quiet_fn)(void);
#define SCHED_QUIET_FNS 4
#define SCHED_QUIET_MS 200

/* Fields marked [gdb] are read by tools/weft-gdb.py by name (through the thread-local
 * tls_sched in sched.c). */
struct sched {
    ctx main_ctx;          /* the thread's own stack, where the loop runs */
    weft_co *current;      /* [gdb] NULL while the loop itself runs */
    weft_co *runq_head, *runq_tail; /* [gdb] */
    weft_co *batch;        /* [gdb] the rest of the turn's run list (see loop_turn) */
    weft_co *reap;         /* ended, still to be reaped by whoever runs after it */
    bool from_main;        /* the last switch came from the loop's own stack */
    bool in_deep;          /* [gdb] the current coroutine is inside a deep call (deep.c) */
    uint64_t switches;     /* [gdb] context switches, into coroutines and back to the loop */
    uint64_t turns;        /* [gdb] loop turns */
    int64_t turn_ms;       /* [gdb] the loop's clock: weft_now() as of this turn (see loop_turn) */
    timer_heap timers;     /* [gdb] len */
    backend *be;           /* [gdb] be->ops->name */
    uint64_t be_gen;       /* a number no other backend of the process had (fd.c's tables) */
    size_t live;           /* [gdb] coroutines spawned and not yet ended */
    weft_co *all;          /* [gdb] those coroutines, linked through all_next */
    size_t io_waiting;     /* [gdb] parked on a descriptor or operation: the backend may wake them */
    size_t io_owned;       /* operations and provided buffers transports hold on the backend:
                            * while any, the scheduler (and its backend) is not released */
    bool stop;
    int loop_depth;        /* nested weft_run/join-from-outside loops */
    const void *main_stack_lo; /* for AddressSanitizer's fiber switch */
    size_t main_stack_size;
    char backend_reason[96];   /* why this backend (a fallback says so) */
    size_t external_waits; /* coroutines (or the thread) waiting for another thread (rwait) */
    size_t outside_waits;  /* of which the thread's own, outside any coroutine (at most one):
                            * they go on in a forked child, the coroutines' do not */
    bool exiting;          /* the thread is ending (at_thread_exit runs) */
    weft_co *exit_ended;   /* joinable coroutines that ended during the exit, not yet joined */
    inbox in;
    unsigned requests_seen; /* sched_request()s this scheduler has answered */
    bool requests_watched; /* its backend watches the requests' eventfd */
    io_watcher requests_w;
    struct deep_stack *deep; /* [gdb] the runner of deep calls, once one was made (deep.c) */
    sched_quiet_fn quiet_fns[SCHED_QUIET_FNS]; /* see sched_on_quiet */
    unsigned nquiet;
    uint64_t quiet_switches; /* switches when the loop last looked: unchanged means quiet */
    int64_t quiet_since;   /* coarse ms: since when it has been quiet */
    bool quiet_done;       /* the callbacks ran in this quiet spell */
};

/* This thread's scheduler, created on first use; NULL with errno (ENOMEM, or why no event
 * backend or signal stack could be made). */
sched *sched_get(void);
/* This thread's scheduler if it exists. */
sched *sched_peek(void);
/* Park the running coroutine until woken or the deadline, noting that it waits on obj, of
 * kind (enum wait_kind), for weft_dump. 0 when woken normally, else -1 with errno set from
 * the waker (EBADF), ETIMEDOUT, or ECANCELED (already cancelled, when cancellable; if not,
 * neither a pending nor a new cancel ends it). */
int sched_park_on(uint8_t kind, const void *obj, int64_t deadline, bool cancellable);
/* sched_park_on(WAIT_OTHER, NULL, deadline, true): for a wait that names nothing. */
int sched_park(int64_t deadline);
/* Same, not cancellable. */
int sched_park_nocancel(int64_t deadline);
/* sched_park_on for a wait that only the backend can end, on descriptor fd (WAIT_READ,
 * WAIT_WRITE) or on an operation (WAIT_OP, op): counted, so that the loop knows an event may
 * still come. */
int sched_park_io(uint8_t kind, wait_on on, int64_t deadline, bool cancellable);
/* sched_wake (src/hook_entry.h): make a parked coroutine runnable; its sched_park returns
 * with err (0 = success). A no-op for a coroutine that is not parked. */
/* Outside any coroutine: run this thread's loop until *flag is set (0) or the deadline
 * passes (-1/ETIMEDOUT; EDEADLK if nothing can ever set it). */
int sched_drive(const bool *flag, int64_t deadline);
/* sched_drive for a flag the backend sets (an operation's completion): no deadlock while the
 * operation is in flight, and the scheduler may be gone once it returns. */
int sched_drive_io(const bool *flag, int64_t deadline);
/* Outside any coroutine: free this thread's scheduler if nothing uses it any more (no
 * coroutine, loop, wait or operation), so that a call that needed it for a wait of the
 * thread's own leaves nothing behind once that wait is over. */
void sched_release_unused(void);
/* True while the thread is ending and its scheduler cancels and finishes its coroutines
 * (thread exit): nobody will stop what they run, so they must stop it themselves. */
bool sched_exiting(void);
/* Count one I/O call of the running coroutine; after IO_BUDGET calls that all found data or
 * room without waiting, yield, so a client whose input never runs dry cannot starve the
 * others. A no-op outside coroutines. */
void sched_spend_io(void);
#define IO_BUDGET 64
_Static_assert(IO_BUDGET <= UINT8_MAX, "weft_co.io_streak counts up to IO_BUDGET");
/* weft has installed a handler for sig (serve.c SIGINT/SIGTERM, dump.c its signal): in
 * ThreadSanitizer builds it is held while coroutines run (see tsan_hold_signals). */
void sched_note_handled_signal(int sig);
/* Tell the scheduler what the running coroutine will touch first when it is resumed (the
 * channel it is about to wait on), so that it can be fetched before the switch needs it. */
void sched_resume_hint(const void *p);
/* The running coroutine's backend, or NULL outside any coroutine. */
backend *sched_backend(void);
/* How many forks this process descends from (0 in the original process): a channel made
 * under an older number holds its output for the parent (chan.c). */
uint64_t sched_fork_gen(void);
/* weft_spawn_ex of a detached coroutine with room bytes (zeroed) kept for the caller at the
 * top of its stack, in the page its first frames touch anyway: *roomp points to them, and
 * they are fn's argument. They last as long as the coroutine runs. NULL/errno. */
weft_co *co_spawn_room(weft_fn fn, const weft_spawn_opts *opts, size_t room, void **roomp);

/* ---- Deep calls (deep.c) ----
 * A call that goes deep into a library (OpenSSL) runs on one stack per thread, so that its
 * pages are touched once per thread rather than in every coroutine's stack. The stack is a
 * runner's, a context of the scheduler's, entered with a switch and left with another. */
#define DEEP_STACK_SIZE (512 * 1024) /* address space; only the pages touched cost memory */
typedef struct deep_stack { /* (fields marked [gdb] are read by tools/weft-gdb.py) */
    stack *st;            /* [gdb] lo and size; guard page below, as a coroutine's */
    ctx runner;           /* the runner, between calls */
    ctx caller;           /* [gdb] the registers of the coroutine inside a call */
    weft_co *co;          /* [gdb] the coroutine inside a call now, or NULL */
    void (*fn)(void *);
    void *arg;
    void *asan_fake;      /* the runner's fake stack, between calls (AddressSanitizer) */
    const void *caller_lo;
    size_t caller_size;
    void *tsan_fiber, *tsan_caller;
} deep_stack;

/* Run fn(arg) on this thread's deep-call stack when called from a coroutine; fn must return
 * without waiting (no park, no yield: switch_out aborts the process if it tries). Outside
 * coroutines, or inside a deep call already, or when no stack can be mapped for it: a plain
 * call of fn. */
void deep_call(void (*fn)(void *), void *arg);
/* The deep-call stack while a coroutine of s is inside a deep call, else NULL (for the
 * SIGSEGV handler: in signal context). */
const stack *deep_running_stack(const sched *s);
/* Free s's runner and give its stack to the pool (the scheduler's end). */
void deep_free(sched *s);
/* A coroutine (named name) tried to switch out inside a deep call: say so and abort. */
_Noreturn void deep_parked_abort(const char *name);

/* Have this thread's loop call fn once per quiet spell: when it is about to sleep and has
 * switched to no coroutine for SCHED_QUIET_MS (it wakes for that if it would sleep longer),
 * and when the scheduler is released (nothing uses it: weft_run returned, say).
 * For caches worth keeping under load and not when idle (sock.c's spare send slabs). A
 * second call with the same fn does nothing. -1/ENOSPC when SCHED_QUIET_FNS are taken;
 * a no-op (0) on a thread without a scheduler. */
int sched_on_quiet(sched_quiet_fn fn);

/* ---- Requests from signal handlers (request.c), for weft_dump_on_signal ----
 * A handler calls sched_request: an atomic increment and a write to an eventfd that every
 * scheduler's backend watches before its loop sleeps; each scheduler's loop then calls fn at
 * its next turn, in ordinary context (and a thread blocked outside coroutines in a weft wait,
 * when the signal interrupts it: sched_poll_requests). Callback: fn, registered by dump.c.
 * -1/errno (no eventfd). */
typedef void (*sched_request_fn)(void);
int sched_on_request(sched_request_fn fn);
/* Async-signal-safe. */
void sched_request(void);
/* Outside the loop (a wait that a signal interrupted): call fn if a request came since this
 * thread last answered one. */
void sched_poll_requests(void);
/* sig makes requests (its handler calls sched_request): waits outside the loop unblock it
 * only while they sleep, so that none misses one that came just before it slept. */
void sched_request_signal(int sig);
/* A wait outside the loop: poll p (n of them; 0: a sleep) for timeout_ms (-1: no limit),
 * answering requests that come before or during it. poll(2)'s result and errno. */
struct pollfd;
int sched_poll_outside(struct pollfd *p, unsigned n, int timeout_ms);
/* For the loop (sched.c): a new scheduler answers only later requests; before it sleeps, its
 * backend watches the eventfd (if there is one yet); each turn, it answers what came (a load
 * and a compare, inline: the call is made only when there is something to answer). */
void requests_init(sched *s);
void requests_watch(sched *s);
extern atomic_uint requests_made; /* sched_request()s so far */
void requests_run(sched *s);
static inline void requests_answer(sched *s)
{
    if (atomic_load_explicit(&requests_made, memory_order_relaxed) != s->requests_seen)
        requests_run(s);
}

/* ---- Held output (chan_hold.c), called by the scheduler ---- */
/* co is leaving the CPU (parks, yields or ends) while it holds back line output on a channel
 * (co->held_output): hand it to the channel's transport, which sends it as the peer reads,
 * whatever co waits on; fork_gen is sched_fork_gen() (output held before a fork is the
 * parent's). Never waits and calls nothing of the scheduler's. */
void chan_release_held(weft_co *co, uint64_t fork_gen);

/* ---- Waiting on objects (wait.c) ----
 * Queues, locks, groups, channel turns: the waiter is a node, on the waiting side's stack, in
 * the object's list; whoever satisfies the wait marks it done. Outside a coroutine the
 * waiting side runs the scheduler until then. */
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
    uint8_t kind;                /* what it waits on, for weft_dump (enum wait_kind) */
    const void *obj;             /* the object waited on */
} waiter;

typedef struct wait_list {
    waiter *head, *tail;
} wait_list;

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
/* Initialise w for the calling side, waiting on obj of kind (enum wait_kind). */
void waiter_init_as(waiter *w, uint8_t kind, const void *obj);
/* Same, for a wait that names nothing (WAIT_OTHER). */
void waiter_init(waiter *w);

/* ---- Objects closed under their waiters ----
 * Channels, listeners and groups may be closed by one coroutine while others wait inside
 * them. Each wait is bracketed by ref_enter and ref_leave; a close marks the object closed
 * and wakes the waiters, and whoever leaves last frees it. */
typedef struct ref {
    int users;      /* coroutines (or the thread) inside the object now */
    bool closed;
} ref;

static inline void ref_enter(ref *r)
{
    WEFT_ASSERT(r->users >= 0);
    r->users++;
}

/* Leave r. True when r was closed meanwhile: the caller must then fail with EBADF without
 * touching the object again, after freeing it if *last says it was the last one out. */
static inline bool ref_leave(ref *r, bool *last)
{
    WEFT_ASSERT(r->users > 0);
    r->users--;
    *last = r->closed && r->users == 0;
    return r->closed;
}

/* Close r: true when nobody is inside (the closer frees the object now). */
static inline bool ref_close(ref *r)
{
    WEFT_ASSERT(!r->closed);
    r->closed = true;
    return r->users == 0;
}

/* ---- Wake-ups from other threads (inbox.c) ---- */
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

/* ---- Parking on descriptors and operations (fd.c) ---- */
/* Wait for fd: parks inside a coroutine, poll()s outside one. ETIMEDOUT, ECANCELED, EBUSY
 * (another coroutine waits for the same direction), EBADF (closed meanwhile). */
int fd_wait(int fd, int events, int64_t deadline);
/* In a coroutine: park in fd's slot (as fd_wait) without asking the backend to watch fd:
 * for a wait that an operation's completion ends (its callback wakes the slot with
 * fd_cancel_wait). */
int fd_park(int fd, int events, int64_t deadline);
/* Wake the coroutine waiting on fd for events (one WEFT_ flag), if any, with err. */
void fd_cancel_wait(int fd, int events, int err);
/* fd_input_hint and fd_edges_show_urgent (src/hook_entry.h): whether a read of fd may find
 * input; whether the backend's edges show urgent data apart. */
/* fd's owner (fd_owner, src/hook_entry.h): its fn is called from the loop with the events
 * (IO_ bits) of fd, before the coroutines waiting on it are woken; the owner of a descriptor
 * (its transport) learns of room for its queued output this way. One per fd;
 * fd_set_owner(fd, NULL) removes it. */
int fd_set_owner(int fd, fd_owner *owner);
/* Make sure fd's output events reach its owner (after a send said EAGAIN). */
int fd_watch_output(int fd);
/* fd_ops_available (src/hook_entry.h): whether the running coroutine's backend performs
 * operations itself (io_uring). */
/* Perform op (its kind, fd, buf, len, addrlen set) on the backend and park until it is done;
 * a timeout or cancel asks the kernel to cancel it and still waits for its completion (the
 * kernel may be using the buffer). The result (>= 0), or -1 with its errno, or ETIMEDOUT /
 * ECANCELED if the deadline or a cancel ended it first (data that had already come is
 * returned, never dropped). Only when fd_ops_available(). */
ssize_t fd_op(io_op *op, int64_t deadline);
/* Start op on the backend without waiting; op->cb runs from the loop when it is done. For
 * operations the loop owns (a transport's queued sends). -1/errno. */
int fd_op_start(io_op *op);
/* Close fd, first waking every coroutine waiting on it with EBADF (weft_fd_close). */
int fd_close(int fd);
/* fd_forget (src/hook_entry.h): fd_close without the close. */
/* Make fd non-blocking; nothing else about it changes. */
int fd_set_nonblock(int fd);
/* Deadline for a relative timeout in ms (-1 stays -1). */
int64_t deadline_after(int64_t timeout_ms);
/* Ignore SIGPIPE once per process if it still has its default action. */
void ignore_sigpipe(void);

/* ---- For libweft_hook (hook/, docs/hooks.md) ----
 * The hook library builds on the public API; besides it, it calls exactly the entries
 * declared in src/hook_entry.h (included at the top of this file), and includes only that:
 *   fd_forget: a descriptor number was closed or reused where this thread's backend could
 *     not see it (another thread closed it, dup2 replaced it): its registration there is
 *     stale and would swallow the new file's events;
 *   sched_wake, with EINTR: a signal handler ran on this thread while hooked calls were
 *     parked here, which the kernel would have interrupted;
 *   fd_watch_input: how the hook hears of those signals, through an eventfd its handlers
 *     write (the loop calls the hook back, as it calls a transport that owns an fd);
 *   fd_input_hint and fd_edges_show_urgent: as sock.c does, a hooked read of a TCP socket
 *     whose last read left it drained parks without the recv that would only say EAGAIN;
 *   fd_ops_available and fd_recv_op: on io_uring a hooked blocking receive on a stream
 *     socket that would wait is made by the ring, into the caller's buffer (no readiness
 *     wait, no recv system call): fd_op for IO_OP_RECV, telling a start that failed apart. */

/* ---- Transports (transport.h, sock.c) ---- */
#include "transport.h"

/* The send slabs this thread has mapped (io_uring), spares included: for tests. */
unsigned sock_slabs_mapped(void);

/* ---- Channels (chan.c) ---- */
/* A channel over transport t (which it owns from now on); peer is its "host:port" name
 * (copied); line_buffered for sockets (else fully buffered). NULL/ENOMEM (t is then closed
 * and freed). */
weft_chan *chan_new(transport *t, const char *peer, bool line_buffered);
/* The same, made in mem (chan_size(peer) bytes, 64-aligned), which its maker owns: a
 * server's handler keeps its client's channel in its coroutine's room, in the stack page it
 * touches anyway, rather than on the heap. After weft_close, the maker calls chan_wait_gone
 * (in a coroutine) before mem goes. */
weft_chan *chan_new_in(void *mem, transport *t, const char *peer, bool line_buffered);
size_t chan_size(const char *peer);

/* A client accepted by a listener, not yet a channel (net.c; serve.c makes its channel in
 * the handler's room). */
typedef struct accepted_conn {
    int fd;
    bool tcp;
    char peer[64];
} accepted_conn;
/* weft_accept without the channel: 0, or -1 with weft_accept's errno. */
int net_accept_conn(weft_listener *l, int64_t deadline, accepted_conn *a);
/* a's channel, in mem (net_chan_size(a) bytes, 64-aligned; NULL: on the heap), which then
 * owns a's fd. NULL/ENOMEM (the fd is closed). */
weft_chan *net_chan_of(const accepted_conn *a, void *mem);
size_t net_chan_size(const accepted_conn *a);
/* After chan_wait_gone on a channel net_chan_of made in mem: park (not cancellable) until the
 * kernel is done with mem too (sock_room_settle). */
void net_chan_settle(weft_chan *c);
/* Park (not cancellable) until c, made by chan_new_in and closed, has been freed: the last
 * coroutine inside a call on it when it was closed has left. */
void chan_wait_gone(weft_chan *c);
/* Whether c was closed (weft_close ran on it): for a channel made by chan_new_in, whose
 * memory outlives its close. */
bool chan_closed(const weft_chan *c);
/* Stop input for a graceful shutdown: reads still return what has already arrived (in the
 * buffer or the kernel), but instead of waiting for more they fail with ECANCELED; a reader
 * parked now wakes, takes what has arrived, else fails with ECANCELED. Writes go on. */
void chan_stop_input(weft_chan *c);
/* Layer transport upper over c's (upper->below is c's transport; c owns upper from now on):
 * what c has buffered for output goes first (waiting as needed, until deadline), and input
 * c has buffered but not handed out is upper's to read first (its preload). 0, or -1 with
 * errno (ETIMEDOUT, EBADF: then c may be gone and upper is freed; ENOMEM). */
int chan_push_transport(weft_chan *c, transport *upper, int64_t deadline);
/* Wait, as a stay inside c, until c's transport may have input (WEFT_READABLE) or may take
 * output (WEFT_WRITABLE), or the deadline. 0, or -1: ETIMEDOUT, ECANCELED (also at once for
 * input once c's input is stopped), EBADF (then c may be gone). For a layered transport's
 * handshake. */
int chan_wait_transport(weft_chan *c, int events, int64_t deadline);
/* The transport under c. */
transport *chan_transport(const weft_chan *c);

/* ---- TLS (tls.c) ---- */
/* Count one more user of ctx (weft_tls_free releases it); ctx may be NULL. */
weft_tls *tls_ref(weft_tls *ctx);
/* weft_tls_accept with the TLS transport made in mem (tls_transport_size() bytes,
 * pointer-aligned; 0 without TLS), which its maker owns: a server's handler keeps it in its
 * room, as it keeps the channel (chan_new_in), and so only for a channel made there. */
int tls_accept_in(weft_chan *c, weft_tls *w, int64_t deadline, void *mem);
size_t tls_transport_size(void);

/* ---- Offload (offload.c) ---- */
/* weft_offload with a deadline (-1: none; ETIMEDOUT), plus drop(arg, result): when the call
 * fails, arg is drop's (heap memory it frees): called on the worker thread once fn returns if
 * the caller was cancelled or ran out of time, or at once with result NULL if fn never started.
 * With a deadline, a caller outside any coroutine also waits for the pool (running its
 * thread's loop meanwhile) instead of calling fn itself. */
int offload_call(void *(*fn)(void *), void *arg, void **result,
                 void (*drop)(void *arg, void *result), int64_t deadline);

/* ---- Sockets (net.c) ---- */
/* Tests: delay every resolver call by this many ms, to prove a slow resolver stalls nothing. */
extern _Atomic unsigned net_resolve_delay_ms;
/* weft_listen, optionally with SO_REUSEPORT so several threads can listen on one port. */
weft_listener *net_listen(const char *addr, int backlog, bool reuseport);
/* Accept a connection already waiting, without waiting, into a: 0, or -1 with errno
 * (EAGAIN: none is waiting). */
int net_accept_now(weft_listener *l, accepted_conn *a);

/* ---- Groups (group.c) ---- */
/* co_spawn_room into group g (weft_group_spawn's EPIPE once it is closed). */
weft_co *group_spawn_room(weft_group *g, weft_fn fn, const weft_spawn_opts *opts, size_t room,
                          void **roomp);

/* ---- Sync (sync.c) ---- */
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
/* For weft_dump: whether m is held (*held), and by which coroutine (NULL: by the thread
 * itself, outside any coroutine, or by nobody). */
weft_co *mutex_holder(const weft_mutex *m, bool *held);
/* For weft_dump: wg's counter. */
long waitgroup_count(const weft_waitgroup *wg);

#endif
