"""Partial execution (channel splits): candidates, the figures of the notes, plan structure,
bit-exact simulation of every split plan, bound validity and determinism. Row bands are off here
(`rows=False`): these figures are the channel-split ones; row bands are tests/test_rows.py's.

Figures: /work/shared/notes/partial-execution.md (int8 unless noted, graph input counted).
"""

from __future__ import annotations

import importlib.util
import math
import random
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import BUNDLED_ALL, SHARED_MODELS, const, conv_weights, make_onnx, vi
from onnx import helper

from pexopt.frontend.onnx_import import import_onnx
from pexopt.graph.ir import Graph, Op, Tensor
from pexopt.ops import OpKind
from pexopt.partial.candidates import Segment, SplitSpec, channels, find_segments
from pexopt.plan.build import build_plan
from pexopt.plan.format import Plan
from pexopt.plan.validator import validate
from pexopt.schedule import Schedule, SolverParams
from pexopt.simulate.verify import verify_plan
from pexopt.solver.bounds import split_bound
from pexopt.solver.cpsat_layout import solve_layout

ROOT = Path(__file__).resolve().parents[1]
MBV2_144 = "mbv2_w035_r144_int8"
FIG = {"time_limit": 30.0, "workers": 2}  # the figures' solver settings
FAST = {"time_limit": 10.0, "workers": 2}  # the sweep over every model


@cache
def load(path: str, external: bool = False, dtype: str = "int8") -> Graph:
    return import_onnx(path, dtype=dtype, input_external=external)


@cache
def solve(path: str, external: bool = False, dtype: str = "int8",
          **kw: object) -> tuple[Graph, Schedule, Plan]:
    """(graph, schedule, plan), cached per module run (the same solve serves several tests)."""
    g = load(path, external, dtype)
    s = solve_layout(g, SolverParams(rows=False, **kw))
    return g, s, build_plan(g, s)


def names(g: Graph, seg: Segment) -> tuple[str, ...]:
    return tuple(g.ops[k].name for k in seg.ops)


def bundled(models_dir: Path, name: str) -> str:
    return str(models_dir / f"{name}.onnx")


# ------------------------------------------------------------------------- capabilities


def test_split_spec_is_a_channel_split() -> None:
    spec = SplitSpec(dim="channel", extent=4)
    assert (spec.dim, spec.extent, spec.halo) == ("channel", 4, 0)
    with pytest.raises(AttributeError):
        spec.dim = "rows"  # type: ignore[misc]  # frozen


def test_mbv2_segments(models_dir: Path) -> None:
    g = load(bundled(models_dir, MBV2_144))
    segs = find_segments(g)
    by_names = {names(g, s): s for s in segs}
    # the inverted residual block: expand -> depthwise -> project, accumulated
    for b in (2, 3, 4):
        s = by_names.get((f"block{b}_expand_conv", f"block{b}_dw_conv", f"block{b}_project_conv"))
        assert s is not None, f"block {b} expand->dw->project is not a candidate"
        assert s.accumulate
        assert [g.ops[k].kind for k in s.ops] == [OpKind.CONV, OpKind.DEPTHWISE, OpKind.CONV]
        assert s.channels == 48
    stem = by_names.get(("stem_conv", "block1_dw_conv"))
    assert stem is not None and not stem.accumulate and stem.channels == 16
    assert stem.output == g.ops[1].outputs[0]


