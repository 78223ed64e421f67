/* libweft_hook internals, shared by the files of hook/ (see hook/README.md).
 *
 * The library replaces libc's blocking calls with versions that, inside a weft coroutine and
 * on a socket or pipe the caller believes blocking, make each attempt non-blocking for that
 * one call (MSG_DONTWAIT, RWF_NOWAIT) and park the coroutine where the kernel would have put
 * the thread to sleep. The descriptor's own flags are never changed (connect aside, for the
 * length of one system call), so what a forked child, an exec'd program or a thread without
 * a scheduler sees of it is exactly what the caller made of it. Everywhere else each call
 * goes straight to libc. */
#ifndef WEFT_HOOK_H
#define WEFT_HOOK_H

#include "../src/hook_entry.h" /* the public API and the internal entries we use */

#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

/* The hook's own thread-local state is read from signal handlers, so it must never be
 * allocated lazily (as a shared library's dynamic TLS may be). */
#define HOOK_TLS __thread __attribute__((tls_model("initial-exec")))
/* Only the hooked libc names leave the shared library; everything else is hidden. */
#define HOOK_API __attribute__((visibility("default")))

#if defined(__SANITIZE_THREAD__)
#define HOOK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HOOK_TSAN 1
#endif
#endif

/* ---- The real functions (real.c) ----
 * Found with dlsym(RTLD_NEXT) on first use: libc's, or a sanitizer's interceptor in front of
 * it. Every hook calls the real function straight away outside coroutines. */
#define HOOK_REAL_LIST(X)                                                                  \
    X(ssize_t, read, (int, void *, size_t))                                                \
    X(ssize_t, readv, (int, const struct iovec *, int))                                    \
    X(ssize_t, write, (int, const void *, size_t))                                         \
    X(ssize_t, writev, (int, const struct iovec *, int))                                   \
    X(ssize_t, preadv2, (int, const struct iovec *, int, off_t, int))                      \
    X(ssize_t, pwritev2, (int, const struct iovec *, int, off_t, int))                     \
    X(ssize_t, recv, (int, void *, size_t, int))                                           \
    X(ssize_t, recvfrom, (int, void *, size_t, int, struct sockaddr *, socklen_t *))       \
    X(ssize_t, recvmsg, (int, struct msghdr *, int))                                       \
    X(ssize_t, send, (int, const void *, size_t, int))                                     \
    X(ssize_t, sendto, (int, const void *, size_t, int, const struct sockaddr *, socklen_t)) \
    X(ssize_t, sendmsg, (int, const struct msghdr *, int))                                 \
    X(int, connect, (int, const struct sockaddr *, socklen_t))                             \
    X(int, accept, (int, struct sockaddr *, socklen_t *))                                  \
    X(int, accept4, (int, struct sockaddr *, socklen_t *, int))                            \
    X(int, socket, (int, int, int))                                                        \
    X(int, socketpair, (int, int, int, int[2]))                                            \
    X(int, pipe, (int[2]))                                                                 \
    X(int, pipe2, (int[2], int))                                                           \
    X(int, dup, (int))                                                                     \
    X(int, dup2, (int, int))                                                               \
    X(int, dup3, (int, int, int))                                                          \
    X(int, close, (int))                                                                   \
    X(int, fcntl, (int, int, ...))                                                         \
    X(int, fcntl64, (int, int, ...))                                                       \
    X(int, ioctl, (int, unsigned long, ...))                                               \
    X(int, setsockopt, (int, int, int, const void *, socklen_t))                           \
    X(int, poll, (struct pollfd *, nfds_t, int))                                           \
    X(int, ppoll, (struct pollfd *, nfds_t, const struct timespec *, const sigset_t *))    \
    X(int, select, (int, fd_set *, fd_set *, fd_set *, struct timeval *))                  \
    X(int, pselect, (int, fd_set *, fd_set *, fd_set *, const struct timespec *,           \
                     const sigset_t *))                                                    \
    X(unsigned, sleep, (unsigned))                                                         \
    X(int, usleep, (useconds_t))                                                           \
    X(int, nanosleep, (const struct timespec *, struct timespec *))                        \
    X(int, clock_nanosleep, (clockid_t, int, const struct timespec *, struct timespec *))  \
    X(int, getaddrinfo, (const char *, const char *, const struct addrinfo *,              \
                         struct addrinfo **))                                              \
    X(struct hostent *, gethostbyname, (const char *))                                     \
    X(int, gethostbyname_r, (const char *, struct hostent *, char *, size_t,               \
                             struct hostent **, int *))                                    \
    X(int, sigaction, (int, const struct sigaction *, struct sigaction *))                 \
    X(sighandler_t, signal, (int, sighandler_t))                                           \
    X(int, siginterrupt, (int, int))

