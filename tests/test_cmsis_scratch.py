"""CMSIS-NN kernel scratch (ctx.buf) as buffers of the plan: CMSIS-NN's buffer-size formulas per
target, the solver's scratch boxes, the validator's independent check, the simulator's scribble
and the emitter's per-step context inside the arena."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pexopt.cli import app
from pexopt.cmsis_scratch import (
    avgpool_scratch,
    conv_input,
    conv_scratch,
    dw_scratch,
    fc_scratch,
    kernel_scratch_bytes,
)
from pexopt.codegen import emit_c
from pexopt.errors import PexError
from pexopt.frontend.onnx_params import load_params
from pexopt.graph.ir import Graph
from pexopt.pipeline import ImportOptions, solve_model
from pexopt.plan.format import Plan, is_kscratch, load_plan, plan_from_dict
from pexopt.plan.validator import validate
from pexopt.schedule import SolverParams
from pexopt.simulate.arena import run_plan
from pexopt.simulate.reference import inputs_from_onnx, onnx_index
from pexopt.simulate.verify import random_feeds, verify_plan

SOLVER = dict(time_limit=10.0, workers=1)
MCUNET = "mcunet_in3_320kb_1mb_imagenet.onnx"


# -- the formulas (CMSIS-NN Source/*/arm_*_get_buffer_sizes_s8.c) -----------------------------

def test_conv_formulas_per_target() -> None:
    # arm_convolve_s8_get_buffer_size: C/DSP (2 * roundup4(KH*KW*C_in)) * sizeof(int16)
    assert conv_scratch("dsp", False, False, 1, 1, 3, 3, 3, 1, 32, 32) == 2 * 28 * 2  # 112
    assert conv_scratch("dsp", False, False, 1, 1, 64, 3, 3, 1, 24, 24) == 2304  # notes: 2,304
    assert conv_scratch("c", False, False, 2, 2, 3, 3, 3, 1, 32, 16) == 112
    # MVE: 4 * roundup16(KH*KW*C_in) (arm_convolve_s8_get_buffer_size_mve)
    assert conv_scratch("mve", False, False, 1, 1, 3, 3, 3, 1, 32, 32) == 4 * 32  # 128
    # 1x1 fast (stride 1): armclang 2 * C_in int16 on DSP (gcc 0; the larger is planned)
    assert conv_scratch("dsp", True, False, 1, 1, 16, 1, 1, 0, 8, 8) == 64
    assert conv_scratch("dsp", True, False, 2, 2, 16, 1, 1, 0, 8, 4) == 0  # arm_convolve_1x1_s8
    assert conv_scratch("mve", True, False, 1, 1, 16, 1, 1, 0, 8, 8) == 0
    assert conv_scratch("c", True, False, 1, 1, 16, 1, 1, 0, 8, 8) == 0
    # MVE 1xN (arm_convolve_1_x_n_s8_get_buffer_size_mve): W=16, KW=3, C_in=8, pad 1, stride 1:
    # total_pad 2, no asymmetry, 1 left/1 right padded output -> max(3*8 + 8, 3*8 - 8 + 8) = 32
    assert conv_scratch("mve", False, True, 1, 1, 8, 1, 3, 1, 16, 16) == 32
    assert conv_scratch("dsp", False, True, 1, 1, 8, 1, 3, 1, 16, 16) == 2 * 24 * 2  # generic


def test_depthwise_fc_avgpool_formulas_per_target() -> None:
    # arm_depthwise_conv_wrapper_s8_get_buffer_size: 3x3, pads <= 1 -> 0 on C/DSP
    assert dw_scratch("dsp", 64, 64, 3, 3, 1, 1) == 0
    assert dw_scratch("c", 96, 96, 5, 5, 2, 2) == 0
    # DSP _opt: C_in * KH * KW * sizeof(int16) (notes: 5x5 4,800; 7x7 x 256: 25,088)
    assert dw_scratch("dsp", 96, 96, 5, 5, 2, 2) == 4800
    assert dw_scratch("dsp", 256, 256, 7, 7, 3, 3) == 25088
    # MVE _opt: 4 * CH_IN_BLOCK_MVE (124) * KH * KW, also for 3x3 (notes: 4,464)
    assert dw_scratch("mve", 64, 64, 3, 3, 1, 1) == 4464
    assert dw_scratch("mve", 8, 8, 5, 5, 2, 2) == 4 * 124 * 25
    # MVE, one input channel: a conv (4 * roundup16(9)) plus the C_out x 3 x 3 filter copy
    assert dw_scratch("mve", 1, 8, 3, 3, 1, 1) == 64 + 72
    assert dw_scratch("dsp", 1, 8, 5, 5, 2, 2) == 0  # channel multiplier: the generic kernel
    assert dw_scratch("dsp", 32, 32, 5, 5, 2, 2, dilation=(2, 2)) == 0
    # arm_fully_connected_s8_get_buffer_size: MVE C_out * sizeof(int32), else 0
    assert fc_scratch("mve", 10) == 40 and fc_scratch("dsp", 10) == 0
    # arm_avgpool_s8_get_buffer_size: DSP C * sizeof(int32), MVE and C 0
    assert avgpool_scratch("dsp", 160) == 640
    assert avgpool_scratch("mve", 160) == 0 and avgpool_scratch("c", 160) == 0


def test_conv_behind_a_reshape_sees_its_kernel_shape(shared_models_dir: Path) -> None:
    """micro_speech's conv reads a flat (1, 1960) tensor as 49 x 40 x 1: scratch for C_in 1."""
    g = ImportOptions().load(shared_models_dir / "tflm_micro_speech_int8.onnx")
    k = next(o.id for o in g.ops if o.attrs is not None and o.attrs.kernel == (10, 8))
    assert conv_input(g, g.ops[k]) == (49, 40, 1)
    assert kernel_scratch_bytes(g, k, "cortex-m4") == 2 * 80 * 2  # 2 * roundup4(10*8*1) int16


