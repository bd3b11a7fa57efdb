"""Row-band execution (issue #7): geometry, band schedules, plans, the row validator, bit-exact
simulation of every band height on small int8 chains (kernels 1/3/5/7, strides 1/2, padding,
depthwise, pools, residual Add), streaming in place, the solver and MobileNetV2-0.35 at 144.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import conv_weights, make_onnx, vi
from onnx import helper

from pexopt.codegen import emit_c
from pexopt.errors import PexError
from pexopt.frontend.onnx_import import import_onnx
from pexopt.graph.ir import ConvAttrs, Graph, Op
from pexopt.graph.rows import input_rows
from pexopt.ops import SPECS, OpKind, Rows
from pexopt.partial.bands import band_schedule, find_row_segments, stream_union
from pexopt.partial.candidates import Segment
from pexopt.plan.build import build_plan
from pexopt.plan.format import Plan, plan_from_dict
from pexopt.plan.validator import validate
from pexopt.schedule import Schedule, SolverParams
from pexopt.simulate.verify import verify_plan
from pexopt.solver.bounds import split_bound
from pexopt.solver.cpsat_layout import solve_layout

ROOT = Path(__file__).resolve().parents[1]
MBV2 = ROOT / "models" / "mbv2_w035_r144_int8.onnx"


def _quantize(model: onnx.ModelProto) -> onnx.ModelProto:
    spec = importlib.util.spec_from_file_location("build_models", ROOT / "models" /
                                                  "build_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.quantize(model)


# ------------------------------------------------------------------------- geometry


def test_every_kind_has_a_row_mode() -> None:
    assert all(isinstance(SPECS[k].rows, Rows) for k in OpKind)
    assert SPECS[OpKind.CONV].rows == Rows.WINDOW and SPECS[OpKind.ADD].rows == Rows.POINTWISE
    assert SPECS[OpKind.SOFTMAX].rows == Rows.NONE


@pytest.mark.parametrize("k,s,pad,dil", [(1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 1),
                                         (7, 2, 3, 1), (2, 2, 0, 1), (3, 1, 2, 2)])
def test_input_rows_is_the_exact_window(k: int, s: int, pad: int, dil: int) -> None:
    """input_rows equals brute force: the rows any tap of any output row touches."""
    from pexopt.graph.ir import Tensor

    h_in = 13
    h_out = (h_in + 2 * pad - dil * (k - 1) - 1) // s + 1
    g = Graph("g", (Tensor(0, "x", (1, h_in, 4, 2), "int8", h_in * 8),
                    Tensor(1, "y", (1, h_out, 4, 2), "int8", h_out * 8)),
              (Op(0, "c", OpKind.CONV, "Conv", (0,), (1,),
                  attrs=ConvAttrs((k, 1), (s, 1), (dil, 1), (pad, 0, pad, 0), 1)),), (0,), (1,),
              "int8")
    for r0 in range(h_out):
        for r1 in range(r0 + 1, h_out + 1):
            touched = {r * s - pad + i * dil for r in range(r0, r1) for i in range(k)}
            touched = {x for x in touched if 0 <= x < h_in}
            lo, hi = input_rows(g, g.ops[0], 0, r0, r1)
            if not touched:
                assert lo == hi
            elif dil == 1:
                assert (lo, hi) == (min(touched), max(touched) + 1)
            else:  # a dilated window may start at a padding row: conservative, never short
                assert lo <= min(touched) and hi >= max(touched) + 1


# ------------------------------------------------------------------------- small int8 chains

# (name, layers): conv = ("conv", cout, k, stride, pad), ("dw", k, stride, pad),
# ("maxpool"|"avgpool", k, stride, pad), ("relu",), ("add",) adds the block input back.
CHAINS = {
    "k3s1": [("conv", 8, 3, 1, 1), ("dw", 3, 1, 1), ("conv", 4, 1, 1, 0)],
    "k3s2": [("conv", 8, 3, 2, 1), ("dw", 3, 1, 1), ("conv", 4, 1, 1, 0)],
    "k5s2_k7": [("conv", 6, 5, 2, 2), ("relu",), ("dw", 7, 1, 3), ("conv", 4, 1, 1, 0)],
    "k1s2_nopad": [("conv", 8, 1, 1, 0), ("dw", 3, 2, 0), ("conv", 4, 1, 2, 0)],
    "pools": [("conv", 8, 3, 1, 1), ("maxpool", 3, 2, 1), ("avgpool", 3, 1, 1),
              ("conv", 4, 1, 1, 0)],
    "residual": [("conv", 8, 1, 1, 0), ("dw", 3, 1, 1), ("conv", 3, 1, 1, 0), ("add",),
                 ("conv", 4, 3, 2, 1)],
}


def _chain_model(path: Path, layers: list[tuple], h: int = 17, c: int = 3) -> Path:
    nodes, inits = [], []
    x, cin, hh = "input", c, h  # the name build_models.quantize feeds
    for i, layer in enumerate(layers):
        y = f"t{i}"
        kind = layer[0]
        if kind in ("conv", "dw"):
            cout, k, s, p = (layer[1], *layer[2:]) if kind == "conv" else (cin, *layer[1:])
            group = cin if kind == "dw" else 1
            inits.append(conv_weights(f"w{i}", cout, cin // group, k, k, seed=i))
            nodes.append(helper.make_node("Conv", [x, f"w{i}"], [y], kernel_shape=[k, k],
                                          strides=[s, s], pads=[p] * 4, group=group))
            cin, hh = cout, (hh + 2 * p - k) // s + 1
        elif kind in ("maxpool", "avgpool"):
            k, s, p = layer[1:]
            op = "MaxPool" if kind == "maxpool" else "AveragePool"
            nodes.append(helper.make_node(op, [x], [y], kernel_shape=[k, k], strides=[s, s],
                                          pads=[p] * 4))
            hh = (hh + 2 * p - k) // s + 1
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [x], [y]))
        else:  # add the model input back (same shape)
            nodes.append(helper.make_node("Add", [x, "input"], [y]))
        x = y
    fp = make_onnx(path, nodes, [vi("input", [1, c, h, h])], [vi(x, [1, cin, hh, hh])], inits)
    qp = path.with_name(path.stem + "_int8.onnx")
    onnx.save(_quantize(onnx.load(str(fp))), str(qp))
    return qp


@cache
def _chain(tmp: Path, name: str) -> tuple[Path, Graph]:
    pytest.importorskip("onnxruntime.quantization")
    path = _chain_model(tmp / f"{name}.onnx", CHAINS[name])
    return path, import_onnx(path, dtype="int8")


@pytest.fixture(scope="module")
def tmp_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rows")


def manual_schedule(g: Graph, seg: Segment, h: int, stream: bool = False,
                    align: int = 4) -> Schedule:
    """File order, seg in bands of h rows, every other tensor at its own offset (no reuse);
    with `stream`, the output at offset(input) + delta inside their union box."""
    def up(x: int) -> int:
        return (x + align - 1) // align * align

    offsets: dict[int, int] = {}
    at = 0
    union = stream_union(g, seg, h, align) if stream else None
    a = g.ops[seg.ops[0]].inputs[0]
    if union is not None:
        delta, low, size = union
        offsets[a], offsets[seg.output] = -low, -low + delta
        at = up(size)
    for t in g.tensors:
        if t.id in offsets or t.id in seg.internal or t.external or t.nbytes == 0:
            continue
        offsets[t.id] = at
        at += up(t.nbytes)
    p = SolverParams(align=align)
    return Schedule(list(range(len(g.ops))), offsets, {}, 0, 0, "FEASIBLE", 0.0, params=p,
                    segments=[seg], splits={seg.id: h}, workspace={seg.id: at},
                    streams={seg.id} if union is not None else set())


def _longest(g: Graph) -> Segment:
    return max(find_row_segments(g, 0, 8, 6, single=True), key=lambda s: len(s.ops))


def _check(g: Graph, path: Path, plan: Plan) -> None:
    assert [str(v) for v in validate(plan, g)] == []
    rep = verify_plan(plan, g, n_inputs=1, onnxruntime=False)
    assert rep.exact


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_every_band_height_is_bit_exact(tmp_models: Path, name: str) -> None:
    """The longest row segment of each chain at every admissible height (and height 1..3):
    the plan validates and the arena simulation equals the unsplit reference bit for bit."""
    path, g = _chain(tmp_models, name)
    seg = _longest(g)
    assert len(seg.ops) == len(g.ops)  # the whole chain is one candidate
    for h in sorted(set(seg.widths) | {1, 2, 3}):
        plan = build_plan(g, manual_schedule(g, seg, h))
        assert any(s.mode == "band" for s in plan.steps)
        _check(g, path, plan)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_streaming_in_place_is_bit_exact(tmp_models: Path, name: str) -> None:
    """The chain output written over its input at the offset `stream_union` allows."""
    path, g = _chain(tmp_models, name)
    seg = _longest(g)
    for h in (1, 2, max(seg.widths)):
        sched = manual_schedule(g, seg, h, stream=True)
        a = g.ops[seg.ops[0]].inputs[0]
        lo_a, lo_b = sched.offsets[a], sched.offsets[seg.output]
        assert lo_b < lo_a + g.tensors[a].nbytes  # they really share bytes
        _check(g, path, build_plan(g, sched))


def test_halo_rows_are_kept_not_recomputed(tmp_models: Path) -> None:
    """Each op computes each row once; a 3x3 chain needs halo moves and small band buffers."""
    _, g = _chain(tmp_models, "k3s1")
    seg = _longest(g)
    steps, caps = band_schedule(g, seg, 2)
    for k in seg.ops:
        rows = [r for s in steps if s.op == k and s.mode == "band" for r in range(s.r0, s.r1)]
        assert sorted(rows) == list(range(g.tensors[g.ops[k].outputs[0]].shape[1]))
    assert any(s.mode == "halo" for s in steps)
    assert all(rows <= 2 + 2 for _, rows in caps)  # band + halo rows, never the tensor


# ------------------------------------------------------------------------- the validator


def _band_plan(tmp_models: Path, name: str = "k3s1", h: int = 2, stream: bool = False
               ) -> tuple[Graph, dict]:
    _, g = _chain(tmp_models, name)
    plan = build_plan(g, manual_schedule(g, _longest(g), h, stream))
    return g, json.loads(plan.to_json())


def _codes(g: Graph, d: dict) -> set[str]:
    return {v.code for v in validate(plan_from_dict(d), g)}


def drop_step(d: dict, k: int) -> None:
    """Remove step k from a plan dict, keeping indices and lifetimes consistent."""
    del d["steps"][k]
    for i, s in enumerate(d["steps"]):
        s["index"] = i
    for b in d["buffers"]:
        b["first_step"] -= b["first_step"] > k
        b["last_step"] -= b["last_step"] >= k


def test_validator_rejects_a_dropped_halo_move(tmp_models: Path) -> None:
    g, d = _band_plan(tmp_models)
    assert _codes(g, d) == set()
    drop_step(d, next(i for i, s in enumerate(d["steps"]) if s["mode"] == "halo"))
    assert {"band_row", "size"} & _codes(g, d)


def test_validator_rejects_a_short_band_buffer(tmp_models: Path) -> None:
    g, d = _band_plan(tmp_models)
    b = next(b for b in d["buffers"] if b["kind"] == "band")
    row = b["size"] // max(1, len(d["splits"][0]["band_rows"]) and
                           d["splits"][0]["band_rows"][b["tensor"]])
    b["size"] -= row
    assert "size" in _codes(g, d)


def test_validator_rejects_rows_computed_twice_or_never(tmp_models: Path) -> None:
    g, d = _band_plan(tmp_models)
    k = next(i for i, s in enumerate(d["steps"]) if s["mode"] == "band" and s["rows"][0] > 0)
    d2 = copy.deepcopy(d)
    d2["steps"][k]["rows"][0] -= 1
    assert "duplicate_op" in _codes(g, d2)
    d3 = copy.deepcopy(d)
    d3["steps"][k]["rows"][0] += 1
    assert "row_coverage" in _codes(g, d3)


def test_validator_rejects_streaming_too_far(tmp_models: Path) -> None:
    """Moving the streamed output one row lower overwrites input rows still to be read."""
    g, d = _band_plan(tmp_models, stream=True, h=1)
    assert _codes(g, d) == set()
    out = g.tensors[g.outputs[0]]
    b = next(b for b in d["buffers"] if b["tensor"] == out.name and b["kind"] == "tensor")
    b["offset"] += out.nbytes // out.shape[1] * 4
    d["arena_bytes"] = max(x["offset"] + x["size"] for x in d["buffers"])
    assert "stream" in _codes(g, d) or "overlap" in _codes(g, d)


def test_version_1_plans_still_load(tmp_models: Path) -> None:
    g, d = _band_plan(tmp_models)
    assert d["format"] == "pexopt-plan/2"
    flat = build_plan(g, solve_layout(g, SolverParams(time_limit=5, workers=1, split=False)))
    v1 = json.loads(flat.to_json())
    v1["format"] = "pexopt-plan/1"
    for s in v1["steps"]:
        del s["rows"]
    assert validate(plan_from_dict(v1), g) == []
    with pytest.raises(PexError, match="format"):
        plan_from_dict({**v1, "format": "pexopt-plan/3"})


def test_codegen_compiles_band_plans(tmp_models: Path, tmp_path: Path) -> None:
    """A band plan becomes C (bit-exactness: tests/test_codegen_rows.py): band steps name
    their rows, halo steps move rows."""
    g, d = _band_plan(tmp_models)
    path, _ = _chain(tmp_models, "k3s1")
    emit_c(plan_from_dict(d), g, path, tmp_path / "out")
    src = (tmp_path / "out" / "pex_model.c").read_text()
    assert " band rows [" in src and " halo rows [" in src


# ------------------------------------------------------------------------- the solver


@pytest.mark.parametrize("name", ["k3s2", "residual"])
def test_solver_bands_are_valid_and_never_worse(tmp_models: Path, name: str) -> None:
    """Rows on never lose to rows off; the bound stays below the arena; the plan is exact."""
    path, g = _chain(tmp_models, name)
    base = {"time_limit": 20.0, "workers": 1, "seed": 0, "rows": True}
    off = solve_layout(g, SolverParams(**{**base, "rows": False}))
    on = solve_layout(g, SolverParams(**base))
    nostream = solve_layout(g, SolverParams(**base, stream=False))
    assert on.arena <= nostream.arena <= off.arena
    assert on.bound <= on.arena and nostream.bound <= nostream.arena
    assert on.arena < off.arena  # the input image is worth streaming over here
    _check(g, path, build_plan(g, on))
    _check(g, path, build_plan(g, nostream))


@pytest.mark.parametrize("name", ["k3s1", "pools"])
def test_row_bound_never_exceeds_a_plan(tmp_models: Path, name: str) -> None:
    """The split bound with row segments is below every hand-made band plan's arena."""
    _, g = _chain(tmp_models, name)
    rows = find_row_segments(g, 0, 6, 6, single=True)
    lb = split_bound(g, rows)
    for seg in rows:
        for h in seg.widths:
            for stream in (False, True):
                plan = build_plan(g, manual_schedule(g, seg, h, stream, align=1))
                assert lb <= plan.arena_bytes