struct addrinfo;
struct hostent;

#define HOOK_REAL_DECL(ret, name, args) typedef ret(*real_##name##_fn) args;
HOOK_REAL_LIST(HOOK_REAL_DECL)
#undef HOOK_REAL_DECL

/* One slot per real function, filled on first use (any thread may race to fill it: they all
 * store the same pointer). */
#define HOOK_REAL_SLOT(ret, name, args) extern void *hook_real_##name;
HOOK_REAL_LIST(HOOK_REAL_SLOT)
#undef HOOK_REAL_SLOT

/* The next definition of name after ours; NULL if there is none. */
void *hook_next(const char *name);
void *hook_real_resolve(void **slot, const char *name);

static inline void *hook_real_get(void **slot, const char *name)
{
    void *f = __atomic_load_n(slot, __ATOMIC_RELAXED);
    return f ? f : hook_real_resolve(slot, name);
}

/* REAL(read)(fd, buf, n): libc's read (or a sanitizer's interceptor in front of it). */
#define REAL(name) ((real_##name##_fn)hook_real_get(&hook_real_##name, #name))

/* ---- Is this call ours? ---- */

/* Set while a handler runs through signal.c's wrapper: a handler that interrupted a
 * coroutine must not park it (a write to a self-pipe in a handler goes to libc as it is). */
extern HOOK_TLS int hook_in_handler;
/* Whether this call is still inside that handler (one that left by longjmp is over). */
bool hook_still_in_handler(void);

/* Inside a coroutine (and not in a signal handler): the thread-local check every hooked
 * call pays first. */
static inline bool hook_in_coroutine(void)
{
    if (__builtin_expect(hook_in_handler != 0, 0) && hook_still_in_handler())
        return false;
    return weft_self() != NULL;
}

/* ---- The descriptor table (fdtab.c) ----
 * What the hook knows of each descriptor number, process-wide (descriptors are), filled in
 * when the number is made through a hooked call (socket, accept, pipe, dup ...) or on its
 * first hooked use in a coroutine (fstat, fcntl, getsockopt). A close through the hook, or a
 * new descriptor on the number, bumps its generation: threads whose backend watched the old
 * one forget it before they wait on the new one (hook_sync_backend). */
enum hook_kind { HOOK_UNKNOWN, HOOK_SOCKET, HOOK_PIPE, HOOK_OTHER };

#define HOOK_NONBLOCK  1u /* the caller made it non-blocking (O_NONBLOCK): EAGAIN is its answer */
#define HOOK_STREAM    2u /* SOCK_STREAM: MSG_WAITALL waits for every byte */
#define HOOK_SEQPACKET 4u /* SOCK_SEQPACKET: a write() is a record (MSG_EOR) */
#define HOOK_TCP       8u /* TCP: a short read means its input is drained (see io.c) */

typedef struct hook_fd {
    _Atomic uint32_t gen;        /* changes whenever the number may name another file */
    _Atomic uint8_t kind;        /* enum hook_kind */
    _Atomic uint8_t flags;       /* HOOK_ bits */
    _Atomic int32_t rcvtimeo_ms; /* SO_RCVTIMEO, rounded up to ms; 0: none */
    _Atomic int32_t sndtimeo_ms; /* SO_SNDTIMEO */
    _Atomic int32_t pending_err; /* an error our own extra attempt took from the socket,
                                    which the kernel would report at the next call */
    _Atomic uint8_t drained;     /* TCP: the last read was short, so nothing was left */
    _Atomic int32_t rcvlowat;    /* SO_RCVLOWAT (1: the kernel's default) */
    _Atomic uint32_t epoch;      /* the state epoch when O_NONBLOCK and the socket options
                                    above were last read (fdtab.c) */
} hook_fd;

/* fd's entry, classified if it was not yet; NULL for numbers outside the table. */
hook_fd *hook_fd_get(int fd);
/* fd's entry as it is (maybe HOOK_UNKNOWN), or NULL if there is none yet. */
hook_fd *hook_fd_peek(int fd);
/* The entry if fd is a socket or a pipe that its caller believes blocking: the calls the
 * hook takes over. NULL: the call goes to libc as it is. */
hook_fd *hook_fd_managed(int fd);
/* fd names a new file (made by a hooked call): record what is known of it (its socket
 * options those of like, the file it was dup'd from or the listener it was accepted from;
 * NULL: the kernel's defaults), bump its generation and forget the number in this thread's
 * backend. */
