/* The seed's echo handler, shared word for word by the blocking and the coroutine servers. */
#ifndef ECHO_HANDLER_H
#define ECHO_HANDLER_H

#include <weft.h>

struct echo_opts {
    int quiet; /* nonzero: no "connect on"/"EOF on" log lines */
};

/* Echo every line of c back to it until end of file; arg is a struct echo_opts. */
void echo(weft_chan *c, void *arg);

#endif
