"""Hybrid segments (issue #7 part 4): a chain run per row band AND per channel slice, with a
band-sized int32 accumulator. Schedules, plans and their JSON, the validator (a dropped slice of
one band is refused), bit-exact simulation (int8 and float), C on the host, the solver (hybrid
strictly smaller than rows alone and channels alone on a wide inverted residual block; never
larger with it on), its lower bound and its latency cost."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from test_codegen import _build, _expected, _invoke, kernels_obj  # noqa: F401  (fixture)
from test_rows import _chain_model, drop_step, manual_schedule

from pexopt.codegen import emit_c
from pexopt.frontend.onnx_import import import_onnx
from pexopt.frontend.onnx_params import load_params
from pexopt.graph.ir import Graph
from pexopt.latency.cost import (
    estimate,
    invoke_instructions,
    op_instructions,
    segment_instructions,
)
from pexopt.latency.profile import load_profile
from pexopt.partial.bands import find_row_segments
from pexopt.partial.hybrid import find_hybrid_segments, hybrid_schedule, slice_ranges
from pexopt.plan.build import build_plan
from pexopt.plan.format import Plan, plan_from_dict
from pexopt.plan.validator import validate
from pexopt.schedule import SolverParams
from pexopt.simulate.arena import run_plan
from pexopt.simulate.reference import inputs_from_onnx, onnx_index, run_reference
from pexopt.simulate.verify import random_feeds, verify_plan
from pexopt.solver.bounds import split_bound
from pexopt.solver.cpsat_layout import solve_layout

# (name, layers) as in test_rows: inverted residual blocks and a strided one
BLOCKS = {
    "ir_k3s1": [("conv", 24, 1, 1, 0), ("dw", 3, 1, 1), ("conv", 4, 1, 1, 0)],
    "ir_k3s2": [("conv", 12, 3, 2, 1), ("relu",), ("dw", 3, 1, 1), ("conv", 4, 1, 1, 0)],
    "k1s2_nopad": [("conv", 8, 1, 1, 0), ("dw", 3, 2, 0), ("conv", 4, 1, 2, 0)],
}
WIDE = [("conv", 48, 1, 1, 0), ("dw", 3, 1, 1), ("conv", 8, 1, 1, 0)]  # 6x expansion


@pytest.fixture(scope="module")
def tmp_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hybrid")


@cache
def _block(tmp: Path, name: str, dtype: str = "int8") -> tuple[Path, Graph]:
    pytest.importorskip("onnxruntime.quantization")
    layers = WIDE if name == "wide" else BLOCKS[name]
    q = _chain_model(tmp / f"{name}.onnx", layers, h=12 if name == "wide" else 9,
                     c=8 if name == "wide" else 4)
    path = q if dtype == "int8" else tmp / f"{name}.onnx"  # the float model beside it
    return path, import_onnx(path, dtype=dtype)


def _exact(g: Graph, path: Path, plan: Plan) -> None:
    assert [str(v) for v in validate(plan, g)] == []
    assert verify_plan(plan, g, n_inputs=1, onnxruntime=False).exact


def test_candidates_keep_halo_rows_only_in_the_first_buffer(tmp_models: Path) -> None:
    """expand -> dw -> project and dw -> project are hybrid; project's 1x1 stride-2 input in
    k1s2_nopad is not read row for row, so only the chain starting at the dw qualifies."""
    _, g = _block(tmp_models, "ir_k3s1")
    chains = {s.ops for s in find_hybrid_segments(g)}
    assert chains == {(0, 1, 2), (1, 2)}
    _, g = _block(tmp_models, "k1s2_nopad")
    assert {s.ops for s in find_hybrid_segments(g)} == {(1, 2)}


def test_every_row_of_every_slice_once_and_band_sized_accumulator(tmp_models: Path) -> None:
    _, g = _block(tmp_models, "ir_k3s1")
    seg = next(s for s in find_hybrid_segments(g) if len(s.ops) == 3 and s.slice_width == 4)
    for h in seg.widths:
        steps, caps = hybrid_schedule(g, seg, h)
        for k in seg.ops:
            mode = "accumulate" if k == seg.ops[-1] else "band"
            cells = sorted((r, c) for s in steps if s.op == k and s.mode == mode
                           for r in range(s.r0, s.r1) for c in range(s.c0, s.c1))
            t = g.tensors[g.ops[k].inputs[0] if mode == "accumulate" else g.ops[k].outputs[0]]
            rows_of = g.tensors[g.ops[k].outputs[0]].shape[1]
            assert cells == [(r, c) for r in range(rows_of) for c in range(t.shape[-1])]
        assert caps[-1] == min(h, seg.channels)  # the accumulator holds one band
        req = [s for s in steps if s.mode == "requantize"]
        assert [(s.r0, s.r1) for s in req] == seg.slices(h)
    assert len(slice_ranges(g, seg)) == 6


# ------------------------------------------------------------------------- plans, simulation


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_every_height_and_width_is_bit_exact(tmp_models: Path, name: str) -> None:
    """Every hybrid candidate at every band height validates and equals the unsplit int8
    reference bit for bit."""
    path, g = _block(tmp_models, name)
    segs = find_hybrid_segments(g)
    assert segs
    for seg in segs:
        for h in sorted(set(seg.widths) | {1, 3}):
            plan = build_plan(g, manual_schedule(g, seg, h))
            assert any(s.rows and s.slice for s in plan.steps)
            _exact(g, path, plan)


def test_float_model_is_exact(tmp_models: Path) -> None:
    path, g = _block(tmp_models, "ir_k3s2", "float32")
    for seg in find_hybrid_segments(g):
        for h in (1, 2):
            _exact(g, path, build_plan(g, manual_schedule(g, seg, h)))


def test_plan_json_has_rows_and_slice_and_round_trips(tmp_models: Path) -> None:
    path, g = _block(tmp_models, "ir_k3s1")
    seg = next(s for s in find_hybrid_segments(g) if len(s.ops) == 3)
    plan = build_plan(g, manual_schedule(g, seg, 2))
    d = json.loads(plan.to_json())
    assert d["format"] == "pexopt-plan/2"
    both = [s for s in d["steps"] if s["rows"] and s["slice"]]
    assert {s["mode"] for s in both} == {"band", "accumulate"}
    assert any(s["mode"] == "requantize" and s["rows"] for s in d["steps"])
    kinds = {b["kind"] for b in d["buffers"]}
    assert {"band", "tile", "accumulator"} <= kinds
    acc = next(b for b in d["buffers"] if b["kind"] == "accumulator")
    out = g.tensors[seg.output]
    assert acc["size"] == 2 * out.shape[2] * out.shape[3] * 4  # two rows of int32
    (split,) = d["splits"]
    assert split["split"]["dim"] == "hybrid" and split["split"]["slice_width"] == 1
    again = plan_from_dict(json.loads(plan.to_json()))
    _exact(g, path, again)


def _dropped_slice(g: Graph, plan: Plan) -> dict:
    """The plan without the accumulate step of the second slice of the second band."""
    d = json.loads(plan.to_json())
    bands = sorted({tuple(s["rows"]) for s in d["steps"] if s["mode"] == "requantize"})
    k = [i for i, s in enumerate(d["steps"]) if s["mode"] == "accumulate"
         and tuple(s["rows"]) == bands[1]][1]
    drop_step(d, k)
    return d


def test_validator_refuses_a_dropped_slice_of_one_band(tmp_models: Path) -> None:
    path, g = _block(tmp_models, "ir_k3s1")
    seg = next(s for s in find_hybrid_segments(g) if len(s.ops) == 3 and s.slice_width == 4)
    d = _dropped_slice(g, build_plan(g, manual_schedule(g, seg, 2)))
    codes = {v.code for v in validate(plan_from_dict(d), g)}
    assert {"slice_coverage", "read_before_write"} <= codes
    msgs = [str(v) for v in validate(plan_from_dict(d), g)]
    assert all("\n" not in m for m in msgs)


def test_simulator_catches_a_dropped_slice_on_its_own(tmp_models: Path) -> None:
    """Without the validator, the arena run of the broken plan differs from the reference."""
    path, g = _block(tmp_models, "ir_k3s1")
    seg = next(s for s in find_hybrid_segments(g) if len(s.ops) == 3 and s.slice_width == 4)
    bad = plan_from_dict(_dropped_slice(g, build_plan(g, manual_schedule(g, seg, 2))))
    ox = onnx_index(path)
    params = load_params(ox, g)
    ins = inputs_from_onnx(g, random_feeds(g, ox, 1, 0)[0])
    ref = run_reference(g, params, ins)
    got = run_plan(bad, g, params, ins)
    name = g.tensors[g.outputs[0]].name
    assert not np.array_equal(got[name], ref[name])


def test_validator_refuses_a_short_band_accumulator(tmp_models: Path) -> None:
    path, g = _block(tmp_models, "ir_k3s1")
    seg = next(s for s in find_hybrid_segments(g) if len(s.ops) == 3)
    d = json.loads(build_plan(g, manual_schedule(g, seg, 2)).to_json())
    acc = next(b for b in d["buffers"] if b["kind"] == "accumulator")
    acc["size"] //= 2  # one row instead of two
    codes = {v.code for v in validate(plan_from_dict(d), g)}
    assert "size" in codes


def test_validator_catches_every_mutation_of_a_hybrid_plan(tmp_models: Path) -> None:
    """Shifted rows or slices, dropped fields, other modes, swapped steps: never a crash, and
    a mutated plan the validator accepts (steps swapped that do not depend on each other) still
    equals the reference."""
    import random

    path, g = _block(tmp_models, "ir_k3s1")
    seg = next(s for s in find_hybrid_segments(g) if len(s.ops) == 2 and s.slice_width == 4)
    base = json.loads(build_plan(g, manual_schedule(g, seg, 2)).to_json())
    rng = random.Random(0)
    for _ in range(150):
        d = json.loads(json.dumps(base))
        k = rng.randrange(len(d["steps"]))
        s, m = d["steps"][k], rng.randrange(6)
        if m == 0 and s["rows"]:
            s["rows"][rng.randrange(2)] += rng.choice([-1, 1])
        elif m == 1 and s["slice"]:
            s["slice"][rng.randrange(2)] += rng.choice([-1, 1])
        elif m == 2:
            s["rows"] = None
        elif m == 3:
            s["slice"] = None if s["slice"] else [0, 4]
        elif m == 4:
            s["mode"] = rng.choice(["band", "accumulate", "requantize", "halo", "slice"])
        else:
            j = rng.randrange(len(d["steps"]))
            d["steps"][k], d["steps"][j] = d["steps"][j], d["steps"][k]
            for i, st in enumerate(d["steps"]):
                st["index"] = i
        plan = plan_from_dict(d)
        if d != base and not validate(plan, g):
            assert verify_plan(plan, g, n_inputs=1, onnxruntime=False).exact, (m, s)


# ------------------------------------------------------------------------- C


@pytest.mark.parametrize("name", ["ir_k3s1", "ir_k3s2"])
def test_codegen_bit_exact_on_host(tmp_models: Path, tmp_path: Path, name: str,
                                   kernels_obj: Path) -> None:  # noqa: F811
    """Hybrid plans as C (portable kernels on band x slice geometry) equal the simulator."""
    path, g = _block(tmp_models, name)
    for seg in find_hybrid_segments(g):
        for h in (1, 2):
            plan = build_plan(g, manual_schedule(g, seg, h))
            out = tmp_path / f"c{seg.id}_{h}"
            emit_c(plan, g, path, out)
            src = (out / "pex_model.c").read_text()
            assert "pex_conv_acc_s8" in src and "pex_requantize_s8" in src
            ins, want = _expected(path, plan, g)
            got = _invoke(_build(out, kernels_obj), ins, want[0].size)
            for a, b in zip(got, want):
                assert np.array_equal(a, b), f"{name} seg {seg.ops} h {h}"


# ------------------------------------------------------------------------- solver


FAST = SolverParams(time_limit=20, workers=2, rows=True)


def test_hybrid_is_strictly_smaller_on_a_wide_block(tmp_models: Path) -> None:
    """6x expansion, 1x1 projection: bands of one slice of the depthwise output plus a
    band-sized accumulator beat rows alone (a band of every channel) and channels alone (a
    full-height accumulator)."""
    path, g = _block(tmp_models, "wide")
    hyb = solve_layout(g, FAST)
    rows = solve_layout(g, replace(FAST, hybrid=False))
    rows_alone = solve_layout(g, replace(FAST, channels=False))
    chans = solve_layout(g, replace(FAST, rows=False))
    assert hyb.arena < min(rows.arena, rows_alone.arena, chans.arena), \
        (hyb.arena, rows.arena, rows_alone.arena, chans.arena)
    assert hyb.status == "OPTIMAL"  # the bound counts hybrid segments
    plan = build_plan(g, hyb)
    (sp,) = [s for s in plan.splits if s["split"]["dim"] == "hybrid"]
    assert sp["streaming"]  # the output is written over input rows no later band reads
    _exact(g, path, plan)


def test_hybrid_plan_bit_exact_under_qemu(tmp_models: Path, qemu_tools: None) -> None:
    """The generated C of a hybrid plan on emulated Cortex-M4 equals the simulator."""
    from pexopt.pipeline import ImportOptions, solve_model
    from pexopt.target.measure import measure_plan

    path, _ = _block(tmp_models, "wide")
    res = solve_model(path, ImportOptions(), FAST, None)
    assert any(s["split"]["dim"] == "hybrid" for s in res.plan.splits)
    m = measure_plan(res.plan, res.graph, "cortex-m4")
    assert m.exact and m.instructions > 0


def test_cli_rows_uses_hybrid_and_no_hybrid_ablates_it(tmp_models: Path, tmp_path: Path
                                                       ) -> None:
    from conftest import run_cli

    path, _ = _block(tmp_models, "wide")
    arenas = {}
    for flag in ("--rows", "--no-hybrid"):
        out = tmp_path / f"{flag}.json"
        args = ["solve", path, "--rows", "--time-limit", "20", "--workers", "2", "-o", out]
        res = run_cli(*args, *(["--no-hybrid"] if flag == "--no-hybrid" else []))
        assert res.exit_code == 0, res.stdout
        d = json.loads(out.read_text())
        arenas[flag] = d["arena_bytes"]
        assert any(s["split"]["dim"] == "hybrid" for s in d["splits"]) == (flag == "--rows")
    assert arenas["--rows"] < arenas["--no-hybrid"]


@pytest.mark.parametrize("name", ["ir_k3s1", "ir_k3s2"])
def test_bound_never_exceeds_a_hybrid_plan(tmp_models: Path, name: str) -> None:
    _, g = _block(tmp_models, name)
    segs = find_hybrid_segments(g)
    lb = split_bound(g, segs + find_row_segments(g, len(segs), single=True))
    for seg in segs:
        for h in seg.widths:
            sched = manual_schedule(g, seg, h)
            assert lb <= build_plan(g, sched).arena_bytes


def test_latency_cost_is_the_sum_of_the_plan_steps(tmp_models: Path) -> None:
    """segment_instructions of a hybrid segment is what its plan steps cost, and the solver's
    linear form equals the plan's estimate."""
    _, g = _block(tmp_models, "ir_k3s1")
    m4 = load_profile("cortex-m4")
    seg = next(s for s in find_hybrid_segments(g) if len(s.ops) == 3)
    for h in (1, 3):
        sched = manual_schedule(g, seg, h)
        plan = build_plan(g, sched)
        est = estimate(m4, g, plan).instructions
        whole = sum(op_instructions(m4, g, k) for k in range(len(g.ops)) if k not in seg.ops)
        assert whole + segment_instructions(m4, g, seg, h) + invoke_instructions(m4, g) == \
            pytest.approx(est, rel=1e-12)
    # more kernel calls than running the ops whole
    assert segment_instructions(m4, g, seg, 3) > sum(op_instructions(m4, g, k) for k in seg.ops)
