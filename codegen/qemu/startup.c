/* Reset, vector table and fault handler of the pexopt QEMU harness (ARMv7-M).
 *
 * Memory (link.ld): the process stack sits at the very start of RAM (0x20000000); the 16 MiB
 * below it (read-as-zero, write-ignored on the MPS2 boards) are made no-access by an MPU
 * region, so an overflow faults instead of silently losing data, and the fault is taken on
 * the main stack, which lies above it.  Thread code (main, pex_invoke) runs on the process
 * stack, which is painted at reset for the high-water mark.
 */
#include <stdint.h>

#include "pex_harness.h"

extern uint32_t __data_load[], __data_start[], __data_end[];
extern uint32_t __bss_start[], __bss_end[];
extern uint32_t __stack_limit[], __stack_top[], __msp_top[];

extern int main(void);
void pex_reset(void) __attribute__((noreturn));
void pex_fault_entry(void);
void pex_fault_report(uint32_t *frame, uint32_t exc_return) __attribute__((noreturn));
void pex_start_thread(uint32_t psp_top, void (*entry)(void)) __attribute__((noreturn));

#define REG32(addr) (*(volatile uint32_t *)(addr))
#define SCB_CPACR 0xE000ED88u
#define SCB_CCR 0xE000ED14u
#define SCB_SHCSR 0xE000ED24u
#define SCB_CFSR 0xE000ED28u
#define SCB_HFSR 0xE000ED2Cu
#define SCB_MMFAR 0xE000ED34u
#define SCB_BFAR 0xE000ED38u
#define MPU_CTRL 0xE000ED94u
#define MPU_RBAR 0xE000ED9Cu
#define MPU_RASR 0xE000EDA0u
#define PEX_GUARD_BASE 0x1F000000u /* 16 MiB no-access guard right below RAM */

typedef void (*pex_vector_t)(void);

/* 16 system exceptions + 48 interrupts (none is enabled; any that fires is reported). */
__attribute__((section(".vectors"), used)) const pex_vector_t pex_vectors[64] = {
    (pex_vector_t)(uintptr_t)__msp_top,
    pex_reset,
    [2] = pex_fault_entry,  /* NMI */
    [3] = pex_fault_entry,  /* HardFault */
    [4] = pex_fault_entry,  /* MemManage */
    [5] = pex_fault_entry,  /* BusFault */
    [6] = pex_fault_entry,  /* UsageFault */
    [11] = pex_fault_entry, /* SVCall */
    [12] = pex_fault_entry, /* DebugMonitor */
    [14] = pex_fault_entry, /* PendSV */
    [15] = pex_fault_entry, /* SysTick */
    [16 ... 63] = pex_fault_entry,
};

static void pex_thread_entry(void)
{
    pex_exit(main());
}

void pex_reset(void)
{
#if defined(__ARM_FP)
    REG32(SCB_CPACR) |= 0xFu << 20; /* CP10, CP11: full access */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
#if defined(__ARM_ARCH_7M__) || defined(__ARM_ARCH_7EM__)
    /* PMSAv7 region 0: [0x1F000000, 0x20000000) no access, execute never (SIZE = 23: 16 MiB);
     * the default memory map stays in force elsewhere (PRIVDEFENA). */
    REG32(MPU_RBAR) = PEX_GUARD_BASE | (1u << 4) | 0u;
    REG32(MPU_RASR) = (1u << 28) | (23u << 1) | 1u;
    REG32(MPU_CTRL) = (1u << 2) | 1u;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    /* MemManage, BusFault, UsageFault get their own names; integer division by zero traps */
    REG32(SCB_SHCSR) |= (1u << 16) | (1u << 17) | (1u << 18);
    REG32(SCB_CCR) |= 1u << 4;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    const uint32_t *src = __data_load;
    for (uint32_t *p = __data_start; p < __data_end;) {
        *p++ = *src++;
    }
    for (uint32_t *p = __bss_start; p < __bss_end;) {
        *p++ = 0u;
    }
    for (volatile uint32_t *p = __stack_limit; p < __stack_top;) {
        *p++ = PEX_STACK_PAINT;
    }
    pex_start_thread((uint32_t)(uintptr_t)__stack_top, pex_thread_entry);
}