def test_mbv2_144_rows_and_streaming() -> None:
    """MobileNetV2-0.35 at 144x144 int8, input counted: channel split 145,152 B; row bands
    without streaming 92,736 B; with streaming 66,816 B, proven optimal; bit-exact."""
    if not MBV2.is_file():
        pytest.skip("bundled models not built")
    g = import_onnx(MBV2, dtype="int8")
    base = {"time_limit": 60.0, "workers": 2, "seed": 0, "rows": True}
    chan = solve_layout(g, SolverParams(**{**base, "rows": False}))
    rows = solve_layout(g, SolverParams(**base, stream=False))
    both = solve_layout(g, SolverParams(**base))
    assert chan.arena == 145_152
    assert rows.arena == 92_736 and rows.status == "OPTIMAL"
    assert both.arena == 66_816 and both.status == "OPTIMAL" and both.seconds < 120
    assert both.streams
    for s in (rows, both):
        plan = build_plan(g, s)
        assert validate(plan, g) == []
        assert verify_plan(plan, g, n_inputs=1, onnxruntime=False).exact


def _mbv2(external: bool) -> Graph:
    if not MBV2.is_file():
        pytest.skip("bundled models not built")
    return import_onnx(MBV2, dtype="int8", input_external=external)


def test_row_plan_heuristic_alone_streams_mbv2_144() -> None:
    """The constructive row plan (no CP-SAT) from the greedy layout, input external: at most
    40,000 B with streaming, valid and bit-exact; the same plan on every call."""
    from pexopt.partial.candidates import find_segments
    from pexopt.solver.cpsat_layout import greedy_schedule
    from pexopt.solver.rows_greedy import row_plan

    g = _mbv2(True)
    p = SolverParams(rows=True, target="cortex-m4")
    segs = find_segments(g, p.max_segment_len, p.max_widths, p.slice_widths)
    segs += find_row_segments(g, len(segs), p.max_segment_len, p.max_heights, single=True)
    start = greedy_schedule(g, list(range(len(g.ops))), p)
    plan = row_plan(g, p, segs, start, seconds=600)
    again = row_plan(g, p, segs, start, seconds=600)
    assert plan is not None and again is not None
    assert plan.arena <= 40_000 and plan.streams
    assert (plan.offsets, plan.splits, plan.streams) == (again.offsets, again.splits,
                                                         again.streams)
    built = build_plan(g, plan)
    assert validate(built, g) == []
    assert verify_plan(built, g, n_inputs=1, onnxruntime=False).exact


