/* examples/httpd: what one thread of the server holds, and the responses (response.c). */
#ifndef HTTPD_HTTPD_H
#define HTTPD_HTTPD_H

#include "files.h"
#include "http.h"

#include <stdbool.h>

/* The command line's settings, shared read-only by every thread. */
struct httpd_config {
    struct http_limits limits;
    int rootfd;            /* the root directory (O_PATH) */
    size_t fd_cache;       /* files kept open per thread (--fd-cache; 0: none) */
    size_t read_max;       /* bodies up to this size are read and sent with the headers in
                              one write; larger ones go by sendfile (--read-max) */
    bool quiet;
};

#define HTTPD_READ_MAX_DEFAULT (16u * 1024u)

/* One thread's: its file cache and the Date it last formatted. Coroutines of one thread
 * share it without locks. */
struct site {
    const struct httpd_config *cfg;
    struct fcache *files;
    time_t date_at;
    char date[HTTP_DATE_LEN + 1];
};

/* Answer r: the file (200, 206, 304, 416), or 404, 403, 405, 503. 0 when the connection may
 * go on (if r->keep_alive), -1 when it must end (a write failed, or the file changed under
 * the response). */
int http_respond(weft_chan *c, const struct http_request *r, struct site *s);
/* Send the error status owed after a failed read, with "Connection: close". */
void http_respond_error(weft_chan *c, const struct http_request *r, struct site *s);

#endif
