/* Runs pex_invoke once under the instruction-count markers and reports on the console. */
#include <stdint.h>

#include "pex_harness.h"

extern uint32_t __stack_limit[], __stack_top[];

static char pex_line[96];

static char *pex_append(char *p, const char *s)
{
    while (*s) {
        *p++ = *s++;
    }
    return p;
}

/* lowest thread-stack word that is no longer the reset paint (stack grows down) */
static uintptr_t pex_stack_low_water(void)
{
    const volatile uint32_t *p = __stack_limit;
    while (p < __stack_top && *p == PEX_STACK_PAINT) {
        ++p;
    }
    return (uintptr_t)p;
}

int pex_harness_run(const int8_t *input, int8_t *output, uint32_t output_size)
{
    static const char digits[] = "0123456789abcdef";
    uintptr_t sp_before;
    for (uint32_t i = 0; i < output_size; ++i) {
        output[i] = (int8_t)0xA5; /* an output pex_invoke never writes shows up */
    }
    __asm__ volatile("mov %0, sp" : "=r"(sp_before));
    int rc = pex_timed_invoke(input, output);
    uintptr_t low = pex_stack_low_water();

    char *p = pex_append(pex_line, "PEX:RC ");
    p = pex_fmt_int(p, rc);
    *p = '\0';
    pex_puts(pex_line);

    for (uint32_t i = 0; i < output_size; i += 32u) {
        p = pex_append(pex_line, "PEX:OUT ");
        for (uint32_t j = i; j < output_size && j < i + 32u; ++j) {
            uint8_t b = (uint8_t)output[j];
            *p++ = digits[b >> 4];
            *p++ = digits[b & 0xFu];
        }
        *p = '\0';
        pex_puts(pex_line);
    }

    p = pex_append(pex_line, "PEX:STACK ");
    p = pex_fmt_int(p, (int32_t)((uintptr_t)__stack_top - low));
    *p++ = ' ';
    p = pex_fmt_int(p, low < sp_before ? (int32_t)(sp_before - low) : 0);
    *p = '\0';
    pex_puts(pex_line);
    pex_puts("PEX:END");
    return rc == 0 ? PEX_EXIT_OK : PEX_EXIT_INVOKE_ERROR;
}
