/* The key-value store: one hash table of binary-safe keys to string values, with times to
 * live. Expiry is lazy (a key found past its time is deleted by the lookup, as Redis does)
 * and active (kv_store_sweep, run by a coroutine ten times a second, deletes keys nobody
 * asks for again). Store calls never wait: with several threads the caller holds the store's
 * lock around them (kv_store_lock), and never across a weft call that may park. */
#ifndef KV_STORE_H
#define KV_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KV_NO_EXPIRE (-1)

/* A value, shared by reference: a reply may still be sending it after the key changed. */
struct kv_value {
    atomic_uint refs;
    size_t len, cap; /* bytes used / allocated in data */
    char data[];
};

/* A new value holding n bytes from p (p may be NULL: uninitialised), with room for at least
 * cap bytes. NULL when out of memory. */
struct kv_value *kv_value_new(const void *p, size_t n, size_t cap);
struct kv_value *kv_value_ref(struct kv_value *v);
void kv_value_unref(struct kv_value *v);

struct kv_entry {
    struct kv_entry *next;  /* in its bucket */
    uint64_t hash;
    struct kv_value *val;   /* owned reference */
    int64_t expire;         /* Unix time in ms, or KV_NO_EXPIRE */
    size_t exp_slot;        /* index in the store's list of keys with a time to live */
    size_t klen;
    char key[];             /* klen bytes and a NUL */
};

struct kv_store;

/* A new, empty store. shared: used by several threads, so kv_store_lock locks a mutex (else
 * it costs nothing). NULL when out of memory. */
struct kv_store *kv_store_new(bool shared);
void kv_store_free(struct kv_store *s);
void kv_store_lock(struct kv_store *s);
void kv_store_unlock(struct kv_store *s);

/* Unix time in milliseconds: the clock every time to live is on. */
int64_t kv_unix_ms(void);

/* The time for one command: read the first time it is needed, then kept, so a command sees
 * one instant, and one that meets no time to live reads no clock. Start with {0}. */
struct kv_clock {
    int64_t ms; /* 0: not read yet */
};
int64_t kv_clock_ms(struct kv_clock *c);

/* The live entry of key, or NULL; an entry found past its time is deleted first. */
struct kv_entry *kv_store_find(struct kv_store *s, const char *key, size_t klen,
                               struct kv_clock *now);
/* Give key the value v (the store takes v's reference) and return its entry; the key's time
 * to live is cleared unless keep_ttl. NULL when out of memory (v is then released). */
struct kv_entry *kv_store_set(struct kv_store *s, const char *key, size_t klen,
                              struct kv_value *v, bool keep_ttl, struct kv_clock *now);
/* Replace an entry's value (taking v's reference), keeping its time to live. */
void kv_store_replace(struct kv_entry *e, struct kv_value *v);
/* Delete key if it is live: 1 if it was, else 0. */
int kv_store_del(struct kv_store *s, const char *key, size_t klen, struct kv_clock *now);
/* Set the entry's expiry (Unix ms), or remove it with KV_NO_EXPIRE. 0, -1 out of memory. */
int kv_store_expire(struct kv_store *s, struct kv_entry *e, int64_t when);
/* Delete an entry found with kv_store_find. */
void kv_store_remove(struct kv_store *s, struct kv_entry *e);
/* Entries held, including ones past their time that nobody has looked at yet (as Redis's
 * DBSIZE counts them). */
size_t kv_store_count(const struct kv_store *s);
/* Call fn on every entry (expired or not) until it returns nonzero. fn must not change the
 * store. */
void kv_store_each(struct kv_store *s, int (*fn)(struct kv_entry *e, void *arg), void *arg);
/* Delete everything. */
void kv_store_flush(struct kv_store *s);

/* Active expiry: look at up to n keys that have a time to live, picked at random, and
 * delete the ones past it. Returns how many it deleted; *looked is how many it examined. */
size_t kv_store_sweep(struct kv_store *s, int64_t now, size_t n, size_t *looked);
/* Keys that have a time to live. */
size_t kv_store_expiring(const struct kv_store *s);

#endif
