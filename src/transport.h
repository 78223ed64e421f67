/* Transports: the seam under a channel's buffers. A channel keeps lines, limits, turns,
 * coalescing, deadlines and its lifetime; a transport moves the bytes: it owns the descriptor
 * and every system call made on it, decides when a read can be skipped, and may own output
 * that it sends as the peer reads, from the loop, while the channel's coroutines do other
 * things. sock.c is the plain descriptor's transport; a layered one (TLS) wraps another
 * transport and is used the same way, so the channel never knows which it has.
 *
 * Every call but the wait_ ones returns without waiting. Errors are -1 with errno. The
 * channel calls a transport only through these operations. */
#ifndef WEFT_TRANSPORT_H
#define WEFT_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct transport transport;

typedef struct transport_ops {
    /* -- Input -- */
    /* Receive up to n (> 0) bytes: > 0, 0 at end of file, or -1 (EAGAIN: none now). */
    ssize_t (*recv)(transport *t, void *buf, size_t n);
    /* False when no input can have come since a recv left the transport drained, so that
     * the caller may wait without trying (one system call saved per wait); true otherwise,
     * and always while the transport itself holds received bytes. */
    bool (*may_have_input)(transport *t);
    /* Wait (park in a coroutine, block outside) until input may have come, or the deadline:
     * 0, or -1 with ETIMEDOUT, ECANCELED, EBADF (closed), or what wake_reader gave. Returns
     * early at times: the caller tries recv again. */
    int (*wait_input)(transport *t, int64_t deadline);
    /* End a wait_input now with err (0 for a plain wake-up). */
    void (*wake_reader)(transport *t, int err);
    /* The channel's input is stopped (graceful shutdown): what already arrived is still to be
     * read, nothing more is waited for. From now on recv may fail with EINPROGRESS: input
     * that had arrived is still on its way up (a cancelled receive); wait_input, then recv
     * again. Optional. */
    void (*stop_input)(transport *t);
    /* Optional (layered transports): n bytes that came from below before t was layered on
     * it, unread yet: t reads them first. -1/ENOMEM. */
    int (*preload)(transport *t, const void *buf, size_t n);
    /* Optional: take the next received bytes without a copy, in a buffer of the transport's:
     * they are [*start, *start + result) of *base, which has *cap bytes the caller may also
     * write (it may append to it, and keeps the buffer until release). The result, 0 at end
     * of file, -1 (EAGAIN: none now; ENOTSUP: not now, use recv). */
    ssize_t (*adopt)(transport *t, char **base, size_t *start, size_t *cap, unsigned *token);
    /* Give back a buffer adopt gave. */
    void (*release)(transport *t, unsigned token);

    /* -- Output -- */
    /* Send from iov what the peer takes now, only when nothing is queued: the count, or -1
     * (EAGAIN: none; EPIPE/ECONNRESET are also kept in t->err). */
    ssize_t (*send)(transport *t, const struct iovec *iov, int iovcnt);
    /* Take [off, off + len) of the heap buffer base (cap bytes) for sending: what the peer
     * takes now goes at once, and the transport keeps the rest and sends it as the peer reads,
     * from the loop, whatever the channel does meanwhile (transport_queued counts it; a failure
     * is kept in t->err). 0: all sent now, or handed below (base is still the caller's); 1:
     * base is the transport's now (it frees it); -1 with errno (EPIPE, ...): nothing taken. */
    int (*give)(transport *t, char *base, size_t cap, size_t off, size_t len);
    /* Optional: send up to n bytes of file fd from *off (NULL: its position) with the kernel
     * copying them, only when nothing is queued: the count (0 at the file's end), or -1
     * (EAGAIN: none taken now; ENOTSUP: this file or stream cannot, copy it instead). */
    ssize_t (*sendfile)(transport *t, int fd, off_t *off, size_t n);
    /* Wait until output may go on: room for send, or progress of what is queued; -1 as
     * wait_input. Returns early at times: the caller checks again. */
    int (*wait_output)(transport *t, int64_t deadline);
    /* Drop what is queued unsent: the number of bytes dropped. */
    size_t (*drop)(transport *t);
    /* Optional: put what ends the stream into the output (TLS: close_notify), before a close
     * or shutdown; the caller then waits for it to be sent. -1 with errno. */
    int (*finish)(transport *t);
    /* Tell the peer no more output comes (after the caller waited for the queue to empty). */
    int (*shutdown)(transport *t);

    /* -- Lifetime -- */
    /* Drop what is queued, wake whoever waits on t with EBADF and close its descriptor. -1
     * with the close's error (it is closed all the same). Coroutines may still be inside a
     * wait_ call of t, on their way out: t's memory stays until free. */
    int (*close)(transport *t);
    /* Free t (closed, nobody inside). */
    void (*free)(transport *t);
    /* The descriptor underneath (weft_chan_fd). */
    int (*fd)(const transport *t);
} transport_ops;

/* Every transport starts with this. */
struct transport {
    const transport_ops *ops;
    transport *below; /* the transport a layered one runs over, or NULL */
    size_t queued;  /* bytes taken by give and not yet sent (or handed below) */
    int err;        /* sticky: the peer is gone (EPIPE, ECONNRESET), learnt by any send */
};

/* Bytes given to t and not sent yet, all the way down. */
static inline size_t transport_queued(const transport *t)
{
    size_t n = 0;
    for (; t; t = t->below)
        n += t->queued;
    return n;
}

/* The sticky error of t or of one below it, else 0. */
static inline int transport_err(const transport *t)
{
    for (; t; t = t->below)
        if (t->err)
            return t->err;
    return 0;
}

/* The transport of fd (socket, pipe, tty, file), already non-blocking. tcp: a TCP socket,
 * whose short reads say "drained for now" and which may ask the kernel how much input a read
 * left (TCP_INQ). NULL/ENOMEM. */
transport *sock_transport_new(int fd, bool is_socket, bool tcp);
/* The same, made in mem (sock_transport_size() bytes, pointer-aligned), which its maker owns
 * and keeps until the transport is freed: freeing it releases what it holds, not mem. */
transport *sock_transport_in(void *mem, int fd, bool is_socket, bool tcp);
size_t sock_transport_size(void);
/* For the maker of a transport made in mem, once it is freed: park (not cancellable) until no
 * operation of the kernel's refers to mem any more (a receive's last completion, one loop turn
 * after the close), so that mem may go. */
void sock_room_settle(void *mem);
/* The transport of a descriptor weft did not make (weft_chan_open): made non-blocking (only
 * that flag changes), its kind found out, its peer's name written to peer ("" if none).
 * NULL: EBADF, ENOMEM. */
transport *sock_transport_open(int fd, char *peer, size_t peerlen, bool *is_socket);

#endif
