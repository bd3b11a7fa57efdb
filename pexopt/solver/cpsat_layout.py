"""One CP-SAT model for operator order, in-place choices and arena offsets (layer by layer).

Encoding (see ../shared notes on CP-SAT): each op k has an integer position pos[k]; every tensor
is a rectangle in (time x address): time [start, end + 1) with start = pos[producer] and end =
max(pos[consumer]) (graph outputs to a virtual step n), address [offset, offset + size); one
AddNoOverlap2D over all rectangles plus a redundant cumulative with capacity `top`; objective:
minimise `top` >= offset + size. In place: a boolean per (op, dying input) forces the output to
the input's offset and starts the output's rectangle one step later, so the two never overlap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from pexopt.graph.ir import Graph, ancestors, descendants
from pexopt.solver.baselines import Lifetime, greedy_by_size
from pexopt.solver.bounds import any_order_bound, inplace_candidates

Progress = Callable[[str, int, int, float], None]  # (stage, best arena, bound, seconds)


@dataclass(frozen=True)
class SolverParams:
    """Every technique is a switch so tests can ablate it and check the optimum is unchanged."""

    time_limit: float = 30.0
    workers: int = 2
    seed: int = 0
    align: int = 4
    reorder: bool = True
    inplace: bool = True
    cumulative: bool = True
    hint: bool = True
    use_bound: bool = True
    deterministic_time: float | None = None


@dataclass
class Schedule:
    """A solved layer-by-layer schedule."""

    order: list[int]
    offsets: dict[int, int]
    inplace: dict[int, int]  # output tensor id -> input tensor id it overwrites
    arena: int
    bound: int
    status: str
    seconds: float
    stages: list[str] = field(default_factory=list)

    @property
    def gap(self) -> float:
        return 0.0 if self.arena == 0 else max(0.0, (self.arena - self.bound) / self.arena)


def buffer_tensors(graph: Graph) -> list[int]:
    """Tensors that occupy arena bytes."""
    return [t.id for t in graph.tensors if not t.external and t.nbytes > 0]


def lifetimes(graph: Graph, order: list[int], inplace: dict[int, int]
              ) -> dict[int, tuple[int, int]]:
    """Tensor id -> (first step, last step), inclusive, for an order; outputs end at n - 1."""
    pos = {op: i for i, op in enumerate(order)}
    n = len(order)
    prod = graph.producer()
    cons = graph.consumers()
    outs = set(graph.outputs)
    res: dict[int, tuple[int, int]] = {}
    for t in buffer_tensors(graph):
        start = pos[prod[t]] if t in prod else 0
        ends = [pos[c] for c in cons[t]]
        end = n - 1 if t in outs else max(ends, default=start)
        res[t] = (start, max(start, end))
    return res


class _Callback(cp_model.CpSolverSolutionCallback):
    def __init__(self, stage: str, top: cp_model.IntVar, floor: int, t0: float,
                 progress: Progress | None) -> None:
        super().__init__()
        self.stage, self.top, self.floor, self.t0, self.progress = stage, top, floor, t0, progress

    def on_solution_callback(self) -> None:
        if self.progress:
            bound = max(self.floor, int(self.BestObjectiveBound()))
            self.progress(self.stage, int(self.ObjectiveValue()), bound, time.time() - self.t0)


def _build_and_solve(graph: Graph, params: SolverParams, order: list[int] | None, lb: int,
                     ub: int | None, hint: Schedule | None, time_limit: float, stage: str,
                     progress: Progress | None) -> tuple[str, Schedule | None, int]:
    """Solve with a fixed `order` (positions are constants) or a free one (order=None)."""
    n = len(graph.ops)
    m = cp_model.CpModel()
    prod = graph.producer()
    cons = graph.consumers()
    outs = set(graph.outputs)
    bufs = buffer_tensors(graph)
    size = {t: graph.tensors[t].nbytes for t in bufs}
    horizon = n + 1
    cap = sum(size.values())
    al = params.align
    if order is not None:
        pos = {op: m.new_constant(i) for i, op in enumerate(order)}
    else:
        succs = graph.succs()
        anc, desc = ancestors(succs), descendants(succs)
        pos = {k: m.new_int_var(len(anc[k]), n - 1 - len(desc[k]), f"pos{k}") for k in range(n)}
        for k, ss in enumerate(succs):
            for s in ss:
                m.add(pos[s] >= pos[k] + 1)
        m.add_all_different(list(pos.values()))
    start: dict[int, cp_model.LinearExprT] = {}
    end: dict[int, cp_model.LinearExprT] = {}
    for t in bufs:
        start[t] = pos[prod[t]] if t in prod else 0
        readers = [pos[c] for c in cons[t]]
        if t in outs:
            end[t] = n
        elif not readers:
            end[t] = start[t]
        elif len(readers) == 1:
            end[t] = readers[0]
        else:
            e = m.new_int_var(0, n - 1, f"end{t}")
            m.add_max_equality(e, readers)
            end[t] = e
    units = {t: m.new_int_var(0, (cap + al - 1) // al, f"u{t}") for t in bufs}
    off = {t: units[t] * al for t in bufs}
    top = m.new_int_var(lb if params.use_bound else 0, cap + al * len(bufs), "top")
    if ub is not None:
        m.add(top <= ub)
    # In place: output o takes the offset of a dying input i, its rectangle starts a step later.
    choice: dict[tuple[int, int], cp_model.IntVar] = {}
    shift: dict[int, cp_model.LinearExprT] = {}
    if params.inplace:
        for k, cands in inplace_candidates(graph).items():
            o = graph.ops[k].outputs[0]
            bs = []
            for i in cands:
                others = [c for c in cons[i] if c != k]
                if order is not None and any(order.index(c) > order.index(k) for c in others):
                    continue
                b = m.new_bool_var(f"inpl{k}_{i}")
                for c in others:
                    m.add(pos[c] + 1 <= pos[k]).only_enforce_if(b)
                m.add(units[o] == units[i]).only_enforce_if(b)
                choice[(o, i)] = b
                bs.append(b)
            if bs:
                m.add_at_most_one(bs)
                shift[o] = sum(bs)
    xs, ys, demands = [], [], []
    for t in bufs:
        s = start[t]
        if t in shift:
            s = m.new_int_var(0, horizon, f"s{t}")
            m.add(s == start[t] + shift[t])
        e = end[t] + 1
        if isinstance(s, int) and isinstance(e, int):
            x = m.new_fixed_size_interval_var(s, e - s, f"x{t}")
        else:
            ln = m.new_int_var(0, horizon, f"len{t}")
            x = m.new_interval_var(s, ln, e, f"x{t}")
        y = m.new_fixed_size_interval_var(off[t], size[t], f"y{t}")
        m.add(top >= off[t] + size[t])
        xs.append(x)
        ys.append(y)
        demands.append(size[t])
    m.add_no_overlap_2d(xs, ys)
    if params.cumulative:
        m.add_cumulative(xs, demands, top)
    m.minimize(top)
    if hint is not None and params.hint:
        for t in bufs:
            m.add_hint(units[t], hint.offsets[t] // al)
        if order is None:
            for i, k in enumerate(hint.order):
                m.add_hint(pos[k], i)
        for (o, i), b in choice.items():
            m.add_hint(b, hint.inplace.get(o) == i)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = params.workers
    solver.parameters.random_seed = params.seed
    solver.parameters.max_time_in_seconds = max(0.05, time_limit)
    if params.deterministic_time is not None:
        solver.parameters.max_deterministic_time = params.deterministic_time
    t0 = time.time()
    status = solver.solve(m, _Callback(stage, top, lb, t0, progress))
    name = solver.status_name(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return name, None, lb
    if order is None:
        order = sorted(range(n), key=lambda k: solver.value(pos[k]))
    offsets = {t: solver.value(units[t]) * al for t in bufs}
    inpl = {o: i for (o, i), b in choice.items() if solver.boolean_value(b)}
    arena = max((offsets[t] + size[t] for t in bufs), default=0)
    bound = max(lb, int(solver.best_objective_bound)) if status == cp_model.FEASIBLE else arena
    return name, Schedule(order, offsets, inpl, arena, bound, name, time.time() - t0), bound


def greedy_schedule(graph: Graph, order: list[int], align: int) -> Schedule:
    """Greedy-by-size offsets (no in-place) for an order: the first hint."""
    life = lifetimes(graph, order, {})
    reqs = [Lifetime(t, graph.tensors[t].nbytes, a, b) for t, (a, b) in life.items()]
    offs = greedy_by_size(reqs, align)
    arena = max((offs[t] + graph.tensors[t].nbytes for t in offs), default=0)
    return Schedule(order, offs, {}, arena, 0, "GREEDY", 0.0)


def solve_layout(graph: Graph, params: SolverParams = SolverParams(),
                 progress: Progress | None = None) -> Schedule:
    """Best layer-by-layer schedule: fixed file order first (hinted by greedy), then free order.

    The result is never worse than the file order; `bound` is valid for every order.
    """
    t0 = time.time()
    lb, _ = any_order_bound(graph, params.inplace) if params.use_bound else (0, -1)
    file_order = list(range(len(graph.ops)))
    greedy = greedy_schedule(graph, file_order, params.align)
    stages = [f"greedy {greedy.arena}"]
    budget = params.time_limit
    fixed_limit = budget if not params.reorder else max(0.5, 0.3 * budget)
    name, fixed, _ = _build_and_solve(graph, params, file_order, lb, greedy.arena, greedy,
                                      fixed_limit, "file order", progress)
    best = fixed if fixed is not None else greedy
    if fixed is None:
        best.bound = lb
    stages.append(f"file order {name} {best.arena}")
    if params.reorder and best.arena > lb and len(graph.ops) > 1:
        remaining = max(0.5, budget - (time.time() - t0))
        name, free, bound = _build_and_solve(graph, params, None, lb, best.arena, best,
                                             remaining, "reorder", progress)
        stages.append(f"reorder {name} {free.arena if free else '-'}")
        if free is not None and free.arena <= best.arena:
            best = free
        best.bound = max(lb, bound) if free is not None else lb
    elif params.reorder:
        best.bound = lb  # the file-order bound is not valid for other orders
    else:
        best.bound = max(best.bound, lb)
    best.bound = min(best.bound, best.arena)
    best.status = "OPTIMAL" if best.arena <= best.bound else "FEASIBLE"
    best.seconds = time.time() - t0
    best.stages = stages
    return best
