"""Plan rules of row-band execution, checked at row granularity (independent of the solver).

- An op with "band" steps runs only in bands: their output rows are disjoint and cover
  [0, H) exactly, and the op is spatially local (ops table `rows`).
- A band buffer (`<tensor>@band`, kind "band") holds rows [base, base + capacity) at slots
  0.. (slot = row - base, capacity = size / row bytes); base starts at 0 and a "halo" step with
  rows [r0, r1) moves those rows (all held) to slots 0.. and sets base = r0.
- Every row a band step reads is held: in a band buffer at its slot, written and not replaced;
  in a full tensor buffer written before (a tensor produced by non-band steps once its producer
  has finished). Non-band steps read band-written tensors only when every row is written.
- Streaming in place: a band write may cover bytes of another live tensor buffer only if no
  step from then on reads the rows it covers; such a pair (input, band-written output) is a
  legal overlap (`check_streaming`), every other overlap stays illegal.
"""

from __future__ import annotations

from pexopt.graph.ir import Op
from pexopt.graph.rows import Range, input_rows, row_capable
from pexopt.plan.format import Buffer, Plan
from pexopt.plan.validator_core import PlanIndex, Violation, overlaps, step_name

ROW_MODES = ("band", "halo")


def _rows_of(ix: PlanIndex, i: int) -> tuple[int, int] | None:
    r = ix.plan.steps[i].rows
    if (not isinstance(r, list) or len(r) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
        return None
    return (r[0], r[1]) if 0 <= r[0] <= r[1] else None


def _height(ix: PlanIndex, t: int) -> int:
    shape = ix.graph.tensors[t].shape
    return shape[1] if len(shape) == 4 else 1


def _row_bytes(ix: PlanIndex, t: int) -> int:
    tt = ix.graph.tensors[t]
    return tt.nbytes // max(1, _height(ix, t))


# ---------------------------------------------------------------------------- execution


def _op_rows(ix: PlanIndex, op: Op, steps: list[int]) -> list[Violation]:
    out: list[Violation] = []
    bands = [i for i in steps if ix.plan.steps[i].mode == "band"]
    other = [i for i in steps if ix.plan.steps[i].mode not in ROW_MODES]
    if other:
        out.append(Violation("mode", f"op '{op.name}' mixes band steps {bands} with "
                                     f"'{ix.plan.steps[other[0]].mode}' steps {other}"))
    if not row_capable(ix.graph, op):
        out.append(Violation("mode", f"op '{op.name}' ('{op.kind.value}') cannot run in row "
                                     "bands"))
        return out
    h = _height(ix, op.outputs[0])
    ranges = []
    for i in steps:
        s, r = ix.plan.steps[i], _rows_of(ix, i)
        if r is None or r[1] > h or (s.mode == "band" and r[0] == r[1]):
            out.append(Violation("rows_range", f"{step_name(i, s)} has rows {s.rows}, not "
                                               f"[r0, r1) with 0 <= r0 < r1 <= {h}"))
        elif s.mode == "band":
            ranges.append((r, i))
    out += row_coverage(op, [r for r, _ in ranges], h,
                        not any(v.code == "rows_range" for v in out))
    return out


def row_coverage(op: Op, ranges: list[Range], h: int, check_end: bool = True
                 ) -> list[Violation]:
    """Rows [0, h) of op's output computed exactly once by the given row ranges (rows computed
    twice, rows never computed; the end only when `check_end`)."""
    out: list[Violation] = []
    at = 0
    for r0, r1 in sorted(ranges):
        if r0 < at:
            out.append(Violation("duplicate_op", f"op '{op.name}' computes rows "
                                                 f"[{r0}, {min(r1, at)}) twice"))
        elif r0 > at:
            out.append(Violation("row_coverage", f"op '{op.name}' never computes rows "
                                                 f"[{at}, {r0}) of {h}"))
        at = max(at, r1)
    if at < h and check_end:
        out.append(Violation("row_coverage", f"op '{op.name}' never computes rows [{at}, {h}) "
                                             f"of {h}"))
    return out


def check_row_execution(ix: PlanIndex, skip: set[int] | None = None) -> list[Violation]:
    """Ops with row steps run completely in disjoint bands, and can (ops in `skip` run in
    hybrid steps: `validator_hybrid` checks them)."""
    out: list[Violation] = []
    for op in ix.graph.ops:
        if skip and op.id in skip:
            continue
        steps = ix.op_steps.get(op.id, [])
        if any(ix.plan.steps[i].mode in ROW_MODES for i in steps):
            out += _op_rows(ix, op, steps)
    return out


def row_ops(ix: PlanIndex) -> set[int]:
    """Ids of the ops that run in row steps (the channel rules leave them to this module)."""
    return {op.id for op in ix.graph.ops
            if any(ix.plan.steps[i].mode in ROW_MODES for i in ix.op_steps.get(op.id, []))}


# ---------------------------------------------------------------------------- data flow


class _Band:
    """What a band buffer holds: slots[s] is the row at slot s (-1: nothing valid)."""

    def __init__(self, capacity: int) -> None:
        self.base = 0
        self.slots = [-1] * capacity


class _Flow:
    def __init__(self, ix: PlanIndex) -> None:
        self.ix = ix
        self.written: dict[str, set[int]] = {}  # full tensor buffer -> rows written by bands
        self.bands: dict[str, _Band] = {}
        self.clobbered: dict[str, dict[int, int]] = {}  # buffer -> row -> step that covered it
        self.last_step = {op: max(st) for op, st in ix.op_steps.items()}

    def full_rows(self, b: Buffer, t: int, i: int) -> set[int] | None:
        """Rows of tensor buffer b readable at step i (None: all of them)."""
        if b.name in self.written:
            return self.written[b.name]
        p = self.ix.producer.get(t)
        if p is None or self.last_step.get(p, i) < i:
            return None
        return set()


def _tensor_id(ix: PlanIndex, b: Buffer) -> int | None:
    t = ix.tensor_of(b)
    return t.id if t is not None else None


def _read(fl: _Flow, i: int, op: Op, b: Buffer, need: tuple[int, int]) -> Violation | None:
    ix, s = fl.ix, fl.ix.plan.steps[i]
    t = _tensor_id(ix, b)
    if t is None:
        return None
    lo, hi = need
    if b.kind == "band":
        held = fl.bands.get(b.name)
        for r in range(lo, hi):
            slot = r - held.base if held else -1
            if held is None or not 0 <= slot < len(held.slots) or held.slots[slot] != r:
                where = f"slot {slot} of {len(held.slots)}" if held else "never written"
                return Violation("band_row", f"{step_name(i, s)} reads row {r} of '{b.name}' "
                                             f"({where}), which does not hold it")
        return None
    if b.kind != "tensor":
        return None
    have = fl.full_rows(b, t, i)
    if have is not None:
        missing = [r for r in range(lo, hi) if r not in have]
        if missing:
            return Violation("read_before_write", f"{step_name(i, s)} reads row {missing[0]} "
                                                  f"of '{b.name}' before it is written")
    gone = fl.clobbered.get(b.name, {})
    for r in range(lo, hi):
        if r in gone:
            return Violation("stream", f"{step_name(i, s)} reads row {r} of '{b.name}', "
                                       f"overwritten at step {gone[r]}")
    return None


def _live_at(ix: PlanIndex, i: int) -> list[Buffer]:
    return [b for b in ix.plan.buffers if b.first_step <= i <= b.last_step]


def _clobber(fl: _Flow, i: int, b: Buffer, r0: int, r1: int) -> None:
    """Band write of rows [r0, r1) of tensor buffer b: mark the rows of other live tensor
    buffers whose bytes it covers."""
    t = _tensor_id(fl.ix, b)
    if t is None:
        return
    rb = _row_bytes(fl.ix, t)
    lo, hi = b.offset + r0 * rb, b.offset + r1 * rb
    for a in _live_at(fl.ix, i):
        ta = _tensor_id(fl.ix, a)
        if a is b or a.kind != "tensor" or ta is None or not overlaps(lo, hi, a.offset,
                                                                        a.offset + a.size):
            continue
        ra = _row_bytes(fl.ix, ta)
        first = max(0, (lo - a.offset) // ra)
        last = min(_height(fl.ix, ta), -(-(hi - a.offset) // ra))
        marks = fl.clobbered.setdefault(a.name, {})
        for r in range(first, last):
            marks.setdefault(r, i)


def _band_step(fl: _Flow, i: int, op: Op) -> list[Violation]:
    ix, s = fl.ix, fl.ix.plan.steps[i]
    r = _rows_of(ix, i)
    if r is None:
        return []
    out: list[Violation] = []
    by_tensor = {_tensor_id(ix, ix.buffers[n]): ix.buffers[n] for n in s.reads
                 if n in ix.buffers}
    for t in dict.fromkeys(op.inputs):
        b = by_tensor.get(t)
        if b is not None:
            v = _read(fl, i, op, b, input_rows(ix.graph, op, t, *r))
            if v is not None:
                out.append(v)
    for name in s.writes:
        b = ix.buffers.get(name)
        t = _tensor_id(ix, b) if b is not None else None
        if b is None or t is None:
            continue
        if b.kind == "band":
            held = fl.bands.setdefault(name, _Band(b.size // max(1, _row_bytes(ix, t))))
            for row in range(*r):
                slot = row - held.base
                if not 0 <= slot < len(held.slots):
                    out.append(Violation("size", f"{step_name(i, s)} writes row {row} at slot "
                                                 f"{slot} of '{name}', which holds "
                                                 f"{len(held.slots)} rows"))
                    break
                held.slots[slot] = row
        elif b.kind == "tensor":
            fl.written.setdefault(name, set()).update(range(*r))
            _clobber(fl, i, b, *r)
    for t in dict.fromkeys(op.inputs):  # a kernel must not overwrite rows it is reading
        b = by_tensor.get(t)
        gone = fl.clobbered.get(b.name, {}) if b is not None else {}
        lo, hi = input_rows(ix.graph, op, t, *r)
        hit = [row for row in range(lo, hi) if gone.get(row) == i]
        if hit:
            out.append(Violation("stream", f"{step_name(i, s)} overwrites row {hit[0]} of "
                                           f"'{b.name}' that it reads"))
    return out


def _halo_step(fl: _Flow, i: int) -> list[Violation]:
    ix, s = fl.ix, fl.ix.plan.steps[i]
    r = _rows_of(ix, i)
    if r is None:
        return []
    for name in s.writes:
        b = ix.buffers.get(name)
        if b is None or b.kind != "band":
            return [Violation("halo", f"{step_name(i, s)} moves rows of '{name}', not a band "
                                      "buffer")]
        held = fl.bands.get(name)
        if held is None:  # nothing written yet: there are no rows to keep nor a base to move
            return [Violation("halo", f"{step_name(i, s)} moves rows of '{name}' before any "
                                      "band step writes it")]
        for row in range(*r):
            slot = row - held.base if held else -1
            if held is None or not 0 <= slot < len(held.slots) or held.slots[slot] != row:
                return [Violation("halo", f"{step_name(i, s)} keeps row {row} of '{name}', "
                                          "which it does not hold")]
        held.slots = [*range(*r), *[-1] * (len(held.slots) - (r[1] - r[0]))]
        held.base = r[0]
    return []


def _band_write(fl: _Flow, i: int) -> None:
    """A hybrid requantize step writes its rows of the full output tensor."""
    r = _rows_of(fl.ix, i)
    for name in fl.ix.plan.steps[i].writes:
        b = fl.ix.buffers.get(name)
        if b is not None and b.kind == "tensor" and r is not None:
            fl.written.setdefault(name, set()).update(range(*r))
            _clobber(fl, i, b, *r)


def check_row_dataflow(ix: PlanIndex) -> list[Violation]:
    """Run the steps at row granularity (see the module docstring)."""
    fl = _Flow(ix)
    out: list[Violation] = []
    for i, s in enumerate(ix.plan.steps):
        op = ix.step_op[i]
        if op is None:
            continue
        if s.mode == "band":
            out += _band_step(fl, i, op)
        elif s.mode == "halo":
            out += _halo_step(fl, i)
        elif s.mode == "requantize" and _rows_of(ix, i) is not None:
            _band_write(fl, i)  # a hybrid band's output rows (`validator_hybrid`)
        else:  # a non-band step reads band-written (or streamed-over) tensors whole
            for name in dict.fromkeys(s.reads):
                b = ix.buffers.get(name)
                t = _tensor_id(ix, b) if b is not None else None
                if (b is not None and t is not None and b.kind == "tensor"
                        and (name in fl.written or name in fl.clobbered)):
                    v = _read(fl, i, op, b, (0, _height(ix, t)))
                    if v is not None:
                        out.append(v)
    return out


# ---------------------------------------------------------------------------- streaming


def check_streaming(ix: PlanIndex) -> set[tuple[str, str]]:
    """(input, output) tensor buffer pairs that may share bytes: while both live, the output
    is written only by band steps (or a hybrid segment's requantize steps with rows) and the
    input not at all (whether every row the input still needs survives is
    `check_row_dataflow`'s clobber rule)."""
    return streaming_pairs(ix.plan)


def streaming_pairs(plan: Plan) -> set[tuple[str, str]]:
    """check_streaming from the plan alone (it needs no graph: `pexopt report` without one)."""
    legal: set[tuple[str, str]] = set()
    tensors = [b for b in plan.buffers if b.kind == "tensor"]
    writers: dict[str, list[int]] = {}
    for i, s in enumerate(plan.steps):
        for n in s.writes:
            writers.setdefault(n, []).append(i)
    for b in tensors:
        w = writers.get(b.name, [])
        if not w or any(plan.steps[i].mode != "band" and not (
                plan.steps[i].mode == "requantize" and plan.steps[i].rows is not None)
                for i in w):
            continue
        for a in tensors:
            if a is b or not overlaps(a.offset, a.offset + a.size, b.offset, b.offset + b.size):
                continue
            lo, hi = max(a.first_step, b.first_step), min(a.last_step, b.last_step)
            if lo <= hi and not any(lo <= i <= hi for i in writers.get(a.name, [])):
                legal.add((a.name, b.name))
    return legal
