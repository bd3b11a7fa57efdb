"""pexopt.target.qemu: generated C built into Cortex-M firmware and run under QEMU.

A stand-in `pex_out/` (same interface as the C emitter's: pex_model.h with PEX_INPUT_SIZE,
PEX_OUTPUT_SIZE, PEX_ARENA_BYTES and pex_invoke; a static, 16-aligned pex_arena in
PEX_ARENA_SECTION) is written per test. Without arm-none-eabi-gcc / qemu-system-arm the tests
skip, except in CI (CI=true) where they fail.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pexopt.target import qemu
from pexopt.target.qemu import (
    EXIT_FAULT,
    EXIT_INVOKE_ERROR,
    EXIT_OK,
    EXIT_STACK_OVERFLOW,
    TargetError,
    ToolMissingError,
    build_firmware,
    missing_tools,
    run_firmware,
)

M4, M7 = "mps2-an386", "mps2-an500"

HEADER = """\
#ifndef PEX_MODEL_H
#define PEX_MODEL_H
#include <stdint.h>
#define PEX_INPUT_SIZE {n_in}
#define PEX_OUTPUT_SIZE {n_out}
#define PEX_ARENA_BYTES ({arena}u)
#ifndef PEX_ARENA_SECTION
#define PEX_ARENA_SECTION ".bss.pex_arena"
#endif
int pex_invoke(const int8_t *input, int8_t *output);
#endif
"""

ARENA = """\
static int8_t pex_arena[{arena}] __attribute__((aligned(16), section(PEX_ARENA_SECTION)));
"""

# output[i] = input[i] + repeat (wrapping), through the arena; expf checks libm + the FPU
ADD_MODEL = """\
#include <string.h>
#include "pex_model.h"
#include "pex_kernels.h"
{arena_decl}
static volatile int pex_repeat = {repeat};

