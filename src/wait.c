/* Waiting on objects: queues, locks, conditions, wait groups, groups and channel turns share
 * this. The waiting side puts a node, on its own stack, in the object's FIFO list and parks
 * (outside a coroutine it runs the loop instead); the side that satisfies the wait takes the
 * node off the list, hands over what there is to hand, marks it done and wakes it. A timeout
 * or cancel that races with a hand-over loses: if the node is done, the wait succeeded. The
 * nodes of a weft_select share a selector: once one completes, the others are skipped. */
#include "internal.h"

#include <errno.h>

void wait_list_push(wait_list *l, waiter *w)
{
    WEFT_ASSERT(!w->linked);
    w->linked = true;
    w->next = NULL;
    w->prev = l->tail;
    if (l->tail)
        l->tail->next = w;
    else
        l->head = w;
    l->tail = w;
}

void wait_list_remove(wait_list *l, waiter *w)
{
    WEFT_ASSERT(w->linked);
    if (w->prev)
        w->prev->next = w->next;
    else
        l->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        l->tail = w->prev;
    w->prev = w->next = NULL;
    w->linked = false;
}

waiter *wait_list_pop(wait_list *l)
{
    waiter *w;
    while ((w = l->head)) {
        wait_list_remove(l, w);
        if (!w->sel || !w->sel->done)
            return w;
    }
    return NULL;
}

void waiter_init(waiter *w)
{
    waiter_init_as(w, WAIT_OTHER, NULL);
}

void waiter_init_as(waiter *w, uint8_t kind, const void *obj)
{
    w->kind = kind;
    w->obj = obj;
    w->co = weft_self();
    w->prev = w->next = NULL;
    w->linked = false;
    w->done = false;
    w->err = 0;
    w->sel = NULL;
    w->index = 0;
}

void waiter_done(waiter *w, int err)
{
    w->done = true;
    w->err = err;
    if (w->sel) {
        w->sel->done = true;
        w->sel->index = w->index;
    }
    if (w->co)
        sched_wake(w->co, 0);
}

int waiter_wait(waiter *w, int64_t deadline, bool cancellable)
{
    const bool *done = w->sel ? &w->sel->done : &w->done;
    if (!w->co)
        return sched_drive(done, deadline);
    for (;;) {
        int rc = sched_park_on(w->kind, w->obj, deadline, cancellable);
        if (*done) /* a timeout or cancel in the same turn as the hand-over loses */
            return 0;
        if (rc != 0)
            return -1;
    }
}