def check_segment_invariants(g: Graph, segs: list[Segment]) -> None:
    cons = g.consumers()
    outs = set(g.outputs)
    for s in segs:
        assert 2 <= len(s.ops)
        for k in s.ops:
            op = g.ops[k]
            assert op.kind not in (OpKind.GROUPED_CONV, OpKind.SOFTMAX, OpKind.OPAQUE,
                                   OpKind.TRANSPOSE, OpKind.MATMUL, OpKind.CONCAT,
                                   OpKind.REDUCE_MEAN), (names(g, s), op.kind)
            if op.kind == OpKind.DEPTHWISE:  # channel multiplier 1 only
                assert channels(g.tensors[op.inputs[0]]) == channels(g.tensors[op.outputs[0]])
        assert s.internal == tuple(g.ops[k].outputs[0] for k in s.ops[:-1])
        for t in s.internal:
            assert len(cons[t]) == 1, (names(g, s), g.tensors[t].name)
            assert t not in outs and not g.tensors[t].external
        assert s.output == g.ops[s.ops[-1]].outputs[0]
        assert 1 in s.widths and s.channels in s.widths, (names(g, s), s.widths)
        assert all(1 <= w <= s.channels for w in s.widths)
        first = g.ops[s.ops[0]]
        assert channels(g.tensors[first.outputs[0]]) == s.channels
        if s.accumulate:
            last = g.ops[s.ops[-1]]
            assert last.kind in (OpKind.CONV, OpKind.FULLY_CONNECTED)
            assert last.inputs == (s.internal[-1],)
        for w in s.widths:
            sl = s.slices(w)
            assert sl[0][0] == 0 and sl[-1][1] == s.channels
            assert all(a[1] == b[0] for a, b in zip(sl, sl[1:]))


def test_segment_invariants_bundled(models_dir: Path) -> None:
    for name in BUNDLED_ALL:
        g = load(bundled(models_dir, f"{name}_int8"))
        check_segment_invariants(g, find_segments(g))


def test_segment_invariants_shared(shared_models_dir: Path) -> None:
    for name in SHARED_MODELS:
        g = load(str(shared_models_dir / f"{name}.onnx"))
        check_segment_invariants(g, find_segments(g))


def _chain_model(path: Path, middle: list, inits: list, cin: int, out_shape: list[int]) -> Path:
    """x -> Conv 1x1 (c0) -> middle ... -> y."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0", kernel_shape=[1, 1]),
             *middle]
    return make_onnx(path, nodes, [vi("x", [1, cin, 8, 8])], [vi("y", out_shape)],
                     [conv_weights("w0", cin, cin, 1, 1), *inits])


def test_unsplittable_operators_are_never_in_a_segment(tmp_path: Path) -> None:
    """Grouped conv, depthwise with multiplier 2, Softmax and an unknown op break chains."""
    c = 8
    mid = [
        helper.make_node("Conv", ["a", "wg"], ["b"], name="grouped", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], group=2),
        helper.make_node("Conv", ["b", "w1"], ["c"], name="c1", kernel_shape=[1, 1]),
        helper.make_node("Conv", ["c", "wm"], ["d"], name="dw_mult2", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], group=c),
        helper.make_node("Conv", ["d", "w2"], ["e"], name="c2", kernel_shape=[1, 1]),
        helper.make_node("Softmax", ["e"], ["f"], name="softmax", axis=1),
        helper.make_node("Conv", ["f", "w3"], ["g"], name="c3", kernel_shape=[1, 1]),
        helper.make_node("Erf", ["g"], ["h"], name="erf"),
        helper.make_node("Conv", ["h", "w4"], ["y"], name="c4", kernel_shape=[1, 1]),
    ]
    inits = [conv_weights("wg", c, c // 2, 3, 3), conv_weights("w1", c, c, 1, 1),
             conv_weights("wm", 2 * c, 1, 3, 3), conv_weights("w2", c, 2 * c, 1, 1),
             conv_weights("w3", c, c, 1, 1), conv_weights("w4", c, c, 1, 1)]
    g = load(str(_chain_model(tmp_path / "forbidden.onnx", mid, inits, c, [1, c, 8, 8])))
    kinds = {op.name: op.kind for op in g.ops}
    assert kinds["grouped"] == OpKind.GROUPED_CONV and kinds["erf"] == OpKind.OPAQUE
    assert kinds["dw_mult2"] == OpKind.DEPTHWISE and kinds["softmax"] == OpKind.SOFTMAX
    segs = find_segments(g)
    check_segment_invariants(g, segs)
    for s in segs:
        assert not {"grouped", "dw_mult2", "softmax", "erf"} & set(names(g, s)), names(g, s)


def test_reshape_changing_channels_is_never_split(tmp_path: Path) -> None:
    """c4 -> Reshape NCHW (1,8,8,8) -> (1,16,8,4) -> c5: the Reshape is aliased away, but c5
    reduces over 16 channels that mix c4's channels with its columns. c5 cannot accumulate
    over c4's channel slices; a plan that does is not executable (the simulator refuses it)."""
    c = 8
    mid = [helper.make_node("Reshape", ["a", "shp"], ["j"], name="reshape"),
           helper.make_node("Conv", ["j", "w5"], ["y"], name="c5", kernel_shape=[1, 1])]
    inits = [const("shp", np.array([1, 2 * c, 8, 4]), np.int64),
             conv_weights("w5", c, 2 * c, 1, 1)]
    path = _chain_model(tmp_path / "reshape.onnx", mid, inits, c, [1, c, 8, 4])
    g = load(str(path), dtype="float32")
    spanning = [names(g, s) for s in find_segments(g) if len(s.ops) > 1]
    s = solve_layout(g, SolverParams(rows=False, time_limit=5, workers=2))
    plan = build_plan(g, s)
    problems = []
    if spanning:
        problems.append(f"segments across the channel-changing Reshape: {spanning}")
    if plan.splits:
        problems.append(f"the solver splits {[sp['ops'] for sp in plan.splits]} and the "
                        f"validator reports {len(validate(plan, g))} violations")
        try:
            rep = verify_plan(plan, g, n_inputs=1, onnxruntime=False)
            if not rep.exact:
                problems.append(f"simulation mismatch {rep.max_error}")
        except Exception as e:
            problems.append(f"simulation fails: {type(e).__name__}: {e}")
    assert not problems, "; ".join(problems)