# -- on a real model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mcunet(shared_models_dir: Path) -> tuple[Path, Graph, Plan]:
    path = shared_models_dir / MCUNET
    res = solve_model(path, ImportOptions(), SolverParams(target="cortex-m4", **SOLVER), None)
    return path, res.graph, res.plan


def _op(graph: Graph, name: str) -> int:
    return next(o.id for o in graph.ops if o.name == name)


def test_graph_sizes_are_slice_aware(mcunet: tuple[Path, Graph, Plan]) -> None:
    _, g, _ = mcunet
    k = _op(g, "blocks/15/mobile_inverted_conv/depth_conv/Relu6_prequant")  # 7x7 dw, 480 ch
    assert kernel_scratch_bytes(g, k, "cortex-m4") == 480 * 49 * 2  # 47,040
    assert kernel_scratch_bytes(g, k, "cortex-m4", (0, 8), "slice") == 8 * 49 * 2
    assert kernel_scratch_bytes(g, k, "cortex-m55") == 4 * 124 * 49
    assert kernel_scratch_bytes(g, k, None) == 0
    stem = _op(g, "first_conv/Relu6_prequant")  # 3x3 conv from 3 channels
    assert kernel_scratch_bytes(g, stem, "cortex-m7") == 2 * 28 * 2
    # an output-slice conv reads the whole input: the same buffer; accumulating: pexopt's kernel
    assert kernel_scratch_bytes(g, stem, "cortex-m4", (0, 8), "slice") == 112
    assert kernel_scratch_bytes(g, stem, "cortex-m4", (0, 8), "accumulate") == 0


