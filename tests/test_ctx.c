/* The context switch: what a coroutine holds in registers and its floating-point control
 * state survive switches to coroutines that change all of them; deep recursion works. */
#include "harness.h"

#include <fenv.h>
#include <string.h>
#include <weft.h>

/* Keeps many values live across weft_yield(), so the compiler holds them in callee-saved
 * registers (integer and floating-point: d8-d15 on aarch64, fs0-fs11 on riscv64), which
 * only the switch can preserve. */
static void *keeper(void *arg)
{
    long seed = (long)(intptr_t)arg;
    long a = seed * 3, b = seed * 5, c = seed * 7, d = seed * 11, e = seed * 13, f = seed * 17;
    double x = (double)seed * 0.5, y = (double)seed * 0.25, z = (double)seed * 0.125;
    for (int i = 0; i < 1000; i++) {
        CHECK(weft_yield() == 0);
        a += 1; b += 2; c += 3; d += 4; e += 5; f += 6;
        x += 1.0; y += 2.0; z += 3.0;
    }
    CHECK(a == seed * 3 + 1000 && b == seed * 5 + 2000 && c == seed * 7 + 3000);
    CHECK(d == seed * 11 + 4000 && e == seed * 13 + 5000 && f == seed * 17 + 6000);
    CHECK(x == (double)seed * 0.5 + 1000.0 && y == (double)seed * 0.25 + 2000.0);
    CHECK(z == (double)seed * 0.125 + 3000.0);
    return (void *)(intptr_t)(a + b);
}

/* Overwrites every callee-saved register with garbage right before each switch. */
static void *clobberer(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++) {
#if defined(__x86_64__)
        __asm__ volatile("mov $0x5a5a5a5a, %%rbx\n\tmov %%rbx, %%r12\n\tmov %%rbx, %%r13\n\t"
                         "mov %%rbx, %%r14\n\tmov %%rbx, %%r15"
                         ::: "rbx", "r12", "r13", "r14", "r15");
#elif defined(__aarch64__)
        __asm__ volatile("mov x19, #0x5a5a\n\tmov x20, x19\n\tmov x21, x19\n\tmov x22, x19\n\t"
                         "mov x23, x19\n\tmov x24, x19\n\tmov x25, x19\n\tmov x26, x19\n\t"
                         "mov x27, x19\n\tmov x28, x19\n\tfmov d8, x19\n\tfmov d9, x19\n\t"
                         "fmov d10, x19\n\tfmov d11, x19\n\tfmov d12, x19\n\tfmov d13, x19\n\t"
                         "fmov d14, x19\n\tfmov d15, x19"
                         ::: "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27",
                             "x28", "d8", "d9", "d10", "d11", "d12", "d13", "d14", "d15");
#elif defined(__riscv) && __riscv_xlen == 64
        /* s0 is left alone: it is the frame pointer in builds that keep one. */
        __asm__ volatile("li s1, 0x5a5a5a5a\n\tmv s2, s1\n\tmv s3, s1\n\tmv s4, s1\n\t"
                         "mv s5, s1\n\tmv s6, s1\n\tmv s7, s1\n\tmv s8, s1\n\tmv s9, s1\n\t"
                         "mv s10, s1\n\tmv s11, s1\n\tfmv.d.x fs0, s1\n\tfmv.d.x fs1, s1\n\t"
                         "fmv.d.x fs2, s1\n\tfmv.d.x fs3, s1\n\tfmv.d.x fs4, s1\n\t"
                         "fmv.d.x fs5, s1\n\tfmv.d.x fs6, s1\n\tfmv.d.x fs7, s1\n\t"
                         "fmv.d.x fs8, s1\n\tfmv.d.x fs9, s1\n\tfmv.d.x fs10, s1\n\t"
                         "fmv.d.x fs11, s1"
                         ::: "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
                             "fs0", "fs1", "fs2", "fs3", "fs4", "fs5", "fs6", "fs7", "fs8",
                             "fs9", "fs10", "fs11");
#endif
        weft_yield();
    }
    return NULL;
}