@pytest.mark.parametrize("external,limit", [(True, 40_000), (False, 70_000)])
def test_mbv2_144_rows_early(external: bool, limit: int) -> None:
    """Issue #7 targets at a short time limit on 2 workers (the greedy row plan is the hint and
    the fallback): input external <= 40,000 B, input counted <= 70,000 B; never above the
    bound-free channel-only stage; the plan validates."""
    g = _mbv2(external)
    sched = solve_layout(g, SolverParams(rows=True, target="cortex-m4", time_limit=15.0,
                                         workers=2))
    assert sched.arena <= limit and sched.bound <= sched.arena
    assert sched.streams
    assert validate(build_plan(g, sched), g) == []


def test_tinyengine_vww_rows_never_above_channel_only(shared_models_dir: Path) -> None:
    """The rows plan is never larger than the channel-only plan (issue #7), and <= 40,000 B."""
    g = import_onnx(shared_models_dir / "tinyengine_vww.onnx", dtype="int8")
    base = {"target": "cortex-m4", "time_limit": 15.0, "workers": 2}
    chan = solve_layout(g, SolverParams(**base))
    rows = solve_layout(g, SolverParams(**base, rows=True))
    assert rows.arena <= chan.arena and rows.arena <= 40_000
    assert validate(build_plan(g, rows), g) == []


