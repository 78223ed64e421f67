/* Open files kept for FCACHE_TTL_MS, per thread: a hash table by path, a least-recently-used
 * list for eviction. A file is held by each request serving it (users) and by the table
 * (cached); its descriptor is closed only when both let go, so a coroutine parked in a
 * sendfile never finds its descriptor closed, let alone reused for another file, by a
 * neighbour that evicted or refreshed the entry meanwhile. Capacity 0 keeps nothing: every
 * request opens, and closes when done. */
#include "files.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct fcache {
    int rootfd;
    size_t capacity, count, nbuckets; /* nbuckets: a power of two >= 2 * capacity */
    struct file **buckets;
    struct file *oldest, *newest;
};

struct fcache *fcache_new(int rootfd, size_t capacity)
{
    struct fcache *fc = calloc(1, sizeof *fc);
    if (!fc)
        return NULL;
    fc->rootfd = rootfd;
    fc->capacity = capacity;
    fc->nbuckets = 2;
    while (fc->nbuckets < 2 * capacity)
        fc->nbuckets *= 2;
    fc->buckets = calloc(fc->nbuckets, sizeof *fc->buckets);
    if (!fc->buckets) {
        free(fc);
        return NULL;
    }
    return fc;
}

static void file_free(struct file *f)
{
    close(f->fd);
    free(f);
}

/* FNV-1a: paths are short, and the table is not exposed to chosen collisions beyond what a
 * client could do with its own requests (a long chain costs that client's own lookups). */
static uint64_t hash_path(const char *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static void lru_unlink(struct fcache *fc, struct file *f)
{
    *(f->older ? &f->older->newer : &fc->oldest) = f->newer;
    *(f->newer ? &f->newer->older : &fc->newest) = f->older;
    f->older = f->newer = NULL;
}

static void lru_push(struct fcache *fc, struct file *f)
{
    f->older = fc->newest;
    f->newer = NULL;
    *(fc->newest ? &fc->newest->newer : &fc->oldest) = f;
    fc->newest = f;
}

/* Take f out of the table; it is closed now, or by the last request still serving it. */
static void drop(struct fcache *fc, struct file *f)
{
    struct file **pp = &fc->buckets[f->hash & (fc->nbuckets - 1)];
    while (*pp != f)
        pp = &(*pp)->chain;
    *pp = f->chain;
    lru_unlink(fc, f);
    fc->count--;
    f->cached = false;
    if (f->users == 0)
        file_free(f);
}

void fcache_free(struct fcache *fc)
{
    while (fc->oldest)
        drop(fc, fc->oldest);
    free(fc->buckets);
    free(fc);
}

static struct file *lookup(struct fcache *fc, const char *path, size_t len, uint64_t h)
{
    for (struct file *f = fc->buckets[h & (fc->nbuckets - 1)]; f; f = f->chain)
        if (f->hash == h && f->key_len == len && memcmp(f->key, path, len) == 0)
            return f;
    return NULL;
}

static struct file *open_new(const char *path, size_t len, int rootfd)
{
    struct stat st;
    bool index;
    int fd = path_open(rootfd, path, len, &st, &index);
    if (fd < 0)
        return NULL;
    struct file *f = malloc(sizeof *f + len + 1);
    if (!f) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    *f = (struct file){.fd = fd, .size = st.st_size, .mtime = st.st_mtime, .users = 1,
                       .key_len = len};
    f->type = index ? "text/html" : mime_type(path, len);
    http_format_date(st.st_mtime, f->last_modified);
    memcpy(f->key, path, len);
    f->key[len] = '\0';
    return f;
}

struct file *fcache_get(struct fcache *fc, const char *path, size_t len)
{
    if (fc->capacity == 0)
        return open_new(path, len, fc->rootfd);
    uint64_t h = hash_path(path, len);
    int64_t now = http_coarse_ms();
    struct file *f = lookup(fc, path, len, h);
    if (f && now < f->expires) {
        f->users++;
        lru_unlink(fc, f);
        lru_push(fc, f);
        return f;
    }
    if (f)
        drop(fc, f); /* stale: the path may name another file by now */
    if (!(f = open_new(path, len, fc->rootfd)))
        return NULL;
    if (fc->count == fc->capacity)
        drop(fc, fc->oldest);
    f->hash = h;
    f->expires = now + FCACHE_TTL_MS;
    f->cached = true;
    struct file **b = &fc->buckets[h & (fc->nbuckets - 1)];
    f->chain = *b;
    *b = f;
    lru_push(fc, f);
    fc->count++;
    return f;
}

void fcache_sweep(struct fcache *fc)
{
    int64_t now = http_coarse_ms();
    for (struct file *f = fc->oldest, *next; f; f = next) {
        next = f->newer;
        if (now >= f->expires)
            drop(fc, f);
    }
}

void fcache_put(struct fcache *fc, struct file *f)
{
    (void)fc;
    if (--f->users == 0 && !f->cached)
        file_free(f);
}
