/* Waiting on file descriptors, in or out of a coroutine, and the small fd utilities the
 * channel and net layers share. Inside a coroutine a wait parks it in the backend; outside,
 * it is a plain poll(): the seed's "called outside any coroutine, it simply blocks". */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

int64_t deadline_after(int64_t timeout_ms)
{
    return timeout_ms < 0 ? -1 : weft_now() + timeout_ms;
}

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
        int n = poll(&p, 1, timeout);
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

int fd_wait(int fd, int events, int64_t deadline)
{
    sched *s = sched_peek();
    if (s && s->current)
        return backend_wait(s->be, fd, events, deadline);
    return poll_wait(fd, events, deadline);
}

bool io_ops_available(void)
{
    sched *s = sched_peek();
    return s && s->current && s->be->ops->read;
}

ssize_t io_read(int fd, void *buf, size_t n, bool socket, int64_t deadline)
{
    backend *b = sched_peek()->be;
    return b->ops->read(b, fd, buf, n, socket, deadline);
}

ssize_t io_send(int fd, const void *buf, size_t n, bool socket, int64_t deadline)
{
    backend *b = sched_peek()->be;
    return b->ops->send(b, fd, buf, n, socket, deadline);
}

int io_accept(int fd, void *sa, unsigned *salen, int64_t deadline)
{
    backend *b = sched_peek()->be;
    return b->ops->accept(b, fd, sa, salen, deadline);
}

int io_connect(int fd, const void *sa, unsigned salen, int64_t deadline)
{
    backend *b = sched_peek()->be;
    return b->ops->connect(b, fd, sa, salen, deadline);
}

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

int weft_fd_close(int fd)
{
    sched *s = sched_peek();
    if (s)
        backend_forget(s->be, fd);
    return close(fd);
}

int fd_set_nonblock(int fd)
{
    /* Only O_NONBLOCK: the descriptor is the caller's, and its other flags (close-on-exec
     * among them) are theirs to keep. (Descriptors weft makes itself are close-on-exec.) */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
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