static const char *pex_exception_name(uint32_t n)
{
    switch (n) {
    case 2: return "NMI";
    case 3: return "HardFault";
    case 4: return "MemManage";
    case 5: return "BusFault";
    case 6: return "UsageFault";
    case 11: return "SVCall";
    case 12: return "DebugMonitor";
    case 14: return "PendSV";
    case 15: return "SysTick";
    default: return "IRQ";
    }
}

static char *pex_append(char *p, const char *s)
{
    while (*s) {
        *p++ = *s++;
    }
    return p;
}

/* names of the set CFSR bits */
static const char *const pex_cfsr_names[32] = {
    [0] = "IACCVIOL", [1] = "DACCVIOL", [3] = "MUNSTKERR", [4] = "MSTKERR", [5] = "MLSPERR",
    [8] = "IBUSERR", [9] = "PRECISERR", [10] = "IMPRECISERR", [11] = "UNSTKERR",
    [12] = "STKERR", [13] = "LSPERR", [16] = "UNDEFINSTR", [17] = "INVSTATE", [18] = "INVPC",
    [19] = "NOCP", [24] = "UNALIGNED", [25] = "DIVBYZERO",
};

static char pex_fault_line[256];

void pex_fault_report(uint32_t *frame, uint32_t exc_return)
{
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    uint32_t exc = ipsr & 0x1FFu;
    uint32_t cfsr = REG32(SCB_CFSR), hfsr = REG32(SCB_HFSR);
    uint32_t on_psp = exc_return & 4u;
    uintptr_t f = (uintptr_t)frame;
    /* MSTKERR / STKERR: the exception frame could not be pushed (stack overflow) */
    uint32_t mmfar = REG32(SCB_MMFAR);
    int guard_hit = (cfsr & (1u << 7)) && mmfar >= PEX_GUARD_BASE
                    && mmfar < (uintptr_t)__stack_limit;
    int overflow = on_psp && ((cfsr & ((1u << 4) | (1u << 12))) != 0u || guard_hit
                              || f < (uintptr_t)__stack_limit);
    int frame_ok = on_psp ? (f >= (uintptr_t)__stack_limit && f + 32u <= (uintptr_t)__stack_top)
                          : (f + 32u <= (uintptr_t)__msp_top);
    char *p = pex_append(pex_fault_line, "PEX:FAULT ");
    if (overflow) {
        p = pex_append(p, "stack overflow ");
    }
    p = pex_append(p, pex_exception_name(exc));
    if (exc >= 16u) {
        p = pex_fmt_int(p, (int32_t)(exc - 16u));
    }
    for (unsigned bit = 0; bit < 32u; ++bit) {
        if ((cfsr & (1u << bit)) && pex_cfsr_names[bit] != 0) {
            *p++ = ' ';
            p = pex_append(p, pex_cfsr_names[bit]);
        }
    }
    if (frame_ok) {
        p = pex_append(p, " pc=");
        p = pex_fmt_hex32(p, frame[6]);
        p = pex_append(p, " lr=");
        p = pex_fmt_hex32(p, frame[5]);
    }
    p = pex_append(p, " sp=");
    p = pex_fmt_hex32(p, (uint32_t)f);
    p = pex_append(p, " cfsr=");
    p = pex_fmt_hex32(p, cfsr);
    p = pex_append(p, " hfsr=");
    p = pex_fmt_hex32(p, hfsr);
    if (cfsr & (1u << 7)) {
        p = pex_append(p, " mmfar=");
        p = pex_fmt_hex32(p, mmfar);
    }
    if (cfsr & (1u << 15)) {
        p = pex_append(p, " bfar=");
        p = pex_fmt_hex32(p, REG32(SCB_BFAR));
    }
    *p = '\0';
    pex_puts(pex_fault_line);
    pex_exit(overflow ? PEX_EXIT_STACK_OVERFLOW : PEX_EXIT_FAULT);
}
