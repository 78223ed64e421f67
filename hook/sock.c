/* Descriptors: the calls that make them (socket, socketpair, pipe, pipe2, dup, dup2, dup3,
 * fcntl F_DUPFD), that change what the table knows of them (fcntl F_SETFL, ioctl FIONBIO,
 * setsockopt SO_RCVTIMEO/SO_SNDTIMEO), that end them (close), and the two socket calls that
 * wait without moving bytes: connect and accept. The bookkeeping is done in and out of
 * coroutines alike (it costs a few stores), so the table is right whenever a coroutine uses
 * the descriptor.
 *
 * connect has no per-call non-blocking flag: for the one system call that starts it, the
 * socket is made non-blocking and put back (nothing else can be using a socket that is not
 * connected yet), then the coroutine parks until it is writable and a second connect reports
 * the outcome exactly as the blocking connect would (0, ECONNREFUSED, ...). A blocking accept
 * has none either, and a listener is often shared: the hook parks until poll says a client
 * waits, then accepts it with the real call, which returns at once -- unless another process
 * or thread took that client first, in which case it blocks this thread until the next one
 * (a listener the caller made non-blocking, or one per thread with SO_REUSEPORT, avoids it). */
#include "hook.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- Making descriptors ---- */

static unsigned type_flags(int domain, int type)
{
    unsigned f = type & SOCK_NONBLOCK ? HOOK_NONBLOCK : 0;
    type &= ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (type == SOCK_STREAM)
        f |= HOOK_STREAM | (domain == AF_INET || domain == AF_INET6 ? HOOK_TCP : 0);
    else if (type == SOCK_SEQPACKET)
        f |= HOOK_SEQPACKET;
    return f;
}

HOOK_API int socket(int domain, int type, int protocol)
{
    int fd = REAL(socket)(domain, type, protocol);
    if (fd >= 0)
        hook_fd_made(fd, HOOK_SOCKET, type_flags(domain, type), NULL);
    return fd;
}

HOOK_API int socketpair(int domain, int type, int protocol, int sv[2])
{
    int rc = REAL(socketpair)(domain, type, protocol, sv);
    if (rc == 0) {
        hook_fd_made(sv[0], HOOK_SOCKET, type_flags(domain, type), NULL);
        hook_fd_made(sv[1], HOOK_SOCKET, type_flags(domain, type), NULL);
    }
    return rc;
}

static void pipe_made(const int fds[2], int flags)
{
    unsigned f = flags & O_NONBLOCK ? HOOK_NONBLOCK : 0;
    hook_fd_made(fds[0], HOOK_PIPE, f, NULL);
    hook_fd_made(fds[1], HOOK_PIPE, f, NULL);
}

HOOK_API int pipe(int fds[2])
{
    int rc = REAL(pipe)(fds);
    if (rc == 0)
        pipe_made(fds, 0);
    return rc;
}

HOOK_API int pipe2(int fds[2], int flags)
{
    int rc = REAL(pipe2)(fds, flags);
    if (rc == 0)
        pipe_made(fds, flags);
    return rc;
}

/* newfd names the file oldfd names: the same description, so the same kind and flags. */
static void dup_made(int newfd, int oldfd)
{
    const hook_fd *e = hook_fd_peek(oldfd);
    if (!e) {
        hook_fd_made(newfd, HOOK_UNKNOWN, 0, NULL);
        return;
    }
    hook_fd_made(newfd, atomic_load(&e->kind), atomic_load(&e->flags), e);
}

HOOK_API int dup(int oldfd)
{
    int fd = REAL(dup)(oldfd);
    if (fd >= 0)
        dup_made(fd, oldfd);
    return fd;
}

/* dup2 and dup3 close newfd first: its waiters here wake (EBADF), and this thread's backend
 * lets go of it while the number still names the file it watched. */
static void replacing(int oldfd, int newfd)
{
    if (oldfd != newfd && newfd >= 0 && !hook_in_handler) {
        hook_fd_gone(newfd);
        fd_forget(newfd);
    }
}

