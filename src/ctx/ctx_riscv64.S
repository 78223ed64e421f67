/* Context switch for riscv64, LP64D psABI (RV64 with the D extension).
 * A suspended context is its stack pointer; the 208-byte frame above it holds the return
 * address ra (where to resume), the callee-saved s0-s11 and fs0-fs11, and fcsr (rounding mode
 * and accrued exception flags, which the ABI gives thread storage duration: each coroutine
 * keeps its own). Everything else is caller-saved, so the C compiler has already spilled it
 * around the call to ctx_switch. ctx_make (ctx_asm.c) builds the same frame. */

#if __riscv_xlen != 64 || !defined(__riscv_flen) || __riscv_flen != 64
#error "ctx_riscv64.S needs RV64 with the D extension (lp64d): build with CTX=ucontext"
#endif

/* Frame offsets from the saved sp. */
#define F_RA     0
#define F_S(n)   (8 + 8 * (n))      /* s0..s11:  8..96 */
#define F_FS(n)  (104 + 8 * (n))    /* fs0..fs11: 104..192 */
#define F_FCSR   200
#define F_SIZE   208                /* a multiple of 16: the ABI's stack alignment */

    .text

/* void ctx_switch(ctx *from, ctx *to)   a0 = from, a1 = to */
    .globl  ctx_switch
    .hidden ctx_switch
    .type   ctx_switch, @function
    .p2align 2
ctx_switch:
    .cfi_startproc
    addi    sp, sp, -F_SIZE
    .cfi_def_cfa_offset F_SIZE
    sd      ra, F_RA(sp)
    .cfi_offset ra, F_RA - F_SIZE
    sd      s0, F_S(0)(sp)
    sd      s1, F_S(1)(sp)
    sd      s2, F_S(2)(sp)
    sd      s3, F_S(3)(sp)
    sd      s4, F_S(4)(sp)
    sd      s5, F_S(5)(sp)
    sd      s6, F_S(6)(sp)
    sd      s7, F_S(7)(sp)
    sd      s8, F_S(8)(sp)
    sd      s9, F_S(9)(sp)
    sd      s10, F_S(10)(sp)
    sd      s11, F_S(11)(sp)
    fsd     fs0, F_FS(0)(sp)
    fsd     fs1, F_FS(1)(sp)
    fsd     fs2, F_FS(2)(sp)
    fsd     fs3, F_FS(3)(sp)
    fsd     fs4, F_FS(4)(sp)
    fsd     fs5, F_FS(5)(sp)
    fsd     fs6, F_FS(6)(sp)
    fsd     fs7, F_FS(7)(sp)
    fsd     fs8, F_FS(8)(sp)
    fsd     fs9, F_FS(9)(sp)
    fsd     fs10, F_FS(10)(sp)
    fsd     fs11, F_FS(11)(sp)
    frcsr   t0
    sd      t0, F_FCSR(sp)
    sd      sp, 0(a0)

    ld      sp, 0(a1)
    ld      ra, F_RA(sp)
    ld      s0, F_S(0)(sp)
    ld      s1, F_S(1)(sp)
    ld      s2, F_S(2)(sp)
    ld      s3, F_S(3)(sp)
    ld      s4, F_S(4)(sp)
    ld      s5, F_S(5)(sp)
    ld      s6, F_S(6)(sp)
    ld      s7, F_S(7)(sp)
    ld      s8, F_S(8)(sp)
    ld      s9, F_S(9)(sp)
    ld      s10, F_S(10)(sp)
    ld      s11, F_S(11)(sp)
    fld     fs0, F_FS(0)(sp)
    fld     fs1, F_FS(1)(sp)
    fld     fs2, F_FS(2)(sp)
    fld     fs3, F_FS(3)(sp)
    fld     fs4, F_FS(4)(sp)
    fld     fs5, F_FS(5)(sp)
    fld     fs6, F_FS(6)(sp)
    fld     fs7, F_FS(7)(sp)
    fld     fs8, F_FS(8)(sp)
    fld     fs9, F_FS(9)(sp)
    fld     fs10, F_FS(10)(sp)
    fld     fs11, F_FS(11)(sp)
    /* A CSR write drains the pipeline on many cores, and the two sides almost always hold the
     * same fcsr (t0 still has the leaving side's), so it is written only when it differs, as
     * x86-64 does with MXCSR (not measured: there is no riscv64 hardware here). */
    ld      t1, F_FCSR(sp)
    beq     t0, t1, 1f
    fscsr   t1
1:  addi    sp, sp, F_SIZE
    .cfi_def_cfa_offset 0
    ret
    .cfi_endproc
    .size   ctx_switch, .-ctx_switch

/* First code run on a new stack: ctx_make left fn in s1, arg in s2, s0 (the frame pointer)
 * zero and sp 16-aligned, so this is a plain call. fn never returns; unimp traps if it does.
 * ra is undefined here so that debuggers end a coroutine's backtrace at this frame. */
    .globl  ctx_trampoline
    .hidden ctx_trampoline
    .type   ctx_trampoline, @function
    .p2align 2
ctx_trampoline:
    .cfi_startproc
    .cfi_undefined ra
    mv      a0, s2
    jalr    s1
    unimp
    .cfi_endproc
    .size   ctx_trampoline, .-ctx_trampoline

    .section .note.GNU-stack,"",@progbits
