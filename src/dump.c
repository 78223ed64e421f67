/* Seeing inside a running program: weft_dump writes what each coroutine of this thread is
 * doing, weft_dump_on_signal has every scheduler do so at its next loop turn after a signal,
 * and weft_sched_get_stats gives the counts of the dump's last line. Everything here only
 * reads: the scheduler's list of coroutines and what each park noted (co->wait_mark and
 * co->wait_on, set in sched.c's park), and asks the kernel about descriptors and stacks. */
#include "internal.h"
#include "sys.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- Statistics ---- */

static size_t list_len(const weft_co *co)
{
    size_t n = 0;
    for (; co; co = co->next)
        n++;
    return n;
}

void weft_sched_get_stats(weft_sched_stats *st)
{
    memset(st, 0, sizeof *st);
    sched *s = sched_peek();
    if (!s) {
        st->backend = weft_backend_name();
        return;
    }
    /* READY exactly while in the run queue or the rest of the turn's list: no walk over all. */
    st->coroutines = s->live;
    st->running = s->current ? 1 : 0;
    st->ready = list_len(s->runq_head) + list_len(s->batch);
    st->parked = s->live - st->running - st->ready;
    st->parked_io = s->io_waiting;
    st->switches = s->switches;
    st->turns = s->turns;
    st->events = s->be->dispatched;
    st->timers = s->timers.len;
    st->backend = s->be->ops->name;
}

/* ---- Output: lines gathered in a small buffer (a coroutine's stack may be 16 KiB) ---- */

/* How long a dump on a signal waits for a standard error that takes nothing before it drops
 * the rest. */
#define DUMP_PATIENCE_MS 2000

typedef struct out {
    int fd;
    int err;        /* the first write error */
    bool bounded;   /* a dump on a signal: give up on an fd that takes nothing for a while */
    size_t len;
    char buf[1024];
} out;

/* Write it all, or note the error: EINTR retried, a full non-blocking fd waited for. */
static void out_flush(out *o)
{
    const char *p = o->buf;
    size_t n = o->len;
    o->len = 0;
    while (n > 0 && !o->err) {
        if (o->bounded) {
            /* Nobody asked this thread to wait: a stderr nobody reads (a full pipe) must not
             * stop its loop, and with it the dump lock, for ever. A write of a buffer's worth
             * after POLLOUT does not block on a pipe (POLLOUT: a page free). */
            struct pollfd pf = {.fd = o->fd, .events = POLLOUT};
            int r = sys_poll1(&pf, DUMP_PATIENCE_MS);
            if (r == 0) {
                o->err = ETIMEDOUT;
                break;
            }
            if (r < 0 && errno != EINTR) {
                o->err = errno;
                break;
            }
        }
        ssize_t w = sys_write(o->fd, p, n);
        if (w >= 0) {
            p += w;
            n -= (size_t)w;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd pf = {.fd = o->fd, .events = POLLOUT};
            sys_poll1(&pf, 1000);
        } else if (errno != EINTR) {
            o->err = errno;
        }
    }
}

__attribute__((format(printf, 2, 3))) static void out_printf(out *o, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        size_t room = sizeof o->buf - o->len;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, room, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < room) {
            o->len += (size_t)n;
            return;
        }
        if (attempt == 0 && o->len > 0) {
            o->buf[o->len] = '\0';
            out_flush(o); /* then again, into the empty buffer */
            continue;
        }
        o->len = sizeof o->buf - 1; /* longer than the buffer: cut */
        return;
    }
}

/* ms as seconds, "12.503s". */
static const char *secs(char *b, size_t n, int64_t ms)
{
    if (ms < 0)
        ms = 0;
    snprintf(b, n, "%lld.%03llds", (long long)(ms / 1000), (long long)(ms % 1000));
    return b;
}

/* A name as it may be printed between quotes: control characters and quotes become '?'. */
static const char *printable(char *b, size_t n, const char *name)
{
    size_t i = 0;
    for (; name[i] && i + 1 < n; i++) {
        unsigned char ch = (unsigned char)name[i];
        b[i] = ch < 0x20 || ch == 0x7f || ch == '"' ? '?' : (char)ch;
    }
    b[i] = '\0';
    return b;
}

/* ---- What a coroutine waits on ---- */

/* ", peer HOST:PORT" or ", listening on HOST:PORT" for a socket, else what /proc says the
 * descriptor is (", pipe:[1234]", ", anon_inode:[eventfd]", a path), or "". */
static void describe_fd(char *b, size_t n, int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char addr[128];
    b[0] = '\0';
    if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0) {
        sockaddr_format(&ss, len, addr, sizeof addr);
        snprintf(b, n, ", peer %s", addr);
        return;
    }
    int listening = 0;
    socklen_t ilen = sizeof listening;
    len = sizeof ss;
    if (errno == ENOTCONN) {
        if (sys_getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ilen) == 0 &&
            listening && getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
            sockaddr_format(&ss, len, addr, sizeof addr);
            snprintf(b, n, ", listening on %s", addr);
        }
        return;
    }
    char path[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t r = readlink(path, addr, sizeof addr - 1);
    if (r > 0) {
        addr[r] = '\0';
        snprintf(b, n, ", %s", addr);
    }
}

