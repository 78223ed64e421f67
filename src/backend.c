/* Choosing an event backend. Each scheduler picks its backend when it starts (see sched.c:
 * weft_set_backend, else $WEFT_BACKEND, else auto). auto is io_uring wherever it starts: with
 * multishot receives into provided buffers and sends the loop owns, a round trip costs no
 * system call of its own (docs/performance.md). Where it cannot start (built without
 * liburing, qemu-user, a seccomp filter, io_uring_disabled) it falls back to epoll and says
 * why. Under valgrind auto is epoll: valgrind runs one thread at a time and does not know that
 * io_uring_enter waits, so a loop waiting in it would stop every other thread of the program
 * (its peers included) for good. */
#include "internal.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* valgrind's preloaded core is named in LD_PRELOAD of every program it runs. */
static bool under_valgrind(void)
{
    const char *preload = getenv("LD_PRELOAD");
    return preload && strstr(preload, "/vgpreload_core") != NULL;
}

backend *backend_new(const char *choice, char *reason, size_t reason_len)
{
    const char *want = choice && *choice ? choice : getenv("WEFT_BACKEND");
    if (!want || !*want)
        want = "auto";
    bool is_auto = strcmp(want, "auto") == 0;
    if (is_auto && under_valgrind()) {
        snprintf(reason, reason_len, "auto: epoll under valgrind (it stops other threads while "
                                     "io_uring_enter waits)");
        return epoll_backend_new();
    }
    if (is_auto || strcmp(want, "uring") == 0) {
        backend *b = uring_backend_new();
        if (b) {
            snprintf(reason, reason_len, "%s", is_auto ? "auto: io_uring" : "io_uring, as asked");
            return b;
        }
        snprintf(reason, reason_len, "%sio_uring unavailable (%s): epoll instead",
                 is_auto ? "auto: " : "", strerror(errno));
    } else if (strcmp(want, "epoll") == 0) {
        snprintf(reason, reason_len, "epoll, as asked");
    } else {
        snprintf(reason, reason_len, "unknown backend '%.20s': epoll instead", want);
    }
    return epoll_backend_new();
}
