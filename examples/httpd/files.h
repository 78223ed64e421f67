/* The files httpd serves: opened under the root without following any symbolic link
 * (path.c), typed by extension (mime.c), and kept open for a second in a per-thread cache
 * (fcache.c), as h2o keeps its open files, so a busy file costs no open, fstat or close. */
#ifndef HTTPD_FILES_H
#define HTTPD_FILES_H

#include "http.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

/* Open the decoded, checked path (http_decode_path) under the directory rootfd, one segment
 * at a time with O_NOFOLLOW, so neither ".." nor a symbolic link anywhere in the path can lead
 * out of the root; a directory stands for its index.html. The descriptor of a regular file
 * (fstat in *st, *index set if index.html was added), or -1: ENOENT (also for a symbolic
 * link, a directory without index.html, or anything but a regular file: a FIFO is never
 * waited on), ENAMETOOLONG, EACCES, EMFILE, ... */
int path_open(int rootfd, const char *path, size_t len, struct stat *st, bool *index);

/* The Content-Type for a file name, by its extension (application/octet-stream if unknown). */
const char *mime_type(const char *name, size_t len);

/* An open file being served. Fields above the line are read-only for the server. */
struct file {
    int fd;
    off_t size;
    time_t mtime;
    const char *type;
    char last_modified[HTTP_DATE_LEN + 1];
    /* ---- the cache's ---- */
    unsigned users;         /* requests holding it */
    bool cached;            /* in the table (then closed only once dropped and unused) */
    int64_t expires;        /* http_coarse_ms() after which it is opened afresh */
    uint64_t hash;
    struct file *chain;     /* the table's bucket */
    struct file *older, *newer; /* least recently used first */
    size_t key_len;
    char key[];             /* the path asked for */
};

struct fcache;

/* How long an open file is trusted: a file replaced or changed on disk is seen within this. */
#define FCACHE_TTL_MS 1000
#define FCACHE_DEFAULT 1024 /* files kept open per thread (--fd-cache) */

/* A cache of up to capacity open files under rootfd (0: none kept, every request opens and
 * closes). One per thread: no locks. NULL: ENOMEM. */
struct fcache *fcache_new(int rootfd, size_t capacity);
void fcache_free(struct fcache *fc);
/* The file at path (as path_open), held until fcache_put. NULL with errno as path_open's,
 * or ENOMEM. */
struct file *fcache_get(struct fcache *fc, const char *path, size_t len);
void fcache_put(struct fcache *fc, struct file *f);
/* Drop the files past their time (a sweep once a second: a file deleted on disk is not
 * kept open, its space held, for want of requests pushing it out). */
void fcache_sweep(struct fcache *fc);

#endif