static const char *op_name(uint8_t kind)
{
    static const char *const names[] = {
        [IO_OP_RECV] = "recv", [IO_OP_SEND] = "send", [IO_OP_READ] = "read",
        [IO_OP_WRITE] = "write", [IO_OP_ACCEPT] = "accept", [IO_OP_CONNECT] = "connect",
    };
    return kind < sizeof names / sizeof names[0] && names[kind] ? names[kind] : "operation";
}

/* "#N \"name\"" of another coroutine. */
static void co_ref(char *b, size_t n, const weft_co *co)
{
    char name[64];
    snprintf(b, n, "#%llu \"%s\"", (unsigned long long)co->id, printable(name, sizeof name, co->name));
}

static void describe_mutex(char *b, size_t n, const weft_mutex *m)
{
    bool held;
    const weft_co *holder = mutex_holder(m, &held);
    char who[96];
    if (holder)
        co_ref(who, sizeof who, holder);
    snprintf(b, n, "mutex %p%s%s", (const void *)m,
             !held ? " (being handed over)" : holder ? ", held by " : ", held outside coroutines",
             holder ? who : "");
}

static void describe_offload(char *b, size_t n, const void *fn)
{
    Dl_info info;
    if (dladdr(fn, &info) && info.dli_sname)
        snprintf(b, n, "offloaded call %s()", info.dli_sname);
    else
        snprintf(b, n, "offloaded call %p", fn);
}

/* What co, parked, waits on. */
static void describe_wait(char *b, size_t n, const weft_co *co)
{
    char more[160];
    const void *obj = co->wait_on.obj;
    int fd = co->wait_on.fd;
    switch (wait_mark_kind(co->wait_mark)) {
    case WAIT_READ:
    case WAIT_WRITE:
        describe_fd(more, sizeof more, fd);
        snprintf(b, n, "%s fd %d%s", wait_mark_kind(co->wait_mark) == WAIT_READ ? "read" : "write",
                 fd, more);
        return;
    case WAIT_OP: {
        const io_op *op = obj;
        describe_fd(more, sizeof more, op->fd);
        snprintf(b, n, "%s on fd %d%s", op_name(op->kind), op->fd, more);
        return;
    }
    case WAIT_SLEEP: snprintf(b, n, "sleep"); return;
    case WAIT_JOIN:
        co_ref(more, sizeof more, obj);
        snprintf(b, n, "join %s", more);
        return;
    case WAIT_QUEUE_SEND:
    case WAIT_QUEUE_RECV:
        snprintf(b, n, "queue %p (%s, %zu queued)", obj,
                 wait_mark_kind(co->wait_mark) == WAIT_QUEUE_SEND ? "send" : "receive",
                 weft_queue_len(obj));
        return;
    case WAIT_SELECT: snprintf(b, n, "select on queues"); return;
    case WAIT_MUTEX: describe_mutex(b, n, obj); return;
    case WAIT_COND: snprintf(b, n, "condition %p", obj); return;
    case WAIT_WAITGROUP:
        snprintf(b, n, "wait group %p (count %ld)", obj, waitgroup_count(obj));
        return;
    case WAIT_GROUP:
        snprintf(b, n, "group %p (%zu running)", obj, weft_group_count(obj));
        return;
    case WAIT_TURN: {
        const weft_chan *c = obj; /* (alive: its waiters are inside it) */
        snprintf(b, n, "write turn of channel fd %d (peer %s)", weft_chan_fd(c),
                 weft_chan_peer(c)[0] ? weft_chan_peer(c) : "-");
        return;
    }
    case WAIT_TQUEUE_SEND: snprintf(b, n, "thread queue %p (send)", obj); return;
    case WAIT_TQUEUE_RECV: snprintf(b, n, "thread queue %p (receive)", obj); return;
    case WAIT_OFFLOAD: describe_offload(b, n, obj); return;
    case WAIT_DELIVERY: snprintf(b, n, "a wake-up from another thread"); return;
    case WAIT_SERVER: snprintf(b, n, "a handler of server %p to end", obj); return;
    default: snprintf(b, n, "something else"); return;
    }
}

/* ---- Stacks ---- */

/* Bytes of st in memory: pages touched (by this coroutine, or by whoever had the pooled stack
 * before). mincore asks the kernel without touching a page; -1 if it cannot say. */
