"""The byte-exact arena simulator: it must catch corrupted layouts, respect the input/output
conventions, and run float plans within tolerance."""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from pexopt.frontend.onnx_import import import_onnx
from pexopt.frontend.onnx_params import OpParams, load_params
from pexopt.graph.ir import Graph
from pexopt.plan.build import build_plan
from pexopt.plan.format import Buffer, Plan
from pexopt.plan.validator import validate
from pexopt.schedule import SolverParams
from pexopt.simulate.arena import SimulationError, run_plan
from pexopt.simulate.reference import inputs_from_onnx, onnx_index, run_reference
from pexopt.simulate.verify import random_feeds, verify_plan
from pexopt.solver.cpsat_layout import solve_layout

PARAMS = SolverParams(time_limit=10, workers=2, rows=False)


@cache
def setup(path: str, split: bool = True, external: bool = False
          ) -> tuple[Graph, Plan, dict[int, OpParams], list[dict[str, np.ndarray]]]:
    """(graph, plan, kernel params, two IR inputs) for a model."""
    g = import_onnx(path, input_external=external)
    # channel-split plans: with streaming in place some overlaps of live buffers are legal, so
    # these mutations (any overlap is a bug) do not apply to row-band plans (tests/test_rows.py)
    s = solve_layout(g, SolverParams(time_limit=10, workers=2, split=split, rows=False))
    plan = build_plan(g, s)
    assert validate(plan, g) == []
    ox = onnx_index(path)
    feeds = [inputs_from_onnx(g, f) for f in random_feeds(g, ox, 2, seed=0)]
    return g, plan, load_params(ox, g), feeds


# ------------------------------------------------------------------------- mutations


def _handover(plan: Plan, a: Buffer, b: Buffer) -> bool:
    """The two lifetimes meet at one step only, where the step reads one buffer for the last
    time and writes the other for the first time (a producer -> consumer handover)."""
    lo, hi = max(a.first_step, b.first_step), min(a.last_step, b.last_step)
    if lo != hi:
        return False
    st = plan.steps[lo]
    return any(x.name in st.reads and y.name in st.writes and y.first_step == lo == x.last_step
               for x, y in ((a, b), (b, a)))


def mutations(plan: Plan) -> list[tuple[int, int]]:
    """(i, j): move buffer i onto buffer j's offset; their step ranges intersect, they are no
    alias pair, the offsets differ and i stays inside the arena."""
    res = []
    bs = plan.buffers
    for i, a in enumerate(bs):
        for j, b in enumerate(bs):
            if i == j or a.first_step > b.last_step or b.first_step > a.last_step:
                continue
            if a.alias_of == b.name or b.alias_of == a.name:
                continue
            if a.offset == b.offset or b.offset + a.size > plan.arena_bytes:
                continue
            res.append((i, j))
    return res


def run_mutations(path: str, split: bool) -> dict:
    """Apply every mutation; which ones the validator and the simulation catch."""
    g, plan, params, feeds = setup(path, split)
    refs = [run_reference(g, params, f) for f in feeds]
    outs = [g.tensors[t].name for t in g.outputs]
    result = {"n": 0, "flagged": 0, "detected": 0, "escaped": [], "by_kind": Counter(),
              "caught_by_kind": Counter()}
    for i, j in mutations(plan):
        a, b = plan.buffers[i], plan.buffers[j]
        old = a.offset
        a.offset = b.offset
        try:
            codes = {v.code for v in validate(plan, g)}
            wrong = False
            for feed, ref in zip(feeds, refs):  # like verify_plan: two random inputs
                try:
                    got = run_plan(plan, g, params, feed, seed=1)
                except SimulationError:
                    wrong = True
                else:
                    wrong = any(not np.array_equal(got[o], ref[o]) for o in outs)
                if wrong:
                    break
        finally:
            a.offset = old
        kind = "handover" if _handover(plan, a, b) else "other"
        result["n"] += 1
        result["by_kind"][kind] += 1
        result["flagged"] += "overlap" in codes
        result["detected"] += wrong
        result["caught_by_kind"][kind] += wrong
        if not wrong:
            result["escaped"].append(
                f"{kind}: '{a.name}' ({a.kind}, steps {a.first_step}..{a.last_step}, "
                f"{a.size} B) moved onto '{b.name}' ({b.kind}, steps {b.first_step}.."
                f"{b.last_step}, offset {b.offset})")
    return result


CASES = [("models", "mbv2_w035_r144_int8", True), ("shared", "mlperf_vww_96_int8", True),
         ("shared", "mlperf_vww_96_int8", False)]
IDS = ["mbv2_144-split", "vww-split", "vww-layer-by-layer"]


@cache
def mutation_result(path: str, split: bool) -> dict:
    return run_mutations(path, split)


def _path(where: str, name: str, models_dir: Path, shared_models_dir: Path | None) -> str:
    base = models_dir if where == "models" else shared_models_dir
    return str(base / f"{name}.onnx")


@pytest.fixture
def case_path(request: pytest.FixtureRequest, models_dir: Path) -> tuple[str, bool]:
    where, name, split = request.param
    shared = request.getfixturevalue("shared_models_dir") if where == "shared" else None
    return _path(where, name, models_dir, shared), split


@pytest.mark.parametrize("case_path", CASES, ids=IDS, indirect=True)
def test_validator_flags_every_mutation(case_path: tuple[str, bool]) -> None:
    r = mutation_result(*case_path)
    assert r["n"] >= 50
    assert r["flagged"] == r["n"]