# ------------------------------------------------------------------------- figures


def assert_optimal(s: Schedule) -> None:
    assert s.status == "OPTIMAL", (s.status, s.arena, s.bound, s.stages)
    assert s.bound == s.arena


@pytest.mark.parametrize(("external", "kw", "want"), [
    (False, {"split": False}, 311_040),
    (False, {"inplace": False}, 150_336),
    (False, {}, 145_152),
    (True, {}, 124_416),
], ids=["layer-by-layer", "split-no-inplace", "split", "split-input-external"])
def test_mbv2_144_figures(models_dir: Path, external: bool, kw: dict, want: int) -> None:
    g, s, plan = solve(bundled(models_dir, MBV2_144), external, **FIG, **kw)
    assert s.arena == want == plan.arena_bytes
    assert_optimal(s)
    assert validate(plan, g) == []


@pytest.mark.parametrize(("name", "external", "exact", "want"), [
    ("mlperf_vww_96_int8", False, True, 46_080),
    ("mlperf_vww_96_int8", True, True, 29_952),
    ("tflm_person_detect", False, True, 29_952),
    ("tinyengine_vww", False, False, 46_400),
    ("mcunet_in3_320kb_1mb_imagenet", False, False, 224_576),
    ("tinyengine_detection", False, True, 163_840),
])
def test_shared_figures(shared_models_dir: Path, name: str, external: bool, exact: bool,
                        want: int) -> None:
    g, s, plan = solve(str(shared_models_dir / f"{name}.onnx"), external, **FIG)
    assert_optimal(s)
    if exact:
        assert s.arena == want
    else:
        assert s.arena <= want
    assert plan.splits, "the figure needs partial execution"
    assert validate(plan, g) == []


@pytest.mark.parametrize("name", ["mlperf_ic_resnet8_int8", "mlperf_kws_dscnn_int8",
                                  "tflm_micro_speech_int8"])
