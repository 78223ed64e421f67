/* Portable context switch over ucontext (makecontext/swapcontext): slower (swapcontext
 * saves the signal mask with a syscall) but runs on any CPU glibc supports. Built instead of
 * the assembly when WEFT_CTX_UCONTEXT is defined (make CTX=ucontext). */
#include "../internal.h"

#include <stdint.h>
#include <stdlib.h>

/* makecontext passes only int arguments, so pointers travel as two 32-bit halves. */
static void ucontext_entry(unsigned fn_hi, unsigned fn_lo, unsigned arg_hi, unsigned arg_lo)
{
    uintptr_t f = ((uintptr_t)fn_hi << 16 << 16) | fn_lo;
    uintptr_t a = ((uintptr_t)arg_hi << 16 << 16) | arg_lo;
    void (*fn)(void *) = (void (*)(void *))f;

    fn((void *)a);
    abort(); /* fn must switch away for good instead of returning */
}

void ctx_make(ctx *c, void *stack_lo, size_t size, void (*fn)(void *), void *arg)
{
    uintptr_t f = (uintptr_t)fn, a = (uintptr_t)arg;

    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack_lo;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = NULL;
    makecontext(&c->uc, (void (*)(void))ucontext_entry, 4,
                (unsigned)(f >> 16 >> 16), (unsigned)f, (unsigned)(a >> 16 >> 16), (unsigned)a);
}

void ctx_switch(ctx *from, ctx *to)
{
    swapcontext(&from->uc, &to->uc);
}
