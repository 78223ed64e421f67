/* Coroutine stacks: mmap'd with a PROT_NONE guard page at the low (overflow) end, kept in a
 * per-thread pool for reuse. An overflow faults on the guard page; the SIGSEGV handler, on an
 * alternate signal stack, names the coroutine and lets the process die of the signal.
 * A guard page splits its mapping in two, and the kernel allows vm.max_map_count mappings
 * (65,530 by default), so guards cap a process near 32,000 coroutines; past that, spawns fail
 * with ENOMEM (raising vm.max_map_count, two per coroutine, lifts the cap and keeps every
 * guard). WEFT_STACK_GUARD=auto opts in to more without it: past three quarters of the
 * budget, stacks come without a guard, merge into few mappings and carry a 64-byte canary
 * at their low end, checked every time their coroutine switches out, so an overflow ends the
 * process naming the coroutine before anything else runs. That check is best effort: a frame
 * whose unwritten part straddles the canary can skip it, which is why it is not the default.
 * (WEFT_STACK_GUARD=never: canaries only, for tests.) */
#include "internal.h"
#include "sys.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define HAVE_VALGRIND 1
#endif
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define HAVE_MEMCHECK 1
#endif
#endif

/* The guard gap below a stack. GCC's stack clash probes on aarch64 are 64 KiB apart (it
 * assumes a guard that large there), one page apart elsewhere. */
#if defined(__aarch64__)
#define DEFAULT_GUARD (64 * 1024)
#else
#define DEFAULT_GUARD 0 /* one page */
#endif

/* Pooled stacks are reused as they are (their touched pages stay resident), so the pool is
 * bounded to keep an idle server's memory from staying at its peak. */
#define POOL_MAX 64

#if defined(__SANITIZE_ADDRESS__)
#define STACK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STACK_ASAN 1
#endif
#endif
#ifdef STACK_ASAN
#include <sanitizer/asan_interface.h>
/* Under ASan a stack given back is poisoned, and kept out of use for the next QUARANTINE
 * gives, so that a pointer into an ended coroutine's stack (a server's channel lives in its
 * handler's room there) is reported when used, not silently aimed at the next coroutine. */
#define QUARANTINE 8
static _Thread_local stack *quarantine[QUARANTINE];
static _Thread_local unsigned quarantine_next;
#endif

static void write_str(const char *s)
{
    ssize_t r = sys_write(STDERR_FILENO, s, strlen(s));
    (void)r;
}

_Thread_local unsigned stack_fail_next;
static atomic_size_t guarded_stacks; /* mapped stacks with a guard page, all threads */
static _Thread_local stack *pool_head;
static _Thread_local size_t pool_len;

static size_t page_size(void)
{
    /* Atomic: threads may race to fill it in (with the same value), and the SIGSEGV handler
     * reads it. */
    static _Atomic size_t pg;
    size_t v = atomic_load_explicit(&pg, memory_order_relaxed);
    if (!v) {
        v = (size_t)sysconf(_SC_PAGESIZE);
        atomic_store_explicit(&pg, v, memory_order_relaxed);
    }
    return v;
}

/* The stack's own record sits at the top of its mapping, in the page its coroutine's first
 * frames touch anyway: no allocation per stack. */
#define STACK_HDR ((sizeof(stack) + 63) / 64 * 64)

static stack *pool_take(size_t size, size_t guard)
{
    for (stack **p = &pool_head; *p; p = &(*p)->next_free) {
        if ((*p)->size + STACK_HDR == size && (*p)->guard == guard) {
            stack *s = *p;
            *p = s->next_free;
            pool_len--;
            return s;
        }
    }
    return NULL;
}

#define CANARY_WORDS 8

static uint64_t canary_word(const stack *s)
{
    return 0x57454654535441ull ^ (uint64_t)(uintptr_t)s->lo; /* differs per stack */
}

static void canary_set(stack *s)
{
    uint64_t *w = s->lo, v = canary_word(s);
    for (int i = 0; i < CANARY_WORDS; i++)
        w[i] = v;
}

bool stack_canary_ok(const stack *s)
{
    const uint64_t *w = s->lo;
    uint64_t v = canary_word(s);
    for (int i = 0; i < CANARY_WORDS; i++)
        if (w[i] != v)
            return false;
    return true;
}

