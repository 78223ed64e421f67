/* The seed's handler, `while {![eof $sock]} { puts $sock [gets $sock] }`, in C. It does not
 * know whether it runs in a coroutine (echo.c) or not (echo-blocking.c): weft_gets parks in
 * the first case and blocks in the second. */
#include "echo_handler.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void echo(weft_chan *c, void *arg)
{
    const struct echo_opts *o = arg;
    int fd = weft_chan_fd(c);
    const char *line;
    size_t len;

    if (!o->quiet)
        log_line("connect on fd %d (from %s)", fd, weft_chan_peer(c));
    while ((line = weft_gets(c, &len)) != NULL)
        if (weft_putln(c, line, len) != 0)
            break;
    if (o->quiet)
        return;
    if (weft_eof(c))
        log_line("EOF on fd %d", fd);
    else
        log_line("error on fd %d: %s", fd, strerror(errno));
}
