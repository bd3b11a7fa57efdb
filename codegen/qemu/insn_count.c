/* QEMU TCG plugin (plugin API v1, QEMU 7.x): exact count of guest instructions executed
 * between the first execution of two addresses.
 *
 *   -plugin insn_count.so,begin=0x1234,end=0x1240 -d plugin -D log.txt
 *
 * Every translated instruction gets an inline 64-bit add; the instructions at `begin` and
 * `end` also get a callback that snapshots the counter.  The log receives
 *   pex-insn region=<executed from begin (inclusive) to end (exclusive)>
 * when `end` first executes after `begin`, and "pex-insn total=<all>" at exit.
 * Addresses are compared without the Thumb bit.
 *
 * Debian ships no qemu-plugin.h, so the few API functions used are declared here.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PEX_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;

enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
                                                enum qemu_plugin_op op, void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb,
                                    void *userdata);
void qemu_plugin_outs(const char *string);

PEX_EXPORT extern int qemu_plugin_version;
PEX_EXPORT int qemu_plugin_version = 1;

static uint64_t executed;          /* every guest instruction (single vCPU) */
static uint64_t begin_addr, end_addr;
static int have_begin, have_end;
static uint64_t at_begin, at_end;
static int seen_begin, seen_end;

static void on_begin(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    if (!seen_begin) {
        seen_begin = 1;
        at_begin = executed;
    }
}

static void on_end(unsigned int vcpu_index, void *userdata)
{
    char line[96];
    (void)vcpu_index;
    (void)userdata;
    if (seen_begin && !seen_end) {
        seen_end = 1;
        at_end = executed;
        snprintf(line, sizeof line, "pex-insn region=%" PRIu64 "\n", at_end - at_begin);
        qemu_plugin_outs(line);
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn) & ~(uint64_t)1;
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                                                   &executed, 1);
        if (have_begin && pc == begin_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
        if (have_end && pc == end_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
    }
}

static void on_atexit(qemu_plugin_id_t id, void *userdata)
{
    char line[96];
    (void)id;
    (void)userdata;
    snprintf(line, sizeof line, "pex-insn total=%" PRIu64 "\n", executed);
    qemu_plugin_outs(line);
}

PEX_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv);

PEX_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "begin=", 6) == 0) {
            begin_addr = strtoull(a + 6, NULL, 0) & ~(uint64_t)1;
            have_begin = 1;
        } else if (strncmp(a, "end=", 4) == 0) {
            end_addr = strtoull(a + 4, NULL, 0) & ~(uint64_t)1;
            have_end = 1;
        } else {
            fprintf(stderr, "insn_count: unknown argument '%s'\n", a);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_atexit, NULL);
    return 0;
}
