/* Context switch for aarch64, AAPCS64.
 * A suspended context is its stack pointer; the frame below it holds the callee-saved
 * x19-x28, the frame pointer x29, the link register x30 (where to resume), the low halves of
 * v8-v15 (d8-d15, callee-saved by the ABI) and FPCR (rounding mode and the like). */

    .text

/* void ctx_switch(ctx *from, ctx *to)   x0 = from, x1 = to */
    .globl  ctx_switch
    .hidden ctx_switch
    .type   ctx_switch, %function
    .p2align 4
ctx_switch:
    sub     sp, sp, #176
    stp     x19, x20, [sp, #0]
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    stp     d8,  d9,  [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    mrs     x9, fpcr
    str     x9, [sp, #160]
    mov     x9, sp
    str     x9, [x0]

    ldr     x9, [x1]
    mov     sp, x9
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     d8,  d9,  [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    ldr     x9, [sp, #160]
    msr     fpcr, x9
    add     sp, sp, #176
    ret
    .size   ctx_switch, .-ctx_switch

/* First code run on a new stack: ctx_make left fn in x19 and arg in x20. fn never
 * returns; brk traps if it does. */
    .globl  ctx_trampoline
    .hidden ctx_trampoline
    .type   ctx_trampoline, %function
    .p2align 4
ctx_trampoline:
    mov     x29, #0
    mov     x0, x20
    blr     x19
    brk     #0
    .size   ctx_trampoline, .-ctx_trampoline

    .section .note.GNU-stack,"",%progbits