int pex_invoke(const int8_t *input, int8_t *output)
{{
    memcpy(pex_arena, input, PEX_INPUT_SIZE);
    for (int r = 0; r < pex_repeat; ++r) {{
        pex_add(pex_arena, PEX_INPUT_SIZE, pex_one());
    }}
    memcpy(output, pex_arena, PEX_OUTPUT_SIZE);
    return 0;
}}
"""

KERNELS_H = """\
#ifndef PEX_KERNELS_H
#define PEX_KERNELS_H
#include <stdint.h>
void pex_add(int8_t *x, int n, int8_t v);
int8_t pex_one(void);
#endif
"""

KERNELS_C = """\
#include <math.h>
#include "pex_kernels.h"
static volatile float pex_zero = 0.0f;
void pex_add(int8_t *x, int n, int8_t v)
{
    for (int i = 0; i < n; ++i) {
        x[i] = (int8_t)(x[i] + v);
    }
}
int8_t pex_one(void) { return (int8_t)lrintf(expf(pex_zero)); }
"""

WEIGHTS_C = """\
#include <stdint.h>
const int8_t pex_weights_unused[4] = {1, 2, 3, 4};
"""


def _write_pex(d: Path, model_c: str, n_in: int = 100, n_out: int = 100,
               arena: int = 256, decl_arena: int | None = None, **fmt: object) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "pex_model.h").write_text(HEADER.format(n_in=n_in, n_out=n_out, arena=arena))
    decl = ARENA.format(arena=arena if decl_arena is None else decl_arena)
    (d / "pex_model.c").write_text(model_c.format(arena_decl=decl, **fmt))
    (d / "pex_kernels.h").write_text(KERNELS_H)
    (d / "pex_kernels.c").write_text(KERNELS_C)
    (d / "pex_weights.c").write_text(WEIGHTS_C)
    return d


def _input(n: int = 100, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(-128, 128, n, dtype=np.int8).tobytes()


def _added(data: bytes, k: int) -> bytes:
    return ((np.frombuffer(data, np.int8).astype(np.int32) + k) & 0xFF).astype(np.uint8).tobytes()


# -- the stand-in model on M4 and M7 ---------------------------------------------------------

@pytest.mark.parametrize("board", [M4, M7])
def test_build_and_run(qemu_tools: None, tmp_path: Path, board: str) -> None:
    pex = _write_pex(tmp_path / "pex_out", ADD_MODEL, repeat=1)
    x = _input()
    fw = build_firmware(pex, x, board, tmp_path / "build")
    assert fw.elf.is_file() and fw.board == board
    assert fw.arena_bytes == fw.arena_macro == 256
    assert fw.input_size == 100 and fw.output_size == 100
    assert fw.text > 0 and fw.bss >= 256 + 100  # arena + output buffer
    addr, size = fw.symbols["pex_arena"]
    assert size == 256 and addr % 16 == 0 and 0x20000000 <= addr < 0x20080000
    assert "pex_invoke" in fw.stack_frames
    assert "pex_test_input" in (tmp_path / "build" / "main.c").read_text()

    r = run_firmware(fw, timeout=60)
    assert r.exit_code == EXIT_OK and r.ok and r.completed, r.console
    assert r.check() is r
    assert r.output == _added(x, 1)
    assert r.invoke_rc == 0 and r.fault is None
    assert r.insns is not None and r.insns > 100
    assert r.total_insns is not None and r.total_insns > r.insns
    assert r.stack_bytes is not None and 0 < r.stack_bytes < fw.stack_size
    assert r.invoke_stack_bytes is not None and 0 < r.invoke_stack_bytes <= r.stack_bytes


def test_instruction_count_is_deterministic(qemu_tools: None, tmp_path: Path) -> None:
    pex = _write_pex(tmp_path / "pex_out", ADD_MODEL, repeat=3)
    x = _input(seed=1)
    fw = build_firmware(pex, x, M4, tmp_path / "b1")
    first, second = run_firmware(fw), run_firmware(fw)
    assert first.insns == second.insns and first.insns is not None
    assert first.output == second.output == _added(x, 3)
    assert first.stack_bytes == second.stack_bytes
    # a rebuild (other folder) and another input of the same size execute the same count
    fw2 = build_firmware(pex, _input(seed=2), M4, tmp_path / "b2")
    assert run_firmware(fw2).insns == first.insns


def test_instruction_count_scales(qemu_tools: None, tmp_path: Path) -> None:
    counts = {}
    x = _input()
    for n in (50, 100, 150):
        pex = _write_pex(tmp_path / f"pex_{n}", ADD_MODEL, repeat=n)
        r = run_firmware(build_firmware(pex, x, M4, tmp_path / f"build_{n}")).check()
        assert r.output == _added(x, n)
        counts[n] = r.insns
    # the loop count is read at run time: the count is exactly affine in it
    assert counts[150] - counts[100] == counts[100] - counts[50] > 0
    assert 1.9 < counts[100] / counts[50] < 2.0


def test_empty_invoke_is_exactly_two_instructions(qemu_tools: None, tmp_path: Path) -> None:
    """pex_invoke = `movs r0, #0; bx lr`: the markers' overhead is subtracted exactly."""
    src = "#include \"pex_model.h\"\n__attribute__((used)) {arena_decl}\n" \
          "int pex_invoke(const int8_t *input, int8_t *output)\n" \
          "{{\n    (void)input;\n    (void)output;\n    return 0;\n}}\n"
    pex = _write_pex(tmp_path / "pex_out", src)
    for board in (M4, M7):
        r = run_firmware(build_firmware(pex, _input(), board, tmp_path / board)).check()
        assert r.insns == 2
        assert r.output == b"\xa5" * 100  # the harness pre-fills the output


# -- failures --------------------------------------------------------------------------------

FAULT_MODEL = """\
#include "pex_model.h"
{arena_decl}
typedef int (*pex_fn)(void);
int pex_invoke(const int8_t *input, int8_t *output)
{{
    volatile uintptr_t target = 0xF0000001u; /* system space: execute never */
    ((volatile int8_t *)pex_arena)[0] = input[0];
    (void)output;
    return ((pex_fn)target)();
}}
"""


