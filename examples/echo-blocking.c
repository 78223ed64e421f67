/* The seed's first server: blocking. It accepts a client, serves it to the end with the
 * shared handler, then accepts the next: one client at a time. No coroutine runs here, so
 * every weft call simply blocks. */
#include "log.h"
#include "echo_handler.h"
#include "options.h"

#include <errno.h>
#include <signal.h>
#include <string.h>

int main(int argc, char **argv)
{
    struct server_args a;
    parse_server_args(argc, argv, &a);
    struct echo_opts opts = {.quiet = a.quiet};
    weft_dump_on_signal(SIGUSR1); /* kill -USR1: a dump (no coroutines here) on stderr */

    weft_tls *tls = NULL;
    if (a.cert && !(tls = weft_tls_server(a.cert, a.key))) {
        perror("TLS certificate or key");
        return 1;
    }
    weft_listener *l = weft_listen(a.addr, 0);
    if (!l) {
        perror(a.addr);
        return 1;
    }
    printf("listening on %s\n", weft_listener_addr(l));
    fflush(stdout);

    for (;;) {
        weft_chan *c = weft_accept(l, -1);
        if (!c) {
            perror("accept");
            weft_sleep(100); /* out of fds or memory: let it pass rather than spin */
            continue;
        }
        /* TLS: the handshake blocks too, as every weft call does outside a coroutine. */
        if (!tls || weft_tls_accept(c, tls, weft_now() + 10000) == 0)
            echo(c, &opts);
        else if (!a.quiet)
            log_line("TLS handshake with %s failed: %s", weft_chan_peer(c),
                    errno == EPROTO ? weft_tls_error(c) : strerror(errno));
        weft_close(c);
    }
}
