/* The descriptor table: what the hook knows of each descriptor number, process-wide. An entry
 * is filled when a hooked call makes the descriptor (socket, accept, pipe, dup, ...: the kind
 * and flags are known for free) or on its first hooked use in a coroutine (fstat, fcntl and
 * getsockopt, once). It is kept true by the hooked calls that change it: fcntl(F_SETFL) and
 * ioctl(FIONBIO) for O_NONBLOCK, setsockopt for the timeouts, close and dup2 for the number's
 * end. A number whose file changes where the hook cannot see it (a library's own system
 * call, glibc's internal close in fclose) keeps a stale entry until the hook finds out: a
 * "socket" that answers ENOTSOCK, a "pipe" that fstat says is no longer one, is looked at
 * again (hook_fd_reclassify). */
#include "hook.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CHUNK_BITS 10
#define CHUNK (1 << CHUNK_BITS)
#define NCHUNKS 1024 /* descriptors below 2^20; beyond, calls go to libc as they are */

static _Atomic(hook_fd *) chunks[NCHUNKS];

/* O_NONBLOCK belongs to the open file, not to the number, and a socket's options to the
 * socket: a dup (or a number sent over a socket, or one from F_DUPFD) shares them, and
 * setting one through one number sets it for all. The hook never changes them itself (it asks
 * for no waiting per call), so the kernel's are the caller's belief. The table caches them
 * per number; every change the hook sees (fcntl F_SETFL, ioctl FIONBIO, setsockopt of a
 * kept option), made after the kernel's, starts a new epoch, and an entry from an older one
 * reads them again before it is trusted: one load on the hot path, a few system calls after
 * a change anywhere. */
static _Atomic uint32_t state_epoch;

/* fd's entry; with make, its chunk is allocated if need be. NULL: out of range (or no
 * memory). */
static hook_fd *entry(int fd, bool make)
{
    if (fd < 0 || fd >= NCHUNKS * CHUNK)
        return NULL;
    _Atomic(hook_fd *) *slot = &chunks[fd >> CHUNK_BITS];
    hook_fd *chunk = atomic_load_explicit(slot, memory_order_acquire);
    if (!chunk) {
        if (!make)
            return NULL;
        hook_fd *fresh = calloc(CHUNK, sizeof *fresh);
        if (!fresh)
            return NULL;
        if (atomic_compare_exchange_strong(slot, &chunk, fresh))
            chunk = fresh;
        else
            free(fresh); /* another thread made it first: chunk is theirs */
    }
    return &chunk[fd & (CHUNK - 1)];
}

int32_t hook_timeval_ms(const struct timeval *tv)
{
    if (tv->tv_sec < 0)
        return -1; /* the kernel takes a negative timeout as zero: no waiting at all */
    if (tv->tv_sec == 0 && tv->tv_usec == 0)
        return 0;
    int64_t ms = (int64_t)tv->tv_sec * 1000 + (tv->tv_usec + 999) / 1000;
    return ms > INT32_MAX ? 0 : (int32_t)ms; /* ~25 days and more: as good as forever */
}

static int32_t sock_timeout(int fd, int name)
{
    struct timeval tv = {0, 0};
    socklen_t len = sizeof tv;
    if (getsockopt(fd, SOL_SOCKET, name, &tv, &len) != 0)
        return 0;
    return hook_timeval_ms(&tv);
}

/* The socket options the table keeps, from the kernel. */
static void read_sockopts(int fd, hook_fd *e)
{
    int lowat = 1;
    socklen_t len = sizeof lowat;
    if (getsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, &len) != 0)
        lowat = 1;
    atomic_store(&e->rcvtimeo_ms, sock_timeout(fd, SO_RCVTIMEO));
    atomic_store(&e->sndtimeo_ms, sock_timeout(fd, SO_SNDTIMEO));
    atomic_store(&e->rcvlowat, lowat);
}