/* Whether the next new stack gets a guard page: "always", "never", or by default while the
 * guarded stacks leave room in the kernel's mapping budget. */
static bool want_guard(void)
{
    static _Atomic int mode = -1; /* 0 never, 1 always (the default), 2 auto */
    static atomic_size_t limit;
    int m = atomic_load(&mode);
    if (m < 0) {
        const char *env = getenv("WEFT_STACK_GUARD");
        m = env && !strcmp(env, "never") ? 0 : env && !strcmp(env, "auto") ? 2 : 1;
        size_t max = 65530;
        FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
        if (f) {
            if (fscanf(f, "%zu", &max) != 1)
                max = 65530;
            fclose(f);
        }
        /* Two mappings per guarded stack; keep a quarter of the budget for everything else. */
        atomic_store(&limit, max * 3 / 4 / 2);
        atomic_store(&mode, m);
    }
    return m == 1 || (m == 2 && atomic_load(&guarded_stacks) < atomic_load(&limit));
    /* (m == 1 past the budget: the mprotect below fails and the spawn with it, ENOMEM.) */
}

static void stack_unmap(stack *s)
{
    if (s->guarded)
        atomic_fetch_sub(&guarded_stacks, 1);
#ifdef HAVE_VALGRIND
    VALGRIND_STACK_DEREGISTER(s->valgrind_id);
#endif
#ifdef STACK_ASAN
    ASAN_UNPOISON_MEMORY_REGION(s->lo, s->size); /* (the next mapping there starts clean) */
#endif
    munmap(s->map, s->map_size); /* (s with it) */
}

/* Larger than any mapping could be, and rounding it up to pages could wrap it to nothing
 * (a stack of 0 bytes, or no guard at all). */
#define SIZE_LIMIT (SIZE_MAX / 4)

bool stack_sizes_valid(size_t size, size_t guard)
{
    return size <= SIZE_LIMIT && guard <= SIZE_LIMIT;
}

