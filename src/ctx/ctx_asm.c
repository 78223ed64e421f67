/* Building a first frame for the hand-written switches (ctx_x86_64.S, ctx_aarch64.S,
 * ctx_riscv64.S):
 * the new stack is laid out exactly as ctx_switch leaves a suspended one, so the first
 * switch "returns" into ctx_trampoline, which calls fn(arg). */
#include "../internal.h"

#include <stdint.h>
#include <string.h>

void ctx_trampoline(void);

#if defined(__x86_64__)

/* Frame, from the saved sp upward: mxcsr+fpucw (8 bytes), r15 r14 r13 r12 rbx rbp, return
 * address. The ABI's start-of-process values for MXCSR (all exceptions masked, round to
 * nearest) and the x87 control word (extended precision, exceptions masked). */
void ctx_make(ctx *c, void *stack_lo, size_t size, void (*fn)(void *), void *arg)
{
    uintptr_t top = ((uintptr_t)stack_lo + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)top;

    /* After ret pops the return address, rsp == top (16-aligned) at ctx_trampoline, so its
     * call gives fn the ABI's (rsp + 8) % 16 == 0 at entry. */
    *--sp = (uint64_t)(uintptr_t)ctx_trampoline;
    *--sp = 0;                          /* rbp */
    *--sp = 0;                          /* rbx */
    *--sp = (uint64_t)(uintptr_t)fn;    /* r12 */
    *--sp = (uint64_t)(uintptr_t)arg;   /* r13 */
    *--sp = 0;                          /* r14 */
    *--sp = 0;                          /* r15 */
    *--sp = 0x037F00001F80ull;          /* mxcsr (low half), x87 control word at +4 */
    c->sp = sp;
}

#elif defined(__aarch64__)

/* Frame (176 bytes from the saved sp): x19..x28, x29, x30, d8..d15, fpcr, padding. */
void ctx_make(ctx *c, void *stack_lo, size_t size, void (*fn)(void *), void *arg)
{
    uintptr_t top = ((uintptr_t)stack_lo + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 176);

    memset(sp, 0, 176);
    sp[0] = (uint64_t)(uintptr_t)fn;             /* x19 */
    sp[1] = (uint64_t)(uintptr_t)arg;            /* x20 */
    sp[11] = (uint64_t)(uintptr_t)ctx_trampoline; /* x30: where ret goes */
    sp[20] = 0;                                   /* fpcr: round to nearest, no traps */
    c->sp = sp;
}

#elif defined(__riscv) && __riscv_xlen == 64

/* Frame (208 bytes from the saved sp): ra, s0..s11, fs0..fs11, fcsr. After the first
 * switch pops it, sp == top (16-aligned) at ctx_trampoline, and s0 (frame pointer) is 0. */
void ctx_make(ctx *c, void *stack_lo, size_t size, void (*fn)(void *), void *arg)
{
    uintptr_t top = ((uintptr_t)stack_lo + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 208);

    memset(sp, 0, 208);
    sp[0] = (uint64_t)(uintptr_t)ctx_trampoline; /* ra: where ret goes */
    sp[2] = (uint64_t)(uintptr_t)fn;             /* s1 */
    sp[3] = (uint64_t)(uintptr_t)arg;            /* s2 */
    sp[25] = 0;                                   /* fcsr: round to nearest, no flags */
    c->sp = sp;
}

#else
#error "no hand-written context switch for this CPU: build with CTX=ucontext"
#endif
