/* The seed's third server: coroutines. One coroutine per client runs the same blocking-style
 * handler as echo-blocking, yet every client is served at once. kill -USR1 PID writes what
 * each coroutine is doing to stderr. */
#include "echo_handler.h"
#include "options.h"

#include <signal.h>

int main(int argc, char **argv)
{
    struct server_args a;
    parse_server_args(argc, argv, &a);
    struct echo_opts opts = {.quiet = a.quiet};
    weft_dump_on_signal(SIGUSR1); /* kill -USR1: what each coroutine is doing, on stderr */

    weft_listener *l = weft_listen(a.addr, 0);
    if (!l) {
        perror(a.addr);
        return 1;
    }
    weft_server_opts so = {0};
    if (a.cert && !(so.tls = weft_tls_server(a.cert, a.key))) { /* the same handler, on TLS */
        perror("TLS certificate or key");
        return 1;
    }
    weft_server *srv = weft_server_start_ex(l, echo, &opts, &so);
    weft_tls_free(so.tls); /* (the server keeps it) */
    /* SIGINT/SIGTERM: stop accepting, answer every line already received, exit 0. */
    if (!srv || weft_server_stop_on_signals(srv, a.grace_ms) != 0) {
        perror("weft_server_start");
        return 1;
    }
    printf("listening on %s\n", weft_listener_addr(l));
    fflush(stdout);
    return weft_run() == 0 ? 0 : 1;
}
