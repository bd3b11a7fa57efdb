"""The memory/latency frontier: the smallest arena under a sweep of latency bounds, from the
memory-optimal plan to the speed of running every operator whole."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from pexopt.graph.ir import Graph
from pexopt.schedule import Schedule, SolverParams
from pexopt.solver.cpsat_layout import TOO_SLOW, schedule_cost, solve_layout


@dataclass
class ParetoPoint:
    """One solve of the sweep: the bound it had and what it reached."""

    bound: int | None  # latency bound (estimated instructions); None: memory-optimal, unbounded
    arena: int
    cost: int  # estimated instructions of the schedule
    status: str
    schedule: Schedule


def least_cost(graph: Graph, params: SolverParams) -> int:
    """The estimated cost of running every operator whole, no in-place copies: the fastest."""
    assert params.cost is not None
    return sum(params.cost.op(graph, k) for k in range(len(graph.ops)))


def pareto_front(graph: Graph, params: SolverParams, points: int = 6,
                 on_point: Callable[[ParetoPoint], None] | None = None) -> list[ParetoPoint]:
    """Up to `points` non-dominated (arena, cost) points, fastest first, from the
    memory-optimal plan down to the no-split speed and beyond while faster plans exist
    (epsilon-constraint method: each solve asks for the smallest arena faster than the point
    before by at least a step; the step spaces the no-split speed within about half the points).
    Each solve gets `params.time_limit`."""
    cost = params.cost
    assert cost is not None, "a Pareto sweep needs a cost model"
    mem = solve_layout(graph, replace(params, latency=None))
    slow, fast = schedule_cost(graph, mem, cost), least_cost(graph, params)
    found = [ParetoPoint(None, mem.arena, slow, mem.status, mem)]
    if on_point is not None:
        on_point(found[0])
    step = max(1, (slow - fast) // max(1, points // 2))
    while len(found) < points:
        at = found[-1].cost
        bound = at - step if at - step >= fast or at <= fast else fast
        s = solve_layout(graph, replace(params, latency=bound))
        if s.status == TOO_SLOW:
            break
        p = ParetoPoint(bound, s.arena, schedule_cost(graph, s, cost), s.status, s)
        found.append(p)
        if on_point is not None:
            on_point(p)
    return non_dominated(found)


def non_dominated(points: list[ParetoPoint]) -> list[ParetoPoint]:
    """Points no other point beats on both arena and cost, fastest first (ties: one kept)."""
    keep: list[ParetoPoint] = []
    for p in sorted(points, key=lambda p: (p.cost, p.arena)):
        if not keep or p.arena < keep[-1].arena:
            keep.append(p)
    return keep
