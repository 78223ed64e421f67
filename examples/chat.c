/* A chat server: every line a client sends goes to every other client, as
 * "<sender host:port> <line>". Connecting, a client first gets "* welcome <its host:port>,
 * N others here"; once it has that line, it hears every line sent after it.
 *
 * Each client is served by two coroutines. Its handler reads lines in plain blocking style
 * and hands each one to every other client's queue; its writer takes messages off its own
 * queue and writes them out. Handing over never waits: a client whose queue is full (it has
 * stopped reading, and its socket buffers are full too) is dropped on the spot, so one slow
 * reader can never hold up the others. A message is one reference-counted allocation shared
 * by all its receivers; the last writer done with it frees it. A client leaves at end of
 * file; what was already queued for it is still delivered (for up to LEAVE_FLUSH_MS).
 *
 *     chat [-p PORT] [-h HOST] [-q] [-g GRACE_MS]      (as the echo servers)
 *
 * kill -USR1 PID writes what each coroutine is doing to stderr.
 */
#include "log.h"
#include "options.h"

#include <weft.h>

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define QUEUE_CAPACITY 1024 /* messages waiting for one client before it is dropped */
#define LEAVE_FLUSH_MS 10000 /* a leaving client's writer gets this long to deliver its queue */

/* One line, as every receiver gets it; shared, freed by its last holder. */
struct msg {
    unsigned refs;
    size_t len;
    char text[]; /* "<sender> <line>", no newline */
};

struct room;

struct member {
    struct room *room;
    weft_chan *c;
    weft_queue *q;            /* struct msg *, for this client's writer */
    weft_group *writer;       /* the group holding the writer coroutine */
    bool in_room;             /* in the list: broadcasts reach it */
    bool dropped;             /* thrown out (queue full or write failed) */
    int why;                  /* why it was dropped: an errno, 0 for a full queue */
    struct member *prev, *next;
};

struct room {
    struct member *members;
    size_t count;
    bool quiet;
};

static struct msg *msg_new(const char *a, size_t alen, const char *b, size_t blen)
{
    struct msg *m = malloc(sizeof *m + alen + 1 + blen + 1);
    if (!m)
        return NULL;
    m->refs = 1;
    m->len = alen + 1 + blen;
    memcpy(m->text, a, alen);
    m->text[alen] = ' ';
    memcpy(m->text + alen + 1, b, blen); /* the line may hold NUL bytes: lengths, not strlen */
    m->text[m->len] = '\0';
    return m;
}

static void msg_unref(struct msg *m)
{
    if (--m->refs == 0)
        free(m);
}

/* Take m out of the list: no broadcast reaches it from now on; its writer delivers what is
 * already queued, then ends. */
static void leave_room(struct member *m)
{
    if (!m->in_room)
        return;
    struct room *r = m->room;
    if (m->prev)
        m->prev->next = m->next;
    else
        r->members = m->next;
    if (m->next)
        m->next->prev = m->prev;
    m->in_room = false;
    r->count--;
    weft_queue_close(m->q);
}

/* Throw m out without waiting for it: nothing more is queued for it, and shutting its socket
 * down wakes its handler (its read sees end of file) and its writer (a write fails with EPIPE
 * at once, however full the socket is). Linger 0 makes the final close a reset, so the kernel
 * drops the unsent backlog instead of keeping it for a client that does not read. */
static void drop(struct member *m, int why)
{
    if (m->dropped)
        return;
    m->dropped = true;
    m->why = why;
    leave_room(m);
    int fd = weft_chan_fd(m->c);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    shutdown(fd, SHUT_RDWR);
}

/* Give line to every other member. Never waits: a full queue means that client is dropped. */
static void broadcast(struct member *from, const char *line, size_t len)
{
    struct room *r = from->room;
    if (r->count < 2)
        return;
    const char *name = weft_chan_peer(from->c);
    struct msg *m = msg_new(name, strlen(name), line, len);
    if (!m)
        return; /* out of memory: this line is lost, the room goes on */
    struct member *k, *next;
    for (k = r->members; k; k = next) {
        next = k->next; /* drop() unlinks k, never another member */
        if (k == from)
            continue;
        m->refs++;
        if (weft_queue_try_send(k->q, m) != 0) {
            m->refs--;
            drop(k, 0);
        }
    }
    msg_unref(m);
}

/* The writer: queue -> socket. Output is fully buffered and flushed whenever the queue runs
 * empty, so a burst of messages costs one write, not one per line. */