def test_mcunet_plan_counts_scratch_in_the_arena(mcunet: tuple[Path, Graph, Plan],
                                                 tmp_path: Path) -> None:
    path, g, plan = mcunet
    assert plan.target == "cortex-m4"
    ks = [b for b in plan.buffers if b.kind == "scratch" and is_kscratch(b.name)]
    assert max(b.size for b in ks) == 47040
    assert plan.arena_bytes == max(b.offset + b.size for b in plan.buffers)
    for s in plan.steps:  # every listed kernel scratch covers the step's need
        need = kernel_scratch_bytes(g, _op(g, s.op), "cortex-m4", s.slice, s.mode)
        got = [plan.buffer(n).size for n in s.scratch if is_kscratch(n)]
        if len(got) < len(s.scratch):  # an in-place depthwise: pexopt's kernel, no ctx.buf
            need = 0
        assert (max(got) >= need) if need else not got
    assert validate(plan, g) == []
    assert verify_plan(plan, g, n_inputs=1, onnxruntime=False).exact
    emit_c(plan, g, path, tmp_path / "gen", target="cortex-m4")
    src = (tmp_path / "gen" / "pex_model.c").read_text()
    header = (tmp_path / "gen" / "pex_model.h").read_text()
    assert f"#define PEX_ARENA_BYTES {plan.arena_bytes}\n" in header
    assert "pex_cmsis_scratch" not in src and "PEX_CMSIS_SCRATCH_BYTES" not in src
    assert src.count("static int8_t ") == 1  # the arena is the only static RAM
    big = next(b for b in ks if b.size == 47040)
    assert f"const cmsis_nn_context pex_ctx = {{(void *)(pex_arena + {big.offset}), 47040}};" \
        in src
    assert "ctx.buf" in (tmp_path / "gen" / "README.md").read_text()


def test_codegen_refuses_another_cmsis_code_path(mcunet: tuple[Path, Graph, Plan],
                                                 tmp_path: Path) -> None:
    path, g, plan = mcunet
    with pytest.raises(PexError, match="sized for cortex-m4 .* not cortex-m55"):
        emit_c(plan, g, path, tmp_path / "m55", target="cortex-m55")
    assert not (tmp_path / "m55").exists()
    emit_c(plan, g, path, tmp_path / "m7", target="cortex-m7")  # same DSP code, same sizes
    emit_c(plan, g, path, tmp_path / "port", target="cortex-m55", backend_default="portable")
    assert "arm_" not in (tmp_path / "port" / "pex_model.c").read_text()


# -- validator and simulator mutations ---------------------------------------------------------

@pytest.fixture(scope="module")
def small(models_dir: Path) -> tuple[Path, Graph, Plan]:
    path = models_dir / "mbv2_w035_r96_int8.onnx"
    res = solve_model(path, ImportOptions(), SolverParams(target="cortex-m4", **SOLVER), None)
    return path, res.graph, res.plan


def _copy(plan: Plan) -> Plan:
    return plan_from_dict(json.loads(plan.to_json()))


def _kscratch_step(plan: Plan, whole: bool = True) -> tuple[int, str]:
    """(step, its kernel scratch buffer) of the step with the largest kernel scratch."""
    cands = [(plan.buffer(n).size, i, n) for i, s in enumerate(plan.steps) for n in s.scratch
             if is_kscratch(n) and (s.mode == "whole") == whole]
    _, i, n = max(cands)
    return i, n


def _codes(plan: Plan, g: Graph) -> set[str]:
    return {v.code for v in validate(plan, g)}