stack *stack_take(size_t size, size_t guard, size_t top_reserve)
{
    if (!stack_sizes_valid(size, guard)) {
        errno = EINVAL;
        return NULL;
    }
    size_t pg = page_size();
    size = (size + pg - 1) & ~(pg - 1);
    guard = guard ? (guard + pg - 1) & ~(pg - 1) : DEFAULT_GUARD < pg ? pg : DEFAULT_GUARD;

    if (stack_fail_next > 0) {
        stack_fail_next--;
        errno = ENOMEM;
        return NULL;
    }
    stack *s = pool_take(size, guard);
    if (s) {
#ifdef STACK_ASAN
        ASAN_UNPOISON_MEMORY_REGION(s->lo, s->size);
#endif
#ifdef HAVE_VALGRIND
        /* Its last user may have reserved another room at the top: a stack valgrind is told
         * ends lower than the coroutine's first frame hides the switches into it (it takes
         * them for moves within one stack and marks what lies between unaddressable). */
        VALGRIND_STACK_CHANGE(s->valgrind_id, s->lo, (char *)s->lo + size - top_reserve);
#endif
#ifdef HAVE_MEMCHECK
        /* Memcheck marked what lay below its last user's frames unaddressable as they
         * returned; the new room may lie there. */
        VALGRIND_MAKE_MEM_UNDEFINED(s->lo, s->size);
#endif
        if (!s->guarded)
            canary_set(s);
        return s;
    }
    bool guarded = want_guard();
    size_t map_size = size + (guarded ? guard : 0);
    void *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (map == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    /* The guard splits the mapping in two; when the kernel's map count is exhausted this
     * fails with ENOMEM, and so does the spawn. */
    if (guarded && mprotect(map, guard, PROT_NONE) != 0) {
        munmap(map, map_size);
        errno = ENOMEM;
        return NULL;
    }
    if (guarded)
        atomic_fetch_add(&guarded_stacks, 1);
    s = (stack *)((char *)map + map_size - STACK_HDR);
    s->guarded = guarded;
    s->guard = guard;
    s->map = map;
    s->map_size = map_size;
    s->lo = (char *)map + (guarded ? guard : 0);
    s->size = size - STACK_HDR;
    s->next_free = NULL;
#ifdef HAVE_VALGRIND
    s->valgrind_id = VALGRIND_STACK_REGISTER(s->lo, (char *)s->lo + size - top_reserve);
#else
    s->valgrind_id = 0;
#endif
    if (!s->guarded)
        canary_set(s);
    return s;
}

void stack_overflow_abort(const char *name)
{
    write_str("weft: stack overflow in coroutine '");
    write_str(name);
    write_str("' (its stack canary was overwritten; raise its stack_size in weft_spawn_ex)\n");
    abort();
}

void stack_give(stack *s)
{
#ifdef STACK_ASAN
    ASAN_POISON_MEMORY_REGION(s->lo, s->size);
    stack *old = quarantine[quarantine_next];
    quarantine[quarantine_next] = s;
    quarantine_next = (quarantine_next + 1) % QUARANTINE;
    if (!old)
        return;
    s = old;
#endif
    if (pool_len >= POOL_MAX) {
        stack_unmap(s);
        return;
    }
    s->next_free = pool_head;
    pool_head = s;
    pool_len++;
}

void stack_pool_drain(void)
{
#ifdef STACK_ASAN
    for (unsigned i = 0; i < QUARANTINE; i++) {
        if (quarantine[i])
            stack_unmap(quarantine[i]);
        quarantine[i] = NULL;
    }
#endif
    while (pool_head) {
        stack *s = pool_head;
        pool_head = s->next_free;
        stack_unmap(s);
    }
    pool_len = 0;
}

/* ---- Overflow reporting ---- */

/* 64 KiB: enough for the handler even with sanitizers, which run their own code there. */
#define ALTSTACK_SIZE (64 * 1024)
/* How far below the guard a fault still counts as this coroutine's overflow: code built
 * without -fstack-clash-protection can jump past the guard with a large frame. */
#define OVERFLOW_SLACK (64 * 1024)

static struct sigaction old_segv;
static _Atomic(stack_running_fn) running; /* the scheduler's: whose stack is it? */
static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static int handler_err;
static _Thread_local void *altstack;
static pthread_key_t altstack_key;


static void on_segv(int sig, siginfo_t *si, void *uctx)
{
    const char *name = "?";
    bool deep = false;
    stack_running_fn who = atomic_load(&running);
    const stack *st = who ? who(&name, &deep) : NULL;
    uintptr_t addr = (uintptr_t)si->si_addr;

    if (st) {
        uintptr_t lo = (uintptr_t)st->lo;
        if (addr < lo && addr + st->guard + OVERFLOW_SLACK >= lo) {
            write_str("weft: stack overflow in coroutine '");
            write_str(name);
            write_str(deep ? "', in a deep call (the thread's deep-call stack, DEEP_STACK_SIZE "
                             "in src/internal.h)\n"
                           : "' (raise its stack_size in weft_spawn_ex)\n");
            signal(SIGSEGV, SIG_DFL);
            return; /* the fault repeats, now with the default action: the process dies */
        }
    }
    /* Not ours: hand it to whoever had SIGSEGV before, or die as usual. */
    if (old_segv.sa_flags & SA_SIGINFO) {
        old_segv.sa_sigaction(sig, si, uctx);
    } else if (old_segv.sa_handler != SIG_DFL && old_segv.sa_handler != SIG_IGN) {
        old_segv.sa_handler(sig);
    } else {
        signal(SIGSEGV, SIG_DFL);
    }
}

static void altstack_free(void *p)
{
    stack_t ss = {.ss_flags = SS_DISABLE};
    sigaltstack(&ss, NULL);
    munmap(p, ALTSTACK_SIZE);
}

static void install_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (pthread_key_create(&altstack_key, altstack_free) != 0 ||
        sigaction(SIGSEGV, &sa, &old_segv) != 0)
        handler_err = errno ? errno : ENOMEM;
}

int stack_guard_init(stack_running_fn who)
{
    atomic_store(&running, who);
    pthread_once(&handler_once, install_handler);
    if (handler_err) {
        errno = handler_err;
        return -1;
    }
    if (altstack)
        return 0;

    /* Keep an alternate stack the thread already has (a sanitizer may have set one). */
    stack_t cur;
    if (sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE) && cur.ss_size >= ALTSTACK_SIZE) {
        altstack = cur.ss_sp;
        return 0;
    }
    void *p = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    stack_t ss = {.ss_sp = p, .ss_size = ALTSTACK_SIZE, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        munmap(p, ALTSTACK_SIZE);
        return -1;
    }
    altstack = p;
    pthread_setspecific(altstack_key, p);
    return 0;
}
