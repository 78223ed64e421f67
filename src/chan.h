/* The channel's struct, private to chan.c and chan_hold.c. */
#ifndef WEFT_CHAN_H
#define WEFT_CHAN_H

#include "internal.h"

/* Laid out for the hot path: the first two cache lines hold what gets and putln touch, so
 * with thousands of connections a round trip misses on two lines of its channel. Input:
 * rbuf holds [rstart, rend) unread bytes; rscan marks how far a newline was already searched
 * for. Output: wbuf holds [wstart, wlen) bytes not yet given to the transport, never more
 * than wmax. */
struct weft_chan {
    transport *t;
    bool eof;          /* a read returned end of file */
    bool skipping;     /* discarding the rest of an over-long line */
    bool input_stopped; /* reads take what has arrived but no longer wait (shutdown) */
    bool sending;      /* a writer holds the turn (see chan.c: turns) */
    bool adopted;      /* rbuf is the transport's buffer (rtoken names it), not ours */
    uint8_t buffering; /* a weft_buffering, narrowed to keep the hot fields in two lines */
    ref ref;           /* coroutines inside a call on this channel; closed under them */
    uint32_t rwant;    /* capacity the read buffer last had (saturated): where a new one starts */
    unsigned rtoken;   /* (adopted) the transport's name for rbuf */
    weft_co *holder;   /* coroutine holding back this channel's line output, if any */
    size_t maxline;
    char *rbuf;
    size_t rstart;
    /* line 2 */
    size_t rend, rscan, rcap;
    char *wbuf;
    size_t wcap, wstart, wlen;
    size_t wmax;
    /* cold */
    int64_t read_timeout, write_timeout;
    wait_list turns;   /* writers waiting for their turn */
    uint64_t fork_gen; /* sched_fork_gen() when its output was last this process's own */
    bool in_room;      /* lives in a handler's room (chan_new_in): its memory is not ours */
    bool gone;         /* (in_room) freed: closed, and the last coroutine inside has left */
    weft_co *gone_waiter; /* (in_room) parked in chan_wait_gone */
    char peer[];       /* NUL-terminated, in the same allocation (most are short) */
};

/* In a forked child, before its first write, flush or close on c: what c held for output
 * at the fork (buffered, held, queued, in flight) is the parent's, which sends it, and the
 * coroutines that were inside c (a writer's turn among them) did not come along. */
void chan_forked(weft_chan *c, uint64_t gen);

static inline void chan_check_forked(weft_chan *c)
{
    uint64_t gen = sched_fork_gen();
    if (c->fork_gen != gen)
        chan_forked(c, gen);
}

/* Stop holding c's output back (it is being sent). */
void chan_unhold(weft_chan *c);
/* Hand what wbuf holds to the transport, which sends what the peer takes now and keeps the
 * rest, without waiting. 0, or -1 with errno (the peer is gone: the bytes are dropped;
 * ENOMEM: they stay in wbuf). */
int chan_give_output(weft_chan *c);

#endif