def test_no_gain_models(shared_models_dir: Path, name: str) -> None:
    path = str(shared_models_dir / f"{name}.onnx")
    _, flat, _ = solve(path, **FIG, split=False)
    _, s, _ = solve(path, **FIG)
    assert_optimal(flat)
    assert_optimal(s)
    assert s.arena == flat.arena


def _block2(path: Path) -> Path:
    """MobileNetV2 block 2 alone, float: 8x72x72 -> expand 48 + Relu6 -> depthwise 3x3 s2 +
    Relu6 -> project 8."""
    lo, hi = const("lo", 0.0), const("hi", 6.0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["e"], name="expand", kernel_shape=[1, 1]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"], name="expand_relu6"),
        helper.make_node("Conv", ["e6", "w2", "b2"], ["d"], name="dw", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1], group=48),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="dw_relu6"),
        helper.make_node("Conv", ["d6", "w3", "b3"], ["y"], name="project", kernel_shape=[1, 1]),
    ]
    rng = np.random.default_rng(7)
    inits = [conv_weights("w1", 48, 8, 1, 1, 1), const("b1", rng.standard_normal(48)),
             conv_weights("w2", 48, 1, 3, 3, 2), const("b2", rng.standard_normal(48)),
             conv_weights("w3", 8, 48, 1, 1, 3), const("b3", rng.standard_normal(8)), lo, hi]
    return make_onnx(path, nodes, [vi("x", [1, 8, 72, 72])], [vi("y", [1, 8, 36, 36])], inits)


def test_block2_alone(tmp_path: Path) -> None:
    path = _block2(tmp_path / "block2.onnx")
    g = load(str(path))
    assert [t.nbytes for t in g.tensors] == [41_472, 248_832, 62_208, 10_368]
    flat = solve_layout(g, SolverParams(rows=False, **FIG, split=False))
    # 41,472 + 248,832 = 290,304 at the expand step, but the depthwise (stride 2: no in-place)
    # needs its input and output together: 248,832 + 62,208 = 311,040 (notes, section 6).
    assert flat.arena == 311_040
    assert_optimal(flat)
    split = solve_layout(g, SolverParams(rows=False, **FIG, inplace=False))
    # 41,472 input + 5,184 + 1,296 slices (s = 1) + 41,472 int32 accumulator
    assert split.arena == 89_424
    assert_optimal(split)
    plan = build_plan(g, split)
    assert [sp["ops"] for sp in plan.splits] == [["expand", "dw", "project"]]
    assert plan.splits[0]["width"] == 1 and plan.splits[0]["accumulate"]
    assert validate(plan, g) == []
    default = solve_layout(g, SolverParams(rows=False, **FIG))
    assert default.arena <= 89_424
    assert_optimal(default)


def test_block2_alone_float32_simulates(tmp_path: Path) -> None:
    """The same block deployed in float32 (4 bytes an element): 4 x 41,472 input + 4 x 6,480
    slices + 41,472 float accumulator; the split plan runs within 1e-4 of the reference."""
    path = _block2(tmp_path / "block2.onnx")
    g = load(str(path), dtype="float32")
    s = solve_layout(g, SolverParams(rows=False, **FIG, inplace=False))
    assert s.arena == 165_888 + 25_920 + 41_472
    plan = build_plan(g, s)
    assert plan.splits and validate(plan, g) == []
    rep = verify_plan(plan, g, n_inputs=1)
    assert rep.exact and rep.max_error <= 1e-4
    assert rep.ort_max_error is not None and rep.ort_max_error <= 1e-4


# ------------------------------------------------------------------------- every model


def _never_worse(path: str) -> None:
    g = load(path)
    _, flat, _ = solve(path, **FAST, split=False)
    _, s, plan = solve(path, **FAST)
    assert s.arena <= flat.arena, (s.arena, flat.arena)
    violations = validate(plan, g)
    assert violations == [], [str(v) for v in violations[:5]]
    # bounds: the reported one, and the split-aware bound of every candidate choice
    segs = find_segments(g)
    lb = split_bound(g, segs, True)
    assert s.bound <= s.arena
    assert lb <= s.arena, (lb, s.arena)
    assert lb <= flat.arena  # no split is one of the choices the bound covers
    rep = verify_plan(plan, g, n_inputs=1, onnxruntime=False)
    assert rep.exact and rep.max_error == 0.0, f"not bit-exact (max error {rep.max_error})"


