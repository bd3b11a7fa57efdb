/* Assembly parts of the pexopt QEMU harness (Thumb-2, ARMv7-M). */
    .syntax unified
    .thumb

/* int pex_timed_invoke(const int8_t *input, int8_t *output)
 * The instruction-count plugin counts the instructions executed from the first execution
 * of pex_mark_begin up to the first execution of pex_mark_end.  Between them run exactly:
 * pex_mark_begin's "bx lr", "bl pex_invoke", pex_invoke itself and "bl pex_mark_end",
 * so pex_invoke executed (count - 3) instructions (PEX_MARKER_OVERHEAD in qemu.py).
 * The markers touch no register but pc, so r0/r1 reach pex_invoke unchanged. */
    .section .text.pex_timed_invoke, "ax", %progbits
    .global pex_timed_invoke
    .type pex_timed_invoke, %function
    .thumb_func
pex_timed_invoke:
    push {r4, lr}
    bl pex_mark_begin
    bl pex_invoke
    bl pex_mark_end
    pop {r4, pc}
    .size pex_timed_invoke, . - pex_timed_invoke

    .section .text.pex_mark_begin, "ax", %progbits
    .global pex_mark_begin
    .type pex_mark_begin, %function
    .thumb_func
pex_mark_begin:
    bx lr
    .size pex_mark_begin, . - pex_mark_begin

    .section .text.pex_mark_end, "ax", %progbits
    .global pex_mark_end
    .type pex_mark_end, %function
    .thumb_func
pex_mark_end:
    bx lr
    .size pex_mark_end, . - pex_mark_end

/* void pex_start_thread(uint32_t psp_top, void (*entry)(void)): continue in Thread mode on
 * the process stack (the measured, guarded stack); handlers keep the main stack. */
    .section .text.pex_start_thread, "ax", %progbits
    .global pex_start_thread
    .type pex_start_thread, %function
    .thumb_func
pex_start_thread:
    msr psp, r0
    movs r2, #2
    msr control, r2
    isb
    bx r1
    .size pex_start_thread, . - pex_start_thread

/* Every fault vector: r0 = the stacked frame (main or process stack), r1 = EXC_RETURN. */
    .section .text.pex_fault_entry, "ax", %progbits
    .global pex_fault_entry
    .type pex_fault_entry, %function
    .thumb_func
pex_fault_entry:
    tst lr, #4
    ite eq
    mrseq r0, msp
    mrsne r0, psp
    mov r1, lr
    b pex_fault_report
    .size pex_fault_entry, . - pex_fault_entry