def test_cli_solve_bands_then_codegen(tmp_models: Path, tmp_path: Path) -> None:
    """`solve` plans row bands (by default; `--no-rows` does not); `codegen` and `--emit-c`
    compile them."""
    from typer.testing import CliRunner

    from pexopt.cli import app

    path, _ = _chain(tmp_models, "k3s2")
    runner = CliRunner()
    fast = ["--time-limit", "5", "--workers", "1", "--quiet"]
    plan = tmp_path / "plan.json"
    res = runner.invoke(app, ["solve", str(path), "-o", str(plan), "--rows", *fast])
    assert res.exit_code == 0, res.stderr
    assert any(s["mode"] == "band" for s in json.loads(plan.read_text())["steps"])
    res = runner.invoke(app, ["codegen", str(plan), str(path), "-o", str(tmp_path / "c")])
    assert res.exit_code == 0, res.stderr
    assert " band rows [" in (tmp_path / "c" / "pex_model.c").read_text()
    flat = tmp_path / "flat.json"
    res = runner.invoke(app, ["solve", str(path), "-o", str(flat), "--no-rows", *fast])
    assert res.exit_code == 0
    assert not any(s["mode"] == "band" for s in json.loads(flat.read_text())["steps"])
    default = tmp_path / "default.json"
    res = runner.invoke(app, ["solve", str(path), "-o", str(default), *fast])
    assert res.exit_code == 0
    assert json.loads(default.read_text()) == json.loads(plan.read_text())
    res = runner.invoke(app, ["solve", str(path), "--rows", "--emit-c", str(tmp_path / "c3"),
                              *fast])
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "c3" / "pex_model.c").is_file()