@pytest.mark.parametrize("name", BUNDLED_ALL)
def test_split_never_worse_bundled(models_dir: Path, name: str) -> None:
    _never_worse(bundled(models_dir, f"{name}_int8"))


@pytest.mark.parametrize("name", SHARED_MODELS)
def test_split_never_worse_shared(shared_models_dir: Path, name: str) -> None:
    _never_worse(str(shared_models_dir / f"{name}.onnx"))


# ------------------------------------------------------------------------- kernels in slices

def _probe_model(path: Path, kind: str) -> Path:
    """x(4 ch) -> Conv 1x1 to 32 ch -> <kind> -> Conv 1x1 to 4 ch: worth splitting."""
    e, h = 32, 16
    rng = np.random.default_rng(11)
    out_h = h
    inits: list = []
    if kind == "maxpool":
        mid = [helper.make_node("MaxPool", ["a"], ["m"], kernel_shape=[3, 3], pads=[1] * 4)]
    elif kind == "avgpool_s2":
        mid = [helper.make_node("AveragePool", ["a"], ["m"], kernel_shape=[2, 2], strides=[2, 2])]
        out_h = h // 2
    elif kind == "sigmoid":
        mid = [helper.make_node("Sigmoid", ["a"], ["m"])]
    elif kind == "channel_mul":
        mid = [helper.make_node("Mul", ["a", "s"], ["m"])]
        inits = [const("s", rng.standard_normal((1, e, 1, 1)))]
    elif kind == "pad_depthwise":
        mid = [helper.make_node("Pad", ["a", "pads"], ["p"]),
               helper.make_node("Conv", ["p", "wd"], ["m"], kernel_shape=[3, 3], group=e)]
        inits = [const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1]), np.int64),
                 conv_weights("wd", e, 1, 3, 3, 5)]
    elif kind == "resize":
        mid = [helper.make_node("Resize", ["a", "", "sc"], ["m"], mode="nearest")]
        inits = [const("sc", [1, 1, 2, 2])]
        out_h = 2 * h
    elif kind == "gap_fc":
        mid = [helper.make_node("GlobalAveragePool", ["a"], ["gp"]),
               helper.make_node("Flatten", ["gp"], ["f"]),
               helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
        inits = [const("wf", rng.standard_normal((10, e))), const("bf", np.zeros(10))]
    else:
        raise AssertionError(kind)
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["a"], kernel_shape=[1, 1]), *mid]
    if kind != "gap_fc":
        nodes.append(helper.make_node("Conv", ["m", "w1"], ["y"], kernel_shape=[1, 1]))
        inits.append(conv_weights("w1", 4, e, 1, 1, 2))
    inits += [conv_weights("w0", e, 4, 1, 1, 1), const("b0", rng.standard_normal(e))]
    out = [1, 10] if kind == "gap_fc" else [1, 4, out_h, out_h]
    return make_onnx(path, nodes, [vi("input", [1, 4, h, h])], [vi("y", out)], inits)


PROBES = ("maxpool", "avgpool_s2", "sigmoid", "channel_mul", "pad_depthwise", "resize",
          "gap_fc")


def _split_and_verify(path: Path, dtype: str) -> None:
    g = load(str(path), dtype=dtype)
    flat = solve_layout(g, SolverParams(rows=False, time_limit=5, workers=2, split=False))
    s = solve_layout(g, SolverParams(rows=False, time_limit=5, workers=2))
    plan = build_plan(g, s)
    assert plan.splits and s.arena < flat.arena, (s.arena, flat.arena)
    assert validate(plan, g) == []
    rep = verify_plan(plan, g, n_inputs=2, onnxruntime=False)
    assert rep.exact, rep.max_error


