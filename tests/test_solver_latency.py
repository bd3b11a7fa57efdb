"""The latency bound inside the CP-SAT model: with a cost per choice, the solver minimises the
arena under the bound, or the cost under an arena limit; the cost it constrains equals the cost
recomputed from the schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from pexopt.graph.ir import Graph
from pexopt.partial.candidates import Segment
from pexopt.pipeline import ImportOptions
from pexopt.schedule import SolverParams
from pexopt.solver.cpsat_layout import TOO_SLOW, schedule_cost, solve_fastest, solve_layout

CALL = 5_000  # fixed cost of every kernel call: what makes narrow slices slow


class ElementCost:
    """A toy cost model: output elements plus a fixed cost per call; in place costs a copy."""

    def op(self, graph: Graph, k: int) -> int:
        return graph.tensors[graph.ops[k].outputs[0]].elements + CALL

    def segment(self, graph: Graph, seg: Segment, width: int) -> int:
        calls = len(seg.slices(width)) * len(seg.ops) + (1 if seg.accumulate else 0)
        return sum(graph.tensors[graph.ops[k].outputs[0]].elements for k in seg.ops) \
            + CALL * calls

    def inplace(self, graph: Graph, k: int) -> int:
        return graph.tensors[graph.ops[k].outputs[0]].elements // 4


@pytest.fixture(scope="module")
def mbv2(models_dir: Path) -> Graph:
    return ImportOptions().load(models_dir / "mbv2_w035_r96_int8.onnx")


def _params(**kw: object) -> SolverParams:
    return SolverParams(**{"time_limit": 20.0, "workers": 2, "cost": ElementCost(), **kw})


def test_no_bound_changes_nothing(mbv2: Graph) -> None:
    plain = solve_layout(mbv2, SolverParams(time_limit=20.0, workers=2))
    costed = solve_layout(mbv2, _params())
    assert plain.status == costed.status == "OPTIMAL"
    assert plain.arena == costed.arena


def test_bound_trades_memory_for_speed(mbv2: Graph) -> None:
    cost = ElementCost()
    small = solve_layout(mbv2, _params())
    flat = solve_layout(mbv2, _params(split=False, inplace=False))
    slow, fast = schedule_cost(mbv2, small, cost), schedule_cost(mbv2, flat, cost)
    assert small.splits and small.arena < flat.arena and slow > fast
    mid_bound = (slow + fast) // 2
    mid = solve_layout(mbv2, _params(latency=mid_bound))
    assert mid.status != TOO_SLOW
    assert schedule_cost(mbv2, mid, cost) <= mid_bound
    assert small.arena <= mid.arena <= flat.arena
    tight = solve_layout(mbv2, _params(latency=fast))
    assert schedule_cost(mbv2, tight, cost) <= fast
    assert not tight.splits and tight.arena >= mid.arena


def test_unreachable_bound_is_reported(mbv2: Graph) -> None:
    cost = ElementCost()
    least = sum(cost.op(mbv2, k) for k in range(len(mbv2.ops)))
    s = solve_layout(mbv2, _params(latency=least - 1))
    assert s.status == TOO_SLOW


def test_fastest_within_an_arena(mbv2: Graph) -> None:
    cost = ElementCost()
    least = sum(cost.op(mbv2, k) for k in range(len(mbv2.ops)))
    flat = solve_layout(mbv2, _params(split=False, inplace=False))
    s = solve_fastest(mbv2, _params(), flat.arena)
    assert s is not None and s.arena <= flat.arena
    assert schedule_cost(mbv2, s, cost) == least
    small = solve_layout(mbv2, _params())
    tight = solve_fastest(mbv2, _params(), small.arena)
    assert tight is not None and tight.arena <= small.arena
    assert least < schedule_cost(mbv2, tight, cost) <= schedule_cost(mbv2, small, cost)


def test_pareto_front_runs_from_no_split_speed_to_least_memory(mbv2: Graph) -> None:
    from pexopt.solver.pareto import least_cost, pareto_front

    params = _params(time_limit=10.0)
    front = pareto_front(params=params, graph=mbv2, points=6)
    assert len(front) >= 3
    costs = [p.cost for p in front]
    arenas = [p.arena for p in front]
    assert costs == sorted(costs) and arenas == sorted(arenas, reverse=True)
    assert len(set(costs)) == len(costs) and len(set(arenas)) == len(arenas)
    assert costs[0] == least_cost(mbv2, params)  # the fastest point runs everything whole
    memory_optimal = solve_layout(mbv2, params)
    assert arenas[-1] == memory_optimal.arena
    for p in front:
        assert p.bound is None or p.cost <= p.bound
        assert schedule_cost(mbv2, p.schedule, ElementCost()) == p.cost


def test_row_band_plan_latency_is_what_the_solver_summed(models_dir: Path) -> None:
    """A row-band plan priced by a real profile: the plan's latency record is the sum of its
    steps' estimates, and equals the cost the CP-SAT model had for its choices (each term is
    rounded to whole instructions there)."""
    from pexopt.latency.cost import (
        estimate,
        invoke_instructions,
        latency_record,
        plan_instructions,
    )
    from pexopt.latency.profile import load_profile
    from pexopt.pipeline import solve_model

    prof = load_profile("cortex-m4")
    params = SolverParams(time_limit=20.0, workers=2, rows=True, target="cortex-m4")
    res = solve_model(models_dir / "mbv2_w035_r96_int8.onnx", ImportOptions(), params, None,
                      profile=prof)
    g, sched, plan = res.graph, res.schedule, res.plan
    used = [s for s in sched.segments if s.id in sched.splits]
    assert any(s.dim == "rows" for s in used), "the memory-optimal plan runs row bands"
    assert any(st.mode == "halo" for st in plan.steps)
    record = latency_record(prof, estimate(prof, g, plan))
    steps = plan_instructions(prof, g, plan)
    assert len(steps) == len(plan.steps)
    invoke = invoke_instructions(prof, g)
    assert record["instructions"] == round(sum(steps) + invoke)
    cost = sched.params.cost
    assert cost is not None and sched.cost == schedule_cost(g, sched, cost)
    in_seg = {k for s in used for k in s.ops}
    terms = len(g.ops) - len(in_seg) + len(used) + len(sched.inplace) + 1
    assert abs(record["instructions"] - (sched.cost + round(invoke))) <= terms / 2 + 1
