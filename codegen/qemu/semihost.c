/* Semihosting console and exit for the pexopt QEMU harness (bkpt 0xAB, Thumb). */
#include <stdint.h>

#include "pex_harness.h"

#define SYS_WRITE0 0x04
#define SYS_EXIT 0x18
#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

static int pex_semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void pex_puts(const char *line)
{
    static const char nl[2] = "\n";
    pex_semihost(SYS_WRITE0, line);
    pex_semihost(SYS_WRITE0, nl);
}

void pex_exit(int code)
{
    /* SYS_EXIT_EXTENDED carries the whole exit code (SYS_EXIT only 0/1 on 32-bit Arm) */
    const uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
    pex_semihost(SYS_EXIT_EXTENDED, block);
    pex_semihost(SYS_EXIT, (const void *)(uintptr_t)ADP_STOPPED_APPLICATION_EXIT);
    for (;;) {
        __asm__ volatile("wfi");
    }
}

char *pex_fmt_hex32(char *p, uint32_t v)
{
    static const char digits[] = "0123456789abcdef";
    *p++ = '0';
    *p++ = 'x';
    for (int shift = 28; shift >= 0; shift -= 4) {
        *p++ = digits[(v >> shift) & 0xFu];
    }
    return p;
}

char *pex_fmt_int(char *p, int32_t v)
{
    char tmp[12];
    int n = 0;
    uint32_t u = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
    if (v < 0) {
        *p++ = '-';
    }
    do {
        tmp[n++] = (char)('0' + u % 10u);
        u /= 10u;
    } while (u != 0u);
    while (n > 0) {
        *p++ = tmp[--n];
    }
    return p;
}
