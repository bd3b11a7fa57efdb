"""`solve_layout`: the staged search for the smallest arena (greedy, row plans, file order,
free order, canonical or simplest plan)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pexopt.deadline import OutOfTime
from pexopt.graph.ir import Graph
from pexopt.partial.bands import worth_trying
from pexopt.partial.candidates import Segment
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
    """solve_layout's stages, one loop over each of two named lists, sharing one `_Search`.

    FIRST_STAGES find a plan (`best`; under a deadline there `solve_layout` falls back to
    `_out_of_time` with `found`), IMPROVEMENTS improve it and its bound (past the deadline the
    plan so far is kept, `_stopped`). Two lists because the deadline means different things in
    each; the state is shared because later stages read much of what earlier ones found."""
    s = _begin(graph, params, progress, start, found)
    for stage in FIRST_STAGES:
        stage(s)
    try:
        for stage in IMPROVEMENTS:
            stage(s)
    except OutOfTime:
        _stopped(s)
    return _result(s)


@dataclass
class _Search:
    """What the stages share. Only `bound` is valid for this problem: best.bound may be a
    sub-problem's (the channel splits alone, the file order) or the start schedule's."""

    graph: Graph
    params: SolverParams
    progress: Progress | None
    start: Schedule | None
    found: _Found
    t0: float
    deadline: float
    segments: list[Segment]  # the models' options: every candidate but unpromising row bands
    every: list[Segment]  # every candidate (the bound counts them all)
    rows: list[Segment]  # the row and hybrid candidates
    lb: int  # the models' lower bound (0 without use_bound); the order search raises it
    any_split: bool  # any candidate before the cut: the order search assumes none at all
    file_order: list[int]
    notes: list[str] = field(default_factory=list)  # the result's `stages`
    greedy: Schedule | None = None  # set by _greedy
    chan: Schedule | None = None  # the simpler sub-solve of _rows
    built: list[Schedule] = field(default_factory=list)  # constructive row plans
    fixed: Schedule | None = None  # the file-order model's plan and its proven bound
    fbound: int = 0
    best: Schedule | None = None  # the plan so far, from _file_order on
    bound: int = 0
    cut_checked: bool = False  # `bound` holds for every candidate, not only `segments`
    canonical: bool = False  # _canonical_plan found the plan

    def fast_enough(self, sc: Schedule) -> bool:
        p = self.params
        return p.cost is None or p.latency is None or \
            schedule_cost(self.graph, sc, p.cost) <= p.latency

    def left(self, share: float = 1.0) -> float:
        """Seconds for the next stage: a share of the budget, never past the deadline (none
        after a Ctrl-C)."""
        if interrupt.requested():
            return 0.0
        return max(0.0, min(share * self.params.time_limit, 0.97 * (self.deadline - time.time())))


def _begin(graph: Graph, params: SolverParams, progress: Progress | None,
           start: Schedule | None, found: _Found) -> _Search:
    """The candidate segments and the lower bound; the row segments cut to the promising."""
    t0 = time.time()
    segments, rows = candidates(graph, params)
    segments += rows
    full_lb = lower_bound(graph, params, segments)
    every = list(segments)
    if rows:  # the bound above counts every row segment; the model gets the promising ones
        keep = {s.id for s in worth_trying(graph, rows, full_lb)}
        segments = [s for s in segments if s.dim == "channel" or s.id in keep]
    return _Search(graph, params, progress, start, found, t0, t0 + params.time_limit,
                   segments, every, rows, full_lb if params.use_bound else 0, bool(every),
                   list(range(len(graph.ops))))


def _greedy(s: _Search) -> None:
    """The greedy layout in file order, or `start` when it is a smaller one."""
    greedy = greedy_schedule(s.graph, s.file_order, s.params)
    start = s.start
    if (start is not None and start.order == s.file_order and not start.splits
            and start.arena < greedy.arena and start.params.align == s.params.align
            and s.fast_enough(start)):
        greedy = start
    s.greedy = greedy
    s.notes.append(f"greedy {greedy.arena}")
    s.found.plans.append(greedy)
    s.found.bound = s.lb if s.params.use_bound else None


def _rows(s: _Search) -> None:
    """With row segments, the hints: with hybrid segments, row bands without them first (that
    solve builds the greedy row plans and solves channel splits alone), so hybrid is never
    worse; else a greedy row plan, then channel splits alone (small model, fast)."""
    if not s.rows:
        return
    graph, params = s.graph, s.params
    hybrid = any(sg.dim == "hybrid" for sg in s.rows)
    built: list[Schedule] = []
    if not hybrid:
        built = _row_plans(graph, params, s.segments, s.greedy, s.lb, s.left(0.5), s.progress)
    simpler = replace(params, hybrid=False) if hybrid else replace(params, rows=False)
    chan = solve_layout(graph, replace(simpler, time_limit=s.left(0.4)), s.progress, s.start)
    s.chan = chan
    s.notes.append(f"{'row bands' if hybrid else 'channel splits'} {chan.arena}")
    s.found.plans.append(chan)
    if not hybrid and chan.order != s.file_order:  # a row plan in the order found there
        built += _row_plans(graph, params, s.segments, chan, s.lb, s.left(0.2), s.progress)
    s.built = [b for b in built if s.fast_enough(b)]
    s.found.plans += s.built
    if s.built:
        s.notes.append(f"rows greedy {min(b.arena for b in s.built)}")


def _file_order(s: _Search) -> None:
    """The model in file order, hinted by the smallest file-order plan so far."""
    graph, params, greedy = s.graph, s.params, s.greedy
    # the sub-solves cut with their own bound: keep the segments their plans use (hints)
    used = {sid for sc in (s.chan, *s.built) if sc is not None for sid in sc.splits}
    s.segments += [sg for sg in s.every if sg.id in used and sg not in s.segments]
    model = _Model(graph, params, s.file_order, s.segments, s.lb,
                   greedy.arena if s.fast_enough(greedy) else None)
    if params.hint:
        hints = [sc for sc in (s.chan, *s.built) if sc is not None and sc.order == s.file_order]
        model.hint(min(hints, key=lambda sc: sc.arena) if hints and
                   min(sc.arena for sc in hints) < greedy.arena else greedy)
    name, s.fixed, s.fbound = model.solve(s.left(0.6 if params.reorder else 1.0),
                                          "file order", s.progress)
    best = s.fixed if s.fixed is not None else greedy
    best.segments = model.segments if s.fixed is not None else []
    s.notes.append(f"file order {name} {best.arena}")
    s.best = best
    s.bound = s.lb
    s.cut_checked = len(s.segments) >= len(s.every)  # else CP-SAT's bound is the cut model's


def _keep_sub_plans(s: _Search) -> None:
    """The plans of _rows when they are smaller (or the file-order plan is too slow)."""
    chan = s.chan
    if chan is not None and chan.status != TOO_SLOW and (chan.arena < s.best.arena
                                                         or not s.fast_enough(s.best)):
        s.best = chan
    for b in s.built:
        if b.arena < s.best.arena:
            s.best = b
            s.notes.append(f"kept the rows greedy plan {b.arena}")


def _order_search(s: _Search) -> None:
    """Without splits no order keeps less than the least peak of live bytes (in-place pairs
    counted once): search the orders for it, up to a quarter of the time, and lay out the
    order found."""
    graph, params = s.graph, s.params
    if not (params.reorder and params.use_bound and not s.any_split and s.best.arena > s.lb):
        return
    cands = all_inplace_candidates(graph) if params.inplace else None
    s.lb, good = order_search_bound(graph, s.lb, s.best.arena, cands, seconds=s.left(0.25),
                                    scratch=op_scratch(graph, params.target))
    s.bound = s.lb
    s.notes.append(f"order search bound {s.lb}")
    if good is not None and good != s.best.order:
        model = _Model(graph, params, good, s.segments, s.lb, s.best.arena)
        _, other, _ = model.solve(s.left(0.1), "searched order", s.progress)
        if other is not None and (other.arena < s.best.arena or not s.fast_enough(s.best)):
            s.best = other
            s.notes.append(f"searched order {other.arena}")


def _free_order(s: _Search) -> None:
    """The model with a free order, hinted by the plan so far; its bound holds for every
    order (with the file order the only order, the file-order stage's does)."""
    graph, params, best = s.graph, s.params, s.best
    if params.reorder and best.arena > s.lb and len(graph.ops) > 1:
        best.bound = s.lb  # the file-order stage's bound holds for the file order only
        model = _Model(graph, params, None, s.segments, s.lb,
                       best.arena if s.fast_enough(best) else None)
        if params.hint:
            model.hint(best)
        name, free, fbound = model.solve(0.8 * s.left(), "reorder", s.progress)
        s.notes.append(f"reorder {name} {free.arena if free else '-'}")
        if free is not None:
            s.bound = max(s.lb, fbound)
            if free.arena <= best.arena or not s.fast_enough(best):
                s.best = free
    elif not params.reorder or len(graph.ops) <= 1:  # the file order is the only order
        s.bound = max(s.lb, s.fbound) if s.fixed is not None else s.lb


def _keep_start(s: _Search) -> None:
    """`start` when it is smaller than the plan so far."""
    start = s.start
    if start is not None and start.arena < s.best.arena and s.fast_enough(start):
        s.best = replace(start, bound=s.best.bound, stages=[])
        s.notes.append(f"kept the start schedule {s.best.arena}")


def _beyond_cut(s: _Search) -> None:
    """When the models had only the promising row segments, make the bound hold for all."""
    if len(s.segments) < len(s.every) and s.bound > s.lb:  # CP-SAT's bound is the cut model's
        s.best, s.bound, note = _beyond_the_cut(s.graph, s.params, s.every, s.segments, s.best,
                                                s.bound, s.lb, lambda: s.left(0.5),
                                                s.fast_enough)
        s.notes.append(note)
        s.cut_checked = True
        if not set(s.best.splits) <= {sg.id for sg in s.segments}:
            s.segments = s.every  # the plan uses a left-out segment: simplify among all of them


def _canonical_plan(s: _Search) -> None:
    """At a proven-optimal arena, the canonical plan (`substages._canonical`)."""
    if s.best.arena <= s.bound:
        canon = _canonical(s.graph, s.params, s.best.arena, s.segments, s.lb, s.left(0.5))
        if canon is not None:
            canon.bound = s.best.bound
            s.best = canon
            s.canonical = True
            s.notes.append(f"canonical {s.best.arena}")


def _simplest_plan(s: _Search) -> None:
    """Else, with splits or in-place writes, the simplest plan at the arena found."""
    if not s.canonical and (s.best.splits or s.best.inplace):
        s.best = _simplest(s.graph, s.params, s.best, s.segments, s.lb, s.left(0.25))


def _stopped(s: _Search) -> None:
    """Past the deadline in IMPROVEMENTS: keep the plan so far (or `start`, when smaller),
    with a bound that holds."""
    start = s.start
    if start is not None and start.arena < s.best.arena and s.fast_enough(start):
        s.best = replace(start, bound=s.best.bound, stages=[])
    if not s.cut_checked:
        s.bound = s.lb
    s.notes.append(f"out of time: kept {s.best.arena}")


def _result(s: _Search) -> Schedule:
    """The plan so far with its bound, status, time, stage notes and options."""
    best = s.best
    best.bound = min(s.bound, best.arena)
    best.status = "OPTIMAL" if best.arena <= best.bound else "FEASIBLE"
    if interrupt.requested():
        s.notes.append("interrupted (Ctrl-C): the best plan so far")
    if not s.fast_enough(best):
        best.status = TOO_SLOW
    best.seconds = time.time() - s.t0
    best.stages = s.notes
    best.params = s.params
    return best


Stage = Callable[[_Search], None]
FIRST_STAGES: tuple[Stage, ...] = (_greedy, _rows, _file_order, _keep_sub_plans)
IMPROVEMENTS: tuple[Stage, ...] = (_order_search, _free_order, _keep_start, _beyond_cut,
                                   _canonical_plan, _simplest_plan)
