/* Deadlines: a binary min-heap of timers keyed by deadline. Each timer records its heap index
 * so a wait that ends early (the fd became ready) removes its timer in O(log n). */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

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

int timer_heap_add(timer_heap *h, timer *t)
{
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        timer **items = realloc(h->items, cap * sizeof *items);
        if (!items) {
            errno = ENOMEM;
            return -1;
        }
        h->items = items;
        h->cap = cap;
    }
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
    free(h->items);
    h->items = NULL;
    h->len = h->cap = 0;
}
