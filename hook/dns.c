/* getaddrinfo, gethostbyname, gethostbyname_r: in a coroutine, a lookup that may ask the
 * network runs on weft's offload pool while the coroutine parks; numeric addresses (and no
 * host at all) are answered here, as they need nobody. The job lives on the heap and whoever
 * finishes last frees it, so a coroutine cancelled during a lookup leaves at once (the call
 * fails: EAI_SYSTEM with errno ECANCELED, or h_errno NO_RECOVERY) and the worker cleans up.
 *
 * gethostbyname's answer lives, as glibc's does, in storage the next call overwrites: one
 * per thread here, so coroutines of one thread share it as the code of one thread shares
 * glibc's. If the pool cannot start, the lookup runs right here, blocking the thread. */
#include "hook.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { JOB_RUNNING, JOB_DONE, JOB_ABANDONED };

typedef struct lookup {
    _Atomic int state;
    void (*run)(struct lookup *j);
    void (*drop)(struct lookup *j); /* frees what run produced */
    /* getaddrinfo */
    char *node, *service;
    struct addrinfo hints;
    bool has_hints;
    struct addrinfo *res;
    int rc, err;
    /* gethostbyname_r */
    struct hostent he;
    char *buf;
    size_t buflen;
    bool found;
    int herr;
} lookup;

static void lookup_free(lookup *j)
{
    if (j->drop)
        j->drop(j);
    free(j->node);
    free(j->service);
    free(j->buf);
    free(j);
}

/* On the pool: run, then hand over (or clean up if the coroutine has left). */
static void *lookup_main(void *p)
{
    lookup *j = p;
    j->run(j);
    if (atomic_exchange(&j->state, JOB_DONE) == JOB_ABANDONED)
        lookup_free(j);
    return NULL;
}

/* Run j on the pool, parking. 0: j is done and ours; 1: the pool could not take it (j is
 * still ours, not run); -1 (ECANCELED): j is not ours any more. */
static int lookup_offload(lookup *j)
{
    if (weft_cancelled()) {
        lookup_free(j);
        errno = ECANCELED;
        return -1;
    }
    if (weft_offload(lookup_main, j, NULL) == 0)
        return 0;
    if (errno != ECANCELED)
        return 1; /* never started */
    if (atomic_exchange(&j->state, JOB_ABANDONED) == JOB_DONE)
        lookup_free(j);
    errno = ECANCELED;
    return -1;
}

/* ---- getaddrinfo ---- */

static bool numeric_host(const char *node, const struct addrinfo *hints)
{
    unsigned char a[sizeof(struct in6_addr)];
    return !node || (hints && (hints->ai_flags & AI_NUMERICHOST)) ||
           inet_pton(AF_INET, node, a) == 1 || inet_pton(AF_INET6, node, a) == 1;
}

static void gai_run(lookup *j)
{
    j->rc = REAL(getaddrinfo)(j->node, j->service, j->has_hints ? &j->hints : NULL, &j->res);
    j->err = errno;
}

static void gai_drop(lookup *j)
{
    if (j->rc == 0 && j->res)
        freeaddrinfo(j->res);
    j->res = NULL;
}

HOOK_API int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                         struct addrinfo **res)
{
    if (!hook_in_coroutine() || numeric_host(node, hints))
        return REAL(getaddrinfo)(node, service, hints, res);
    lookup *j = calloc(1, sizeof *j);
    if (!j || (node && !(j->node = strdup(node))) || (service && !(j->service = strdup(service)))) {
        if (j)
            lookup_free(j);
        return EAI_MEMORY;
    }
    if (hints) {
        /* Only the fields getaddrinfo reads from hints; the pointers must be NULL there. */
        j->hints = (struct addrinfo){.ai_flags = hints->ai_flags, .ai_family = hints->ai_family,
                                     .ai_socktype = hints->ai_socktype,
                                     .ai_protocol = hints->ai_protocol};
        j->has_hints = true;
    }
    j->run = gai_run;
    j->drop = gai_drop;
    int rc = lookup_offload(j);
    if (rc < 0)
        return EAI_SYSTEM; /* errno ECANCELED */
    if (rc > 0) {
        lookup_free(j);
        return REAL(getaddrinfo)(node, service, hints, res);
    }
    rc = j->rc;
    *res = j->res;
    errno = j->err;
    j->res = NULL;
    j->rc = -1;
    lookup_free(j);
    if (rc == EAI_SYSTEM)
        errno = errno ? errno : EIO;
    return rc;
}

/* ---- gethostbyname, gethostbyname_r ---- */