def test_fault_exits_with_fault_code(qemu_tools: None, tmp_path: Path) -> None:
    pex = _write_pex(tmp_path / "pex_out", FAULT_MODEL)
    fw = build_firmware(pex, _input(), M4, tmp_path / "build")
    r = run_firmware(fw, timeout=30)
    assert r.exit_code == EXIT_FAULT and not r.ok and not r.completed
    assert r.fault is not None and "IACCVIOL" in r.fault and "pc=0xf0000000" in r.fault
    assert r.output is None and r.insns is None
    with pytest.raises(TargetError, match=r"firmware fault \(exit 65\): MemManage IACCVIOL"):
        r.check()


OVERFLOW_MODEL = """\
#include "pex_model.h"
{arena_decl}
int pex_deep(const volatile int8_t *p, int n);
int pex_deep(const volatile int8_t *p, int n)
{{
    volatile int8_t frame[512];
    frame[0] = p[0];
    return n == 0 ? frame[0] : pex_deep(frame, n - 1) + frame[1];
}}
int pex_invoke(const int8_t *input, int8_t *output)
{{
    ((volatile int8_t *)pex_arena)[0] = input[0];
    output[0] = (int8_t)pex_deep((const volatile int8_t *)input, 1000);
    return 0;
}}
"""


def test_stack_overflow_is_caught(qemu_tools: None, tmp_path: Path) -> None:
    pex = _write_pex(tmp_path / "pex_out", OVERFLOW_MODEL)
    fw = build_firmware(pex, _input(), M7, tmp_path / "build", stack_size=16 * 1024)
    r = run_firmware(fw, timeout=30)
    assert r.exit_code == EXIT_STACK_OVERFLOW
    assert r.fault is not None and r.fault.startswith("stack overflow")


def test_invoke_error_code(qemu_tools: None, tmp_path: Path) -> None:
    src = "#include \"pex_model.h\"\n{arena_decl}\n" \
          "int pex_invoke(const int8_t *input, int8_t *output)\n" \
          "{{\n    ((volatile int8_t *)pex_arena)[0] = input[0];\n    output[0] = 7;\n" \
          "    return 3;\n}}\n"
    pex = _write_pex(tmp_path / "pex_out", src)
    r = run_firmware(build_firmware(pex, _input(), M4, tmp_path / "build"))
    assert r.exit_code == EXIT_INVOKE_ERROR and r.invoke_rc == 3 and r.completed
    with pytest.raises(TargetError, match="pex_invoke returned 3"):
        r.check()


def test_timeout(qemu_tools: None, tmp_path: Path) -> None:
    src = "#include \"pex_model.h\"\n{arena_decl}\n" \
          "int pex_invoke(const int8_t *input, int8_t *output)\n" \
          "{{\n    (void)output;\n    for (;;) {{\n" \
          "        ((volatile int8_t *)pex_arena)[0] = input[0];\n    }}\n}}\n"
    pex = _write_pex(tmp_path / "pex_out", src)
    fw = build_firmware(pex, _input(), M4, tmp_path / "build")
    with pytest.raises(TargetError, match="timed out after 1 s"):
        run_firmware(fw, timeout=1)


def test_arena_size_must_match_the_header(qemu_tools: None, tmp_path: Path) -> None:
    pex = _write_pex(tmp_path / "pex_out", ADD_MODEL, arena=256, decl_arena=128, repeat=1)
    with pytest.raises(TargetError, match=r"pex_arena is 128 B .* PEX_ARENA_BYTES = 256"):
        build_firmware(pex, _input(), M4, tmp_path / "build")


def test_input_size_must_match(qemu_tools: None, tmp_path: Path) -> None:
    pex = _write_pex(tmp_path / "pex_out", ADD_MODEL, repeat=1)
    with pytest.raises(TargetError, match="input has 99 bytes.*PEX_INPUT_SIZE = 100"):
        build_firmware(pex, _input(99), M4, tmp_path / "build")


def test_compile_error_is_one_line(qemu_tools: None, tmp_path: Path) -> None:
    src = ADD_MODEL.replace("    memcpy(pex_arena", "    int unused;\n    memcpy(pex_arena")
    pex = _write_pex(tmp_path / "pex_out", src, repeat=1)
    with pytest.raises(TargetError, match=r"compiling pex_model.c failed: .*unused") as e:
        build_firmware(pex, _input(), M4, tmp_path / "build")
    assert "\n" not in str(e.value)


