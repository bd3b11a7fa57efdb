"""The sub-solves of `solve_layout`'s stages: constructive row-band plans, the check of the
bound beyond the cut row segments, and the canonical and simplest plans at the arena found."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from pexopt.cmsis_scratch import segment_scratch_bytes
from pexopt.graph.ir import Graph
from pexopt.partial.candidates import Segment
from pexopt.schedule import Schedule, SolverParams
from pexopt.solver.bounds import Reach, segment_floor
from pexopt.solver.buffers import greedy_schedule, schedule_cost
from pexopt.solver.model import Progress, _Model
from pexopt.solver.rows_greedy import fixed_layout, row_plan


def _beyond_the_cut(graph: Graph, params: SolverParams, every: list[Segment],
                    kept: list[Segment], best: Schedule, bound: int, lb: int,
                    seconds: Callable[[], float], fast_enough: Callable[[Schedule], bool]
                    ) -> tuple[Schedule, int, str]:
    """(best, bound valid for every candidate, stage note) when the model left out row
    segments (`worth_trying`): its proven bound holds for plans without them only.

    A plan using a left-out segment g needs at least max(lb, the bytes while g runs); when that
    is below the bound, the model with every segment must find no arena below the bound (it may
    find a better plan: kept); if it cannot tell in time, the bound drops to that floor.
    `seconds()`: the time left for that search, asked before and after building the model.
    """
    reach = Reach(graph)
    ids = {s.id for s in kept}
    floor = min(max(lb, segment_floor(
        graph, s, params.stream, min(segment_scratch_bytes(graph, s, w, params.target)
                                     for w in s.widths), reach))
        for s in every if s.id not in ids)
    if floor >= bound:
        return best, bound, f"left-out row segments need >= {floor}"
    if seconds() < 0.05:
        return best, max(lb, floor), "every segment: no time left"
    order = None if params.reorder else list(range(len(graph.ops)))
    model = _Model(graph, params, order, every, lb, bound - 1)
    if params.hint:
        model.hint(best)
    # presolve of the model with every segment can overrun the time limit by far (27 s for
    # 1.8 s on tinyengine_mcunetv2_large): without it the search stops on time
    name, found, below = model.solve(seconds(), "every segment", None, presolve=False)
    if name == "INFEASIBLE":
        return best, bound, "every segment: none below the bound"
    if found is not None and found.arena < best.arena and fast_enough(found):
        best = found
    # a plan below the bound uses a left-out segment (>= floor) and is one of this model's
    # (>= its proven bound `below`, lb when it proved nothing)
    return best, max(lb, min(bound, max(below, floor))), f"every segment {name} {best.arena}"


def _row_plans(graph: Graph, params: SolverParams, segments: list[Segment], start: Schedule,
               lb: int, seconds: float, progress: Progress | None) -> list[Schedule]:
    """The greedy row-band plan (`rows_greedy`) grown from start, its offsets then re-packed by
    the model with its choices fixed (a fifth of that time); [] when it does not beat start."""
    t0 = time.time()
    sc = row_plan(graph, params, segments, start, seconds=seconds)
    if sc is None:
        return []
    sc.bound = lb
    sc.cost = None if params.cost is None else schedule_cost(graph, sc, params.cost)
    if progress:
        progress("rows greedy", sc.arena, lb, time.time() - t0)
    if sc.arena > lb:
        packed = fixed_layout(graph, params, segments, sc, lb, 0.2 * seconds, progress)
        if packed is not None:
            sc = packed
            sc.bound = lb
    return [sc]


CANONICAL_WORK = 4.0  # deterministic-time budget (CP-SAT work units) of the canonical search


def _canonical(graph: Graph, params: SolverParams, arena: int, segments: list[Segment],
               lb: int, limit: float) -> Schedule | None:
    """At a proven-optimal arena, the fastest (with a cost model) and simplest plan found by one
    search thread within a fixed amount of deterministic work.

    The model, its hint (greedy, file order), the single thread and the work budget depend
    neither on what the earlier stages found nor on the worker count or the machine's speed, so
    the same model and options give the same plan bytes. A search cut short by the wall clock
    would not be reproducible: then None, and the caller keeps the plan it had.
    """
    work = CANONICAL_WORK if params.deterministic_time is None else params.deterministic_time
    one = replace(params, workers=1, deterministic_time=work)
    file_order = list(range(len(graph.ops)))
    model = _Model(graph, one, None if params.reorder else file_order, segments, lb, arena)
    if params.hint:
        model.hint(greedy_schedule(graph, file_order, one))
    name, sched, _ = model.solve(limit, "canonical", None, objective="simple")
    if sched is None or sched.arena > arena:
        return None
    if name != "OPTIMAL" and model.work < 0.99 * work:  # stopped by the wall clock
        return None
    return sched


def _simplest(graph: Graph, params: SolverParams, best: Schedule, segments: list[Segment],
              lb: int, limit: float) -> Schedule:
    """At the arena found, drop needless splits and in-place writes, widen slices."""
    model = _Model(graph, params, best.order, segments, lb, best.arena, only=best)
    model.hint(best)
    name, sched, _ = model.solve(limit, "simplify", None, objective="simple")
    if sched is None or sched.arena > best.arena:
        return best
    sched.bound = best.bound
    return sched
