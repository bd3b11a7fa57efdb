"""One CP-SAT model for operator order, splits, in-place choices and arena offsets.

Encoding (see ../shared notes on CP-SAT): each op k has an integer position pos[k]; every buffer
is a rectangle in (time x address): time [start, end + 1) with start = pos[producer] and end =
max(pos[consumer]) (graph outputs to a virtual step n), address [offset, offset + size); one
AddNoOverlap2D over all rectangles plus a redundant cumulative with capacity `top`; objective:
minimise `top` >= offset + size.

Options, each a boolean the solver may take:
- in place: the output takes the offset of an input that dies at the op, its rectangle starts a
  step later (a depthwise conv also needs an H x W temporary box at that step);
- split segment g with slice width s (partial execution): g's ops take consecutive positions;
  its internal tensors vanish and one workspace box (all slice buffers) covers g's positions;
  its full inputs live until g's last op; a slice-written output starts at g's first op; an
  accumulated output is preceded by an int32 accumulator box at the same offset.
- row segment g with band height h (`pexopt.partial.bands`): the same encoding, its workspace
  holds the band buffers; optionally streaming in place (`rows_model`).

Latency (when a cost model is given): the estimated cost is the sum of every op's whole cost,
corrected by (segment cost - whole costs of its ops) for the chosen segment width (channel
segments) or band height (row segments; streaming changes no work) and by the extra cost of each
in-place depthwise; `latency` bounds it, and objective "latency" minimises it.

Kernel scratch (CMSIS-NN ctx.buf, `SolverParams.target`): an op run whole gets a box of its
scratch size at its position (absent when it runs inside a split segment or as an in-place
depthwise, which use other kernels); a split segment's workspace box grows by the largest
scratch of its steps, since its slices interleave over all of its positions.

The constraint families are `constraints.LayoutConstraints`, one method each; `_Model` adds the
hint, the objective, the solve and the extraction of a `Schedule`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ortools.sat.python import cp_model

from pexopt.schedule import Schedule
from pexopt.solver import interrupt
from pexopt.solver.buffers import extent
from pexopt.solver.constraints import LayoutConstraints

Progress = Callable[[str, int, int, float], None]  # (stage, best arena, bound, seconds)


class _Callback(cp_model.CpSolverSolutionCallback):
    def __init__(self, stage: str, floor: int, t0: float, progress: Progress | None) -> None:
        super().__init__()
        self.stage, self.floor, self.t0, self.progress = stage, floor, t0, progress

    def on_solution_callback(self) -> None:
        if self.progress:
            bound = max(self.floor, int(self.BestObjectiveBound()))
            self.progress(self.stage, int(self.ObjectiveValue()), bound, time.time() - self.t0)


class _Model(LayoutConstraints):
    """The layout model: its constraints (`LayoutConstraints`), a hint, an objective, the solve."""

    def hint(self, sched: Schedule) -> None:
        m, al = self.m, self.p.align
        for t in self.bufs:
            m.add_hint(self.units[t], sched.offsets.get(t, 0) // al)
        if self.order is None:
            for i, k in enumerate(sched.order):
                m.add_hint(self.pos[k], i)
        for (o, i), b in self.choice.items():
            m.add_hint(b, sched.inplace.get(o) == i)
        for k, tu in self.temp_units.items():
            m.add_hint(tu, sched.temps.get(k, 0) // al)
        for k, ku in self.ks_units.items():
            m.add_hint(ku, sched.kscratch.get(k, 0) // al)
        for s in self.segments:
            w = sched.splits.get(s.id)
            m.add_hint(self.use[s.id], w is not None)
            for ww in s.widths:
                m.add_hint(self.width[(s.id, ww)], ww == w)
            m.add_hint(self.ws_units[s.id], sched.workspace.get(s.id, 0) // al)
        for (g, h), b in self.streams.choice.items():
            m.add_hint(b, g in sched.streams and sched.splits.get(g) == h)

    def solve(self, time_limit: float, stage: str, progress: Progress | None,
              objective: str = "arena", presolve: bool = True
              ) -> tuple[str, Schedule | None, int]:
        """(status name, the schedule found or None, the bound proven) of one search, with
        objective "arena", "latency" or "simple" (see `_objective`)."""
        self._objective(objective)
        solver = self._solver(time_limit, presolve)
        t0 = time.time()
        cb = _Callback(stage, self.lb, t0, progress if objective == "arena" else None)
        status = interrupt.run_search(solver, lambda: solver.solve(self.m, cb))
        if status is None:  # Ctrl-C before this stage: keep what the earlier stages found
            return "INTERRUPTED", None, self.lb
        self.work = solver.deterministic_time  # for callers that need reproducible stops
        name = solver.status_name(status)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return name, None, self.lb
        if objective == "arena":
            bound = max(self.lb, int(solver.best_objective_bound)) \
                if status == cp_model.FEASIBLE else solver.value(self.top)
        else:
            bound = self.lb
        return name, self._schedule(solver, name, bound, t0), bound

    def _objective(self, objective: str) -> None:
        m = self.m
        if objective == "arena":
            m.minimize(self.top)
        elif objective == "latency":
            assert self.latency is not None, "objective 'latency' needs a cost model"
            m.minimize(self.latency)
        else:  # at the arena already reached: the fastest plan (with a cost model), then the
            # simplest: fewest slices, no needless in-place writes
            simple = sum(self.width[(s.id, w)] * s.pieces(w) for s in self.segments
                         for w in s.widths) + sum(self.choice.values())
            if self.latency is None:
                m.minimize(simple)
            else:
                worst = sum(max(s.pieces(w) for w in s.widths) for s in self.segments)
                m.minimize(self.latency * (worst + len(self.choice) + 1) + simple)

    def _solver(self, time_limit: float, presolve: bool) -> cp_model.CpSolver:
        p = self.p
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = p.workers
        solver.parameters.random_seed = p.seed
        solver.parameters.max_time_in_seconds = max(0.01, time_limit)
        if p.deterministic_time is not None:
            solver.parameters.max_deterministic_time = p.deterministic_time
        solver.parameters.cp_model_presolve = presolve
        if any(s.dim != "channel" for s in self.segments):
            # probing the many band-height literals took most of the time (14 s of presolve on
            # MobileNetV2 with the input external) and pruned little
            solver.parameters.cp_model_probing_level = 0
        return solver

    def _schedule(self, solver: cp_model.CpSolver, name: str, bound: int,
                  t0: float) -> Schedule:
        """The schedule of the solution found (its search started at t0)."""
        p = self.p
        order = self.order if self.order is not None else sorted(
            range(self.n), key=lambda k: solver.value(self.pos[k]))
        splits = {s.id: w for s in self.segments for w in s.widths
                  if solver.boolean_value(self.width[(s.id, w)])}
        hidden = {t for s in self.segments if s.id in splits for t in s.internal}
        offsets = {t: solver.value(self.units[t]) * p.align for t in self.bufs if t not in hidden}
        inpl = {o: i for (o, i), b in self.choice.items() if solver.boolean_value(b)}
        ws = {sid: solver.value(self.ws_units[sid]) * p.align for sid in splits}
        temps = {k: solver.value(tu) * p.align for k, tu in self.temp_units.items()
                 if any(self.g.ops[k].outputs[0] == o for o in inpl)}
        kscratch = {k: solver.value(self.ks_units[k]) * p.align for k, pv in
                     self.ks_present.items() if isinstance(pv, int) or solver.boolean_value(pv)}
        sched = Schedule(order, offsets, inpl, 0, bound, name, time.time() - t0, params=p,
                         segments=self.segments, splits=splits, workspace=ws, temps=temps,
                         kscratch=kscratch, streams=self.streams.used(solver),
                         cost=None if self.latency is None else int(solver.value(self.latency)))
        sched.arena = extent(self.g, sched)
        return sched