@pytest.mark.parametrize("kind", PROBES)
def test_split_kernels_float(tmp_path: Path, kind: str) -> None:
    _split_and_verify(_probe_model(tmp_path / f"{kind}.onnx", kind), "float32")


def _quantize():  # noqa: ANN202  (build_models.quantize)
    spec = importlib.util.spec_from_file_location("build_models", ROOT / "models" /
                                                  "build_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.quantize


@pytest.mark.parametrize("kind", ["maxpool", "avgpool_s2", "pad_depthwise", "gap_fc"])
def test_split_kernels_int8(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("onnxruntime.quantization")
    fp = _probe_model(tmp_path / f"{kind}.onnx", kind)
    qp = tmp_path / f"{kind}_int8.onnx"
    onnx.save(_quantize()(onnx.load(str(fp))), str(qp))
    _split_and_verify(qp, "int8")


# ------------------------------------------------------------------------- bounds


_ONNX = {OpKind.CONV: "Conv", OpKind.DEPTHWISE: "Conv", OpKind.RELU: "Relu",
         OpKind.ADD: "Add"}


def inverted_residuals(seed: int) -> Graph:
    """1-3 random inverted residual blocks (expand, optional Relu, depthwise stride 1|2,
    project, optional residual Add) on small NHWC tensors: channel splits pay off here."""
    rng = random.Random(seed)
    tensors: list[Tensor] = []
    ops: list[Op] = []

    def tensor(shape: tuple[int, ...]) -> int:
        tensors.append(Tensor(len(tensors), f"t{len(tensors)}", shape, "int8", math.prod(shape)))
        return len(tensors) - 1

    def op(kind: OpKind, ins: list[int], shape: tuple[int, ...]) -> int:
        out = tensor(shape)
        k = len(ops)
        ops.append(Op(k, f"{kind.value}{k}", kind, _ONNX[kind], tuple(ins), (out,)))
        return out

    h, c = rng.choice([4, 6, 8]), rng.choice([2, 3, 4])
    x = cur = tensor((1, h, h, c))
    for _ in range(rng.randint(1, 3)):
        e = rng.choice([2, 3, 4]) * c
        a = op(OpKind.CONV, [cur], (1, h, h, e))
        if rng.random() < 0.4:
            a = op(OpKind.RELU, [a], (1, h, h, e))
        stride = rng.choice([1, 2]) if h % 2 == 0 else 1
        h2 = h // stride
        d = op(OpKind.DEPTHWISE, [a], (1, h2, h2, e))
        c2 = rng.choice([c, c, 2, 5])
        p = op(OpKind.CONV, [d], (1, h2, h2, c2))
        if stride == 1 and c2 == c and rng.random() < 0.7:
            p = op(OpKind.ADD, [p, cur], (1, h, h, c))
        cur, h, c = p, h2, c2
    return Graph(f"ir{seed}", tuple(tensors), tuple(ops), (x,), (cur,), "int8")


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "no-inplace"])
def test_split_bound_below_the_proven_optimum(inplace: bool) -> None:
    """On small graphs CP-SAT proves the optimum by itself (use_bound=False, align 1): the
    split bound never exceeds it, and using the bound does not change the optimum."""
    splits_used = 0
    for seed in range(12):
        g = inverted_residuals(seed)
        segs = find_segments(g)
        lb = split_bound(g, segs, inplace)
        base = {"time_limit": 10.0, "workers": 2, "align": 1, "inplace": inplace}
        free = solve_layout(g, SolverParams(rows=False, **base, use_bound=False))
        assert free.status == "OPTIMAL", (seed, free.stages)
        assert lb <= free.arena, (seed, lb, free.arena)
        bounded = solve_layout(g, SolverParams(rows=False, **base))
        assert bounded.arena == free.arena, (seed, bounded.arena, free.arena)
        flat = solve_layout(g, SolverParams(rows=False, **base, use_bound=False, split=False))
        assert free.arena <= flat.arena
        plan = build_plan(g, free)
        assert validate(plan, g, check_hash=False) == []
        splits_used += bool(free.splits)
    assert splits_used >= 6  # the family does exercise splits


