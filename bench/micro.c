/* micro: weft's per-operation costs against what C gives without it (bench/README.md).
 * Public API only, except the switch primitive (src/ctx, through src/internal.h).
 *
 *   switch      the context switch primitive: two contexts switching to each other with
 *               ctx_switch (ns per switch) from one call site, as weft's coroutines do, and
 *               from two (the worst case for the return predictor); two ucontexts doing the
 *               same with swapcontext; two coroutines calling weft_yield in turn (ns per
 *               yield: each loop turn runs both, the first handing straight to the second,
 *               which switches back to the loop); and a plain (not inlined) function call
 *   spawn+join  weft_spawn + weft_join of a coroutine that returns at once, from a coroutine,
 *               against pthread_create + pthread_join
 *   many        spawn up to 1,000,000 parked coroutines (16 KiB stacks via weft_spawn_ex, each
 *               blocked in weft_queue_recv): how many succeeded, why it stopped (errno), memory
 *               per coroutine (RSS growth) and the spawn rate. It stops early, and says so,
 *               when the RSS growth would pass half of MemAvailable.
 *
 * Each timing is repeated (5 times, 1 with -q) and the median shown. Exit 0 unless something
 * misbehaves (a coroutine that does not run, a join that fails); a ratio is never a failure.
 * Usage: micro [-q] [-n MAX_COROUTINES]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include "../src/internal.h" /* ctx_make, ctx_switch: the switch primitive */

#include "weft.h"

static int quick;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_of(double (*fn)(void), int reps)
{
    double v[9];
    if (reps > 9)
        reps = 9;
    for (int i = 0; i < reps; i++)
        v[i] = fn();
    qsort(v, (size_t)reps, sizeof v[0], cmpd);
    return v[reps / 2];
}

