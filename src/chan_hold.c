/* Held output leaving with its coroutine. Line coalescing (chan.c) holds a coroutine's reply
 * back while more requests wait in the same channel; when the coroutine leaves the CPU for
 * any other reason, the scheduler calls here and the reply goes to the channel's transport,
 * which sends what the peer takes now and the rest as the peer reads, whatever the coroutine
 * waits on. Nothing here waits, and nothing calls the scheduler: it calls the transport
 * through its operations only. */
#include "chan.h"

#include <errno.h>

void chan_unhold(weft_chan *c)
{
    if (c->holder) {
        if (c->holder->held_output == c)
            c->holder->held_output = NULL;
        c->holder = NULL;
    }
}

int chan_give_output(weft_chan *c)
{
    if (c->wlen == c->wstart)
        return 0;
    transport *t = c->t;
    int r = t->ops->give(t, c->wbuf, c->wcap, c->wstart, c->wlen - c->wstart);
    if (r < 0 && !transport_err(t))
        return -1; /* ENOMEM: the bytes stay for the next try */
    if (r == 1) { /* the transport owns the buffer now: the next write takes another */
        c->wbuf = NULL;
        c->wcap = 0;
    }
    c->wstart = c->wlen = 0; /* (after a vanished peer: undeliverable, dropped) */
    return r < 0 ? -1 : 0;
}

void chan_forked(weft_chan *c, uint64_t gen)
{
    c->fork_gen = gen;
    chan_unhold(c);
    c->wstart = c->wlen = 0;
    c->t->ops->drop(c->t); /* (a transport forgets a send in flight on the parent's ring) */
    c->sending = false;
    /* The writers waiting for their turn are the parent's coroutines: their nodes, on stacks
     * no coroutine here will run, are let go as they are. */
    c->turns.head = c->turns.tail = NULL;
    c->ref.users = 0; /* (only the parent's coroutines, which are not here, were inside) */
}

void chan_release_held(weft_co *co, uint64_t fork_gen)
{
    weft_chan *c = co->held_output;
    chan_unhold(c);
    if (c->fork_gen != fork_gen) {
        chan_forked(c, fork_gen); /* what it held is the parent's */
        return;
    }
    chan_give_output(c); /* errors stay in the transport, for the next write to report */
}
