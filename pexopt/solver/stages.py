"""`solve_layout`: the staged search for the smallest arena (greedy, row plans, file order,
free order, canonical or simplest plan)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from pexopt.deadline import OutOfTime
from pexopt.graph.ir import Graph
from pexopt.partial.bands import worth_trying
from pexopt.schedule import Schedule, SolverParams
from pexopt.solver import interrupt
from pexopt.solver.bounds import all_inplace_candidates, order_search_bound
from pexopt.solver.buffers import greedy_schedule, op_scratch, schedule_cost
from pexopt.solver.model import Progress, _Model
from pexopt.solver.search_space import candidates, lower_bound
from pexopt.solver.substages import _beyond_the_cut, _canonical, _row_plans, _simplest

OUT_OF_TIME = "out of time before the search:"  # first stage of a deadline fallback
TOO_SLOW = "LATENCY_NOT_MET"  # status of a schedule found only above the latency bound


def solve_layout(graph: Graph, params: SolverParams = SolverParams(),
                 progress: Progress | None = None, start: Schedule | None = None) -> Schedule:
    """Best schedule: file order first (hinted by greedy), then a free order, hinted.

    The result is never worse than the file-order plan, nor than `start` (e.g. the no-split
    optimum); `bound` is valid for every order (and every split choice when splitting is on).
    Under a command deadline (`pexopt.deadline`), pre-solve work that would overrun it stops
    and the best plan already found is returned (FEASIBLE; the deadline notes why).
    """
    t0 = time.time()
    found = _Found()
    try:
        return _solve_layout(graph, params, progress, start, found)
    except OutOfTime:
        return _out_of_time(graph, params, start, time.time() - t0, found)


@dataclass
class _Found:
    """What `_solve_layout` had found when the deadline stopped it."""

    plans: list[Schedule] = field(default_factory=list)
    bound: int | None = None  # its lower bound, once computed (valid for every option)


def _out_of_time(graph: Graph, params: SolverParams, start: Schedule | None,
                 seconds: float, found: _Found) -> Schedule:
    """The smallest plan found so far: `start`, the stages' plans or the file-order greedy
    layer-by-layer plan (always valid). Its bound is the stage's, else one that holds for
    every option: the graph inputs, then the outputs, are whole in the arena."""
    plans = [p for p in (start, *found.plans) if p is not None and p.status != TOO_SLOW]
    best = min(plans, key=lambda p: p.arena, default=None)
    best = greedy_schedule(graph, list(range(len(graph.ops))), params) if best is None \
        else replace(best, stages=[])
    size = [0 if t.external else t.nbytes for t in graph.tensors]
    floor = max(sum(size[t] for t in graph.inputs), sum(size[t] for t in graph.outputs))
    best.bound = min(best.arena, found.bound if found.bound is not None else floor)
    best.status = "OPTIMAL" if best.arena <= best.bound else "FEASIBLE"
    best.seconds = seconds
    best.params = params
    best.stages = [f"{OUT_OF_TIME} {best.arena}"]
    if params.cost is not None and params.latency is not None and \
            schedule_cost(graph, best, params.cost) > params.latency:
        best.status = TOO_SLOW
    return best


def _solve_layout(graph: Graph, params: SolverParams, progress: Progress | None,
                  start: Schedule | None, found: _Found) -> Schedule:
    """solve_layout's stages (see there)."""
    t0 = time.time()
    segments, rows = candidates(graph, params)
    segments += rows
    full_lb = lower_bound(graph, params, segments)
    lb = full_lb if params.use_bound else 0
    any_split = bool(segments)  # before the cut below: the order search assumes none at all
    every = list(segments)
    if rows:  # the bound above counts every row segment; the model gets the promising ones
        keep = {s.id for s in worth_trying(graph, rows, full_lb)}
        segments = [s for s in segments if s.dim == "channel" or s.id in keep]
    file_order = list(range(len(graph.ops)))

    def fast_enough(sc: Schedule) -> bool:
        return params.cost is None or params.latency is None or \
            schedule_cost(graph, sc, params.cost) <= params.latency

    greedy = greedy_schedule(graph, file_order, params)
    if (start is not None and start.order == file_order and not start.splits
            and start.arena < greedy.arena and start.params.align == params.align
            and fast_enough(start)):
        greedy = start
    stages = [f"greedy {greedy.arena}"]
    found.plans.append(greedy)
    found.bound = lb if params.use_bound else None
    budget = params.time_limit
    deadline = t0 + budget

    def left(share: float = 1.0) -> float:
        """Seconds for the next stage: a share of the budget, never past the deadline (none
        after a Ctrl-C)."""
        if interrupt.requested():
            return 0.0
        return max(0.0, min(share * budget, 0.97 * (deadline - time.time())))

    chan = None
    built: list[Schedule] = []  # constructive row plans: hints, and results if the model lags
    if rows:
        # with hybrid segments: row bands without them first (that solve builds the greedy row
        # plans and solves channel splits alone), so hybrid is never worse; else a greedy row
        # plan, then channel splits alone (small model, fast): the hints
        hybrid = any(s.dim == "hybrid" for s in rows)
        if not hybrid:
            built = _row_plans(graph, params, segments, greedy, lb, left(0.5), progress)
        simpler = replace(params, hybrid=False) if hybrid else replace(params, rows=False)
        chan = solve_layout(graph, replace(simpler, time_limit=left(0.4)), progress, start)
        stages.append(f"{'row bands' if hybrid else 'channel splits'} {chan.arena}")
        found.plans.append(chan)
        if not hybrid and chan.order != file_order:  # a row plan in the order found there
            built += _row_plans(graph, params, segments, chan, lb, left(0.2), progress)
        built = [b for b in built if fast_enough(b)]
        found.plans += built
        if built:
            stages.append(f"rows greedy {min(b.arena for b in built)}")
    # the sub-solves cut with their own bound: keep the segments their plans use (hints)
    used = {sid for sc in (chan, *built) if sc is not None for sid in sc.splits}
    segments += [sg for sg in every if sg.id in used and sg not in segments]
    fixed_model = _Model(graph, params, file_order, segments, lb,
                         greedy.arena if fast_enough(greedy) else None)
    if params.hint:
        hints = [s for s in (chan, *built) if s is not None and s.order == file_order]
        fixed_model.hint(min(hints, key=lambda s: s.arena) if hints and
                         min(s.arena for s in hints) < greedy.arena else greedy)
    name, fixed, fbound = fixed_model.solve(left(0.6 if params.reorder else 1.0),
                                            "file order", progress)
    best = fixed if fixed is not None else greedy
    best.segments = fixed_model.segments if fixed is not None else []
    stages.append(f"file order {name} {best.arena}")
    if chan is not None and chan.status != TOO_SLOW and (chan.arena < best.arena
                                                         or not fast_enough(best)):
        best = chan
    for b in built:
        if b.arena < best.arena:
            best = b
            stages.append(f"kept the rows greedy plan {b.arena}")
    bound = lb
    cut_checked = len(segments) >= len(every)  # else CP-SAT's bound is the cut model's
    try:  # improvements of `best`: past the deadline, keep it (with a bound that holds)
        if params.reorder and params.use_bound and not any_split and best.arena > lb:
            # without splits no order keeps less than the least peak of live bytes (in-place
            # pairs counted once): search the orders for it, up to a quarter of the time
            cands = all_inplace_candidates(graph) if params.inplace else None
            lb, good = order_search_bound(graph, lb, best.arena, cands, seconds=left(0.25),
                                          scratch=op_scratch(graph, params.target))
            bound = lb
            stages.append(f"order search bound {lb}")
            if good is not None and good != best.order:  # lay out the order the search found
                model = _Model(graph, params, good, segments, lb, best.arena)
                _, other, _ = model.solve(left(0.1), "searched order", progress)
                if other is not None and (other.arena < best.arena or not fast_enough(best)):
                    best = other
                    stages.append(f"searched order {other.arena}")
        if params.reorder and best.arena > lb and len(graph.ops) > 1:
            best.bound = lb  # the file-order stage's bound holds for the file order only
            free_model = _Model(graph, params, None, segments, lb,
                                best.arena if fast_enough(best) else None)
            if params.hint:
                free_model.hint(best)
            name, free, fbound2 = free_model.solve(0.8 * left(), "reorder", progress)
            stages.append(f"reorder {name} {free.arena if free else '-'}")
            if free is not None:
                bound = max(lb, fbound2)
                if free.arena <= best.arena or not fast_enough(best):
                    best = free
        elif not params.reorder or len(graph.ops) <= 1:  # the file order is the only order
            bound = max(lb, fbound) if fixed is not None else lb
        if start is not None and start.arena < best.arena and fast_enough(start):
            best = replace(start, bound=best.bound, stages=[])
            stages.append(f"kept the start schedule {best.arena}")
        if len(segments) < len(every) and bound > lb:  # CP-SAT's bound is the cut model's
            best, bound, note = _beyond_the_cut(graph, params, every, segments, best, bound, lb,
                                                lambda: left(0.5), fast_enough)
            stages.append(note)
            cut_checked = True
            if not set(best.splits) <= {sg.id for sg in segments}:
                segments = every  # the plan uses a left-out segment: simplify among all of them
        # only `bound` is valid for this problem: best.bound may be a sub-problem's (the channel
        # splits alone, the file order) or the start schedule's
        canon = None
        if best.arena <= bound:
            canon = _canonical(graph, params, best.arena, segments, lb, left(0.5))
            if canon is not None:
                canon.bound = best.bound
                best = canon
                stages.append(f"canonical {best.arena}")
        if canon is None and (best.splits or best.inplace):
            best = _simplest(graph, params, best, segments, lb, left(0.25))
    except OutOfTime:
        if start is not None and start.arena < best.arena and fast_enough(start):
            best = replace(start, bound=best.bound, stages=[])
        if not cut_checked:
            bound = lb
        stages.append(f"out of time: kept {best.arena}")
    best.bound = min(bound, best.arena)
    best.status = "OPTIMAL" if best.arena <= best.bound else "FEASIBLE"
    if interrupt.requested():
        stages.append("interrupted (Ctrl-C): the best plan so far")
    if not fast_enough(best):
        best.status = TOO_SLOW
    best.seconds = time.time() - t0
    best.stages = stages
    best.params = params
    return best
