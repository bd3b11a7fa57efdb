"""`--time-limit` is one deadline for the whole command (issue #13 item 11): long operator chains
return a validated plan in time, and pre-solve work scales near-linearly in operators."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SHARED_MODELS_DIR
from onnx import TensorProto, helper, numpy_helper

from pexopt.deadline import Deadline, OutOfTime, active, check
from pexopt.graph.synthetic import random_dag
from pexopt.plan.format import load_plan
from pexopt.plan.validator import validate
from pexopt.solver.baselines import greedy_by_size, tflm_lifetimes
from pexopt.solver.bounds import Reach, any_order_bound

WALL_S = 15.0  # the bound for --time-limit 10
MARGIN_S = 1.5  # other tests may share the 2 cores (allowance on top of WALL_S)


def chain(n: int, qdq: bool) -> onnx.ModelProto:
    """n operators alternating Relu and Sigmoid over 1x8x8x8; with qdq, int8 QDQ between them
    (simulated), else float (planned with int8 activations: validated, not simulated)."""
    inits = [numpy_helper.from_array(np.array(1 / 64, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes, x = [], "x"
    if qdq:
        nodes += [helper.make_node("QuantizeLinear", [x, "s", "z"], ["q0"]),
                  helper.make_node("DequantizeLinear", ["q0", "s", "z"], ["d0"])]
        x = "d0"
    for i in range(n):
        kind = "Relu" if i % 2 == 0 else "Sigmoid"
        y = f"a{i}"
        nodes.append(helper.make_node(kind, [x], [y], name=f"{kind.lower()}_{i}"))
        if qdq:
            nodes += [helper.make_node("QuantizeLinear", [y, "s", "z"], [f"q{i + 1}"]),
                      helper.make_node("DequantizeLinear", [f"q{i + 1}", "s", "z"],
                                       [f"d{i + 1}"])]
            y = f"d{i + 1}"
        x = y
    shape = [1, 8, 8, 8]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         shape)],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _solve_timed(model: Path, plan: Path, limit: float
                 ) -> tuple[float, subprocess.CompletedProcess]:
    """`pexopt solve` in its own process (the real startup included), its wall seconds."""
    exe = Path(sys.executable).parent / "pexopt"
    t0 = time.monotonic()
    p = subprocess.run([str(exe), "solve", str(model), "--time-limit", str(limit),
                        "--workers", "1", "--quiet", "-o", str(plan)],
                       capture_output=True, text=True, timeout=300)
    return time.monotonic() - t0, p


@pytest.mark.parametrize("n, qdq", [(1000, True), (5000, False)])
def test_long_chain_returns_a_validated_plan_in_time(tmp_path: Path, n: int, qdq: bool) -> None:
    model, plan = tmp_path / f"chain{n}.onnx", tmp_path / "plan.json"
    onnx.save(chain(n, qdq), model)
    wall, p = _solve_timed(model, plan, 10)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) <= 1, p.stderr
    assert wall <= WALL_S + MARGIN_S, f"{n} operators: {wall:.1f} s"
    from pexopt.frontend.onnx_import import import_onnx

    graph = import_onnx(model)
    got = load_plan(plan)
    assert len(graph.ops) == n and not validate(got, graph)
    assert got.solver.status in ("OPTIMAL", "FEASIBLE")
    assert got.arena_bytes <= 2 * 512  # never worse than the greedy layer-by-layer plan


@pytest.mark.skipif(not (SHARED_MODELS_DIR / "mcunet_in3_320kb_1mb_imagenet.onnx").exists(),
                    reason="../shared models absent")
def test_mcunet_in3_time_limit_5(tmp_path: Path) -> None:
    """Was 41 s with --time-limit 5. The contract (README "What is checked"): the deadline
    holds but for the work after the search, which is never cut short and which the command
    sets aside by its own estimate (8.7 s here: simulating 82 M MACs twice)."""
    from pexopt.pipeline import ImportOptions, post_solve_seconds

    model = SHARED_MODELS_DIR / "mcunet_in3_320kb_1mb_imagenet.onnx"
    wall, p = _solve_timed(model, tmp_path / "plan.json", 5)
    assert p.returncode == 0, p.stderr
    post = post_solve_seconds(ImportOptions().load(model))
    assert 5 < post < 15  # the estimate this bound rests on is the real one
    assert wall <= 5 + post + MARGIN_S, f"{wall:.1f} s"
    assert json.loads((tmp_path / "plan.json").read_text())["arena_bytes"] > 0


def test_deadline_check_raises_only_while_armed() -> None:
    d = Deadline(0.0)
    with active(d):
        check()  # not armed: the solver's window only
        d.stop = time.monotonic() - 1
        with pytest.raises(OutOfTime):
            check()
        d.stop = None
        check()
    d.stop = time.monotonic() - 1
    check()  # no current deadline outside `active`


def test_solver_out_of_time_keeps_a_valid_plan(tmp_path: Path) -> None:
    """A deadline already spent: the solver returns the file-order greedy plan, FEASIBLE with
    a bound that holds, and the command says so in one stderr line."""
    from pexopt.pipeline import ImportOptions, solve_graph
    from pexopt.schedule import SolverParams
    from pexopt.solver.cpsat_layout import OUT_OF_TIME

    model = tmp_path / "c.onnx"
    onnx.save(chain(40, True), model)
    graph = ImportOptions().load(model)
    d = Deadline(0.001)
    time.sleep(0.01)
    with active(d):
        res = solve_graph(graph, 0, SolverParams(time_limit=5, workers=1, rows=True), None)
    assert res.schedule.stages[0].startswith(OUT_OF_TIME)
    assert res.schedule.bound <= res.plan.arena_bytes and res.plan.arena_bytes == 1024
    assert not validate(res.plan, graph)
    assert d.notes and "--time-limit" in d.notes[0]


def _old_must_live(graph, k: int) -> set[int]:  # noqa: ANN001
    """The any-order live set of op k, by the definition (quadratic, for the test)."""
    from pexopt.graph.ir import ancestors, descendants

    succs = graph.succs()
    anc, desc = ancestors(succs), descendants(succs)
    prod, cons, outs = graph.producer(), graph.consumers(), set(graph.outputs)
    return {t.id for t in graph.tensors if t.nbytes and not t.external
            and (t.id not in prod or prod[t.id] in anc[k])
            and (t.id in outs or any(c in desc[k] for c in cons[t.id]))}


@pytest.mark.parametrize("seed", range(12))
def test_reach_matches_the_definition(seed: int) -> None:
    graph = random_dag(seed, 10 + seed)
    reach = Reach(graph)
    for k in range(len(graph.ops)):
        assert set(reach.must[k]) == _old_must_live(graph, k)


def test_bounds_and_greedy_scale_linearly() -> None:
    """5,000 operators: the any-order bound and TFLM's greedy planner take well under a
    second each (were quadratic: seconds to minutes)."""
    graph = _chain_graph(5000)
    t0 = time.monotonic()
    bound, _ = any_order_bound(graph)
    offs = greedy_by_size(tflm_lifetimes(graph))
    took = time.monotonic() - t0
    assert bound == 512 and max(offs.values()) <= 512
    assert took < 3.0, f"{took:.2f} s"


def _chain_graph(n: int):  # noqa: ANN202
    """An IR chain of n element-wise ops over 512-byte tensors (no ONNX round trip)."""
    from pexopt.graph.ir import Graph, Op, Tensor
    from pexopt.ops import OpKind

    tensors = tuple(Tensor(i, f"t{i}", (1, 8, 8, 8), "int8", 512) for i in range(n + 1))
    ops = tuple(Op(i, f"op{i}", OpKind.RELU, "Relu", (i,), (i + 1,)) for i in range(n))
    return Graph("chain", tensors, ops, (0,), (n,), "int8")
