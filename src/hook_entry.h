/* The internal entries libweft_hook (hook/) uses besides the public API, in a header of their
 * own so that the hook library sees these and nothing else of src/internal.h, which includes
 * it and says what each is for there. */
#ifndef WEFT_HOOK_ENTRY_H
#define WEFT_HOOK_ENTRY_H

#include "weft.h"

#include <stdbool.h>
#include <sys/types.h>

/* An fd's owner: fn is called from the loop with the events (IO_ bits) of the fd (see
 * fd_set_owner). Embedded in the owner's own struct, which fn finds from self. */
typedef struct fd_owner fd_owner;
struct fd_owner {
    void (*fn)(fd_owner *self, unsigned events);
};

/* fd_close without the close: forget fd in this thread's backend and wake its waiters here
 * with EBADF. A no-op on a thread without a scheduler. */
void fd_forget(int fd);
/* Watch fd for input on this thread's backend and call owner->fn(owner, events) from the
 * loop at each event, as fd_set_owner's owner (fd has no waiters of its own). Cheap once done, so
 * it may be called before each park: a new scheduler or a forked child starts from clean
 * slots. A no-op on a thread without a scheduler. -1/errno. */
int fd_watch_input(int fd, fd_owner *owner);
/* Make a parked coroutine runnable; its park returns with err (0 = success). A no-op for a
 * coroutine that is not parked. Only on the coroutine's own thread. */
void sched_wake(weft_co *co, int err);

/* True when the running coroutine's backend performs operations itself (io_uring). */
bool fd_ops_available(void);
/* In a coroutine, on a backend that performs operations (fd_ops_available): receive up to len
 * bytes of fd into buf as recv(fd, buf, len, 0) does, the backend itself waiting for them
 * (no readiness wait, no system call of ours), until the deadline (ms, -1: none). A timeout
 * or a wake of the park (sched_wake's err: EINTR; weft_cancel: ECANCELED) asks the kernel to
 * cancel it and still waits for its end: bytes that came meanwhile are returned, never lost.
 * The count (0: end of input); -1 with the receive's errno, or ETIMEDOUT, the wake's err, or
 * ECANCELED when fd_forget (a close) ended it; -2 with errno when it could not start
 * (ENOSYS: no such backend here; EAGAIN, ENOMEM: no room). */
ssize_t fd_recv_op(int fd, void *buf, size_t len, int64_t deadline);

/* Before a read of fd: whether input may have come since the last call. False only when fd
 * is watched and no input event came since (a reader whose last read left the fd drained may
 * then park without reading); always true outside coroutines. */
bool fd_input_hint(int fd);
/* Whether the running coroutine's backend shows urgent data apart from input (epoll does,
 * io_uring does not): only then does a short TCP read mean the input is drained. */
bool fd_edges_show_urgent(void);

#endif
