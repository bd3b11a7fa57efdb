"""The constraints of the CP-SAT layout model (encoding: `pexopt.solver.model`), one method per
family, added in a fixed order; `model._Model` adds the hint, the objective and the solve."""

from __future__ import annotations

from dataclasses import replace

from ortools.sat.python import cp_model

from pexopt.deadline import check as check_deadline
from pexopt.graph.ir import Graph, ancestors, descendants
from pexopt.partial.candidates import Segment, accumulator_bytes
from pexopt.schedule import Schedule, SolverParams, temp_bytes
from pexopt.solver.bounds import all_inplace_candidates, dw_inplace_ok
from pexopt.solver.buffers import buffer_tensors, op_scratch, round_up, seg_workspace
from pexopt.solver.rows_model import StreamVars, add_streaming

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

class LayoutConstraints:
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
        cap = sum(round_up(v, al) for v in self.size.values()) + sum(
            round_up(accumulator_bytes(g.tensors[s.output]), al)
            + round_up(max(seg_workspace(g, s, w, self.p) for w in s.widths), al)
            for s in self.segments)
        cap += sum(round_up(temp_bytes(g, k), al) for k in range(self.n))  # in-place temporaries
        return cap + sum(round_up(v, al) for v in self.kscr.values())

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
