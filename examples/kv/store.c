/* The store: a chained hash table (power-of-two buckets, doubled when it holds as many
 * entries as buckets, halved when it falls below an eighth) keyed with SipHash-1-3 under a
 * random key, so clients cannot pick keys that all land in one bucket. Keys with a time to
 * live are also listed in an array (each entry knows its slot), from which the sweep draws
 * at random in O(1), as Redis draws from its expires dictionary. */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define MIN_BUCKETS 16u

struct kv_store {
    struct kv_entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    struct kv_entry **expiring; /* entries with a time to live */
    size_t nexpiring, expcap;
    uint64_t k0, k1;  /* SipHash key */
    uint64_t rng;     /* the sweep's random picks */
    bool shared;
    pthread_mutex_t lock;
};

/* ---- Values ---- */

struct kv_value *kv_value_new(const void *p, size_t n, size_t cap)
{
    if (cap < n)
        cap = n;
    struct kv_value *v = malloc(sizeof *v + cap + 1);
    if (!v)
        return NULL;
    atomic_init(&v->refs, 1);
    v->len = n;
    v->cap = cap;
    if (p)
        memcpy(v->data, p, n);
    return v;
}

struct kv_value *kv_value_ref(struct kv_value *v)
{
    atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
    return v;
}

void kv_value_unref(struct kv_value *v)
{
    if (v && atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1)
        free(v);
}

/* ---- SipHash-1-3 (Aumasson and Bernstein): one compression round, three finalisation ---- */

static inline uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIP_ROUND(v0, v1, v2, v3)                                                              \
    do {                                                                                       \
        v0 += v1;                                                                              \
        v1 = rotl(v1, 13) ^ v0;                                                                \
        v0 = rotl(v0, 32);                                                                     \
        v2 += v3;                                                                              \
        v3 = rotl(v3, 16) ^ v2;                                                                \
        v0 += v3;                                                                              \
        v3 = rotl(v3, 21) ^ v0;                                                                \
        v2 += v1;                                                                              \
        v1 = rotl(v1, 17) ^ v2;                                                                \
        v2 = rotl(v2, 32);                                                                     \
    } while (0)

static inline uint64_t load_le64(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

/* (A macro for the round: as a function taking the state by pointer it was not inlined and
 * the hash cost 12 % of kv's CPU under MSET; with the state in registers, a third of that.) */
static uint64_t siphash13(const struct kv_store *st, const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t v0 = st->k0 ^ 0x736f6d6570736575ull, v1 = st->k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = st->k0 ^ 0x6c7967656e657261ull, v3 = st->k1 ^ 0x7465646279746573ull;
    size_t whole = n & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = load_le64(p + i);
        v3 ^= m;
        SIP_ROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    uint64_t last = (uint64_t)n << 56;
    for (size_t i = 0; i < (n & 7); i++)
        last |= (uint64_t)p[whole + i] << (8 * i);
    v3 ^= last;
    SIP_ROUND(v0, v1, v2, v3);
    v0 ^= last;
    v2 ^= 0xff;
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- The store ---- */

int64_t kv_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kv_clock_ms(struct kv_clock *c)
{
    if (c->ms == 0)
        c->ms = kv_unix_ms();
    return c->ms;
}

/* Whether e's time has come. */
static bool expired(const struct kv_entry *e, struct kv_clock *now)
{
    return e->expire != KV_NO_EXPIRE && e->expire <= kv_clock_ms(now);
}

struct kv_store *kv_store_new(bool shared)
{
    struct kv_store *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->buckets = calloc(MIN_BUCKETS, sizeof *s->buckets);
    if (!s->buckets) {
        free(s);
        return NULL;
    }
    s->nbuckets = MIN_BUCKETS;
    uint64_t key[3];
    if (getrandom(key, sizeof key, 0) != (ssize_t)sizeof key) {
        /* No entropy source: a weaker key from the clock and the address space. */
        key[0] = (uint64_t)kv_unix_ms() * 0x9e3779b97f4a7c15ull ^ (uintptr_t)s;
        key[1] = (uint64_t)clock() ^ (uintptr_t)&key;
        key[2] = key[0] ^ key[1];
    }
    s->k0 = key[0];
    s->k1 = key[1];
    s->rng = key[2] | 1;
    s->shared = shared;
    pthread_mutex_init(&s->lock, NULL);
    return s;
}

static void entry_free(struct kv_entry *e)
{
    kv_value_unref(e->val);
    free(e);
}

void kv_store_flush(struct kv_store *s)
{
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct kv_entry *e = s->buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            entry_free(e);
        }
    }
    struct kv_entry **b = calloc(MIN_BUCKETS, sizeof *b);
    if (b) { /* else keep the large, now empty, array */
        free(s->buckets);
        s->buckets = b;
        s->nbuckets = MIN_BUCKETS;
    } else {
        memset(s->buckets, 0, s->nbuckets * sizeof *s->buckets);
    }
    s->count = 0;
    free(s->expiring);
    s->expiring = NULL;
    s->nexpiring = s->expcap = 0;
}

