/* Choosing the event backend, and the per-fd waiter table both backends use. Each scheduler
 * picks its backend when it starts: weft_set_backend, else $WEFT_BACKEND, else auto. auto is
 * epoll: on the kernels measured so far io_uring (which here arms a one-shot poll per wait)
 * is not faster for this workload; see docs/performance.md. A backend that cannot start
 * (io_uring under qemu-user, a seccomp filter, io_uring_disabled) falls back to epoll and
 * says why. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char chosen[8]; /* "" until weft_set_backend */

int weft_set_backend(const char *name)
{
    if (!name || (strcmp(name, "epoll") && strcmp(name, "uring") && strcmp(name, "auto"))) {
        errno = EINVAL;
        return -1;
    }
    if (sched_peek()) {
        errno = EBUSY;
        return -1;
    }
    snprintf(chosen, sizeof chosen, "%s", name);
    return 0;
}

backend *backend_new(char *reason, size_t reason_len)
{
    const char *want = chosen[0] ? chosen : getenv("WEFT_BACKEND");
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
    } else {
        if (strcmp(want, "auto") != 0)
            snprintf(reason, reason_len, "unknown backend '%.20s': epoll instead", want);
        else
            snprintf(reason, reason_len, "auto: epoll (measured faster here)");
    }
    return epoll_backend_new();
}

/* Without a scheduler the answer is what one would get if it started now: a backend is made
 * to find out and freed at once, so that asking starts nothing that would stay (a thread
 * that only asks must not keep a ring and descriptors), and weft_set_backend still works. */
static _Thread_local char probe_reason[96];

static const char *probe(void)
{
    backend *b = backend_new(probe_reason, sizeof probe_reason);
    if (!b) {
        snprintf(probe_reason, sizeof probe_reason, "no backend could start: %s",
                 strerror(errno));
        return "none";
    }
    const char *name = b->ops->name; /* static storage */
    backend_free(b);
    return name;
}

const char *weft_backend_name(void)
{
    sched *s = sched_peek();
    return s ? s->be->ops->name : probe();
}

const char *weft_backend_reason(void)
{
    sched *s = sched_peek();
    if (s)
        return s->backend_reason;
    probe();
    return probe_reason;
}

/* ---- The per-fd waiter table ---- */

fd_slot *slot_table_get(slot_table *t, int fd)
{
    if (fd < 0) {
        errno = EBADF;
        return NULL;
    }
    if ((size_t)fd >= t->n) {
        size_t n = t->n ? t->n : 64;
        while (n <= (size_t)fd)
            n *= 2;
        fd_slot *slots = realloc(t->slots, n * sizeof *slots);
        if (!slots) {
            errno = ENOMEM;
            return NULL;
        }
        memset(slots + t->n, 0, (n - t->n) * sizeof *slots);
        t->slots = slots;
        t->n = n;
    }
    return &t->slots[fd];
}

void slot_table_free(slot_table *t)
{
    free(t->slots);
    t->slots = NULL;
    t->n = 0;
}

void slot_wake(backend *b, weft_co **w, int err)
{
    if (*w) {
        weft_co *co = *w;
        *w = NULL;
        b->waiting--;
        sched_wake(co, err);
    }
}

int slot_park(backend *b, slot_table *t, int fd, int events, int64_t deadline)
{
    fd_slot *slot = &t->slots[fd];
    weft_co *self = weft_self();
    weft_co **w = (events & WEFT_READABLE) ? &slot->reader : &slot->writer;
    if (*w) {
        errno = EBUSY;
        return -1;
    }
    *w = self;
    b->waiting++;
    int rc = sched_park(deadline);
    /* Timeout or cancel: take ourselves out (the table may have moved while we were parked). */
    slot = &t->slots[fd];
    w = (events & WEFT_READABLE) ? &slot->reader : &slot->writer;
    if (*w == self) {
        *w = NULL;
        b->waiting--;
    }
    return rc;
}