void hook_fd_made(int fd, enum hook_kind kind, unsigned flags, const hook_fd *like);
/* fd (>= 0) no longer names the file it did (closed, replaced): forget everything. */
void hook_fd_gone(int fd);
/* Look at fd again from scratch (it turned out not to be what the table said). */
void hook_fd_reclassify(int fd);
/* The caller set or cleared O_NONBLOCK on fd (fcntl, ioctl FIONBIO). */
void hook_fd_set_nonblock(int fd, bool on);
/* The caller set a socket option the table keeps (SO_RCVTIMEO, SO_SNDTIMEO, SO_RCVLOWAT) on
 * fd: every number of the socket reads them again. */
void hook_fd_sockopts_changed(int fd);
/* Before this thread waits on fd: if its backend may still hold the file the number named
 * before, make it forget it. */
void hook_sync_backend(int fd, const hook_fd *e);
/* A struct timeval as the kernel's socket timeouts take it, in ms rounded up; 0: none. */
int32_t hook_timeval_ms(const struct timeval *tv);

/* ---- Parking (wait.c) ---- */

/* One hooked call: the signal counts of this thread when it started, to know whether a
 * handler ran meanwhile (the kernel would have interrupted it). */
typedef struct hook_call {
    unsigned long sigs;       /* handlers run on this thread */
    unsigned long nonrestart; /* of those, handlers without SA_RESTART */
} hook_call;

void hook_call_begin(hook_call *c);
/* Whether a handler ran on this thread since the call began. */
bool hook_call_interrupted(const hook_call *c);
/* A handler ran: should the call be restarted (as SA_RESTART restarts it), given whether the
 * call is one the kernel restarts (restartable)? If so the call is now considered to start
 * afresh. */
bool hook_call_restart(hook_call *c, bool restartable);

/* Park until fd is ready for events (WEFT_READABLE or WEFT_WRITABLE), the deadline (ms on
 * weft_now's clock, -1: none) or a signal handler runs on this thread. 0: try the call
 * again; -1: ETIMEDOUT, EINTR (a handler ran: see hook_call_restart), ECANCELED, EBADF (fd
 * closed by another coroutine). */
int hook_wait_fd(hook_call *c, int fd, int events, int64_t deadline);
/* The same for a descriptor the hook made itself and has already forgotten (fd_forget). */
int hook_wait_own_fd(hook_call *c, int fd, int events, int64_t deadline);
/* On io_uring: receive into buf as recv(fd, buf, len, 0) with the ring waiting for the bytes
 * (fd_recv_op), parked as hook_wait_fd parks (a signal handler wakes it: EINTR, unless the
 * bytes came first). The count; -1: the receive's errno, ETIMEDOUT, EINTR, ECANCELED (the
 * coroutine's cancel, or a close of fd here); -2: the ring could not take it. */
ssize_t hook_recv_op(hook_call *c, int fd, const hook_fd *e, void *buf, size_t len,
                     int64_t deadline);
/* Park until the deadline or a signal handler. 0 at the deadline; -1: EINTR, ECANCELED. */
int hook_sleep_until(hook_call *c, int64_t deadline);
/* A deadline timeout_ms from now (0 or less: none). */
int64_t hook_deadline(int32_t timeout_ms);

/* ---- Signals (signal.c) ---- */

/* Counts, for this thread, of handlers that ran (all, and those without SA_RESTART). */
unsigned long hook_sig_count(void);
unsigned long hook_sig_nonrestart(void);
/* This thread's eventfd that handlers write, made on first use; -1 if none could be. */
int hook_sig_eventfd(void);
/* Make pending signals that mask would let in run their handlers now, as ppoll and pselect
 * would at their start; true if there were any. */
bool hook_sig_deliver_pending(const sigset_t *mask);
/* A signalfd readable while a signal is pending that mask would let in but this thread
 * blocks (so that a wait can end for it), or -1 if there is none. Closed by the caller. */
int hook_sig_unblock_fd(const sigset_t *mask);

/* ---- Shared by the I/O files ---- */

/* An iovec array advanced past done bytes into out (room for n entries), returning how many
 * are left; done must be less than the total. */
int hook_iov_advance(const struct iovec *iov, int n, size_t done, struct iovec *out);
/* Sum of an iovec array's lengths. */
size_t hook_iov_len(const struct iovec *iov, int n);
/* Wait for any of the pollfds the way poll would (used by poll, select and their kin):
 * after a poll with timeout 0 found nothing. extra (-1: none) is one more fd whose input ends
 * the wait too. 0: look again; -1 as hook_wait_fd. */
int hook_wait_pollfds(hook_call *c, const struct pollfd *fds, nfds_t n, int extra,
                      int64_t deadline);
/* The real poll on fds with timeout 0, exact whatever the hooks. */
int hook_poll_now(struct pollfd *fds, nfds_t n);
/* Monotonic time in ns, and a deadline in ms (weft_now's clock) not before t_ns. */
int64_t hook_now_ns(void);
int64_t hook_ms_deadline(int64_t t_ns);

#endif
