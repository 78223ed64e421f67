/* Groups: structured concurrency. A group owns the coroutines spawned in it; waiting on it
 * joins them all, closing it cancels and joins them all. Closing under other waiters wakes
 * them with EBADF and leaves the free to the last of them, as channels do. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

struct weft_group {
    weft_co *members;
    size_t count;
    wait_list waiters; /* in weft_group_wait or weft_group_close, for count to reach 0 */
    ref ref;           /* waiters and the closer inside g; closed once closing began */
};

static void member_ended(weft_co *co);

weft_group *weft_group_new(void)
{
    return calloc(1, sizeof(weft_group));
}

/* A spawned coroutine joins g. */
static weft_co *join_group(weft_group *g, weft_co *co)
{
    if (!co)
        return NULL;
    co->group = g;
    co->on_end = member_ended;
    co->group_prev = NULL;
    co->group_next = g->members;
    if (g->members)
        g->members->group_prev = co;
    g->members = co;
    g->count++;
    return co;
}

weft_co *weft_group_spawn(weft_group *g, weft_fn fn, void *arg, const weft_spawn_opts *opts)
{
    if (g->ref.closed) {
        errno = EPIPE;
        return NULL;
    }
    weft_spawn_opts o = {0};
    if (opts)
        o = *opts;
    o.detached = 1; /* the group, not a joiner, accounts for it */
    return join_group(g, weft_spawn_ex(fn, arg, &o));
}

weft_co *group_spawn_room(weft_group *g, weft_fn fn, const weft_spawn_opts *opts, size_t room,
                          void **roomp)
{
    if (g->ref.closed) {
        errno = EPIPE;
        return NULL;
    }
    return join_group(g, co_spawn_room(fn, opts, room, roomp));
}

/* Callback from the scheduler: a member of a group has ended. */
static void member_ended(weft_co *co)
{
    weft_group *g = co->group;
    if (co->group_prev)
        co->group_prev->group_next = co->group_next;
    else
        g->members = co->group_next;
    if (co->group_next)
        co->group_next->group_prev = co->group_prev;
    co->group = NULL;
    if (--g->count == 0) {
        waiter *w;
        while ((w = wait_list_pop(&g->waiters)))
            waiter_done(w, 0);
    }
}

size_t weft_group_count(const weft_group *g)
{
    return g->count;
}

/* Wait for count to reach 0 (or the group to be closed by someone else). */
static int group_wait(weft_group *g, int64_t deadline, bool cancellable)
{
    if (g->count == 0)
        return 0;
    waiter w;
    waiter_init_as(&w, WAIT_GROUP, g);
    wait_list_push(&g->waiters, &w);
    int rc = waiter_wait(&w, deadline, cancellable);
    if (rc != 0)
        wait_list_remove(&g->waiters, &w);
    else if (w.err) {
        errno = w.err;
        rc = -1;
    }
    return rc;
}

int weft_group_wait(weft_group *g, int64_t deadline)
{
    ref_enter(&g->ref);
    int rc = group_wait(g, deadline, true);
    bool last;
    if (ref_leave(&g->ref, &last)) { /* closed under us: the last one out frees g */
        if (last)
            free(g);
        errno = EBADF;
        return -1;
    }
    return rc;
}

int weft_group_close(weft_group *g)
{
    weft_co *self = weft_self();
    for (weft_co *m = g->members; m && self; m = m->group_next) {
        if (m == self) {
            errno = EDEADLK;
            return -1;
        }
    }
    /* The closer is inside g too, until it has finished: waiters that leave meanwhile must
     * not free it. */
    ref_enter(&g->ref);
    ref_close(&g->ref);
    /* Others waiting on g leave with EBADF. */
    waiter *w;
    while ((w = wait_list_pop(&g->waiters)))
        waiter_done(w, EBADF);
    for (weft_co *m = g->members; m; m = m->group_next)
        weft_cancel(m);
    /* The members were cancelled and will end; our own cancel must not cut this short, or
     * the group would be freed under them. */
    while (g->count > 0)
        group_wait(g, -1, false);
    bool last;
    ref_leave(&g->ref, &last);
    if (last)
        free(g);
    return 0;
}