static void fail(const char *what)
{
    fprintf(stderr, "micro: FAIL: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* ---- context switch ---- */

static long yield_iters;

static void *yielder(void *arg)
{
    long *count = arg;
    for (long i = 0; i < yield_iters; i++) {
        weft_yield();
        (*count)++;
    }
    return NULL;
}

static double bench_weft_switch(void)
{
    long a = 0, b = 0;
    yield_iters = quick ? 200000 : 2000000;
    weft_co *x = weft_spawn(yielder, &a), *y = weft_spawn(yielder, &b);
    if (!x || !y)
        fail("weft_spawn");
    double t0 = now_s();
    if (weft_join(x, NULL, -1) != 0 || weft_join(y, NULL, -1) != 0)
        fail("weft_join");
    double t = now_s() - t0;
    if (a != yield_iters || b != yield_iters) {
        errno = 0;
        fail("yield count");
    }
    return t * 1e9 / (double)(2 * yield_iters); /* ns per yield: one coroutine to the other */
}

/* Every switch between weft's coroutines is made from one call site (switch_out), so the
 * return that ends it goes where the CPU's return predictor expects. The primitive is timed
 * that way: both contexts switch from raw_pingpong. It is also timed from two call sites,
 * each context its own, where every return is mispredicted: the worst case. swapcontext is
 * timed from one call site, like the primitive it is compared with. */
static ctx raw_main, raw_a, raw_b;
static long raw_iters;

__attribute__((noinline)) static void raw_pingpong(ctx *self, ctx *other, long n)
{
    for (long i = 0; i < n; i++)
        ctx_switch(self, other);
}

static void raw_fn_a(void *arg)
{
    (void)arg;
    raw_pingpong(&raw_a, &raw_b, raw_iters);
    ctx_switch(&raw_a, &raw_main);
}

static void raw_fn_b(void *arg)
{
    (void)arg;
    for (;;)
        raw_pingpong(&raw_b, &raw_a, raw_iters);
}

static void raw2_fn_a(void *arg)
{
    (void)arg;
    for (long i = 0; i < raw_iters; i++)
        ctx_switch(&raw_a, &raw_b);
    ctx_switch(&raw_a, &raw_main);
}

static void raw2_fn_b(void *arg)
{
    (void)arg;
    for (;;)
        ctx_switch(&raw_b, &raw_a);
}

static double time_raw(void (*fa)(void *), void (*fb)(void *))
{
    static char sa[64 * 1024], sb[64 * 1024];
    raw_iters = quick ? 2000000 : 20000000;
    ctx_make(&raw_a, sa, sizeof sa, fa, NULL);
    ctx_make(&raw_b, sb, sizeof sb, fb, NULL);
    double t0 = now_s();
    ctx_switch(&raw_main, &raw_a);
    double t = now_s() - t0;
    return t * 1e9 / (double)(2 * raw_iters); /* ns per switch */
}

static double bench_raw_switch(void) { return time_raw(raw_fn_a, raw_fn_b); }
static double bench_raw_switch2(void) { return time_raw(raw2_fn_a, raw2_fn_b); }

static ucontext_t uc_main, uc_a, uc_b;
static long uc_iters;

__attribute__((noinline)) static void uc_pingpong(ucontext_t *self, ucontext_t *other, long n)
{
    for (long i = 0; i < n; i++)
        swapcontext(self, other);
}

static void uc_fn_a(void)
{
    uc_pingpong(&uc_a, &uc_b, uc_iters);
}

static void uc_fn_b(void)
{
    for (;;)
        uc_pingpong(&uc_b, &uc_a, uc_iters);
}

static double bench_swapcontext(void)
{
    static char sa[64 * 1024], sb[64 * 1024];
    uc_iters = quick ? 100000 : 1000000;
    getcontext(&uc_a);
    uc_a.uc_stack.ss_sp = sa;
    uc_a.uc_stack.ss_size = sizeof sa;
    uc_a.uc_link = &uc_main;
    makecontext(&uc_a, uc_fn_a, 0);
    getcontext(&uc_b);
    uc_b.uc_stack.ss_sp = sb;
    uc_b.uc_stack.ss_size = sizeof sb;
    uc_b.uc_link = &uc_main;
    makecontext(&uc_b, uc_fn_b, 0);
    double t0 = now_s();
    swapcontext(&uc_main, &uc_a);
    double t = now_s() - t0;
    return t * 1e9 / (double)(2 * uc_iters); /* ns per swapcontext */
}

__attribute__((noinline)) static long plain_fn(long x)
{
    __asm__ volatile("" : "+r"(x));
    return x + 1;
}
static long (*volatile plain_ptr)(long) = plain_fn;

static double bench_call(void)
{
    long n = quick ? 10000000 : 100000000, x = 0;
    double t0 = now_s();
    for (long i = 0; i < n; i++)
        x = plain_ptr(x);
    double t = now_s() - t0;
    if (x != n) {
        errno = 0;
        fail("call count");
    }
    return t * 1e9 / (double)n;
}

/* ---- spawn + join ---- */

static void *nothing(void *arg) { return arg; }

static long sj_iters;

static void *spawner(void *arg)
{
    double *out = arg;
    double t0 = now_s();
    for (long i = 0; i < sj_iters; i++) {
        void *r = NULL;
        weft_co *c = weft_spawn(nothing, (void *)1);
        if (!c || weft_join(c, &r, -1) != 0 || r != (void *)1)
            fail("spawn+join");
    }
    *out = (now_s() - t0) * 1e9 / (double)sj_iters;
    return NULL;
}

static double bench_weft_spawn(void)
{
    double ns = 0;
    sj_iters = quick ? 100000 : 1000000;
    weft_co *c = weft_spawn(spawner, &ns);
    if (!c || weft_join(c, NULL, -1) != 0)
        fail("spawner");
    return ns;
}

static double bench_pthread_spawn(void)
{
    long n = quick ? 5000 : 30000;
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        pthread_t t;
        void *r = NULL;
        if (pthread_create(&t, NULL, nothing, (void *)1) != 0 || pthread_join(t, &r) != 0 ||
            r != (void *)1)
            fail("pthread_create+join");
    }
    return (now_s() - t0) * 1e9 / (double)n;
}

/* ---- how many coroutines ---- */

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

static long meminfo_kib(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long kib = 0;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && sscanf(line + kl, ": %ld", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

static long count_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    long n = 0;
    int ch;
    while (f && (ch = getc(f)) != EOF)
        n += ch == '\n';
    if (f)
        fclose(f);
    return n;
}

static long parked;

static void *parker(void *arg)
{
    weft_queue *q = arg;
    void *item;
    parked++;
    weft_queue_recv(q, &item, -1); /* returns EPIPE when q is closed */
    parked--;
    return NULL;
}

/* Returns the errno that stopped it short (0 if none). */
static int bench_many(long target)
{
    weft_queue *q = weft_queue_new(1);
    if (!q)
        fail("weft_queue_new");
    long budget_kib = meminfo_kib("MemAvailable") / 2;
    long rss0 = rss_kib(), maps0 = count_maps();
    weft_spawn_opts o = {.name = "p", .stack_size = 16 * 1024, .detached = 1};
    long n = 0;
    int err = 0;
    const char *why = "reached the target";
    double t0 = now_s();
    while (n < target) {
        long batch = target - n < 10000 ? target - n : 10000;
        for (long i = 0; i < batch; i++) {
            if (!weft_spawn_ex(parker, q, &o)) {
                err = errno;
                why = "weft_spawn_ex failed";
                break;
            }
            n++;
        }
        weft_yield(); /* outside a coroutine: one scheduler turn, so the new ones run and park */
        if (err)
            break;
        if (rss_kib() - rss0 > budget_kib) {
            why = "stopped at the memory budget (half of MemAvailable)";
            break;
        }
    }
    double t = now_s() - t0;
    for (int i = 0; i < 10 && parked < n; i++)
        weft_yield();
    long rss1 = rss_kib(), maps1 = count_maps();
    printf("coroutines parked      %10ld of %ld (%s%s%s)\n", parked, target, why,
           err ? ": " : "", err ? strerror(err) : "");
    printf("  spawn rate           %10.0f /s   (spawn + first run + park)\n", (double)n / t);
    printf("  memory per coroutine %10.0f bytes RSS  (16 KiB stacks; %ld kernel mappings, "
           "vm.max_map_count limits them)\n",
           n ? (double)(rss1 - rss0) * 1024.0 / (double)n : 0.0, maps1 - maps0);
    if (parked != n) {
        errno = 0;
        fail("not every spawned coroutine ran and parked");
    }
    weft_queue_close(q); /* every parked receiver wakes with EPIPE and ends */
    double t1 = now_s();
    weft_run();
    printf("  teardown             %10.3f s\n", now_s() - t1);
    if (weft_count() != 0 || parked != 0) {
        errno = 0;
        fail("coroutines left after teardown");
    }
    weft_queue_free(q);
    return err;
}

/* The default stacks (a guard page each) stop at vm.max_map_count; show the same count with
 * WEFT_STACK_GUARD=auto, which guards stacks while mappings last and canary-checks the rest.
 * In a fresh process, since the mode is chosen when the first scheduler starts. */
static void many_again_with_auto_guards(const char *self, long target)
{
    char n[32];
    snprintf(n, sizeof n, "%ld", target);
    printf("again with WEFT_STACK_GUARD=auto (guard pages while mappings last, then canaries):\n");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("WEFT_STACK_GUARD", "auto", 1);
        execl(self, self, "-M", "-n", n, (char *)NULL);
        _exit(127);
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        errno = 0;
        fail("the WEFT_STACK_GUARD=auto run");
    }
}

int main(int argc, char **argv)
{
    long target = 1000000;
    int opt, many_only = 0;
    while ((opt = getopt(argc, argv, "qMn:")) != -1) {
        if (opt == 'q')
            quick = 1;
        else if (opt == 'M')
            many_only = 1; /* only the coroutine count (the auto-guard run) */
        else if (opt == 'n')
            target = atol(optarg);
        else {
            fprintf(stderr, "usage: micro [-q] [-n MAX_COROUTINES]\n");
            return 2;
        }
    }
    if (many_only)
        return bench_many(target) ? 1 : 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    sched_setaffinity(0, sizeof set, &set); /* one CPU: steadier, and threads pay a real switch */
    int reps = quick ? 1 : 5;

    printf("== micro: %s, median of %d ==\n", quick ? "quick" : "full", reps);
    double raw = median_of(bench_raw_switch, reps);
    double raw2 = median_of(bench_raw_switch2, reps);
    double sw = median_of(bench_weft_switch, reps);
    double uc = median_of(bench_swapcontext, reps);
    double call = median_of(bench_call, reps);
    printf("switch: weft ctx_switch %7.2f ns   weft_yield %6.1f ns   swapcontext %6.1f ns   "
           "function call %5.2f ns\n", raw, sw, uc, call);
    printf("  swapcontext / ctx_switch %6.1fx  (target >= 50x)   swapcontext / weft_yield %.1fx"
           "   weft_yield / function call %.1fx\n", uc / raw, uc / sw, sw / call);
    printf("  ctx_switch from two call sites (every return mispredicted) %.2f ns\n", raw2);
    double ws = median_of(bench_weft_spawn, reps);
    double ps = median_of(bench_pthread_spawn, reps);
    printf("spawn+join: weft       %8.1f ns   pthread_create+join %8.1f ns\n", ws, ps);
    printf("  pthread / weft       %8.1fx  (target >= 50x)\n", ps / ws);
    if (bench_many(target) == ENOMEM && !getenv("WEFT_STACK_GUARD")) {
        /* Two mappings per guarded stack: what the default mode would need for the target. */
        long have = 0;
        FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
        if (f) {
            if (fscanf(f, "%ld", &have) != 1)
                have = 0;
            fclose(f);
        }
        printf("  with a guard page each, %ld coroutines need vm.max_map_count >= %ld "
               "(it is %ld here)\n", target, 2 * target + count_maps() + 1000, have);
        many_again_with_auto_guards("/proc/self/exe", quick && target > 200000 ? 200000 : target);
    }
    return 0;
}