static void ghbn_run(lookup *j)
{
    struct hostent *found = NULL;
    int rc;
    while ((rc = REAL(gethostbyname_r)(j->node, &j->he, j->buf, j->buflen, &found,
                                        &j->herr)) == ERANGE) {
        char *bigger = realloc(j->buf, j->buflen * 2);
        if (!bigger)
            break;
        j->buf = bigger;
        j->buflen *= 2;
    }
    j->found = rc == 0 && found;
    j->err = rc;
}

/* Copy a hostent into buf (hostent's strings and arrays all live there). ERANGE if short. */
static int hostent_copy(struct hostent *dst, char *buf, size_t len, const struct hostent *src)
{
    size_t naliases = 0, naddrs = 0;
    while (src->h_aliases && src->h_aliases[naliases])
        naliases++;
    while (src->h_addr_list && src->h_addr_list[naddrs])
        naddrs++;
    size_t need = (naliases + 1 + naddrs + 1) * sizeof(char *) + naddrs * (size_t)src->h_length +
                  strlen(src->h_name) + 1;
    for (size_t i = 0; i < naliases; i++)
        need += strlen(src->h_aliases[i]) + 1;
    if (need + sizeof(char *) > len)
        return ERANGE;
    char *p = buf + (-(uintptr_t)buf & (sizeof(char *) - 1)); /* pointer-aligned */
    char **aliases = (char **)(void *)p;
    char **addrs = aliases + naliases + 1;
    p = (char *)(addrs + naddrs + 1);
    for (size_t i = 0; i < naddrs; i++) {
        memcpy(p, src->h_addr_list[i], (size_t)src->h_length);
        addrs[i] = p;
        p += src->h_length;
    }
    addrs[naddrs] = NULL;
    for (size_t i = 0; i < naliases; i++) {
        aliases[i] = strcpy(p, src->h_aliases[i]);
        p += strlen(p) + 1;
    }
    aliases[naliases] = NULL;
    *dst = (struct hostent){.h_name = strcpy(p, src->h_name), .h_aliases = aliases,
                            .h_addrtype = src->h_addrtype, .h_length = src->h_length,
                            .h_addr_list = addrs};
    return 0;
}

/* Look name up on the pool: 0 and j done (j->found, j->herr), -1 (ECANCELED), 1 (no pool). */
static int ghbn_offload(const char *name, lookup **out)
{
    lookup *j = calloc(1, sizeof *j);
    if (!j || !(j->node = strdup(name)) || !(j->buf = malloc(j->buflen = 8192))) {
        if (j)
            lookup_free(j);
        errno = ENOMEM;
        return 1;
    }
    j->run = ghbn_run;
    int rc = lookup_offload(j);
    if (rc > 0)
        lookup_free(j);
    *out = rc == 0 ? j : NULL;
    return rc;
}

HOOK_API int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t buflen,
                             struct hostent **result, int *h_errnop)
{
    if (!hook_in_coroutine() || numeric_host(name, NULL))
        return REAL(gethostbyname_r)(name, ret, buf, buflen, result, h_errnop);
    lookup *j;
    int rc = ghbn_offload(name, &j);
    if (rc > 0)
        return REAL(gethostbyname_r)(name, ret, buf, buflen, result, h_errnop);
    *result = NULL;
    if (rc < 0) {
        *h_errnop = NO_RECOVERY;
        return ECANCELED;
    }
    *h_errnop = j->herr;
    rc = j->err;
    if (j->found) {
        rc = hostent_copy(ret, buf, buflen, &j->he);
        if (rc == 0)
            *result = ret;
        else
            *h_errnop = NETDB_INTERNAL;
    }
    lookup_free(j);
    return rc;
}

/* gethostbyname's storage, per thread, and the lookup that fills it. */
static HOOK_TLS lookup *last;
static pthread_key_t last_key;
static pthread_once_t last_once = PTHREAD_ONCE_INIT;

static void last_free(void *p)
{
    lookup_free(p);
    last = NULL;
}

static void last_init(void)
{
    pthread_key_create(&last_key, last_free);
}

HOOK_API struct hostent *gethostbyname(const char *name)
{
    if (!hook_in_coroutine() || numeric_host(name, NULL))
        return REAL(gethostbyname)(name);
    lookup *j;
    int rc = ghbn_offload(name, &j);
    if (rc > 0)
        return REAL(gethostbyname)(name);
    if (rc < 0) {
        h_errno = NO_RECOVERY;
        return NULL;
    }
    h_errno = j->herr;
    if (!j->found) {
        lookup_free(j);
        return NULL;
    }
    pthread_once(&last_once, last_init);
    if (last)
        lookup_free(last);
    last = j; /* its hostent points into its own buffer: valid until the next call here */
    pthread_setspecific(last_key, j);
    return &j->he;
}
