"""The memory/latency frontier: the smallest arena under a sweep of latency bounds, from the
memory-optimal plan to the speed of running every operator whole."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from pexopt.graph.ir import Graph
from pexopt.solver.cpsat_layout import (
    TOO_SLOW,
    Schedule,
    SolverParams,
    schedule_cost,
    solve_layout,
)


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
    """Solve for the smallest arena at `points` latency bounds spread evenly between the no-split
    speed and the cost of the memory-optimal plan; return the non-dominated points, fastest
    first. Each solve gets `params.time_limit`."""
    cost = params.cost
    assert cost is not None, "a Pareto sweep needs a cost model"
    free = replace(params, latency=None)
    mem = solve_layout(graph, free)
    slow, fast = schedule_cost(graph, mem, cost), least_cost(graph, params)
    found = [ParetoPoint(None, mem.arena, slow, mem.status, mem)]
    if on_point is not None:
        on_point(found[0])
    n = max(2, points)
    start = None
    for i in range(n - 1):
        bound = fast + (slow - fast) * i // (n - 1)
        s = solve_layout(graph, replace(params, latency=bound), start=start)
        if s.status == TOO_SLOW:
            continue
        start = s  # feasible under every looser bound: the next solve starts from it
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