HOOK_API int dup2(int oldfd, int newfd)
{
    replacing(oldfd, newfd);
    int fd = REAL(dup2)(oldfd, newfd);
    if (fd >= 0 && oldfd != newfd)
        dup_made(fd, oldfd);
    return fd;
}

HOOK_API int dup3(int oldfd, int newfd, int flags)
{
    replacing(oldfd, newfd);
    int fd = REAL(dup3)(oldfd, newfd, flags);
    if (fd >= 0)
        dup_made(fd, oldfd);
    return fd;
}

/* ---- Ending them ---- */

/* Coroutines of this thread waiting on fd wake with EBADF; other threads' backends forget it
 * when they next wait on the number (its generation changed). From a signal handler only
 * the table is touched: the scheduler may be in the middle of something. */
HOOK_API int close(int fd)
{
    if (fd >= 0) {
        hook_fd_gone(fd);
        if (!hook_in_handler)
            fd_forget(fd);
    }
    return REAL(close)(fd);
}

/* ---- Changing them ---- */

static int fcntl_common(int fd, int cmd, void *arg, bool is64)
{
    int rc = is64 ? REAL(fcntl64)(fd, cmd, arg) : REAL(fcntl)(fd, cmd, arg);
    if (rc < 0)
        return rc;
    if (cmd == F_SETFL)
        hook_fd_set_nonblock(fd, ((int)(intptr_t)arg & O_NONBLOCK) != 0);
    else if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
        dup_made(rc, fd);
    return rc;
}

/* Every command's one argument is an int or a pointer, passed the same way (as glibc's own
 * fcntl reads it). */
HOOK_API int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(fd, cmd, arg, false);
}

HOOK_API int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(fd, cmd, arg, true);
}

HOOK_API int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    int rc = REAL(ioctl)(fd, request, arg);
    if (rc == 0 && request == FIONBIO && arg)
        hook_fd_set_nonblock(fd, *(const int *)arg != 0);
    return rc;
}

HOOK_API int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
    int rc = REAL(setsockopt)(fd, level, name, val, len);
    if (rc != 0 || level != SOL_SOCKET)
        return rc;
#ifdef SO_RCVTIMEO_NEW
    bool kept = name == SO_RCVTIMEO || name == SO_RCVTIMEO_NEW || name == SO_SNDTIMEO ||
                name == SO_SNDTIMEO_NEW || name == SO_RCVLOWAT;
#else
    bool kept = name == SO_RCVTIMEO || name == SO_SNDTIMEO || name == SO_RCVLOWAT;
#endif
    if (kept) /* (read back from the kernel, as it keeps them: rounded, clamped) */
        hook_fd_sockopts_changed(fd);
    return rc;
}

/* ---- connect ---- */