def test_simulator_catches_a_wrong_halo_on_its_own(tmp_models: Path) -> None:
    """Without the validator: keeping one row too few in a halo move gives wrong outputs (or a
    simulation error), never a lucky right answer."""
    from pexopt.frontend.onnx_params import load_params
    from pexopt.simulate.arena import SimulationError, run_plan
    from pexopt.simulate.reference import inputs_from_onnx, onnx_index, run_reference
    from pexopt.simulate.verify import random_feeds

    path, g = _chain(tmp_models, "k3s1")
    plan = build_plan(g, manual_schedule(g, _longest(g), 2))
    ox = onnx_index(path)
    params = load_params(ox, g)
    x = inputs_from_onnx(g, random_feeds(g, ox, 1, seed=0)[0])
    ref = run_reference(g, params, x)
    name = g.tensors[g.outputs[0]].name
    assert np.array_equal(run_plan(plan, g, params, x)[name], ref[name])
    halo = next(s for s in plan.steps if s.mode == "halo" and s.rows[1] - s.rows[0] >= 1)
    halo.rows = [halo.rows[0] + 1, halo.rows[1]]
    assert validate(plan, g) != []
    try:
        got = run_plan(plan, g, params, x)[name]
    except SimulationError:
        return
    assert not np.array_equal(got, ref[name])