def _random_dag():  # noqa: ANN202
    try:
        from pexopt.graph.synthetic import random_dag
    except ImportError:  # older layout: tests/graphgen.py
        from graphgen import random_dag  # type: ignore[no-redef]
    return random_dag


def test_split_bound_on_random_dags() -> None:
    """Random branching DAGs (graphgen): the bound never exceeds the proven optimum with or
    without splits."""
    random_dag = _random_dag()
    for seed in range(10):
        g = random_dag(seed, 9)
        lb = split_bound(g, find_segments(g), True)
        base = {"time_limit": 10.0, "workers": 2, "align": 1, "use_bound": False}
        for split in (True, False):
            s = solve_layout(g, SolverParams(rows=False, **base, split=split))
            assert s.status == "OPTIMAL", (seed, split, s.stages)
            assert lb <= s.arena, (seed, split, lb, s.arena)


# ------------------------------------------------------------------------- plan structure


def test_split_plan_structure(models_dir: Path) -> None:
    g, s, plan = solve(bundled(models_dir, MBV2_144), **FIG, inplace=False)
    assert plan.arena_bytes == 150_336
    assert plan.splits
    bufs = {b.name: b for b in plan.buffers}
    tensors = {t.name: t for t in g.tensors}
    for sp in plan.splits:
        ops, c, w = sp["ops"], sp["channels"], sp["width"]
        assert sp["slices"] == math.ceil(c / w)
        idx = [i for i, st in enumerate(plan.steps) if st.op in ops]
        split_idx = [i for i in idx if plan.steps[i].mode in ("slice", "accumulate")]
        # one step per operator per slice, in chain order, contiguous
        assert len(split_idx) == len(ops) * sp["slices"]
        assert split_idx == list(range(split_idx[0], split_idx[0] + len(split_idx)))
        assert [plan.steps[i].op for i in split_idx] == ops * sp["slices"]
        for op in ops:
            ranges = sorted(tuple(plan.steps[i].slice) for i in split_idx
                            if plan.steps[i].op == op)
            assert ranges[0][0] == 0 and ranges[-1][1] == c
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), ranges
            assert all(r1 - r0 <= w for r0, r1 in ranges)
        req = [i for i in idx if plan.steps[i].mode == "requantize"]
        last = ops[-1]
        acc_steps = [i for i in split_idx if plan.steps[i].mode == "accumulate"]
        if sp["accumulate"]:
            assert {plan.steps[i].op for i in acc_steps} == {last}
            assert len(req) == 1 and req[0] == split_idx[-1] + 1
            assert plan.steps[req[0]].op == last and plan.steps[req[0]].slice is None
            out_name = plan.steps[req[0]].writes[0]
            acc = bufs[f"{out_name}@acc"]
            assert acc.kind == "accumulator"
            assert acc.size == 4 * tensors[out_name].elements
            out = bufs[out_name]
            assert out.alias_of == acc.name and out.offset == acc.offset
            assert out.first_step == acc.last_step == req[0]
        else:
            assert req == [] and acc_steps == []
        for i in split_idx:
            for name in plan.steps[i].reads + plan.steps[i].writes:
                b = bufs[name]
                if b.kind != "slice":
                    continue
                t = tensors[b.tensor]
                assert b.name == f"{t.name}@slice"
                assert b.size == t.nbytes // t.shape[-1] * w, (b.name, b.size)
                assert b.first_step <= i <= b.last_step
    # every other step runs whole
    in_split = {op for sp in plan.splits for op in sp["ops"]}
    for st in plan.steps:
        if st.op not in in_split:
            assert st.mode == "whole" and st.slice is None
