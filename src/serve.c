/* serve: the accept loop that gives each client its own coroutine, as the seed does with
 * `coroutine clients::$host:$port`. The server outlives its close while handlers still run
 * (they update its counters), so it is freed by whichever of the two ends last. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

#define BACKOFF_FIRST_MS 10
#define BACKOFF_MAX_MS 1000

struct weft_server {
    weft_listener *l;
    weft_handler handler;
    void *arg;
    weft_co *acceptor;
    bool closed;
    weft_server_stats st;
};

typedef struct conn {
    weft_server *srv;
    weft_chan *c;
} conn;

static void *conn_main(void *p)
{
    conn *k = p;
    weft_server *srv = k->srv;
    weft_chan *c = k->c;
    free(k);
    srv->handler(c, srv->arg);
    weft_close(c);
    srv->st.active--;
    if (srv->closed && srv->st.active == 0)
        free(srv);
    return NULL;
}

static void start_conn(weft_server *srv, weft_chan *c)
{
    conn *k = malloc(sizeof *k);
    weft_co *co = NULL;
    if (k) {
        k->srv = srv;
        k->c = c;
        weft_spawn_opts o = {.name = weft_chan_peer(c), .detached = 1};
        co = weft_spawn_ex(conn_main, k, &o);
    }
    if (!co) {
        /* No memory for this client: it pays, by a close; the server goes on. */
        free(k);
        srv->st.spawn_errors++;
        weft_close(c);
        return;
    }
    srv->st.accepted++;
    srv->st.active++;
}

/* Out of descriptors or memory: the pending clients stay in the kernel's backlog while we
 * wait for handlers to end and free some; the pause grows so a long shortage costs a few
 * wake-ups a second, not a busy loop. */
static void *accept_loop(void *p)
{
    weft_server *srv = p;
    int64_t backoff = 0;
    for (;;) {
        weft_chan *c = weft_accept(srv->l, -1);
        if (c) {
            backoff = 0;
            start_conn(srv, c);
            continue;
        }
        if (errno == ECANCELED || errno == EBADF)
            return NULL;
        srv->st.accept_errors++;
        backoff = backoff ? backoff * 2 : BACKOFF_FIRST_MS;
        if (backoff > BACKOFF_MAX_MS)
            backoff = BACKOFF_MAX_MS;
        if (weft_sleep(backoff) != 0)
            return NULL;
    }
}

weft_server *weft_server_start(weft_listener *l, weft_handler handler, void *arg)
{
    weft_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return NULL;
    srv->l = l;
    srv->handler = handler;
    srv->arg = arg;
    ignore_sigpipe(); /* handlers may write to their sockets' fds directly */
    weft_spawn_opts o = {.name = weft_listener_addr(l)};
    srv->acceptor = weft_spawn_ex(accept_loop, srv, &o);
    if (!srv->acceptor) {
        free(srv);
        return NULL;
    }
    return srv;
}

int weft_server_close(weft_server *srv)
{
    weft_cancel(srv->acceptor);
    int rc = weft_join(srv->acceptor, NULL, -1);
    if (weft_listener_close(srv->l) != 0)
        rc = -1;
    srv->closed = true;
    if (srv->st.active == 0)
        free(srv);
    return rc;
}

void weft_server_get_stats(const weft_server *srv, weft_server_stats *st)
{
    *st = srv->st;
}

int weft_serve(const char *addr, weft_handler handler, void *arg)
{
    weft_listener *l = weft_listen(addr, 0);
    if (!l)
        return -1;
    weft_server *srv = weft_server_start(l, handler, arg);
    if (!srv) {
        weft_listener_close(l);
        return -1;
    }
    int rc = weft_run();
    if (weft_server_close(srv) != 0)
        rc = -1;
    return rc;
}
