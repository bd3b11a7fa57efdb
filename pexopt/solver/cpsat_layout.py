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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ortools.sat.python import cp_model

from pexopt.cmsis_scratch import kernel_scratch_bytes, segment_scratch_bytes
from pexopt.deadline import OutOfTime
from pexopt.deadline import check as check_deadline
from pexopt.graph.ir import Graph, ancestors, descendants
from pexopt.partial.bands import find_row_segments, worth_trying
from pexopt.partial.candidates import Segment, accumulator_bytes, find_segments, workspace_bytes
from pexopt.partial.hybrid import find_hybrid_segments
from pexopt.schedule import CostModel, Schedule, SolverParams, temp_bytes
from pexopt.solver import interrupt
from pexopt.solver.baselines import Lifetime, greedy_by_size
from pexopt.solver.bounds import (  # dw_inplace_ok: the model's, re-exported
    Reach,
    all_inplace_candidates,
    any_order_bound,
    dw_inplace_ok,
    order_search_bound,
    segment_floor,
    split_bound,
)
from pexopt.solver.rows_model import StreamVars, add_streaming

Progress = Callable[[str, int, int, float], None]  # (stage, best arena, bound, seconds)
OUT_OF_TIME = "out of time before the search:"  # first stage of a deadline fallback
TOO_SLOW = "LATENCY_NOT_MET"  # status of a schedule found only above the latency bound


def _round(x: int, align: int) -> int:
    return (x + align - 1) // align * align


def buffer_tensors(graph: Graph) -> list[int]:
    """Tensors that occupy arena bytes."""
    return [t.id for t in graph.tensors if not t.external and t.nbytes > 0]


def lifetimes(graph: Graph, order: list[int]) -> dict[int, tuple[int, int]]:
    """Tensor id -> (first step, last step), inclusive, for a whole-tensor order."""
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


def op_scratch(graph: Graph, target: str | None) -> dict[int, int]:
    """Op id -> kernel scratch bytes when it runs whole (ops needing none are left out)."""
    sizes = {op.id: kernel_scratch_bytes(graph, op.id, target) for op in graph.ops}
    return {k: v for k, v in sizes.items() if v > 0}


def seg_workspace(graph: Graph, seg: Segment, width: int, params: SolverParams) -> int:
    """A segment's box: its slice buffers, then its kernel scratch (at the aligned end)."""
    ws = workspace_bytes(graph, seg, width, params.align)
    extra = segment_scratch_bytes(graph, seg, width, params.target)
    return _round(ws, params.align) + extra if extra else ws


class _Callback(cp_model.CpSolverSolutionCallback):
    def __init__(self, stage: str, floor: int, t0: float, progress: Progress | None) -> None:
        super().__init__()
        self.stage, self.floor, self.t0, self.progress = stage, floor, t0, progress

    def on_solution_callback(self) -> None:
        if self.progress:
            bound = max(self.floor, int(self.BestObjectiveBound()))
            self.progress(self.stage, int(self.ObjectiveValue()), bound, time.time() - self.t0)


Box = tuple  # (time interval, offset interval, bytes, presence literal or None)


def _admissible(segments: list[Segment], order: list[int] | None,
                only: Schedule | None) -> list[Segment]:
    """The segments the model may use: back to back in a fixed `order`, and within `only`'s
    choices (its segments, no narrower slices)."""
    if order is not None:
        at = {op: i for i, op in enumerate(order)}
        segments = [s for s in segments
                    if all(at[b] == at[a] + 1 for a, b in zip(s.ops, s.ops[1:]))]
    if only is not None:
        segments = [replace(s, widths=tuple(w for w in s.widths if w >= only.splits[s.id]))
                    for s in segments if s.id in only.splits]
    return segments


