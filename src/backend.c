/* Choosing an event backend. Each scheduler picks its backend when it starts (see sched.c:
 * weft_set_backend, else $WEFT_BACKEND, else auto). auto is epoll: on the kernels measured so
 * far io_uring is not faster for this workload (docs/performance.md). A backend that cannot
 * start (io_uring under qemu-user, a seccomp filter, io_uring_disabled) falls back to epoll
 * and says why. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

backend *backend_new(const char *choice, char *reason, size_t reason_len)
{
    const char *want = choice && *choice ? choice : getenv("WEFT_BACKEND");
    if (!want || !*want)
        want = "auto";
    if (strcmp(want, "uring") == 0) {
        backend *b = uring_backend_new();
        if (b) {
            snprintf(reason, reason_len, "io_uring, as asked");
            return b;
        }
        snprintf(reason, reason_len, "io_uring unavailable (%s): epoll instead", strerror(errno));
    } else if (strcmp(want, "epoll") == 0) {
        snprintf(reason, reason_len, "epoll, as asked");
    } else if (strcmp(want, "auto") != 0) {
        snprintf(reason, reason_len, "unknown backend '%.20s': epoll instead", want);
    } else {
        snprintf(reason, reason_len, "auto: epoll (measured faster here)");
    }
    return epoll_backend_new();
}