static long stack_resident(const stack *st)
{
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)st->lo & ~(uintptr_t)(page - 1);
    uintptr_t hi = (uintptr_t)st->lo + st->size;
    unsigned char vec[256];
    long resident = 0;
    for (uintptr_t p = lo; p < hi;) {
        size_t pages = (hi - p + (uintptr_t)page - 1) / (uintptr_t)page;
        if (pages > sizeof vec)
            pages = sizeof vec;
        if (mincore((void *)p, pages * (size_t)page, vec) != 0)
            return -1;
        for (size_t i = 0; i < pages; i++)
            resident += vec[i] & 1;
        p += pages * (uintptr_t)page;
    }
    return resident * page;
}

/* "12K/256K": the size is the mapping's usable span, as spawned (the stack's record and the
 * coroutine's sit at its top). */
static const char *stack_use(char *b, size_t n, const stack *st)
{
    long used = st ? stack_resident(st) : -1;
    size_t span = st ? st->map_size - (st->guarded ? st->guard : 0) : 0;
    if (!st)
        snprintf(b, n, "-");
    else if (used < 0)
        snprintf(b, n, "?/%zuK", span / 1024);
    else
        snprintf(b, n, "%ldK/%zuK", used / 1024, span / 1024);
    return b;
}

/* ---- The dump ---- */

static const char *state_name(const weft_co *co)
{
    switch (co->state) {
    case CO_READY: return "ready";
    case CO_RUNNING: return "running";
    case CO_PARKED: return "parked";
    case CO_DONE: return "ended";
    default: return "orphan";
    }
}

static void dump_co(out *o, const weft_co *co, int64_t now)
{
    char name[64], stk[48], wait[256], t1[32], t2[32];
    out_printf(o, "  #%llu \"%s\" %s", (unsigned long long)co->id,
               printable(name, sizeof name, co->name), state_name(co));
    if (co->state == CO_PARKED) {
        describe_wait(wait, sizeof wait, co);
        out_printf(o, " %s: %s", secs(t1, sizeof t1, now - wait_mark_since(co->wait_mark)), wait);
        if (co->deadline >= 0)
            out_printf(o, ", %s %s",
                       wait_mark_kind(co->wait_mark) == WAIT_SLEEP ? "wakes in" : "times out in",
                       secs(t2, sizeof t2, co->deadline - now));
    }
    out_printf(o, "; stack %s\n", stack_use(stk, sizeof stk, co->stack));
}

/* Dumps of several threads (one signal reaches them all) go out one after the other. */
static pthread_mutex_t dump_lock = PTHREAD_MUTEX_INITIALIZER;

/* fork(): a dump under way in another thread does not go on in the child. */
static void dump_lock_after_fork(void)
{
    pthread_mutex_init(&dump_lock, NULL);
}

static void dump_lock_fork_handler(void)
{
    pthread_atfork(NULL, NULL, dump_lock_after_fork);
}

static int dump_to(int fd, bool bounded)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, dump_lock_fork_handler);
    out o = {.fd = fd, .bounded = bounded};
    sched *s = sched_peek();
    weft_sched_stats st;
    weft_sched_get_stats(&st);
    pthread_mutex_lock(&dump_lock);
    out_printf(&o, "weft: thread %d, backend %s, %zu coroutines\n", (int)gettid(), st.backend,
               st.coroutines);
    const weft_co *last = s ? s->all : NULL;
    while (last && last->all_next) /* (the list is newest first; the dump oldest first) */
        last = last->all_next;
    int64_t now = weft_now();
    for (const weft_co *co = last; co; co = co->all_prev)
        dump_co(&o, co, now);
    out_printf(&o,
               "weft: %zu coroutines: %zu running, %zu ready, %zu parked (%zu on I/O); "
               "%llu turns, %llu switches, %llu events, %zu timers\n",
               st.coroutines, st.running, st.ready, st.parked, st.parked_io,
               (unsigned long long)st.turns, (unsigned long long)st.switches,
               (unsigned long long)st.events, st.timers);
    out_flush(&o);
    pthread_mutex_unlock(&dump_lock);
    if (o.err) {
        errno = o.err;
        return -1;
    }
    return 0;
}

int weft_dump(int fd)
{
    return dump_to(fd, false);
}

/* ---- On a signal ---- */

/* Callback from the scheduler's loop (sched_on_request), in ordinary context. */
static void dump_requested(void)
{
    dump_to(STDERR_FILENO, true);
}

static void on_dump_signal(int sig)
{
    (void)sig;
    sched_request(); /* async-signal-safe: an atomic and a write to an eventfd */
}

int weft_dump_on_signal(int sig)
{
    if (sched_on_request(dump_requested) != 0)
        return -1;
    if (sig >= 1 && sig < NSIG && sig != SIGKILL && sig != SIGSTOP)
        sched_request_signal(sig);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_dump_signal;
    sa.sa_flags = SA_RESTART; /* (the program's own blocking calls go on; weft's waits see it) */
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0)
        return -1;
    sched_note_handled_signal(sig);
    return 0;
}