class _Model:
    """Builds the CP-SAT model; `order` fixes the positions (file-order stage) or not."""

    def __init__(self, graph: Graph, params: SolverParams, order: list[int] | None,
                 segments: list[Segment], lb: int, ub: int | None,
                 only: Schedule | None = None) -> None:
        """`only`: restrict the options to a sub-set of that schedule's choices (its splits,
        no narrower, and its in-place writes), to simplify it quickly.

        The constraint families are added in a fixed order (variable indices, hence the
        search and the canonical plans, depend on it)."""
        self.g, self.p, self.order, self.lb = graph, params, order, lb
        self.m = cp_model.CpModel()
        self.n = len(graph.ops)
        self.prod, self.cons = graph.producer(), graph.consumers()
        self.bufs = buffer_tensors(graph)
        self.size = {t: graph.tensors[t].nbytes for t in self.bufs}
        self.segments = _admissible(segments, order, only)
        self.kscr = op_scratch(graph, params.target)
        self.cap = self._capacity()
        self.pos = self._positions(order)
        self._split_choices()
        start, end = self._lifetimes()
        self._offsets(ub)
        boxes: list[Box] = []
        shift, dw_inplace = self._inplace(order, only, boxes)
        self._kernel_scratch(boxes, dw_inplace)
        self.streams = add_streaming(self) if params.stream else StreamVars()
        boxes += self.streams.boxes
        self._buffer_boxes(start, end, shift, boxes)
        self._segment_boxes(boxes)
        self.latency = self._latency_expr()
        if self.latency is not None and params.latency is not None:
            self.m.add(self.latency <= params.latency)
        self.m.add_no_overlap_2d([b[0] for b in boxes], [b[1] for b in boxes])
        if params.cumulative:
            self.m.add_cumulative([b[0] for b in boxes], [b[2] for b in boxes], self.top)
        self.boxes = boxes

    def _capacity(self) -> int:
        """Every buffer the model may place, side by side: the offsets' upper bound."""
        g, al = self.g, self.p.align
        cap = sum(_round(v, al) for v in self.size.values()) + sum(
            _round(accumulator_bytes(g.tensors[s.output]), al)
            + _round(max(seg_workspace(g, s, w, self.p) for w in s.widths), al)
            for s in self.segments)
        cap += sum(_round(temp_bytes(g, k), al) for k in range(self.n))  # in-place temporaries
        return cap + sum(_round(v, al) for v in self.kscr.values())

    def _positions(self, order: list[int] | None) -> dict[int, cp_model.LinearExprT]:
        """Op -> its step: fixed by `order`, else a permutation that respects the edges."""
        if order is not None:
            return {op: i for i, op in enumerate(order)}
        m, n = self.m, self.n
        succs = self.g.succs()
        anc, desc = ancestors(succs), descendants(succs)
        pos = {k: m.new_int_var(len(anc[k]), n - 1 - len(desc[k]), f"pos{k}") for k in range(n)}
        for k, ss in enumerate(succs):
            for s in ss:
                m.add(pos[s] >= pos[k] + 1)
        m.add_all_different(list(pos.values()))
        return pos

    def _split_choices(self) -> None:
        """One bool per segment and per slice width; a used segment runs its ops back to
        back, an op is in one used segment at most, its internal tensors then never exist."""
        m, pos = self.m, self.pos
        self.use: dict[int, cp_model.IntVar] = {}
        self.width: dict[tuple[int, int], cp_model.IntVar] = {}
        by_op: dict[int, list[cp_model.IntVar]] = {}
        for s in self.segments:
            check_deadline()
            u = m.new_bool_var(f"seg{s.id}")
            self.use[s.id] = u
            ws = [m.new_bool_var(f"w{s.id}_{w}") for w in s.widths]
            for w, b in zip(s.widths, ws):
                self.width[(s.id, w)] = b
            m.add(sum(ws) == u)
            for k in s.ops:
                by_op.setdefault(k, []).append(u)
            for a, b in zip(s.ops, s.ops[1:]):
                m.add(pos[b] == pos[a] + 1).only_enforce_if(u)
        for us in by_op.values():
            if len(us) > 1:
                m.add_at_most_one(us)
        self.in_use = {k: sum(us) for k, us in by_op.items()}
        internal_of: dict[int, list[Segment]] = {}
        for s in self.segments:
            for t in s.internal:
                internal_of.setdefault(t, []).append(s)
        self.present: dict[int, cp_model.LinearExprT] = {}
        for t in self.bufs:
            if t in internal_of:
                pv = m.new_bool_var(f"present{t}")
                m.add(pv + sum(self.use[s.id] for s in internal_of[t]) == 1)
                self.present[t] = pv

    def _lifetimes(self) -> tuple[dict[int, cp_model.LinearExprT],
                                  dict[int, cp_model.LinearExprT]]:
        """(first step, last step) of every buffer: from its writer (earlier when a segment
        writes it slice by slice) to its last reader (later when a segment reads it)."""
        m, pos, n = self.m, self.pos, self.n
        outs = set(self.g.outputs)
        start: dict[int, cp_model.LinearExprT] = {}
        end: dict[int, cp_model.LinearExprT] = {}
        # op -> (segment, steps to its end)
        self.extend: dict[int, list[tuple[Segment, int]]] = {}
        for s in self.segments:
            for idx, k in enumerate(s.ops[:-1]):
                self.extend.setdefault(k, []).append((s, len(s.ops) - 1 - idx))
        writes: dict[int, list[Segment]] = {}  # tensor -> segments writing it (an index:
        for s in self.segments:  # scanning every segment per tensor was quadratic)
            writes.setdefault(s.output, []).append(s)
        for t in self.bufs:
            check_deadline()
            base = pos[self.prod[t]] if t in self.prod else 0
            earlier = [(s, len(s.ops) - 1) for s in writes.get(t, []) if not s.accumulate]
            later = [s for s in writes.get(t, []) if s.accumulate]
            start[t] = base - sum(d * self.use[s.id] for s, d in earlier) + sum(
                self.use[s.id] for s in later) if (earlier or later) else base
            reads = []
            for c in self.cons[t]:
                ext = [(s, d) for s, d in self.extend.get(c, []) if t in s.inputs]
                reads.append(pos[c] + sum(d * self.use[s.id] for s, d in ext) if ext
                             else pos[c])
            if t in outs:
                end[t] = n
            elif not reads:
                end[t] = start[t]
            elif len(reads) == 1:
                end[t] = reads[0]
            else:
                e = m.new_int_var(0, n, f"end{t}")
                m.add_max_equality(e, [self._var(r, f"r{t}_{j}") for j, r in enumerate(reads)])
                end[t] = e
        return start, end

    def _offsets(self, ub: int | None) -> None:
        """Every buffer's offset in units of the alignment, and the arena's top."""
        m, al, cap = self.m, self.p.align, self.cap
        self.units = {t: m.new_int_var(0, (cap + al - 1) // al, f"u{t}") for t in self.bufs}
        self.off = {t: self.units[t] * al for t in self.bufs}
        self.top = m.new_int_var(self.lb if self.p.use_bound else 0, cap + al * 4, "top")
        if ub is not None:
            m.add(self.top <= ub)

    def _inplace(self, order: list[int] | None, only: Schedule | None, boxes: list[Box]
                 ) -> tuple[dict[int, list[cp_model.IntVar]], dict[int, list[cp_model.IntVar]]]:
        """In-place writes: an output shares its input's offset once the input's other readers
        ran (an in-place depthwise also gets its one-channel temporary). Returns (output ->
        its in-place bools, which move its start a step later; op -> its depthwise bools)."""
        m, g, pos, al, cap = self.m, self.g, self.pos, self.p.align, self.cap
        self.choice: dict[tuple[int, int], cp_model.IntVar] = {}
        self.temp_units: dict[int, cp_model.IntVar] = {}
        dw_inplace: dict[int, list[cp_model.IntVar]] = {}
        shift: dict[int, list[cp_model.IntVar]] = {}
        if not self.p.inplace:
            return shift, dw_inplace
        for k, cands in all_inplace_candidates(g).items():
            o = g.ops[k].outputs[0]
            if o not in self.units:
                continue
            bs = []
            for i in cands:
                others = [c for c in self.cons[i] if c != k]
                if order is not None and any(pos[c] > pos[k] for c in others):
                    continue
                if only is not None and only.inplace.get(o) != i:
                    continue
                b = m.new_bool_var(f"inpl{k}_{i}")
                for c in others:
                    self._before(pos[c], pos[k], b)
                m.add(self.units[o] == self.units[i]).only_enforce_if(b)
                if k in self.in_use:
                    m.add(b + self.in_use[k] <= 1)
                for t in (i, o):
                    if t in self.present:
                        m.add(b <= self.present[t])
                # a full input still read by a split segment later must not be overwritten
                for c in others:
                    for s, d in self.extend.get(c, []):
                        if i in s.inputs:
                            self._before(pos[c] + d * self.use[s.id], pos[k], b)
                if dw_inplace_ok(g, k, i):
                    tu = m.new_int_var(0, (cap + al - 1) // al, f"tmp{k}")
                    x = m.new_optional_fixed_size_interval_var(pos[k], 1, b, f"tx{k}")
                    y = m.new_optional_fixed_size_interval_var(tu * al, temp_bytes(g, k),
                                                               b, f"ty{k}")
                    m.add(self.top >= tu * al + temp_bytes(g, k)).only_enforce_if(b)
                    self.temp_units[k] = tu
                    boxes.append((x, y, temp_bytes(g, k), b))
                    dw_inplace.setdefault(k, []).append(b)
                self.choice[(o, i)] = b
                bs.append(b)
            if bs:
                m.add_at_most_one(bs)
                shift.setdefault(o, []).extend(bs)
        return shift, dw_inplace

    def _buffer_boxes(self, start: dict[int, cp_model.LinearExprT],
                      end: dict[int, cp_model.LinearExprT],
                      shift: dict[int, list[cp_model.IntVar]], boxes: list[Box]) -> None:
        """One rectangle per buffer: its lifetime (cut by streaming and in-place writes) x
        its bytes at its offset, optional when a segment may make it internal."""
        m, horizon = self.m, self.n + 1
        for t in self.bufs:
            check_deadline()
            s_expr = start[t] + sum(shift[t]) if t in shift else start[t]
            s_expr = s_expr + self.streams.shift(self.streams.start_cut, t)
            e_expr = end[t] + 1 - self.streams.shift(self.streams.end_cut, t)
            pv = self.present.get(t)
            if isinstance(s_expr, int) and isinstance(e_expr, int):
                x = (m.new_optional_fixed_size_interval_var(s_expr, e_expr - s_expr, pv, f"x{t}")
                     if pv is not None else
                     m.new_fixed_size_interval_var(s_expr, e_expr - s_expr, f"x{t}"))
            else:
                sv = m.new_int_var(0, horizon, f"s{t}")
                m.add(sv == s_expr)
                ev = m.new_int_var(0, horizon + 1, f"e{t}")
                m.add(ev == e_expr)
                ln = m.new_int_var(0, horizon + 1, f"len{t}")
                x = (m.new_optional_interval_var(sv, ln, ev, pv, f"x{t}") if pv is not None
                     else m.new_interval_var(sv, ln, ev, f"x{t}"))
            off, size = self.off[t], self.size[t]
            y = (m.new_optional_fixed_size_interval_var(off, size, pv, f"y{t}")
                 if pv is not None else m.new_fixed_size_interval_var(off, size, f"y{t}"))
            ct = m.add(self.top >= off + size)
            if pv is not None:
                ct.only_enforce_if(pv)
            boxes.append((x, y, size, pv))

    def _segment_boxes(self, boxes: list[Box]) -> None:
        """A used segment's workspace (sized by its slice width) and, when it accumulates
        over input slices, its output's int32 accumulator, over the segment's steps."""
        m, g, al, cap = self.m, self.g, self.p.align, self.cap
        self.ws_units: dict[int, cp_model.IntVar] = {}
        for s in self.segments:
            u = self.use[s.id]
            check_deadline()
            first = self.pos[s.ops[0]]
            span = len(s.ops)
            x = m.new_optional_fixed_size_interval_var(first, span, u, f"gx{s.id}")
            sizes = {w: seg_workspace(g, s, w, self.p) for w in s.widths}
            sz = m.new_int_var(0, max(sizes.values()), f"gsz{s.id}")
            m.add(sz == sum(sizes[w] * self.width[(s.id, w)] for w in s.widths))
            wu = m.new_int_var(0, (cap + al - 1) // al, f"gu{s.id}")
            self.ws_units[s.id] = wu
            gend = m.new_int_var(0, cap + al * 4, f"gend{s.id}")
            m.add(gend == wu * al + sz)
            y = m.new_optional_interval_var(wu * al, sz, gend, u, f"gy{s.id}")
            m.add(self.top >= gend).only_enforce_if(u)
            boxes.append((x, y, sz, u))
            if s.accumulate:
                acc = accumulator_bytes(g.tensors[s.output])
                x = m.new_optional_fixed_size_interval_var(first, span, u, f"ax{s.id}")
                y = m.new_optional_fixed_size_interval_var(self.off[s.output], acc, u,
                                                           f"ay{s.id}")
                m.add(self.top >= self.off[s.output] + acc).only_enforce_if(u)
                boxes.append((x, y, acc, u))

    def _latency_expr(self) -> cp_model.LinearExprT | None:
        """Estimated cost of the schedule as a linear expression of the choices."""
        cost, g = self.p.cost, self.g
        if cost is None:
            return None
        whole = [cost.op(g, k) for k in range(self.n)]
        expr: cp_model.LinearExprT = sum(whole)
        for s in self.segments:
            base = sum(whole[k] for k in s.ops)
            for w in s.widths:
                expr += (cost.segment(g, s, w) - base) * self.width[(s.id, w)]
        for (o, _i), b in self.choice.items():
            k = self.prod[o]
            expr += cost.inplace(g, k) * b
        return expr

    def _kernel_scratch(self, boxes: list, dw_inplace: dict[int, list[cp_model.IntVar]]
                        ) -> None:
        """One box per op with kernel scratch, at its position, size fixed; present exactly
        when the op runs whole through its CMSIS-NN kernel (not in a used segment, not as an
        in-place depthwise)."""
        m, al = self.m, self.p.align
        self.ks_units: dict[int, cp_model.IntVar] = {}
        self.ks_present: dict[int, cp_model.LinearExprT] = {}
        for k, sz in self.kscr.items():
            others = [self.in_use[k]] if k in self.in_use else []
            others += dw_inplace.get(k, [])
            pv = None
            if others:
                pv = m.new_bool_var(f"ksp{k}")
                m.add(pv + sum(others) == 1)
            ku = m.new_int_var(0, (self.cap + al - 1) // al, f"ks{k}")
            x = (m.new_optional_fixed_size_interval_var(self.pos[k], 1, pv, f"kx{k}")
                 if pv is not None else m.new_fixed_size_interval_var(self.pos[k], 1, f"kx{k}"))
            y = (m.new_optional_fixed_size_interval_var(ku * al, sz, pv, f"ky{k}")
                 if pv is not None else m.new_fixed_size_interval_var(ku * al, sz, f"ky{k}"))
            ct = m.add(self.top >= ku * al + sz)
            if pv is not None:
                ct.only_enforce_if(pv)
            self.ks_units[k] = ku
            self.ks_present[k] = pv if pv is not None else 1
            boxes.append((x, y, sz, pv))

    def _var(self, expr: cp_model.LinearExprT, name: str) -> cp_model.LinearExprT:
        """An int var equal to expr (max equality wants variables or constants)."""
        if isinstance(expr, (int, cp_model.IntVar)):
            return expr
        v = self.m.new_int_var(0, self.n + 1, name)
        self.m.add(v == expr)
        return v

    def _before(self, a: cp_model.LinearExprT, b: cp_model.LinearExprT,
                enforce: cp_model.IntVar) -> None:
        """a < b whenever `enforce` holds (a constant violation forbids `enforce`)."""
        if isinstance(a, int) and isinstance(b, int):
            if a >= b:
                self.m.add(enforce == 0)
            return
        self.m.add(a + 1 <= b).only_enforce_if(enforce)

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
        m, p = self.m, self.p
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
        t0 = time.time()
        cb = _Callback(stage, self.lb, t0, progress if objective == "arena" else None)
        status = interrupt.run_search(solver, lambda: solver.solve(m, cb))
        if status is None:  # Ctrl-C before this stage: keep what the earlier stages found
            return "INTERRUPTED", None, self.lb
        self.work = solver.deterministic_time  # for callers that need reproducible stops
        name = solver.status_name(status)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return name, None, self.lb
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
        if objective == "arena":
            bound = max(self.lb, int(solver.best_objective_bound)) \
                if status == cp_model.FEASIBLE else solver.value(self.top)
        else:
            bound = self.lb
        sched = Schedule(order, offsets, inpl, 0, bound, name, time.time() - t0, params=p,
                         segments=self.segments, splits=splits, workspace=ws, temps=temps,
                         kscratch=kscratch, streams=self.streams.used(solver),
                         cost=None if self.latency is None else int(solver.value(self.latency)))
        sched.arena = extent(self.g, sched)
        return name, sched, bound


def extent(graph: Graph, sched: Schedule) -> int:
    """max(offset + size) over every buffer of a schedule: tensors, workspaces (with their
    kernel scratch), accumulators, in-place temporaries, kernel scratch of whole ops."""
    ends = [o + graph.tensors[t].nbytes for t, o in sched.offsets.items()]
    by_id = {s.id: s for s in sched.segments}
    for sid, w in sched.splits.items():
        s = by_id[sid]
        ends.append(sched.workspace[sid] + seg_workspace(graph, s, w, sched.params))
        if s.accumulate:
            ends.append(sched.offsets[s.output] + accumulator_bytes(graph.tensors[s.output]))
    ends += [o + temp_bytes(graph, k) for k, o in sched.temps.items()]
    ends += [o + kernel_scratch_bytes(graph, k, sched.params.target)
             for k, o in sched.kscratch.items()]
    return max(ends, default=0)


def schedule_cost(graph: Graph, sched: Schedule, cost: CostModel) -> int:
    """The estimated cost of a schedule: the same sum the CP-SAT model constrains."""
    by_id = {s.id: s for s in sched.segments}
    in_split = {k for sid in sched.splits for k in by_id[sid].ops}
    prod = graph.producer()
    total = sum(cost.op(graph, k) for k in range(len(graph.ops)) if k not in in_split)
    total += sum(cost.segment(graph, by_id[sid], w) for sid, w in sched.splits.items())
    total += sum(cost.inplace(graph, prod[o]) for o in sched.inplace)
    return total


def greedy_schedule(graph: Graph, order: list[int], params: SolverParams) -> Schedule:
    """Greedy-by-size offsets (no in-place, no split) for an order: the first hint."""
    life = lifetimes(graph, order)
    reqs = [Lifetime(t, graph.tensors[t].nbytes, a, b) for t, (a, b) in life.items()]
    kscr = op_scratch(graph, params.target)
    at = {k: i for i, k in enumerate(order)}
    base = len(graph.tensors)  # kernel scratch requests get ids after the tensors'
    reqs += [Lifetime(base + k, sz, at[k], at[k]) for k, sz in kscr.items()]
    offs = greedy_by_size(reqs, params.align)
    ks = {k: offs.pop(base + k) for k in kscr}
    arena = max([offs[t] + graph.tensors[t].nbytes for t in offs]
                + [o + kscr[k] for k, o in ks.items()], default=0)
    return Schedule(order, offs, {}, arena, 0, "GREEDY", 0.0, params=params, kscratch=ks)


def _hybrid(graph: Graph, params: SolverParams, first_id: int) -> list[Segment]:
    """Hybrid segments (rows and channel slices at once) when rows, channels and hybrid are on."""
    if not (params.split and params.rows and params.channels and params.hybrid):
        return []
    return find_hybrid_segments(graph, first_id, params.max_segment_len, params.max_heights,
                                widths=params.slice_widths)


def candidates(graph: Graph, params: SolverParams) -> tuple[list[Segment], list[Segment]]:
    """(channel segments, row and hybrid segments) the options of `params` allow."""
    segments = find_segments(graph, params.max_segment_len, params.max_widths,
                             params.slice_widths) if params.split and params.channels else []
    rows = find_row_segments(graph, len(segments), params.max_segment_len, params.max_heights,
                             single=params.stream) if params.split and params.rows else []
    rows += _hybrid(graph, params, len(segments) + len(rows))
    return segments, rows


def lower_bound(graph: Graph, params: SolverParams, segments: list[Segment]) -> int:
    """The arena bound valid for every order and every option `params` allows among
    `segments` (kernel scratch included: without it the bound stays valid but weak, and a plan
    at the optimum could not be proven optimal)."""
    kscr = op_scratch(graph, params.target)
    if not segments:
        return any_order_bound(graph, params.inplace, kscr)[0]
    seg_scr = {sg.id: min(segment_scratch_bytes(graph, sg, w, params.target)
                          for w in sg.widths) for sg in segments}
    return split_bound(graph, segments, params.inplace, kscr, seg_scr, params.stream)


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
    from pexopt.solver.rows_greedy import fixed_layout, row_plan  # they build on this module

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


def solve_fastest(graph: Graph, params: SolverParams, arena_limit: int | None,
                  hint: Schedule | None = None) -> Schedule | None:
    """The schedule of least estimated cost whose arena is at most `arena_limit` (None when no
    schedule was found in the time limit), ignoring `params.latency`."""
    assert params.cost is not None, "solve_fastest needs a cost model"
    free = replace(params, latency=None)
    segments = find_segments(graph, params.max_segment_len, params.max_widths,
                             params.slice_widths) if params.split and params.channels else []
    if params.split and params.rows:  # bands may be what fits the arena limit
        rows = find_row_segments(graph, len(segments), params.max_segment_len,
                                 params.max_heights, single=params.stream)
        rows += _hybrid(graph, params, len(segments) + len(rows))
        segments += worth_trying(graph, rows, split_bound(graph, segments + rows,
                                                          stream=params.stream))
    file_order = list(range(len(graph.ops)))
    model = _Model(graph, free, None if params.reorder else file_order, segments, 0, arena_limit)
    if params.hint:
        model.hint(hint if hint is not None else greedy_schedule(graph, file_order, free))
    name, sched, _ = model.solve(params.time_limit, "fastest", None, objective="latency")
    if sched is None:
        return None
    sched.status = name
    sched.params = params
    return sched
