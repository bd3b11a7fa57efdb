"""Tests for pexopt.plan.validator: solver plans pass, every kind of corruption is caught."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pexopt.errors import PexError
from pexopt.frontend.onnx_import import import_onnx
from pexopt.graph.ir import Graph, Op, Tensor
from pexopt.ops import OpKind
from pexopt.partial.candidates import Segment, accumulator_bytes, find_segments, workspace_bytes
from pexopt.plan.build import build_plan
from pexopt.plan.format import Buffer, Plan, SolverInfo, Step, plan_from_dict
from pexopt.plan.validator import (
    PlanInvalid,
    Violation,
    check,
    find_overlaps,
    overlaps,
    validate,
)
from pexopt.schedule import Schedule, SolverParams, temp_bytes
from pexopt.solver.cpsat_layout import dw_inplace_ok, solve_layout

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SHARED = ROOT.parent / "shared" / "models" / "onnx"
LAYERS = SolverParams(time_limit=10, workers=1, split=False)  # layer-by-layer plans
SPLIT = SolverParams(time_limit=10, workers=1)  # partial execution (channel splits)
BASE = MODELS / "mcunet_mixed_int8.onnx"  # committed; residual blocks

LOCAL_MODELS = sorted(MODELS.glob("*.onnx"))
SHARED_MODELS = sorted(SHARED.glob("*.onnx")) if SHARED.is_dir() else []

_CACHE: dict[tuple[str, str, bool, bool], tuple[Graph, Plan]] = {}


def solved(path: Path, dtype: str = "int8", input_external: bool = False,
           budget: int | None = None, split: bool = False) -> tuple[Graph, Plan]:
    """(graph, fresh copy of its solver plan); the solve is cached per model and mode."""
    key = (str(path), dtype, input_external, split)
    if key not in _CACHE:
        g = import_onnx(path, dtype=dtype, input_external=input_external)
        _CACHE[key] = (g, build_plan(g, solve_layout(g, SPLIT if split else LAYERS)))
    g, plan = _CACHE[key]
    plan = copy.deepcopy(plan)
    if budget is not None:
        plan.budget_bytes, plan.fits = budget, plan.arena_bytes <= budget
    return g, plan


def codes(plan: Plan, graph: Graph, check_hash: bool = True) -> set[str]:
    return {v.code for v in validate(plan, graph, check_hash)}


def assert_valid(plan: Plan, graph: Graph) -> None:
    vs = validate(plan, graph)
    assert vs == [], "\n".join(map(str, vs[:10]))


def reindex(plan: Plan) -> None:
    for i, s in enumerate(plan.steps):
        s.index = i


def write_step(plan: Plan, name: str) -> int:
    return next(i for i, s in enumerate(plan.steps) if name in s.writes)


def live_pair(plan: Plan) -> tuple[Buffer, Buffer]:
    """Two buffers live at the same step at different, non-overlapping addresses."""
    bs = plan.buffers
    for a in bs:
        for b in bs:
            if a is not b and a.first_step <= b.last_step and b.first_step <= a.last_step \
                    and a.offset != b.offset:
                return a, b
    raise AssertionError("no simultaneously live pair")


def brute_overlaps(bs: list[Buffer]) -> int:
    """O(B^2) count of buffer pairs sharing a step and a byte (inclusive steps)."""
    n = 0
    for i in range(len(bs)):
        for j in range(i + 1, len(bs)):
            a, b = bs[i], bs[j]
            same_time = max(a.first_step, b.first_step) <= min(a.last_step, b.last_step)
            same_addr = max(a.offset, b.offset) < min(a.offset + a.size, b.offset + b.size)
            n += same_time and same_addr
    return n


# ---------------------------------------------------------------------------- models on disk


@pytest.fixture(scope="module")
def mbv2_float(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The float MobileNetV2 w0.35 r96 model (built into a temp dir if not in models/)."""
    p = MODELS / "mbv2_w035_r96.onnx"
    if p.is_file():
        return p
    out = tmp_path_factory.mktemp("mbv2")
    subprocess.run([sys.executable, str(MODELS / "build_models.py"), "--only", "mbv2_w035_r96",
                    "--no-int8", "--out", str(out)], check=True, capture_output=True)
    return out / "mbv2_w035_r96.onnx"


