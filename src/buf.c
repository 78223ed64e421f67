/* I/O buffers, pooled per thread. A channel takes its read and write buffers when it has
 * bytes to hold and gives them back when it goes idle (parks waiting for input with nothing
 * buffered), so ten thousand idle connections hold none, and a busy one reuses a buffer that
 * is still in the cache. Only buffers of BUF_SIZE are pooled; larger ones go to free(). A
 * thread's pool is freed when its scheduler is (buf_pool_drain) and when the thread ends. */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#define POOL_MAX 64 /* 256 KiB per thread at most */

typedef struct pooled {
    struct pooled *next;
} pooled;

static _Thread_local pooled *pool;
static _Thread_local unsigned pool_len;
static _Thread_local bool exit_registered;
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static void drain_at_exit(void *unused)
{
    (void)unused;
    buf_pool_drain();
    exit_registered = false;
}

static void init_exit_key(void)
{
    pthread_key_create(&exit_key, drain_at_exit);
}

void *buf_take(void)
{
    if (pool) {
        pooled *p = pool;
        pool = p->next;
        pool_len--;
        return p;
    }
    void *p = malloc(BUF_SIZE);
    if (!p)
        errno = ENOMEM;
    return p;
}

void buf_give(void *p, size_t size)
{
    if (!p)
        return;
    if (size != BUF_SIZE || pool_len >= POOL_MAX) {
        free(p);
        return;
    }
    if (!exit_registered) { /* make sure the thread's end frees the pool */
        pthread_once(&exit_once, init_exit_key);
        pthread_setspecific(exit_key, &pool);
        exit_registered = true;
    }
    pooled *b = p;
    b->next = pool;
    pool = b;
    pool_len++;
}

void buf_pool_drain(void)
{
    while (pool) {
        pooled *p = pool;
        pool = p->next;
        free(p);
    }
    pool_len = 0;
}
