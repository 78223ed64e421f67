/* The seed's third server: coroutines. One coroutine per client runs the same blocking-style
 * handler as echo-blocking, yet every client is served at once. */
#include "echo_handler.h"
#include "options.h"

#include <signal.h>
#include <string.h>

static void on_signal(int sig)
{
    (void)sig;
    weft_stop(); /* weft_run returns after the current turn */
}

int main(int argc, char **argv)
{
    struct server_args a;
    parse_server_args(argc, argv, &a);
    struct echo_opts opts = {.quiet = a.quiet};

    weft_listener *l = weft_listen(a.addr, 0);
    if (!l) {
        perror(a.addr);
        return 1;
    }
    printf("listening on %s\n", weft_listener_addr(l));
    fflush(stdout);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    weft_server *srv = weft_server_start(l, echo, &opts);
    if (!srv) {
        perror("weft_server_start");
        return 1;
    }
    int rc = weft_run();
    weft_server_close(srv);
    return rc == 0 ? 0 : 1;
}
