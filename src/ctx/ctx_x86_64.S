/* Context switch for x86-64, System V ABI.
 * A suspended context is its stack pointer; below it sit the callee-saved registers
 * (rbx, rbp, r12-r15), the SSE control/status word (MXCSR) and the x87 control word, which
 * the ABI also makes callee-saved. Everything else is caller-saved, so the C compiler has
 * already spilled it around the call to ctx_switch. */

    .text

/* void ctx_switch(ctx *from, ctx *to)   rdi = from, rsi = to */
    .globl  ctx_switch
    .hidden ctx_switch
    .type   ctx_switch, @function
    .p2align 4
ctx_switch:
    .cfi_startproc
    pushq   %rbp
    pushq   %rbx
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    subq    $8, %rsp
    stmxcsr (%rsp)
    fnstcw  4(%rsp)
    movl    (%rsp), %eax
    movzwl  4(%rsp), %edx
    movq    %rsp, (%rdi)

    movq    (%rsi), %rsp
    /* Loading the control words costs more than comparing them, and they almost never
     * differ between contexts. */
    cmpl    (%rsp), %eax
    jne     2f
    cmpw    4(%rsp), %dx
    jne     2f
1:  addq    $8, %rsp
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbx
    popq    %rbp
    /* ret, although the return predictor misses here: "popq %rcx; jmpq *%rcx" made a bare
     * ping-pong of two contexts 3x faster (3.3 against 10.9 ns) but weft_yield, which goes
     * through the scheduler loop, 40% slower (measured 2026-11-23). */
    ret
2:  ldmxcsr (%rsp)
    fldcw   4(%rsp)
    jmp     1b
    .cfi_endproc
    .size   ctx_switch, .-ctx_switch

/* First code run on a new stack: ctx_make left fn in r12 and arg in r13, and an aligned
 * stack, so this is a plain call. fn never returns; ud2 traps if it does. */
    .globl  ctx_trampoline
    .hidden ctx_trampoline
    .type   ctx_trampoline, @function
    .p2align 4
ctx_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq    %r13, %rdi
    callq   *%r12
    ud2
    .cfi_endproc
    .size   ctx_trampoline, .-ctx_trampoline

    .section .note.GNU-stack,"",@progbits