/* Find out what fd is, without the hooks: fstat, F_GETFL, and for sockets their type and
 * timeouts. An fd that is not open stays unknown (the real call will say EBADF). */
static void classify(int fd, hook_fd *e)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return;
    int fl = (int)syscall(SYS_fcntl, fd, F_GETFL, 0);
    unsigned flags = fl >= 0 && (fl & O_NONBLOCK) ? HOOK_NONBLOCK : 0;
    enum hook_kind kind = HOOK_OTHER;
    if (S_ISSOCK(st.st_mode)) {
        int type = 0, domain = 0;
        socklen_t len = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0) {
            if (type == SOCK_STREAM)
                flags |= HOOK_STREAM;
            else if (type == SOCK_SEQPACKET)
                flags |= HOOK_SEQPACKET;
        }
        len = sizeof domain;
        if ((flags & HOOK_STREAM) && getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 &&
            (domain == AF_INET || domain == AF_INET6))
            flags |= HOOK_TCP;
        read_sockopts(fd, e);
        kind = HOOK_SOCKET;
    } else if (S_ISFIFO(st.st_mode)) {
        kind = HOOK_PIPE;
    }
    atomic_store(&e->epoch, atomic_load(&state_epoch));
    atomic_store(&e->flags, (uint8_t)flags);
    atomic_store(&e->kind, (uint8_t)kind);
}

/* Read O_NONBLOCK and the socket options again if a change was seen anywhere since e last
 * knew them. */
static void state_refresh(int fd, hook_fd *e)
{
    uint32_t now = atomic_load(&state_epoch);
    if (atomic_load_explicit(&e->epoch, memory_order_relaxed) == now)
        return;
    int fl = (int)syscall(SYS_fcntl, fd, F_GETFL, 0);
    if (fl >= 0) {
        if (fl & O_NONBLOCK)
            atomic_fetch_or(&e->flags, HOOK_NONBLOCK);
        else
            atomic_fetch_and(&e->flags, (uint8_t)~HOOK_NONBLOCK);
    }
    if (atomic_load_explicit(&e->kind, memory_order_relaxed) == HOOK_SOCKET)
        read_sockopts(fd, e);
    atomic_store(&e->epoch, now);
}

hook_fd *hook_fd_get(int fd)
{
    hook_fd *e = entry(fd, true);
    if (e && atomic_load_explicit(&e->kind, memory_order_relaxed) == HOOK_UNKNOWN)
        classify(fd, e);
    return e;
}

hook_fd *hook_fd_peek(int fd)
{
    return entry(fd, false);
}

hook_fd *hook_fd_managed(int fd)
{
    hook_fd *e = hook_fd_get(fd);
    if (!e)
        return NULL;
    uint8_t kind = atomic_load_explicit(&e->kind, memory_order_relaxed);
    if (kind != HOOK_SOCKET && kind != HOOK_PIPE)
        return NULL;
    state_refresh(fd, e);
    if (atomic_load_explicit(&e->flags, memory_order_relaxed) & HOOK_NONBLOCK)
        return NULL; /* the caller asked for EAGAIN: the real call gives it */
    return e;
}

void hook_fd_made(int fd, enum hook_kind kind, unsigned flags, const hook_fd *like)
{
    hook_fd *e = entry(fd, true);
    if (!e)
        return;
    atomic_fetch_add(&e->gen, 1);
    atomic_store(&e->pending_err, 0);
    atomic_store(&e->drained, 0);
    /* (like's options are as fresh as its epoch says: refreshed when like's would be) */
    atomic_store(&e->epoch, like ? atomic_load(&like->epoch) : atomic_load(&state_epoch));
    atomic_store(&e->rcvtimeo_ms, like ? atomic_load(&like->rcvtimeo_ms) : 0);
    atomic_store(&e->sndtimeo_ms, like ? atomic_load(&like->sndtimeo_ms) : 0);
    atomic_store(&e->rcvlowat, like ? atomic_load(&like->rcvlowat) : 1);
    atomic_store(&e->flags, (uint8_t)flags);
    atomic_store(&e->kind, (uint8_t)kind);
    fd_forget(fd); /* this thread's backend may have watched the number's previous file */
}

