/* Bare-metal Cortex-M test harness for pexopt generated code (QEMU, semihosting).
 *
 * The harness owns reset, the vector table, the fault handler, the stacks and the
 * semihosting console.  The firmware's main.c (written by pexopt.target.qemu) holds the
 * input as a const array and calls pex_harness_run().
 *
 * Console protocol (one SYS_WRITE0 line each, parsed by pexopt/target/qemu.py):
 *   PEX:RC <int>                    return value of pex_invoke
 *   PEX:OUT <hex>                   output bytes, 32 per line, in order
 *   PEX:STACK <total> <invoke>      thread-stack high-water mark: whole program, pex_invoke
 *   PEX:END                         the run completed
 *   PEX:FAULT <text>                a fault (the program exits with PEX_EXIT_FAULT or
 *                                   PEX_EXIT_STACK_OVERFLOW)
 */
#ifndef PEX_HARNESS_H
#define PEX_HARNESS_H

#include <stdint.h>

#define PEX_EXIT_OK 0
#define PEX_EXIT_INVOKE_ERROR 64    /* pex_invoke returned non-zero */
#define PEX_EXIT_FAULT 65           /* HardFault / MemManage / BusFault / UsageFault / NMI */
#define PEX_EXIT_STACK_OVERFLOW 66  /* the thread stack ran below its region */

#define PEX_STACK_PAINT 0xC5A3E1F7u

/* semihosting console and exit */
void pex_puts(const char *line);
void pex_exit(int code) __attribute__((noreturn));
char *pex_fmt_hex32(char *p, uint32_t v);
char *pex_fmt_int(char *p, int32_t v);

/* pex_harness_asm.S: pex_mark_begin(); r = pex_invoke(input, output); pex_mark_end(); */
int pex_timed_invoke(const int8_t *input, int8_t *output);
void pex_mark_begin(void);
void pex_mark_end(void);

/* runs pex_invoke once, prints the protocol lines, returns the exit code */
int pex_harness_run(const int8_t *input, int8_t *output, uint32_t output_size);

#endif
