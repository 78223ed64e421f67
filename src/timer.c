/* Deadlines: a binary min-heap of timers keyed by deadline, in a mapped array. Each timer
 * records its heap index so a wait that ends early (the fd became ready) removes its timer
 * in O(log n). */
#include "internal.h"

#include <errno.h>
#include <sys/mman.h>

static void heap_set(timer_heap *h, size_t i, timer *t)
{
    h->items[i] = t;
    t->index = i;
}

static void sift_up(timer_heap *h, size_t i)
{
    timer *t = h->items[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h->items[parent]->deadline <= t->deadline)
            break;
        heap_set(h, i, h->items[parent]);
        i = parent;
    }
    heap_set(h, i, t);
}

static void sift_down(timer_heap *h, size_t i)
{
    timer *t = h->items[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= h->len)
            break;
        if (child + 1 < h->len && h->items[child + 1]->deadline < h->items[child]->deadline)
            child++;
        if (t->deadline <= h->items[child]->deadline)
            break;
        heap_set(h, i, h->items[child]);
        i = child;
    }
    heap_set(h, i, t);
}

/* The array is mapped, not taken from the heap: the pages past the most timers ever armed
 * at once are never touched and cost nothing, mremap moves the pages in use without copying
 * them, and growing leaves no freed array behind in the heap. (A server with an idle
 * timeout keeps a timer armed for each connection.) */
static int heap_grow(timer_heap *h)
{
    size_t cap = h->cap ? h->cap * 2 : 4096 / sizeof(timer *);
    void *p = h->items ? mremap(h->items, h->cap * sizeof(timer *), cap * sizeof(timer *),
                                MREMAP_MAYMOVE)
                       : mmap(NULL, cap * sizeof(timer *), PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        errno = ENOMEM;
        return -1;
    }
    h->items = p;
    h->cap = cap;
    return 0;
}

int timer_heap_add(timer_heap *h, timer *t)
{
    if (h->len == h->cap && heap_grow(h) != 0)
        return -1;
    h->items[h->len] = t;
    t->index = h->len;
    h->len++;
    sift_up(h, t->index);
    return 0;
}

void timer_heap_remove(timer_heap *h, timer *t)
{
    size_t i = t->index;
    if (i == SIZE_MAX)
        return;
    t->index = SIZE_MAX;
    h->len--;
    if (i == h->len)
        return;
    /* Move the last timer into the hole, then restore the order in whichever direction. */
    heap_set(h, i, h->items[h->len]);
    if (i > 0 && h->items[(i - 1) / 2]->deadline > h->items[i]->deadline)
        sift_up(h, i);
    else
        sift_down(h, i);
}

timer *timer_heap_peek(const timer_heap *h)
{
    return h->len ? h->items[0] : NULL;
}

void timer_heap_free(timer_heap *h)
{
    if (h->items)
        munmap(h->items, h->cap * sizeof(timer *));
    h->items = NULL;
    h->len = h->cap = 0;
}
