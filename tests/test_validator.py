"""Tests for pexopt.plan.validator: solver plans pass, every kind of corruption is caught."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pexopt.errors import PexError
from pexopt.graph.ir import Graph, Op, Tensor
from pexopt.graph.onnx_import import import_onnx
from pexopt.ops import OpKind
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
from pexopt.solver.cpsat_layout import SolverParams, solve_layout

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SHARED = ROOT.parent / "shared" / "models" / "onnx"
PARAMS = SolverParams(time_limit=10, workers=1)
BASE = MODELS / "mcunet_mixed_int8.onnx"  # committed; residual blocks, no in-place choices

LOCAL_MODELS = sorted(MODELS.glob("*.onnx"))
SHARED_MODELS = sorted(SHARED.glob("*.onnx")) if SHARED.is_dir() else []

_CACHE: dict[tuple[str, str, bool], tuple[Graph, Plan]] = {}


def solved(path: Path, dtype: str = "int8", input_external: bool = False,
           budget: int | None = None) -> tuple[Graph, Plan]:
    """(graph, fresh copy of its solver plan); the solve is cached per model."""
    key = (str(path), dtype, input_external)
    if key not in _CACHE:
        g = import_onnx(path, dtype=dtype, input_external=input_external)
        _CACHE[key] = (g, build_plan(g, solve_layout(g, PARAMS), PARAMS, budget=None))
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


@pytest.mark.parametrize("path", LOCAL_MODELS, ids=lambda p: p.stem)
def test_local_models_valid(path: Path) -> None:
    assert_valid(*reversed(solved(path)))


@pytest.mark.parametrize("path", SHARED_MODELS or [None],
                         ids=lambda p: p.stem if p else "shared-missing")
def test_shared_models_valid(path: Path | None) -> None:
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared models missing in CI: {SHARED}")
        pytest.skip(f"no shared models at {SHARED}")
    assert_valid(*reversed(solved(path)))


def test_float_and_external_input_variants_valid(mbv2_float: Path) -> None:
    for dtype in ("int8", "float32"):
        for ext in (False, True):
            g, plan = solved(mbv2_float, dtype, ext)
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
    b.alias_of = plan.buffers[0].name
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
    outs = {graph.tensors[t].name for t in graph.outputs}
    return next(i for i, s in enumerate(plan.steps)
                if s.kind == kind and len(s.writes) == 1 and any(
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


# ---------------------------------------------------------------------------- overlap sweep


def test_overlaps_half_open() -> None:
    assert overlaps(0, 4, 3, 8) and overlaps(3, 8, 0, 4)
    assert not overlaps(0, 4, 4, 8) and not overlaps(4, 8, 0, 4)
    assert not overlaps(0, 0, 0, 8) and overlaps(2, 3, 0, 8)


def test_random_offset_mutations_match_brute_force() -> None:
    g, base = solved(BASE)
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