def test_stdio_is_refused(qemu_tools: None, tmp_path: Path) -> None:
    src = "#include <stdio.h>\n#include \"pex_model.h\"\n{arena_decl}\n" \
          "int pex_invoke(const int8_t *input, int8_t *output)\n" \
          "{{\n    ((volatile int8_t *)pex_arena)[0] = input[0];\n" \
          "    (void)output;\n    return printf(\"%d\\n\", input[0]) < 0;\n}}\n"
    pex = _write_pex(tmp_path / "pex_out", src)
    with pytest.raises(TargetError, match="newlib system calls .*_write"):
        build_firmware(pex, _input(), M4, tmp_path / "build")


def test_unknown_board(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="unknown board"):
        build_firmware(tmp_path, b"", "mps2-an999", tmp_path / "build")


def test_missing_tool_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert missing_tools() is not None
    with pytest.raises(ToolMissingError, match="arm-none-eabi-gcc not found") as e:
        build_firmware(tmp_path, b"\x00", M4, tmp_path / "build")
    assert "\n" not in str(e.value) and "apt-get install" in str(e.value)


def test_macro_values() -> None:
    assert qemu._eval_int("(3u * 32 * 32)") == 3072
    assert qemu._eval_int("0x100UL") == 256
    assert qemu._eval_int("sizeof(int)") is None


# -- generated code for a real model (runs once the C emitter exists) -------------------------


def _has_emitter() -> bool:
    try:
        return importlib.util.find_spec("pexopt.codegen.emit") is not None
    except ModuleNotFoundError:  # no pexopt.codegen package
        return False


HAS_EMITTER = _has_emitter()


@pytest.mark.skipif(not HAS_EMITTER, reason="pexopt.codegen.emit is not there yet")
def test_resnet8_bit_exact_on_m4(qemu_tools: None, models_dir: Path, tmp_path: Path) -> None:
    """C for resnet8_int8 on one random int8 input == the byte-exact arena simulation."""
    from pexopt.frontend.onnx_params import load_params
    from pexopt.pipeline import ImportOptions, solve_model
    from pexopt.schedule import SolverParams
    from pexopt.simulate.arena import run_plan

    emit_c = importlib.import_module("pexopt.codegen.emit").emit_c
    model = models_dir / "resnet8_int8.onnx"
    res = solve_model(model, ImportOptions(), SolverParams(time_limit=10, workers=1, rows=False),
                      None)
    out_dir = tmp_path / "pex_out"
    emit_c(res.plan, res.graph, model, out_dir)
    g = res.graph
    inp, out = g.tensors[g.inputs[0]], g.tensors[g.outputs[0]]
    x = np.random.default_rng(0).integers(-128, 128, inp.shape, dtype=np.int8)  # NHWC
    expect = run_plan(res.plan, g, load_params(model, g), {inp.name: x})[out.name]
    fw = build_firmware(out_dir, x.tobytes(), M4, tmp_path / "build")
    assert fw.arena_bytes == res.plan.arena_bytes
    r = run_firmware(fw, timeout=120).check()
    assert r.output == np.asarray(expect, dtype=np.int8).tobytes()
    assert r.insns is not None and r.insns > 0


def test_bench_target_runs_both_plans_under_qemu(tmp_path: Path) -> None:
    """`pexopt bench --target cortex-m4`: instructions of both plans, bit-exact on the target."""
    import json

    from typer.testing import CliRunner

    from pexopt.cli import app

    model = Path(__file__).resolve().parents[1] / "models" / "dscnn_kws_int8.onnx"
    res = CliRunner().invoke(app, ["bench", str(model), "--target", "cortex-m4", "--out",
                                   str(tmp_path), "--time-limit", "10", "--workers", "1"])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "bench.json").read_text())["rows"][0]
    assert row["insns_layerwise"] > 1_000_000 and row["insns_split"] > 1_000_000
    assert row["exact_on_target"] is True
    assert row["flash_bytes"] > 20_000 and row["ram_bytes"] >= row["arena"]
    assert "instructions" in (tmp_path / "bench.md").read_text()