/* connect, non-blocking for this one call. */
static int connect_now(int fd, const struct sockaddr *sa, socklen_t len)
{
    int fl = (int)syscall(SYS_fcntl, fd, F_GETFL, 0);
    if (fl < 0 || syscall(SYS_fcntl, fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return -1;
    int rc = REAL(connect)(fd, sa, len);
    int err = errno;
    syscall(SYS_fcntl, fd, F_SETFL, fl);
    errno = err;
    return rc;
}

/* A Unix socket whose listener's backlog is full says EAGAIN and gives nothing to wait on:
 * look again every few ms, as the blocking connect waits for room. */
static int connect_unix_full(hook_call *c, int fd, const struct sockaddr *sa, socklen_t len,
                             int64_t deadline, bool restartable)
{
    for (;;) {
        int64_t until = weft_now() + 5;
        if (deadline >= 0 && until >= deadline)
            until = deadline;
        if (hook_sleep_until(c, until) != 0 && errno != EINTR)
            return -1;
        if (connect_now(fd, sa, len) == 0)
            return 0;
        if (errno != EAGAIN)
            return -1;
        if (hook_call_interrupted(c) && !hook_call_restart(c, restartable)) {
            errno = EINTR;
            return -1;
        }
        if (deadline >= 0 && weft_now() >= deadline)
            return -1; /* EAGAIN, as the kernel's timeout gives it */
    }
}

static int connect_wait(hook_fd *e, int fd, const struct sockaddr *sa, socklen_t len)
{
    int32_t tmo = atomic_load(&e->sndtimeo_ms);
    bool restartable = tmo == 0;
    hook_call c;
    hook_call_begin(&c);
    int64_t deadline = hook_deadline(tmo);
    if (connect_now(fd, sa, len) == 0)
        return 0;
    if (errno == EAGAIN && sa && sa->sa_family == AF_UNIX)
        return connect_unix_full(&c, fd, sa, len, deadline, restartable);
    if (errno != EINPROGRESS && errno != EALREADY)
        return -1;
    for (;;) {
        if (hook_call_interrupted(&c) && !hook_call_restart(&c, restartable)) {
            errno = EINTR; /* it goes on in the kernel: a later connect says EALREADY */
            return -1;
        }
        if (hook_wait_fd(&c, fd, WEFT_WRITABLE, deadline) != 0 && errno != EINTR) {
            if (errno == ETIMEDOUT)
                errno = EINPROGRESS; /* what the blocking connect says when SO_SNDTIMEO ends */
            return -1;
        }
        /* Once it is over, connect reports how, as the blocking one would have. */
        if (connect_now(fd, sa, len) == 0 || errno == EISCONN)
            return 0;
        if (errno != EALREADY && errno != EINPROGRESS)
            return -1;
    }
}

HOOK_API int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    hook_fd *e;
    if (!hook_in_coroutine() || !(e = hook_fd_managed(fd)) ||
        atomic_load(&e->kind) != HOOK_SOCKET)
        return REAL(connect)(fd, sa, len);
    int saved = errno;
    int rc = connect_wait(e, fd, sa, len);
    if (rc == 0)
        errno = saved;
    return rc;
}

/* ---- accept ---- */

static void accepted(int fd, int listener, int flags)
{
    const hook_fd *l = hook_fd_peek(listener);
    uint8_t kind = l ? atomic_load(&l->kind) : HOOK_UNKNOWN;
    if (kind != HOOK_SOCKET) {
        hook_fd_made(fd, HOOK_UNKNOWN, 0, NULL);
        return;
    }
    /* The new socket has the listener's type and timeouts (the kernel copies them), and is
     * non-blocking only if asked (Linux does not pass O_NONBLOCK on). */
    unsigned f = atomic_load(&l->flags) & (HOOK_STREAM | HOOK_SEQPACKET | HOOK_TCP);
    if (flags & SOCK_NONBLOCK)
        f |= HOOK_NONBLOCK;
    hook_fd_made(fd, HOOK_SOCKET, f, l);
}

/* Park until a client waits on the listener (or it fails). 0, or -1 as accept would. */
static int wait_client(hook_fd *e, int fd)
{
    int32_t tmo = atomic_load(&e->rcvtimeo_ms);
    hook_call c;
    hook_call_begin(&c);
    int64_t deadline = hook_deadline(tmo);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (hook_poll_now(&p, 1) != 0)
            return 0; /* a client, or an error the accept will report */
        if (hook_call_interrupted(&c) && !hook_call_restart(&c, tmo == 0)) {
            errno = EINTR;
            return -1;
        }
        if (hook_wait_fd(&c, fd, WEFT_READABLE, deadline) != 0 && errno != EINTR) {
            if (errno == ETIMEDOUT)
                errno = EAGAIN;
            return -1;
        }
    }
}

static int accept_common(int fd, struct sockaddr *sa, socklen_t *len, int flags, bool four)
{
    int saved = errno;
    hook_fd *e;
    if (hook_in_coroutine() && (e = hook_fd_managed(fd)) &&
        atomic_load(&e->kind) == HOOK_SOCKET) {
        if (wait_client(e, fd) != 0)
            return -1;
        errno = saved;
    }
    int nfd = four ? REAL(accept4)(fd, sa, len, flags) : REAL(accept)(fd, sa, len);
    if (nfd >= 0)
        accepted(nfd, fd, flags);
    return nfd;
}

HOOK_API int accept(int fd, struct sockaddr *sa, socklen_t *len)
{
    return accept_common(fd, sa, len, 0, false);
}

HOOK_API int accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
    return accept_common(fd, sa, len, flags, true);
}
