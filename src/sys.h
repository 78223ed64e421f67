/* System calls weft makes on its own descriptors, straight to the kernel. libweft_hook
 * replaces libc's blocking calls (recv, send, poll, close, ...) with ones that park the
 * calling coroutine, and watches the calls that make descriptors (socket, pipe2, ...) to keep
 * its table of them; weft's own calls must not go through them, whether the hooks are linked
 * in or preloaded (they would add bookkeeping to every call, and from a signal handler or a
 * hook itself they would recurse). So weft calls the kernel through syscall(2), which no hook
 * replaces. Only the calls libweft_hook replaces are here; the others are libc's. (Two are
 * not system calls and stay libc's: getaddrinfo, which weft calls only where the hook passes
 * it straight through -- numeric addresses, offload threads -- and sigaction, whose handlers
 * the hook wraps on purpose: see hook/signal.c.) */
#ifndef WEFT_SYS_H
#define WEFT_SYS_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static inline ssize_t sys_read(int fd, void *buf, size_t n)
{
    return syscall(SYS_read, fd, buf, n);
}

static inline ssize_t sys_write(int fd, const void *buf, size_t n)
{
    return syscall(SYS_write, fd, buf, n);
}

static inline ssize_t sys_writev(int fd, const struct iovec *iov, int iovcnt)
{
    return syscall(SYS_writev, fd, iov, iovcnt);
}

static inline ssize_t sys_recv(int fd, void *buf, size_t n, int flags)
{
    return syscall(SYS_recvfrom, fd, buf, n, flags, NULL, NULL);
}

static inline ssize_t sys_recvmsg(int fd, struct msghdr *m, int flags)
{
    return syscall(SYS_recvmsg, fd, m, flags);
}

static inline ssize_t sys_send(int fd, const void *buf, size_t n, int flags)
{
    return syscall(SYS_sendto, fd, buf, n, flags, NULL, 0);
}

static inline ssize_t sys_sendmsg(int fd, const struct msghdr *m, int flags)
{
    return syscall(SYS_sendmsg, fd, m, flags);
}

static inline int sys_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
    return (int)syscall(SYS_accept4, fd, sa, len, flags);
}

static inline int sys_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    return (int)syscall(SYS_connect, fd, sa, len);
}

static inline int sys_socket(int domain, int type, int protocol)
{
    return (int)syscall(SYS_socket, domain, type, protocol);
}

static inline int sys_pipe2(int fds[2], int flags)
{
    return (int)syscall(SYS_pipe2, fds, flags);
}

#if defined(__SANITIZE_THREAD__)
/* ThreadSanitizer must see descriptors close, or it takes the next descriptor with the same
 * number (another thread's socket) for a race. glibc's __close is the same call under a name
 * no hook replaces, and TSan intercepts it. */
extern int __close(int fd);

static inline int sys_close(int fd)
{
    return __close(fd);
}
#else
static inline int sys_close(int fd)
{
    return (int)syscall(SYS_close, fd);
}
#endif

/* 0 if fd is a file weft_sendfile can read without waiting (a regular file or a block
 * device), else -1 with errno: EISDIR, EINVAL (a pipe, socket or character device, whose
 * read could block the thread), or fstat's (EBADF). */
static inline int sys_file_check(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -1;
    if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))
        return 0;
    errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    return -1;
}

/* Read up to n bytes of a file at *off (advanced by what was read), or at its position when
 * off is NULL, retrying on EINTR: weft_sendfile's copying path. */
static inline ssize_t sys_file_read(int fd, void *buf, size_t n, off_t *off)
{
    for (;;) {
        ssize_t r = off ? syscall(SYS_pread64, fd, buf, n, *off) : syscall(SYS_read, fd, buf, n);
        if (r > 0 && off)
            *off += r;
        if (r >= 0 || errno != EINTR)
            return r;
    }
}

static inline ssize_t sys_sendfile(int out, int in, off_t *off, size_t n)
{
    return syscall(SYS_sendfile, out, in, off, n);
}

static inline int sys_fcntl(int fd, int cmd, long arg)
{
    return (int)syscall(SYS_fcntl, fd, cmd, arg);
}

static inline int sys_setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
    return (int)syscall(SYS_setsockopt, fd, level, name, val, len);
}

static inline int sys_getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
    return (int)syscall(SYS_getsockopt, fd, level, name, val, len);
}

/* poll(2) of one fd; ppoll, which every architecture has (aarch64 and riscv64 lack poll). */
static inline int sys_poll1(struct pollfd *p, int timeout_ms)
{
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000};
    return (int)syscall(SYS_ppoll, p, 1, timeout_ms < 0 ? NULL : &ts, NULL, (size_t)_NSIG / 8);
}

/* ppoll(2): n fds (0: a sleep), with mask in force while it waits (NULL: the thread's). */
static inline int sys_ppoll(struct pollfd *p, nfds_t n, const struct timespec *ts,
                            const sigset_t *mask)
{
    return (int)syscall(SYS_ppoll, p, n, ts, mask, (size_t)_NSIG / 8);
}

static inline int sys_nanosleep(const struct timespec *ts)
{
    return (int)syscall(SYS_nanosleep, ts, NULL);
}

#endif