@pytest.fixture(scope="module")
def inplace_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conv(1->16) -> sigmoid -> hard_swish -> conv(16->1): only in place reaches the optimum."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 1, 1, 1)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((1, 16, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["input", "w1"], ["a"], name="conv1"),
             helper.make_node("Sigmoid", ["a"], ["b"], name="sig"),
             helper.make_node("HardSwish", ["b"], ["c"], name="hswish"),
             helper.make_node("Conv", ["c", "w2"], ["output"], name="conv2")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 16, 16])
          for n in ("input", "output")]
    m = helper.make_model(helper.make_graph(nodes, "inplace_chain", io[:1], io[1:], [w1, w2]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    p = tmp_path_factory.mktemp("chain") / "inplace_chain.onnx"
    onnx.save(m, p)
    return p


@pytest.mark.parametrize("split", [False, True], ids=["layers", "split"])
@pytest.mark.parametrize("path", LOCAL_MODELS, ids=lambda p: p.stem)
def test_local_models_valid(path: Path, split: bool) -> None:
    assert_valid(*reversed(solved(path, split=split)))


@pytest.mark.parametrize("split", [False, True], ids=["layers", "split"])
@pytest.mark.parametrize("path", SHARED_MODELS or [None],
                         ids=lambda p: p.stem if p else "shared-missing")
def test_shared_models_valid(path: Path | None, split: bool) -> None:
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared models missing in CI: {SHARED}")
        pytest.skip(f"no shared models at {SHARED}")
    assert_valid(*reversed(solved(path, split=split)))


def test_float_and_external_input_variants_valid(mbv2_float: Path) -> None:
    for dtype in ("int8", "float32"):
        for ext in (False, True):
            for split in (False, True):
                g, plan = solved(mbv2_float, dtype, ext, split=split)
                assert_valid(plan, g)
    g, plan = solved(mbv2_float, "int8", True)
    assert g.tensors[g.inputs[0]].external
    assert all(b.tensor != g.tensors[g.inputs[0]].name for b in plan.buffers)


def test_json_round_trip_and_check() -> None:
    g, plan = solved(BASE, budget=10**9)

    again = plan_from_dict(json.loads(plan.to_json()))
    assert_valid(again, g)
    check(again, g)


def test_check_raises_with_first_violation_and_count() -> None:
    g, plan = solved(BASE)
    plan.arena_bytes += 4
    plan.buffers[0].offset += 1
    with pytest.raises(PlanInvalid) as ei:
        check(plan, g)
    err = ei.value
    assert isinstance(err, PexError)
    assert len(err.violations) >= 2 and str(err.violations[0]) in str(err)
    assert f"+{len(err.violations) - 1} more" in str(err)
    assert isinstance(err.violations[0], Violation)


# ---------------------------------------------------------------------------- mutations


def test_overlap_detected() -> None:
    g, plan = solved(BASE)
    a, b = live_pair(plan)
    b.offset = a.offset
    assert "overlap" in codes(plan, g)


def test_swapped_dependent_steps() -> None:
    g, plan = solved(BASE)
    i = next(i for i in range(len(plan.steps) - 1)
             if set(plan.steps[i].writes) & set(plan.steps[i + 1].reads))
    plan.steps[i], plan.steps[i + 1] = plan.steps[i + 1], plan.steps[i]
    reindex(plan)
    assert {"order", "read_before_write"} <= codes(plan, g)


def test_step_index_mismatch() -> None:
    g, plan = solved(BASE)
    plan.steps[3].index = 4
    assert codes(plan, g) == {"order"}


def test_consumer_moved_before_producer() -> None:
    g, plan = solved(BASE)
    j = len(plan.steps) // 2
    i = min(write_step(plan, r) for r in plan.steps[j].reads)
    plan.steps.insert(i, plan.steps.pop(j))
    reindex(plan)
    assert {"order", "read_before_write", "not_live"} <= codes(plan, g)


def test_last_step_shrunk() -> None:
    g, plan = solved(BASE)
    b = next(b for b in plan.buffers if b.last_step > b.first_step)
    b.last_step -= 1
    assert {"not_live", "lifetime"} <= codes(plan, g)


def test_first_step_shrunk() -> None:
    g, plan = solved(BASE)
    b = next(b for b in plan.buffers if b.last_step > b.first_step and b.first_step > 0)
    b.first_step += 1
    assert {"not_live", "lifetime"} <= codes(plan, g)


def test_output_lifetime_must_reach_last_step() -> None:
    g, plan = solved(BASE)
    out = plan.buffer(g.tensors[g.outputs[0]].name)
    plan.steps.append(copy.deepcopy(plan.steps[-1]))  # noise check: duplicate op reported
    plan.steps[-1].index = len(plan.steps) - 1
    assert "duplicate_op" in codes(plan, g)
    plan.steps.pop()
    assert out.last_step == len(plan.steps) - 1
    out.last_step -= 1
    assert "lifetime" in codes(plan, g)


def test_out_of_arena() -> None:
    g, plan = solved(BASE)
    plan.buffers[0].offset = plan.arena_bytes
    assert "out_of_arena" in codes(plan, g)
    g, plan = solved(BASE)
    plan.buffers[0].offset = -plan.align
    assert "out_of_arena" in codes(plan, g)


def test_misaligned_offset() -> None:
    g, plan = solved(BASE)
    b = max(plan.buffers, key=lambda b: b.offset)
    b.offset -= 1
    assert "alignment" in codes(plan, g)


def test_wrong_size() -> None:
    g, plan = solved(BASE)
    plan.buffers[1].size -= 1
    assert "size" in codes(plan, g)


def test_wrong_arena_bytes() -> None:
    g, plan = solved(BASE)
    plan.arena_bytes += plan.align
    assert codes(plan, g) == {"arena_bytes"}
    plan.arena_bytes -= 2 * plan.align
    assert {"arena_bytes", "out_of_arena"} <= codes(plan, g)


def test_missing_step() -> None:
    g, plan = solved(BASE)
    del plan.steps[len(plan.steps) // 2]
    reindex(plan)
    assert {"missing_op", "read_before_write"} <= codes(plan, g)


def test_duplicate_step() -> None:
    g, plan = solved(BASE)
    plan.steps.insert(5, copy.deepcopy(plan.steps[4]))
    reindex(plan)
    assert "duplicate_op" in codes(plan, g)


def test_unknown_op_and_wrong_reads() -> None:
    g, plan = solved(BASE)
    plan.steps[2].op = "no_such_node"
    assert {"unknown_op", "missing_op"} <= codes(plan, g)
    g, plan = solved(BASE)
    plan.steps[2].reads = ["nonexistent"]
    assert "io" in codes(plan, g)


def test_buffer_for_unknown_or_missing_tensor() -> None:
    g, plan = solved(BASE)
    plan.buffers[0].tensor = "ghost"
    assert "buffer" in codes(plan, g)
    g, plan = solved(BASE)
    del plan.buffers[-1]
    assert "buffer" in codes(plan, g)


def test_external_tensor_has_no_buffer(mbv2_float: Path) -> None:
    g_ext, _ = solved(mbv2_float, "int8", True)
    _, plan = solved(mbv2_float, "int8", False)  # has a buffer for the (now external) input
    assert "buffer" in codes(plan, g_ext)


def test_plan_from_another_model() -> None:
    g, _ = solved(BASE)
    _, other = solved(MODELS / "dscnn_kws_int8.onnx")
    assert "model_hash" in codes(other, g)
    g2, plan = solved(BASE)
    plan.model["sha256"] = "0" * 64
    assert codes(plan, g2) == {"model_hash"}
    assert validate(plan, g2, check_hash=False) == []


def test_fits_must_match_budget() -> None:
    g, plan = solved(BASE, budget=10**9)
    assert_valid(plan, g)
    plan.budget_bytes = plan.arena_bytes - 1
    assert codes(plan, g) == {"fits"}
    plan.fits = False
    assert_valid(plan, g)
    plan.budget_bytes = plan.arena_bytes
    assert codes(plan, g) == {"fits"}


# ---------------------------------------------------------------------------- in place


def test_solver_aliases_accepted(inplace_chain: Path) -> None:
    g, plan = solved(inplace_chain, "float32")
    assert sum(b.alias_of is not None for b in plan.buffers) >= 1
    assert_valid(plan, g)


def test_alias_removed_becomes_overlap(inplace_chain: Path) -> None:
    g, plan = solved(inplace_chain, "float32")
    b = next(b for b in plan.buffers if b.alias_of is not None)
    b.alias_of = None
    assert codes(plan, g) == {"overlap"}


def test_alias_at_other_offset(inplace_chain: Path) -> None:
    g, plan = solved(inplace_chain, "float32")
    b = next(b for b in plan.buffers if b.alias_of is not None)
    b.offset = plan.arena_bytes
    plan.arena_bytes += b.size
    assert codes(plan, g) == {"alias"}


def test_alias_to_buffer_not_read_there(inplace_chain: Path) -> None:
    g, plan = solved(inplace_chain, "float32")
    b = next(b for b in plan.buffers if b.alias_of is not None)
    reads = plan.steps[b.first_step].reads
    b.alias_of = next(x.name for x in plan.buffers if x.name not in reads and x is not b)
    assert "alias" in codes(plan, g)


def _relocated_alias(plan: Plan, graph: Graph, step: int) -> tuple[Buffer, Buffer]:
    """Make the output of `step` overwrite its dying input, both moved above the arena."""
    s = plan.steps[step]
    a = next(plan.buffer(r) for r in s.reads if plan.buffer(r).last_step == step)
    b = plan.buffer(s.writes[0])
    top = -(-plan.arena_bytes // plan.align) * plan.align
    a.offset = b.offset = top
    b.alias_of = a.name
    plan.arena_bytes = max(bb.offset + bb.size for bb in plan.buffers)
    return a, b


def _dying_input_step(plan: Plan, graph: Graph, kind: str) -> int:
    """A whole step without scratch whose single output could go over an input dying there."""
    outs = {graph.tensors[t].name for t in graph.outputs}
    return next(i for i, s in enumerate(plan.steps)
                if s.kind == kind and len(s.writes) == 1 and not s.scratch and any(
                    plan.buffer(r).last_step == i and r not in outs
                    and plan.buffer(r).size >= plan.buffer(s.writes[0]).size for r in s.reads))


def test_handmade_inplace_add_accepted(mbv2_float: Path) -> None:
    g, plan = solved(mbv2_float, "float32")
    _relocated_alias(plan, g, _dying_input_step(plan, g, "add"))
    assert sum(b.alias_of is not None for b in plan.buffers) >= 1
    assert_valid(plan, g)


def test_alias_on_op_that_cannot_run_in_place(mbv2_float: Path) -> None:
    g, plan = solved(mbv2_float, "float32")
    _, b = _relocated_alias(plan, g, _dying_input_step(plan, g, "depthwise_conv"))
    vs = validate(plan, g)
    assert {v.code for v in vs} == {"alias", "overlap"}
    assert any("cannot run in place" in v.message and b.name in v.message for v in vs)


def test_alias_at_different_offset_mbv2(mbv2_float: Path) -> None:
    g, plan = solved(mbv2_float, "float32")
    a, b = _relocated_alias(plan, g, _dying_input_step(plan, g, "add"))
    b.offset += plan.align * 4
    plan.arena_bytes = max(bb.offset + bb.size for bb in plan.buffers)
    assert {"alias", "overlap"} == codes(plan, g)


def test_alias_input_outlives_inplace_step(mbv2_float: Path) -> None:
    g, plan = solved(mbv2_float, "float32")
    a, b = _relocated_alias(plan, g, _dying_input_step(plan, g, "add"))
    a.last_step += 1  # input outlives the in-place step
    assert {"alias", "overlap"} == codes(plan, g)


# ---------------------------------------------------------------------------- partial execution


@pytest.fixture(scope="module")
def mbv2_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """int8 MobileNetV2 w0.35 r144: its split plan has slice-only tensors, full tensors written
    slice by slice, accumulators and in-place depthwise convs with scratch."""
    p = MODELS / "mbv2_w035_r144_int8.onnx"
    if p.is_file():
        return p
    out = tmp_path_factory.mktemp("mbv2_r144")
    subprocess.run([sys.executable, str(MODELS / "build_models.py"), "--only", "mbv2_w035_r144",
                    "--out", str(out)], check=True, capture_output=True)
    return out / "mbv2_w035_r144_int8.onnx"


def stacked_plan(graph: Graph, chosen: list[Segment], splits: dict[int, int],
                 dw: Op | None = None, align: int = 4) -> Plan:
    """The plan (via build_plan) of a hand-made schedule: file order, the `chosen` segments
    split at `splits` widths, `dw` run in place with its scratch, and every buffer in its own
    address range, so the plan is valid whatever the solver would choose."""
    internal = {t for s in chosen for t in s.internal}
    accs = {s.output for s in chosen if s.accumulate}
    at = 0

    def take(n: int) -> int:
        nonlocal at
        at += -(-n // align) * align
        return at - -(-n // align) * align

    offsets = {t.id: take(accumulator_bytes(t) if t.id in accs else t.nbytes)
               for t in graph.tensors if not t.external and t.nbytes > 0
               and t.id not in internal and (dw is None or t.id != dw.outputs[0])}
    inplace, temps = {}, {}
    if dw is not None:
        inplace = {dw.outputs[0]: dw.inputs[0]}
        offsets[dw.outputs[0]] = offsets[dw.inputs[0]]
        temps = {dw.id: take(temp_bytes(graph, dw.id))}
    workspace = {s.id: take(workspace_bytes(graph, s, splits[s.id], align)) for s in chosen}
    sched = Schedule(order=[op.id for op in graph.ops], offsets=offsets, inplace=inplace,
                     arena=at, bound=0, status="FORCED", seconds=0.0,
                     params=SolverParams(align=align), segments=find_segments(graph),
                     splits=splits, workspace=workspace, temps=temps)
    return build_plan(graph, sched)


def _single_input(graph: Graph, s: Segment) -> bool:
    """Every op of the segment reads one tensor (so file order is a valid order for it)."""
    return all(len(set(graph.ops[k].inputs)) == 1 for k in s.ops)


def forced_split(graph: Graph) -> tuple[Graph, Plan]:
    """A split plan whose choices are made here, not by the solver (whose choices change):
    the first conv -> ... -> accumulating conv segment, the first other single-input segment
    writing a full tensor slice by slice, and an in-place depthwise conv with its scratch; each
    split gets 3+ slices when its channels allow."""
    segs = [s for s in find_segments(graph) if _single_input(graph, s)]
    acc = next(s for s in segs if s.accumulate and len(s.ops) >= 3)
    full = next(s for s in segs if not s.accumulate and not set(s.ops) & set(acc.ops))
    busy = set(acc.ops) | set(full.ops)
    cons = graph.consumers()
    dw = next(op for op in graph.ops if op.id not in busy and len(cons[op.inputs[0]]) == 1
              and dw_inplace_ok(graph, op.id, op.inputs[0]))
    splits = {s.id: max((w for w in s.widths if -(-s.channels // w) >= 3), default=s.widths[0])
              for s in (acc, full)}
    return graph, stacked_plan(graph, [acc, full], splits, dw)


_FORCED: dict[str, tuple[Graph, Plan]] = {}


def forced(path: Path) -> tuple[Graph, Plan]:
    """(graph, fresh copy of its forced split plan), cached per model."""
    if str(path) not in _FORCED:
        _FORCED[str(path)] = forced_split(import_onnx(path))
    g, plan = _FORCED[str(path)]
    return g, copy.deepcopy(plan)


def relive(plan: Plan, graph: Graph) -> None:
    """Recompute buffer lifetimes from the steps (first use .. last use; graph inputs from
    step 0, outputs to the end), so that a step mutation breaks only the rule it targets."""
    first: dict[str, int] = {graph.tensors[t].name: 0 for t in graph.inputs}
    last = dict(first)
    for i, s in enumerate(plan.steps):
        for name in s.writes + s.scratch + s.reads:
            first.setdefault(name, i)
            last[name] = i
    for t in graph.outputs:
        last[graph.tensors[t].name] = len(plan.steps) - 1
    for b in plan.buffers:
        if b.name in first:
            b.first_step, b.last_step = first[b.name], last[b.name]


def move_step(plan: Plan, src: int, dst: int) -> None:
    plan.steps.insert(dst, plan.steps.pop(src))
    reindex(plan)


def kind_of(plan: Plan, name: str) -> str:
    return plan.buffer(name).kind


def slice_writer(plan: Plan, kind: str) -> int:
    """A slice step (not the first slice of its op) writing a buffer of `kind`."""
    return next(i for i, s in enumerate(plan.steps) if s.mode == "slice" and s.slice[0] > 0
                and kind_of(plan, s.writes[0]) == kind)


def refit(plan: Plan) -> None:
    plan.arena_bytes = max(b.offset + b.size for b in plan.buffers)


def move_to_top(plan: Plan, b: Buffer) -> None:
    b.offset = -(-plan.arena_bytes // plan.align) * plan.align
    refit(plan)


def test_split_plan_uses_every_feature(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    assert {s.mode for s in plan.steps} == {"whole", "slice", "accumulate", "requantize"}
    assert {b.kind for b in plan.buffers} == {"tensor", "slice", "accumulator", "scratch"}
    tensor_bufs = {b.tensor for b in plan.buffers if b.kind == "tensor"}
    assert any(b.tensor not in tensor_bufs for b in plan.buffers if b.kind == "slice")
    assert any(kind_of(plan, s.writes[0]) == "tensor" for s in plan.steps if s.mode == "slice")
    assert any(kind_of(plan, str(b.alias_of)) == "accumulator" for b in plan.buffers
               if b.alias_of)
    assert_valid(plan, g)
    check(plan_from_dict(json.loads(plan.to_json())), g)


@pytest.mark.parametrize("path", [BASE, "mbv2"], ids=["mcunet_mixed", "mbv2_r144"])
def test_random_split_choices_valid(path: Path | str, mbv2_int8: Path) -> None:
    """Plans of random disjoint segments at random widths (not the solver's choice) validate:
    a cross-check of build_plan's step and buffer semantics against the validator."""
    g = import_onnx(mbv2_int8 if path == "mbv2" else path)
    segs = [s for s in find_segments(g) if _single_input(g, s)]
    n = 0
    for seed in range(8):
        rng = random.Random(seed)
        chosen: list[Segment] = []
        for s in rng.sample(segs, len(segs)):
            if rng.random() < 0.5 and not any(set(s.ops) & set(c.ops) for c in chosen):
                chosen.append(s)
        plan = stacked_plan(g, chosen, {s.id: rng.choice(s.widths) for s in chosen})
        assert_valid(plan, g)
        n += len(chosen)
    assert n >= 8


def test_split_slice_step_removed(mbv2_int8: Path) -> None:
    for kind in ("slice", "tensor"):  # the slice lands in a slice buffer / a full tensor
        g, plan = forced(mbv2_int8)
        del plan.steps[slice_writer(plan, kind)]
        reindex(plan)
        relive(plan, g)
        assert "slice_coverage" in codes(plan, g)
    g, plan = forced(mbv2_int8)
    del plan.steps[next(i for i, s in enumerate(plan.steps) if s.mode == "accumulate")]
    reindex(plan)
    relive(plan, g)
    assert {"slice_coverage", "read_before_write"} <= codes(plan, g)


def test_split_slice_step_duplicated(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    i = slice_writer(plan, "tensor")
    plan.steps.insert(i + 1, copy.deepcopy(plan.steps[i]))
    reindex(plan)
    relive(plan, g)
    vs = validate(plan, g)
    assert {v.code for v in vs} == {"duplicate_op"}
    assert "twice" in vs[0].message


def test_split_swapped_slice_steps_lose_a_slice(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    st = plan.steps
    # i writes a slice buffer, i + 1 reads it, i + 2 writes the next slice into it
    i = next(i for i in range(len(st) - 2) if st[i].mode == "slice"
             and kind_of(plan, st[i].writes[0]) == "slice" and st[i].writes[0] in st[i + 1].reads
             and st[i + 2].writes == st[i].writes)
    st[i + 1], st[i + 2] = st[i + 2], st[i + 1]
    reindex(plan)
    vs = validate(plan, g)
    assert {"slice_lost", "read_before_write"} <= {v.code for v in vs}
    assert "order" not in {v.code for v in vs}  # the channels were computed, then overwritten
    lost = next(v for v in vs if v.code == "slice_lost")
    assert st[i].writes[0] in lost.message and f"step {i}" in lost.message


def test_split_requantize_before_last_accumulate(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    r = max((i for i, s in enumerate(plan.steps) if s.mode == "requantize"),
            key=lambda i: sum(s.op == plan.steps[i].op for s in plan.steps))
    assert plan.steps[r - 1].mode == "accumulate" and plan.steps[r - 1].op == plan.steps[r].op
    move_step(plan, r, r - 1)
    assert {"requantize", "read_before_write"} <= codes(plan, g)


def test_split_requantize_missing_or_twice(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    r = next(i for i, s in enumerate(plan.steps) if s.mode == "requantize")
    plan.steps.insert(r + 1, copy.deepcopy(plan.steps[r]))
    reindex(plan)
    relive(plan, g)
    assert "duplicate_op" in codes(plan, g)
    del plan.steps[r:r + 2]
    reindex(plan)
    assert "requantize" in codes(plan, g)


def test_split_accumulator_alias_at_other_offset(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    b = next(b for b in plan.buffers if b.alias_of and kind_of(plan, b.alias_of) == "accumulator")
    move_to_top(plan, b)
    vs = validate(plan, g)
    assert {v.code for v in vs} == {"alias"}
    assert "offset" in vs[0].message
    g, plan = forced(mbv2_int8)
    b = next(b for b in plan.buffers if b.alias_of and kind_of(plan, b.alias_of) == "accumulator")
    plan.buffer(str(b.alias_of)).last_step += 1  # accumulator outlives the handover
    assert {"alias", "overlap"} <= codes(plan, g)


def test_split_accumulator_wrong_size(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    a = next(b for b in plan.buffers if b.kind == "accumulator")
    a.size += plan.align
    move_to_top(plan, a)  # keep the aliased output at the accumulator's offset
    b = next(b for b in plan.buffers if b.alias_of == a.name)
    b.offset = a.offset
    refit(plan)
    assert codes(plan, g) == {"size"}


def test_split_slice_buffer_too_small(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    sb = next(b for b in plan.buffers if b.kind == "slice")
    sb.size -= 1
    vs = validate(plan, g)
    assert {v.code for v in vs} == {"size"}
    assert sb.name in vs[0].message


def test_split_slice_buffer_on_live_tensor(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    sb = next(b for b in plan.buffers if b.kind == "slice")
    t = next(b for b in plan.buffers if b.kind == "tensor" and b.size >= sb.size
             and overlaps(b.first_step, b.last_step + 1, sb.first_step, sb.last_step + 1))
    sb.offset = t.offset
    refit(plan)
    vs = validate(plan, g)
    assert {v.code for v in vs} == {"overlap"}
    assert any(sb.name in v.message and t.name in v.message for v in vs)


def test_split_slice_only_tensor_read_whole(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    i = next(i for i, s in enumerate(plan.steps) if s.mode == "slice"
             and any(kind_of(plan, r) == "slice" for r in s.reads))
    plan.steps[i].mode, plan.steps[i].slice = "whole", None
    assert {"io", "duplicate_op"} <= codes(plan, g)


def test_split_full_tensor_read_before_last_slice(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    i = slice_writer(plan, "tensor")
    name = plan.steps[i].writes[0]
    last = max(k for k, s in enumerate(plan.steps) if name in s.writes)
    reader = next(k for k, s in enumerate(plan.steps) if name in s.reads)
    move_step(plan, reader, last)
    relive(plan, g)
    assert {"order", "read_before_write"} <= codes(plan, g)


def test_split_bad_mode_and_slice_fields(mbv2_int8: Path) -> None:
    g, base = forced(mbv2_int8)
    i = slice_writer(base, "tensor")
    cases = [("mode", "bogus", "mode"), ("slice", [0, 10**6], "slice_range"),
             ("slice", [4, 2], "slice_range"), ("slice", None, "slice_range")]
    for attr, val, code in cases:
        plan = copy.deepcopy(base)
        setattr(plan.steps[i], attr, val)
        assert code in codes(plan, g), (attr, val)
    plan = copy.deepcopy(base)
    w = next(s for s in plan.steps if s.mode == "whole" and s.kind == "global_avgpool")
    w.slice = [0, 1]
    assert codes(plan, g) == {"slice_range"}
    plan = copy.deepcopy(base)
    a = next(s for s in plan.steps if s.mode == "accumulate")
    a.mode = "slice"  # a conv writing its accumulator in slice mode
    assert {"mode", "io"} <= codes(plan, g)


def _scratch_step(plan: Plan) -> int:
    return next(i for i, s in enumerate(plan.steps) if s.scratch)


def test_split_inplace_depthwise_needs_scratch(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    s = plan.steps[_scratch_step(plan)]
    out = plan.buffer(s.writes[0])
    assert out.alias_of in s.reads
    plan.buffers.remove(plan.buffer(s.scratch.pop()))
    refit(plan)
    vs = validate(plan, g)
    assert {v.code for v in vs} == {"alias", "overlap"}
    assert any("scratch" in v.message and out.name in v.message for v in vs)


def test_split_inplace_depthwise_scratch_too_small_or_misplaced(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    s = plan.steps[_scratch_step(plan)]
    plan.buffer(s.scratch[0]).size -= 1
    refit(plan)
    assert codes(plan, g) == {"alias", "overlap"}
    g, plan = forced(mbv2_int8)
    i = _scratch_step(plan)
    tmp = plan.buffer(plan.steps[i].scratch[0])
    tmp.offset = plan.buffer(plan.steps[i].reads[0]).offset  # over the depthwise's input
    refit(plan)
    assert codes(plan, g) == {"overlap"}
    g, plan = forced(mbv2_int8)
    i = _scratch_step(plan)
    plan.steps[i].scratch = [plan.steps[i].reads[0]]  # a tensor buffer is no scratch
    assert "scratch" in codes(plan, g)


def test_split_lifetime_must_cover_every_slice(mbv2_int8: Path) -> None:
    g, plan = forced(mbv2_int8)
    sb = next(b for b in plan.buffers if b.kind == "slice" and b.last_step > b.first_step + 1)
    sb.last_step -= 1
    assert {"not_live", "lifetime"} <= codes(plan, g)


def _slice_graph(first: OpKind = OpKind.CONV, second: OpKind = OpKind.RELU,
                 mid: str = "tensor") -> tuple[Graph, Plan]:
    """Two ops, each run as two slice steps of 2 of 4 channels, interleaved (op1 [0, 2),
    op2 [0, 2), op1 [2, 4), op2 [2, 4)); the middle tensor t1 is a full tensor buffer written
    slice by slice (mid="tensor") or only a slice buffer (mid="slice")."""
    tensors = tuple(Tensor(id=k, name=f"t{k}", shape=(1, 2, 2, 4), dtype="int8", nbytes=16)
                    for k in range(3))
    kinds = (first, second)
    ops = tuple(Op(id=k, name=f"op{k + 1}", kind=kinds[k], onnx_type="x", inputs=(k,),
                   outputs=(k + 1,)) for k in range(2))
    g = Graph(name="slices", tensors=tensors, ops=ops, inputs=(0,), outputs=(2,), dtype="int8",
              source_sha256="cd" * 32)
    t1 = "t1@slice" if mid == "slice" else "t1"
    steps = [Step(index=k, op=f"op{k % 2 + 1}", kind=kinds[k % 2].value,
                  reads=[("t0", t1)[k % 2]], writes=[(t1, "t2")[k % 2]],
                  slice=[k // 2 * 2, k // 2 * 2 + 2], mode="slice") for k in range(4)]
    bufs = [Buffer(name=n, tensor=n.split("@")[0], kind=mid if n == t1 else "tensor",
                   offset=16 * k, size=8 if n == "t1@slice" else 16, first_step=(0, 0, 1)[k],
                   last_step=(2, 3, 3)[k]) for k, n in enumerate(("t0", t1, "t2"))]
    plan = Plan(model={"path": "slices", "sha256": "cd" * 32}, arena_bytes=48,
                budget_bytes=None, fits=True, align=4, dtype="int8", input_external=False,
                steps=steps, buffers=bufs, solver=SolverInfo("OPTIMAL", 48, 0.0, 0.0, 0, 1, 1.0))
    plan.arena_bytes = max(b.offset + b.size for b in bufs)
    return g, plan


def test_handmade_slice_read_of_full_tensor() -> None:
    g, plan = _slice_graph()
    assert_valid(plan, g)
    plan.steps[2], plan.steps[3] = plan.steps[3], plan.steps[2]  # op2 [2, 4) before op1's
    reindex(plan)
    assert {"order", "read_before_write"} <= codes(plan, g)
    g, plan = _slice_graph()
    plan.steps[1].slice = [0, 4]  # op2 reads channels 2..4 before they exist
    assert {"order", "read_before_write", "duplicate_op"} <= codes(plan, g)


def test_handmade_slice_only_chain() -> None:
    g, plan = _slice_graph(OpKind.CONV, OpKind.RELU, "slice")
    assert_valid(plan, g)
    g, plan = _slice_graph(OpKind.RELU, OpKind.CONV, "slice")
    vs = validate(plan, g)  # a conv output slice needs all 4 input channels, t1@slice holds 2
    assert {v.code for v in vs} == {"order", "read_before_write", "slice_lost"}
    assert any("needs channels [0, 4) of 't1@slice'" in v.message for v in vs)
    g, plan = _slice_graph(OpKind.CONV, OpKind.RELU, "slice")
    plan.steps[3].mode = "whole"  # the last op writes its output whole, twice
    plan.steps[3].slice = None
    assert {"io", "duplicate_op"} <= codes(plan, g)
    g, plan = _slice_graph(OpKind.SOFTMAX, OpKind.RELU, "slice")
    assert "mode" in codes(plan, g)  # softmax cannot run on channel slices


def test_validator_does_not_import_solver_or_builder() -> None:
    code = ("import sys, pexopt.plan.validator, pexopt.plan.validator_slices; "
            "bad = [m for m in sys.modules if m.startswith('pexopt.solver') "
            "or m == 'pexopt.plan.build']; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_random_corruption_of_split_plan_never_crashes(mbv2_int8: Path) -> None:
    g, base = forced(mbv2_int8)
    names = [b.name for b in base.buffers] + ["ghost"]
    for seed in range(200):
        rng = random.Random(seed)
        plan = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            s = rng.choice(plan.steps)
            b = rng.choice(plan.buffers)
            what = rng.randrange(6)
            if what == 0:
                s.mode = rng.choice(["whole", "slice", "accumulate", "requantize", "x"])
            elif what == 1:
                s.slice = rng.choice([None, [0], [3, 1], [0, 10**6], ["a", 1],
                                      [rng.randint(-2, 40), rng.randint(-2, 80)]])
            elif what == 2:
                s.scratch = rng.sample(names, rng.randint(0, 2))
            elif what == 3:
                setattr(s, rng.choice(["reads", "writes"]), rng.sample(names, 2))
            elif what == 4:
                b.kind = rng.choice(["tensor", "slice", "accumulator", "scratch", "x"])
                b.tensor = rng.choice([None, b.tensor, "ghost", names[0]])
            else:
                b.alias_of = rng.choice(names + [None])
                b.size += rng.randint(-40, 40)
        vs = validate(plan, g)
        assert all(isinstance(v, Violation) and "\n" not in v.message for v in vs)


# ---------------------------------------------------------------------------- overlap sweep


def test_overlaps_half_open() -> None:
    assert overlaps(0, 4, 3, 8) and overlaps(3, 8, 0, 4)
    assert not overlaps(0, 4, 4, 8) and not overlaps(4, 8, 0, 4)
    assert not overlaps(0, 0, 0, 8) and overlaps(2, 3, 0, 8)


def test_random_offset_mutations_match_brute_force() -> None:
    g = import_onnx(BASE)  # no in-place writes: every overlap the mutations make is an error
    base = build_plan(g, solve_layout(g, replace(LAYERS, inplace=False)))
    assert all(b.alias_of is None for b in base.buffers)
    seen = {True: 0, False: 0}
    for seed in range(50):
        rng = random.Random(seed)
        plan = copy.deepcopy(base)
        top = plan.arena_bytes
        for b in rng.sample(plan.buffers, rng.randint(1, 3)):
            mode = rng.random()
            if mode < 0.4:
                b.offset = rng.randrange(0, max(1, top - b.size + 1), plan.align)
            elif mode < 0.7:
                b.offset = rng.choice(plan.buffers).offset
            else:  # above the original layout: overlaps only other moved buffers
                b.offset = top + plan.align * rng.randrange(0, 64)
        plan.arena_bytes = max(b.offset + b.size for b in plan.buffers)
        vs = validate(plan, g)
        expected = brute_overlaps(plan.buffers)
        got = [v for v in vs if v.code == "overlap"]
        assert (len(got) > 0) == (expected > 0), f"seed {seed}"
        assert len(got) == expected, f"seed {seed}"
        assert {v.code for v in vs} <= {"overlap"}, f"seed {seed}: {vs[:3]}"
        seen[expected > 0] += 1
    assert seen[True] >= 5 and seen[False] >= 5, seen


def test_find_overlaps_large_random() -> None:
    rng = random.Random(1)
    bs = []
    for i in range(600):
        first = rng.randrange(200)
        bs.append(Buffer(name=f"b{i}", tensor=None, kind="tensor",
                         offset=4 * rng.randrange(20000), size=4 * rng.randrange(1, 64),
                         first_step=first, last_step=first + rng.randrange(5)))
    t0 = time.perf_counter()
    pairs = find_overlaps(bs)
    assert time.perf_counter() - t0 < 1.0
    assert len(pairs) == brute_overlaps(bs) > 0
    assert len(set(pairs)) == len(pairs)


def _chain(n: int) -> tuple[Graph, Plan]:
    """A hand-made n-op conv chain and its ping-pong plan (no solver involved)."""
    tensors = tuple(Tensor(id=k, name=f"t{k}", shape=(1, 4, 4, 1), dtype="int8", nbytes=16)
                    for k in range(n + 1))
    ops = tuple(Op(id=k, name=f"op{k}", kind=OpKind.CONV, onnx_type="Conv", inputs=(k,),
                   outputs=(k + 1,)) for k in range(n))
    g = Graph(name="chain", tensors=tensors, ops=ops, inputs=(0,), outputs=(n,), dtype="int8",
              source_sha256="ab" * 32)
    bufs = [Buffer(name=f"t{k}", tensor=f"t{k}", kind="tensor", offset=16 * (k % 2), size=16,
                   first_step=max(0, k - 1), last_step=min(k, n - 1)) for k in range(n + 1)]
    steps = [Step(index=k, op=f"op{k}", kind="conv", reads=[f"t{k}"], writes=[f"t{k + 1}"])
             for k in range(n)]
    plan = Plan(model={"path": "chain", "sha256": "ab" * 32}, arena_bytes=32, budget_bytes=None,
                fits=True, align=4, dtype="int8", input_external=False, steps=steps,
                buffers=bufs, solver=SolverInfo("OPTIMAL", 32, 0.0, 0.0, 0, 1, 1.0))
    return g, plan


def test_handmade_500_op_plan_is_fast() -> None:
    g, plan = _chain(500)
    t0 = time.perf_counter()
    assert_valid(plan, g)
    plan.buffers[250].offset = plan.buffers[251].offset
    assert codes(plan, g) == {"overlap"}
    assert time.perf_counter() - t0 < 2.0


def test_random_corruption_never_crashes() -> None:
    g, base = solved(BASE)
    names = [b.name for b in base.buffers] + ["ghost"]
    fields = ["offset", "size", "first_step", "last_step", "alias_of", "tensor", "kind"]
    for seed in range(200):
        rng = random.Random(seed)
        plan = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.3:
                s = rng.choice(plan.steps)
                attr = rng.choice(["index", "op", "reads", "writes"])
                val = {"index": rng.randint(-2, 40), "op": rng.choice(["x", plan.steps[0].op]),
                       "reads": rng.sample(names, 2), "writes": [rng.choice(names)]}[attr]
                setattr(s, attr, val)
            else:
                b = rng.choice(plan.buffers)
                f = rng.choice(fields)
                if f in ("alias_of", "tensor"):
                    setattr(b, f, rng.choice(names + [None]))
                elif f == "kind":
                    b.kind = rng.choice(["tensor", "scratch"])
                else:
                    setattr(b, f, getattr(b, f) + rng.randint(-40, 40))
        plan.align = rng.choice([plan.align, 0, 3])
        vs = validate(plan, g)
        assert all(isinstance(v, Violation) and "\n" not in v.message for v in vs)