void kv_store_free(struct kv_store *s)
{
    if (!s)
        return;
    kv_store_flush(s);
    free(s->buckets);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void kv_store_lock(struct kv_store *s)
{
    if (s->shared)
        pthread_mutex_lock(&s->lock);
}

void kv_store_unlock(struct kv_store *s)
{
    if (s->shared)
        pthread_mutex_unlock(&s->lock);
}

/* Rebuild the table with n buckets (a power of two); on no memory keep the old one. */
static void resize(struct kv_store *s, size_t n)
{
    struct kv_entry **b = calloc(n, sizeof *b);
    if (!b)
        return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct kv_entry *e = s->buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            size_t j = e->hash & (n - 1);
            e->next = b[j];
            b[j] = e;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

static struct kv_entry **slot_of(struct kv_store *s, const char *key, size_t klen, uint64_t h)
{
    struct kv_entry **p = &s->buckets[h & (s->nbuckets - 1)];
    for (; *p; p = &(*p)->next)
        if ((*p)->hash == h && (*p)->klen == klen && memcmp((*p)->key, key, klen) == 0)
            return p;
    return p;
}

static void unlist_expiring(struct kv_store *s, struct kv_entry *e)
{
    struct kv_entry *last = s->expiring[--s->nexpiring];
    s->expiring[e->exp_slot] = last;
    last->exp_slot = e->exp_slot;
    e->expire = KV_NO_EXPIRE;
}

/* Unlink the entry at *p and free it. */
static void delete_at(struct kv_store *s, struct kv_entry **p)
{
    struct kv_entry *e = *p;
    *p = e->next;
    if (e->expire != KV_NO_EXPIRE)
        unlist_expiring(s, e);
    entry_free(e);
    s->count--;
    if (s->nbuckets > MIN_BUCKETS && s->count < s->nbuckets / 8)
        resize(s, s->nbuckets / 2);
}

struct kv_entry *kv_store_find(struct kv_store *s, const char *key, size_t klen,
                               struct kv_clock *now)
{
    uint64_t h = siphash13(s, key, klen);
    struct kv_entry **p = slot_of(s, key, klen, h);
    struct kv_entry *e = *p;
    if (e && expired(e, now)) {
        delete_at(s, p);
        return NULL;
    }
    return e;
}

struct kv_entry *kv_store_set(struct kv_store *s, const char *key, size_t klen,
                              struct kv_value *v, bool keep_ttl, struct kv_clock *now)
{
    uint64_t h = siphash13(s, key, klen);
    struct kv_entry **p = slot_of(s, key, klen, h);
    struct kv_entry *e = *p;
    if (e && expired(e, now)) {
        delete_at(s, p); /* expired: a new key, whose time to live is not kept */
        p = slot_of(s, key, klen, h);
        e = NULL;
    }
    if (e) {
        kv_value_unref(e->val);
        e->val = v;
        if (!keep_ttl && e->expire != KV_NO_EXPIRE)
            unlist_expiring(s, e);
        return e;
    }
    e = malloc(sizeof *e + klen + 1);
    if (!e) {
        kv_value_unref(v);
        return NULL;
    }
    e->next = NULL;
    e->hash = h;
    e->val = v;
    e->expire = KV_NO_EXPIRE;
    e->exp_slot = 0;
    e->klen = klen;
    memcpy(e->key, key, klen);
    e->key[klen] = '\0';
    *p = e;
    if (++s->count > s->nbuckets)
        resize(s, s->nbuckets * 2);
    return e;
}

void kv_store_replace(struct kv_entry *e, struct kv_value *v)
{
    kv_value_unref(e->val);
    e->val = v;
}

int kv_store_del(struct kv_store *s, const char *key, size_t klen, struct kv_clock *now)
{
    uint64_t h = siphash13(s, key, klen);
    struct kv_entry **p = slot_of(s, key, klen, h);
    if (!*p)
        return 0;
    bool live = !expired(*p, now);
    delete_at(s, p);
    return live;
}

void kv_store_remove(struct kv_store *s, struct kv_entry *e)
{
    delete_at(s, slot_of(s, e->key, e->klen, e->hash));
}

int kv_store_expire(struct kv_store *s, struct kv_entry *e, int64_t when)
{
    if (when == KV_NO_EXPIRE) {
        if (e->expire != KV_NO_EXPIRE)
            unlist_expiring(s, e);
        return 0;
    }
    if (e->expire == KV_NO_EXPIRE) {
        if (s->nexpiring == s->expcap) {
            size_t cap = s->expcap ? s->expcap * 2 : 64;
            struct kv_entry **a = realloc(s->expiring, cap * sizeof *a);
            if (!a)
                return -1;
            s->expiring = a;
            s->expcap = cap;
        }
        e->exp_slot = s->nexpiring;
        s->expiring[s->nexpiring++] = e;
    }
    e->expire = when;
    return 0;
}

size_t kv_store_count(const struct kv_store *s)
{
    return s->count;
}

size_t kv_store_expiring(const struct kv_store *s)
{
    return s->nexpiring;
}

void kv_store_each(struct kv_store *s, int (*fn)(struct kv_entry *e, void *arg), void *arg)
{
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct kv_entry *e = s->buckets[i]; e; e = e->next)
            if (fn(e, arg))
                return;
}

static uint64_t next_random(struct kv_store *s)
{
    uint64_t x = s->rng; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return s->rng = x;
}

size_t kv_store_sweep(struct kv_store *s, int64_t now, size_t n, size_t *looked)
{
    size_t deleted = 0, seen = 0;
    for (; seen < n && s->nexpiring > 0; seen++) {
        struct kv_entry *e = s->expiring[next_random(s) % s->nexpiring];
        if (e->expire <= now) {
            kv_store_remove(s, e);
            deleted++;
        }
    }
    *looked = seen;
    return deleted;
}