def test_validator_rejects_missing_small_or_overlapping_scratch(
        small: tuple[Path, Graph, Plan]) -> None:
    _, g, plan = small
    assert validate(plan, g) == []
    for whole in (True, False):  # a whole op's own scratch and a split segment's
        i, name = _kscratch_step(plan, whole)
        p = _copy(plan)
        p.buffer(name).size -= 1
        assert "kernel_scratch" in _codes(p, g)
        p = _copy(plan)
        p.steps[i].scratch.remove(name)
        assert "kernel_scratch" in _codes(p, g)
        p = _copy(plan)  # the scratch over a buffer that is live at the step
        s = p.steps[i]
        live = p.buffer(s.reads[0]) if s.reads else p.buffer(s.writes[0])
        p.buffer(name).offset = live.offset
        assert "overlap" in _codes(p, g)
    p = _copy(plan)
    p.target = "cortex-z9"
    assert "target" in _codes(p, g)
    old = json.loads(plan.to_json())  # a plan written before kernel scratch existed
    for s in old["steps"]:
        s["scratch"] = [n for n in s["scratch"] if not is_kscratch(n)]
    old["buffers"] = [b for b in old["buffers"] if not is_kscratch(b["name"])]
    old["arena_bytes"] = max(b["offset"] + b["size"] for b in old["buffers"])
    old["fits"] = True
    del old["target"]
    assert validate(plan_from_dict(old), g) == []


def test_simulator_scribbles_kernel_scratch(small: tuple[Path, Graph, Plan]) -> None:
    """A kernel scratch moved over the step's own input corrupts the result."""
    path, g, plan = small
    ox = onnx_index(path)
    params = load_params(ox, g)
    x = inputs_from_onnx(g, random_feeds(g, ox, 1, 0)[0])
    good = run_plan(plan, g, params, x)
    i, name = _kscratch_step(plan)
    p = _copy(plan)
    src = p.buffer(p.steps[i].reads[0])
    p.buffer(name).offset = src.offset
    bad = run_plan(p, g, params, x)
    assert any(not np.array_equal(good[k], bad[k]) for k in good)
    p = _copy(plan)  # over the step's output: CMSIS-NN's leftovers overwrite the result
    p.buffer(name).offset = p.buffer(p.steps[i].writes[0]).offset
    bad = run_plan(p, g, params, x)
    assert any(not np.array_equal(good[k], bad[k]) for k in good)


def test_plan_without_target_emits_portable_where_scratch_is_needed(models_dir: Path,
                                                                     tmp_path: Path) -> None:
    """Old plans (no target, no kernel scratch) still emit: steps needing scratch run
    pexopt's kernels, CMSIS-NN calls needing none get an empty context."""
    path = models_dir / "resnet8_int8.onnx"
    res = solve_model(path, ImportOptions(), SolverParams(**SOLVER), None)
    emit_c(res.plan, res.graph, path, tmp_path / "gen", target="cortex-m55")
    src = (tmp_path / "gen" / "pex_model.c").read_text()
    assert "const cmsis_nn_context pex_ctx = {NULL, 0};" in src  # 1x1 stride-2 shortcuts
    assert "(void *)(pex_arena" not in src and "pex_cmsis_scratch" not in src
    assert "pex_conv_s8(" in src


# -- solver and CLI ---------------------------------------------------------------------------

def test_target_arena_is_proven_and_not_smaller(small: tuple[Path, Graph, Plan]) -> None:
    path, g, plan = small
    res = solve_model(path, ImportOptions(), SolverParams(**SOLVER), None)
    assert res.plan.target is None
    assert not any(is_kscratch(b.name) for b in res.plan.buffers)
    assert plan.arena_bytes >= res.plan.arena_bytes
    assert plan.solver.status == "OPTIMAL" and plan.solver.bound == plan.arena_bytes


def test_cli_solve_records_target_and_rejects_unknown(models_dir: Path, tmp_path: Path) -> None:
    model = models_dir / "resnet8_int8.onnx"
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(app, ["solve", str(model), "--target", "cortex-m55", "-o", str(out),
                                 "--workers", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    plan = load_plan(out)
    assert plan.target == "cortex-m55"
    assert any(is_kscratch(b.name) for b in plan.buffers)
    bad = tmp_path / "bad.json"
    r = CliRunner().invoke(app, ["solve", str(model), "--target", "cortex-z9", "-o", str(bad)])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "--target" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not bad.exists()