static void *writer_main(void *arg)
{
    struct member *me = arg;
    weft_chan *c = me->c;
    void *item;
    weft_chan_set_buffering(c, WEFT_BUF_FULL);
    for (;;) {
        if (weft_queue_try_recv(me->q, &item) != 0) {
            if (errno != EAGAIN)
                break; /* closed and drained */
            if (weft_flush(c) != 0)
                goto failed;
            if (weft_queue_recv(me->q, &item, -1) != 0)
                break;
        }
        struct msg *m = item;
        int rc = weft_putln(c, m->text, m->len);
        msg_unref(m);
        if (rc != 0)
            goto failed;
    }
    if (errno == EPIPE && weft_flush(c) == 0)
        return NULL;
failed:
    /* The client is gone, or stopped reading for a whole write timeout, or we were cancelled
     * (shutdown): it leaves. */
    drop(me, errno ? errno : EIO);
    return NULL;
}

static struct member *join(struct room *r, weft_chan *c)
{
    struct member *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->room = r;
    m->c = c;
    m->q = weft_queue_new(QUEUE_CAPACITY);
    m->writer = weft_group_new();
    char name[96];
    snprintf(name, sizeof name, "writer %s", weft_chan_peer(c));
    weft_spawn_opts so = {.name = name};
    if (!m->q || !m->writer || !weft_group_spawn(m->writer, writer_main, m, &so)) {
        if (m->writer)
            weft_group_close(m->writer);
        if (m->q)
            weft_queue_free(m->q);
        free(m);
        return NULL;
    }
    /* No wait between here and the welcome being queued: once the client reads the
     * welcome, it is in the room. */
    char welcome[160];
    int n = snprintf(welcome, sizeof welcome, "welcome %s, %zu other%s here", weft_chan_peer(c),
                     r->count, r->count == 1 ? "" : "s");
    struct msg *w = msg_new("*", 1, welcome, (size_t)n);
    if (w && weft_queue_try_send(m->q, w) != 0)
        msg_unref(w);
    m->next = r->members;
    if (r->members)
        r->members->prev = m;
    r->members = m;
    m->in_room = true;
    r->count++;
    return m;
}

/* Leave the room, let the writer deliver what is queued (bounded), free everything. */
static void part(struct member *m)
{
    leave_room(m);
    weft_group_wait(m->writer, weft_now() + LEAVE_FLUSH_MS);
    weft_group_close(m->writer); /* cancels the writer if it is still at it */
    void *item;
    while (weft_queue_try_recv(m->q, &item) == 0)
        msg_unref(item);
    weft_queue_free(m->q);
    free(m);
}

/* The per-client handler, in blocking style. */
static void chat(weft_chan *c, void *arg)
{
    struct room *r = arg;
    int fd = weft_chan_fd(c);
    struct member *me = join(r, c);
    if (!me) {
        if (!r->quiet)
            log_line("no memory for %s", weft_chan_peer(c));
        return;
    }
    if (!r->quiet)
        log_line("connect on fd %d (from %s)", fd, weft_chan_peer(c));
    const char *line;
    size_t len;
    while ((line = weft_gets(c, &len)) != NULL && !me->dropped) {
        broadcast(me, line, len);
        weft_yield(); /* let the writers send it before we read on: no burst floods a queue */
    }
    int err = errno;
    if (!r->quiet) {
        if (me->dropped)
            log_line("dropped fd %d (%s): %s", fd, weft_chan_peer(c),
                    me->why ? strerror(me->why) : "queue full, not reading");
        else if (weft_eof(c))
            log_line("EOF on fd %d", fd);
        else
            log_line("error on fd %d: %s", fd, strerror(err));
    }
    part(me);
}

int main(int argc, char **argv)
{
    struct server_args a;
    parse_server_args(argc, argv, &a);
    static struct room room;
    room.quiet = a.quiet;
    weft_dump_on_signal(SIGUSR1); /* kill -USR1: what each coroutine is doing, on stderr */

    weft_listener *l = weft_listen(a.addr, 0);
    if (!l) {
        perror(a.addr);
        return 1;
    }
    /* No read timeout: in a chat, listening without talking is normal. A client that stops
     * reading is dropped by its queue filling up or by the write timeout. */
    weft_server_opts o = {.idle_timeout_ms = -1};
    if (a.cert && !(o.tls = weft_tls_server(a.cert, a.key))) {
        perror("TLS certificate or key");
        return 1;
    }
    weft_server *srv = weft_server_start_ex(l, chat, &room, &o);
    weft_tls_free(o.tls); /* (the server keeps it) */
    if (!srv || weft_server_stop_on_signals(srv, a.grace_ms) != 0) {
        perror("weft_server_start");
        return 1;
    }
    printf("listening on %s\n", weft_listener_addr(l));
    fflush(stdout);
    return weft_run() == 0 ? 0 : 1;
}