@pytest.mark.parametrize("case_path", CASES, ids=IDS, indirect=True)
def test_simulation_detects_mutations(case_path: tuple[str, bool]) -> None:
    """Every mutation overlaps two live buffers; the run must give wrong outputs."""
    r = mutation_result(*case_path)
    print(f"\n{case_path[0]} split={case_path[1]}: {r['detected']}/{r['n']} detected; "
          f"by kind {dict(r['caught_by_kind'])} of {dict(r['by_kind'])}")
    for e in r["escaped"]:
        print("  escaped:", e)
    # a handover can escape legitimately: the kernel reads each input element before it writes
    # the overlapping output bytes (streaming in place), so the outputs stay right; the share of
    # such cases depends on the layout the solver picked, hence a margin, not an exact count
    assert r["caught_by_kind"]["other"] == r["by_kind"]["other"], r["escaped"]
    assert r["detected"] >= 0.9 * r["n"], (
        f"{r['n'] - r['detected']} of {r['n']} mutations escaped the simulation "
        f"({r['by_kind']['handover'] - r['caught_by_kind']['handover']} of them handovers: "
        "an op's output placed over an input that dies at that op)")


@pytest.mark.parametrize("case_path", CASES[:2], ids=IDS[:2], indirect=True)
def test_simulation_detects_overlaps_beyond_a_handover(case_path: tuple[str, bool]) -> None:
    """Overlaps that last more than the single handover step corrupt data that is read later."""
    r = mutation_result(*case_path)
    n, caught = r["by_kind"]["other"], r["caught_by_kind"]["other"]
    assert n >= 4
    assert caught >= 0.95 * n, [e for e in r["escaped"] if e.startswith("other")]


# ------------------------------------------------------------------------- conventions


def test_int8_inputs_are_nhwc_int8(models_dir: Path, shared_models_dir: Path) -> None:
    # bundled QDQ model: the ONNX input is float NCHW, quantised by a QuantizeLinear
    path = str(models_dir / "mbv2_w035_r144_int8.onnx")
    g = import_onnx(path)
    ox = onnx_index(path)
    feeds = random_feeds(g, ox, 2, seed=0)
    assert len(feeds) == 2
    f = feeds[0]["input"]
    assert f.dtype == np.float32 and f.shape == (1, 3, 144, 144)
    again = random_feeds(g, ox, 2, seed=0)
    assert np.array_equal(again[1]["input"], feeds[1]["input"])
    x = inputs_from_onnx(g, feeds[0])["input"]
    t = g.tensors[g.inputs[0]]
    assert x.dtype == np.int8 and x.shape == t.shape == (1, 144, 144, 3)
    q = t.qparams
    want = np.clip(np.rint(f.transpose(0, 2, 3, 1).astype(np.float64) / q.scale)
                   + q.zero_point, -128, 127).astype(np.int8)
    assert np.array_equal(x, want)
    # a TFLite-converted model: the ONNX input is already int8 NHWC
    path = str(shared_models_dir / "mlperf_vww_96_int8.onnx")
    g = import_onnx(path)
    f = random_feeds(g, onnx_index(path), 1, seed=0)[0]
    (name, arr), = f.items()
    assert arr.dtype == np.int8 and arr.shape == (1, 96, 96, 3)
    x = inputs_from_onnx(g, f)[name]
    assert x.dtype == np.int8 and x.shape == g.tensors[g.inputs[0]].shape
    assert np.array_equal(x, arr)


@pytest.mark.parametrize("name", ["mlperf_vww_96_int8", "mbv2_w035_r144_int8"])
def test_external_input_same_outputs(name: str, models_dir: Path,
                                     shared_models_dir: Path) -> None:
    base = models_dir if name.startswith("mbv2") else shared_models_dir
    path = str(base / f"{name}.onnx")
    g, plan, params, (feed, _) = setup(path)
    ge, plan_e, params_e, _ = setup(path, external=True)
    tin = ge.tensors[ge.inputs[0]]
    assert tin.external and tin.name not in {b.name for b in plan_e.buffers}
    assert plan_e.input_external and plan_e.arena_bytes < plan.arena_bytes
    x = {k: v.copy() for k, v in feed.items()}
    a = run_plan(plan, g, params, x)
    b = run_plan(plan_e, ge, params_e, x)
    ref = run_reference(g, params, feed)
    assert all(np.array_equal(x[k], feed[k]) for k in x)  # the caller's input is untouched
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
        assert np.array_equal(a[k], ref[k]), k


def test_float_model_plan(models_dir: Path) -> None:
    path = models_dir / "mbv2_w035_r96.onnx"
    g = import_onnx(path, dtype="float32")
    assert g.dtype == "float32"
    s = solve_layout(g, PARAMS)
    plan = build_plan(g, s)
    assert plan.splits, "the float plan should use partial execution"
    assert validate(plan, g) == []
    ox = onnx_index(path)
    params = load_params(ox, g)
    feed = inputs_from_onnx(g, random_feeds(g, ox, 1, seed=0)[0])
    got = run_plan(plan, g, params, feed)
    ref = run_reference(g, params, feed)
    for k, y in got.items():
        assert y.dtype == np.float32
        span = max(float(np.ptp(ref[k])), 1e-12)
        assert float(np.max(np.abs(y - ref[k]))) <= 1e-4 * span
    rep = verify_plan(plan, g, n_inputs=1)
    assert rep.exact and rep.max_error <= 1e-4
    assert rep.ort_max_error is not None and rep.ort_max_error <= 1e-4
    assert rep.ort_top1 == 1.0