void hook_fd_gone(int fd)
{
    hook_fd *e = entry(fd, false);
    if (!e)
        return;
    atomic_fetch_add(&e->gen, 1);
    atomic_store(&e->kind, HOOK_UNKNOWN);
    atomic_store(&e->flags, 0);
    atomic_store(&e->rcvtimeo_ms, 0);
    atomic_store(&e->sndtimeo_ms, 0);
    atomic_store(&e->rcvlowat, 1);
    atomic_store(&e->pending_err, 0);
    atomic_store(&e->drained, 0);
}

void hook_fd_reclassify(int fd)
{
    hook_fd_gone(fd);
    hook_fd *e = entry(fd, false);
    if (e)
        classify(fd, e);
}

void hook_fd_set_nonblock(int fd, bool on)
{
    uint32_t now = atomic_fetch_add(&state_epoch, 1) + 1; /* (other numbers of the file) */
    hook_fd *e = entry(fd, false);
    if (!e || atomic_load(&e->kind) == HOOK_UNKNOWN)
        return; /* classify will read the flag when it is needed */
    if (on)
        atomic_fetch_or(&e->flags, HOOK_NONBLOCK);
    else
        atomic_fetch_and(&e->flags, (uint8_t)~HOOK_NONBLOCK);
    /* (Its other state is as fresh as before: the epoch is only skipped if it was current.) */
    uint32_t was = now - 1;
    atomic_compare_exchange_strong(&e->epoch, &was, now);
}

void hook_fd_sockopts_changed(int fd)
{
    uint32_t now = atomic_fetch_add(&state_epoch, 1) + 1; /* (the socket's other numbers) */
    hook_fd *e = entry(fd, false);
    if (e && atomic_load(&e->kind) == HOOK_SOCKET)
        atomic_store(&e->epoch, now - 1); /* (and this one, at its next call) */
}

/* ---- Keeping this thread's backend in step with the numbers ----
 * A thread's backend (its epoll set, its ring) registers a descriptor once and keeps it; if
 * another thread closes the number and a new file gets it, the backend would still believe it
 * registered and never report the new file. So each thread remembers the generation of each
 * number as it last waited on it, and forgets the number first when it changed. */

static HOOK_TLS uint32_t *seen;
static HOOK_TLS size_t seen_len;
static pthread_key_t seen_key;
static pthread_once_t seen_once = PTHREAD_ONCE_INIT;

static void seen_free(void *p)
{
    free(p);
    seen = NULL;
    seen_len = 0;
}

static void seen_init(void)
{
    pthread_key_create(&seen_key, seen_free);
}

void hook_sync_backend(int fd, const hook_fd *e)
{
    uint32_t gen = atomic_load_explicit(&e->gen, memory_order_relaxed);
    if ((size_t)fd < seen_len && seen[fd] == gen)
        return;
    if ((size_t)fd >= seen_len) {
        size_t n = seen_len ? seen_len : 256;
        while (n <= (size_t)fd)
            n *= 2;
        uint32_t *grown = realloc(seen, n * sizeof *grown);
        if (!grown) {
            fd_forget(fd); /* cannot remember: forget every time instead */
            return;
        }
        memset(grown + seen_len, 0, (n - seen_len) * sizeof *grown);
        pthread_once(&seen_once, seen_init);
        pthread_setspecific(seen_key, grown);
        seen = grown;
        seen_len = n;
    }
    if (seen[fd] != gen)
        fd_forget(fd);
    seen[fd] = gen;
}

/* A forked child has only the forking thread; its table copy stays valid (the child's
 * backend is new, so nothing in it can be stale). */