static void registers_survive_switches(void)
{
    weft_co *k1 = weft_spawn(keeper, (void *)(intptr_t)7);
    weft_co *cl = weft_spawn(clobberer, NULL);
    weft_co *k2 = weft_spawn(keeper, (void *)(intptr_t)100003);
    void *r1, *r2;
    CHECK(k1 && cl && k2);
    CHECK(weft_join(k1, &r1, -1) == 0);
    CHECK(weft_join(cl, NULL, -1) == 0);
    CHECK(weft_join(k2, &r2, -1) == 0);
    CHECK((long)(intptr_t)r1 == 7 * 3 + 1000 + 7 * 5 + 2000);
    CHECK((long)(intptr_t)r2 == 100003L * 3 + 1000 + 100003L * 5 + 2000);
}

/* 1/3 rounds differently upward and downward: a cheap probe of the live rounding mode in
 * the SSE (x86-64), FPCR (aarch64) or fcsr (riscv64) state. */
static double third(void)
{
    volatile double one = 1.0, three = 3.0;
    return one / three;
}

static void *rounding_keeper(void *arg)
{
    int mode = (int)(intptr_t)arg;
    CHECK(fesetround(mode) == 0);
    double expect = third();
    for (int i = 0; i < 100; i++) {
        CHECK(weft_yield() == 0);
        CHECK(fegetround() == mode);
        CHECK(third() == expect);
    }
    return NULL;
}

static void fpu_control_state_is_per_coroutine(void)
{
    weft_co *up = weft_spawn(rounding_keeper, (void *)(intptr_t)FE_UPWARD);
    weft_co *down = weft_spawn(rounding_keeper, (void *)(intptr_t)FE_DOWNWARD);
    weft_co *zero = weft_spawn(rounding_keeper, (void *)(intptr_t)FE_TOWARDZERO);
    CHECK(up && down && zero);
    CHECK(weft_join(up, NULL, -1) == 0);
    CHECK(weft_join(down, NULL, -1) == 0);
    CHECK(weft_join(zero, NULL, -1) == 0);
    CHECK(fegetround() == FE_TONEAREST); /* the thread's own mode was never touched */
}

static long recurse(int depth, volatile char *prev)
{
    volatile char frame[64];
    memset((char *)frame, depth & 0xff, sizeof frame);
    if (depth == 0)
        return prev ? prev[0] : 0;
    long r = recurse(depth - 1, frame);
    CHECK(frame[63] == (char)(depth & 0xff)); /* our frame was not overwritten */
    return r + 1;
}

static void *deep(void *arg)
{
    int depth = (int)(intptr_t)arg;
    return (void *)(intptr_t)recurse(depth, NULL);
}

static void deep_recursion_in_a_coroutine(void)
{
    /* 2,000 frames of ~100+ bytes in a 1 MiB stack, alongside a default-size sibling. */
    weft_spawn_opts o = {.name = "deep", .stack_size = 1024 * 1024};
    weft_co *a = weft_spawn_ex(deep, (void *)(intptr_t)2000, &o);
    weft_co *b = weft_spawn(deep, (void *)(intptr_t)200);
    void *ra, *rb;
    CHECK(a && b);
    CHECK(weft_join(a, &ra, -1) == 0 && weft_join(b, &rb, -1) == 0);
    CHECK((intptr_t)ra == 2000 + 1 && (intptr_t)rb == 200 + 1);
}

const struct test tests[] = {
    {"registers_survive_switches", registers_survive_switches, 0},
    {"fpu_control_state_is_per_coroutine", fpu_control_state_is_per_coroutine, 0},
    {"deep_recursion_in_a_coroutine", deep_recursion_in_a_coroutine, 0},
};
const size_t tests_count = sizeof tests / sizeof tests[0];
