"""Plan rules of hybrid execution (row bands and channel slices at once), checked at (row,
channel) granularity and independent of the solver.

A hybrid step is a "band" or "accumulate" step with both `rows` and `slice`, or a "requantize"
step with `rows`; an op with one runs only in such steps (and "halo" steps of its band buffer).
- Execution: the op's distinct row ranges are disjoint and cover [0, H); per row range the
  slices are disjoint and cover the output channels (band) or the input channels (accumulate);
  an accumulating op is requantized once per row range, after that range's last accumulate.
- Band buffers (`<t>@band`) hold rows at slots as in `validator_rows`, and per held row the
  channel ranges written since it arrived; a read needs its rows and channels there.
- A tile (`<t>@tile`, kind "tile") holds rows [r0, r1) of one slice [c0, c1), written at slot
  0; a read needs rows inside it and exactly its slice; it is read before it is overwritten.
- The band accumulator (`<t>@acc`) holds one row range at slot 0: an accumulate of slice
  c0 = 0 starts it (the previous range must be requantized by then), later slices add to the
  same rows; requantize needs its rows with every input channel.
- Other steps read a hybrid op's output only once every row is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pexopt.graph.ir import Op
from pexopt.graph.rows import input_rows, row_capable
from pexopt.plan.validator_core import PlanIndex, Violation, channels, step_name
from pexopt.plan.validator_rows import row_coverage
from pexopt.plan.validator_slices import _coverage, _mode_problem, covers

Range = tuple[int, int]


def _rows(ix: PlanIndex, i: int, empty: bool = False) -> Range | None:
    """The step's rows [r0, r1) if well formed (non-empty unless `empty`: a halo step of a
    band buffer whose consumer keeps no rows just moves its base)."""
    r = ix.plan.steps[i].rows
    if (not isinstance(r, list) or len(r) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
        return None
    return (r[0], r[1]) if 0 <= r[0] < r[1] or (empty and 0 <= r[0] == r[1]) else None


def is_hybrid(ix: PlanIndex, i: int) -> bool:
    """Step i is a hybrid step (see the module docstring)."""
    s = ix.plan.steps[i]
    return s.rows is not None and (
        (s.mode in ("band", "accumulate") and s.slice is not None) or s.mode == "requantize")


def hybrid_ops(ix: PlanIndex) -> set[int]:
    """Ids of the ops with hybrid steps (the row and channel rules leave them to this module)."""
    return {op.id for op in ix.graph.ops
            if any(is_hybrid(ix, i) for i in ix.op_steps.get(op.id, []))}


def _height(ix: PlanIndex, t: int) -> int:
    shape = ix.graph.tensors[t].shape
    return shape[1] if len(shape) == 4 else 1


# ---------------------------------------------------------------------------- execution


def _op_execution(ix: PlanIndex, op: Op, steps: list[int]) -> list[Violation]:
    out: list[Violation] = []
    work = [i for i in steps if ix.plan.steps[i].mode != "halo"]
    bad = [i for i in work if not is_hybrid(ix, i)]
    if bad:
        s = ix.plan.steps[bad[0]]
        return [Violation("mode", f"op '{op.name}' mixes hybrid steps with {step_name(bad[0], s)}"
                                  " (a hybrid step has rows and a slice)")]
    if not row_capable(ix.graph, op):
        return [Violation("mode", f"op '{op.name}' ('{op.kind.value}') cannot run in row bands")]
    acc = [i for i in work if ix.plan.steps[i].mode == "accumulate"]
    mode = "accumulate" if acc else "slice"
    why = _mode_problem(ix, op, mode)
    if why is not None:
        return [Violation("mode", f"op '{op.name}': {why}")]
    h = _height(ix, op.outputs[0])
    groups: dict[Range, list[int]] = {}
    req: dict[Range, list[int]] = {}
    for i in work:
        r, s = _rows(ix, i), ix.plan.steps[i]
        if r is None or r[1] > h:
            out.append(Violation("rows_range", f"{step_name(i, s)} has rows {s.rows}, not "
                                               f"[r0, r1) with 0 <= r0 < r1 <= {h}"))
        elif s.mode == "requantize":
            req.setdefault(r, []).append(i)
            if s.slice is not None:  # it requantizes every channel of the band
                out.append(Violation("slice_range", f"{step_name(i, s)} is 'requantize' but "
                                                    f"has slice {s.slice}"))
        elif ix.slices[i] is None:
            out.append(Violation("slice_range", f"{step_name(i, s)} has slice {s.slice}"))
        else:
            groups.setdefault(r, []).append(i)
    out += row_coverage(op, list(groups), h, bool(groups))
    t = ix.graph.tensors[op.inputs[0] if acc else op.outputs[0]]
    what = "input channels" if acc else "output channels"
    for (r0, r1), g in sorted(groups.items()):
        out += _coverage(ix, op, g, channels(t), f"{what} of rows [{r0}, {r1}):")
        if not acc:
            continue
        q = req.pop((r0, r1), [])
        if len(q) != 1 or q[0] < max(g):
            out.append(Violation("requantize", f"op '{op.name}' rows [{r0}, {r1}) need one "
                                               "requantize step after their last accumulate "
                                               f"step {max(g)} (found {q})"))
    for r, q in req.items():
        out.append(Violation("requantize", f"op '{op.name}' requantizes rows [{r[0]}, {r[1]}) "
                                           f"at step {q[0]} without accumulating them"))
    return out


def check_hybrid_execution(ix: PlanIndex) -> list[Violation]:
    """Ops with hybrid steps run completely: every row range in every slice, once."""
    out: list[Violation] = []
    for k in sorted(hybrid_ops(ix)):
        out += _op_execution(ix, ix.graph.ops[k], ix.op_steps[k])
    return out


# ---------------------------------------------------------------------------- data flow


@dataclass
class _Band:
    base: int
    slots: list[tuple[int, list[Range]]]  # (row held, channel ranges written), row -1: none


@dataclass
class _Tile:
    r0: int
    r1: int
    c0: int
    c1: int
    step: int
    read: bool = False


@dataclass
class _Acc:
    rows: Range
    chans: list[Range] = field(default_factory=list)
    step: int = 0
    done: bool = False


class _Flow:
    def __init__(self, ix: PlanIndex) -> None:
        self.ix = ix
        self.bands: dict[str, _Band] = {}
        self.tiles: dict[str, _Tile] = {}
        self.accs: dict[str, _Acc] = {}
        self.rows_out: dict[int, set[int]] = {}  # hybrid output tensor -> rows written
        self.out: list[Violation] = []

    def bad(self, code: str, i: int, msg: str) -> None:
        self.out.append(Violation(code, f"{step_name(i, self.ix.plan.steps[i])} {msg}"))

    def band(self, name: str) -> _Band:
        b = self.ix.buffers[name]
        t = self.ix.tensor_of(b)
        rb = t.nbytes // max(1, _height(self.ix, t.id)) if t is not None else 1
        return self.bands.setdefault(name, _Band(0, [(-1, [])] * (b.size // max(1, rb))))

    def read(self, i: int, op: Op, name: str, r: Range, c: Range) -> None:
        b = self.ix.buffers.get(name)
        t = self.ix.tensor_of(b) if b is not None else None
        if b is None or t is None or t.id not in op.inputs:
            return
        lo, hi = input_rows(self.ix.graph, op, t.id, *r)
        if b.kind == "band":
            held = self.band(name)
            for row in range(lo, hi):
                slot = row - held.base
                ok = 0 <= slot < len(held.slots) and held.slots[slot][0] == row
                if not ok or not covers(held.slots[slot][1], *c):
                    self.bad("band_row", i, f"reads channels [{c[0]}, {c[1]}) of row {row} of "
                                            f"'{name}', which it does not hold")
                    return
        elif b.kind == "tile":
            tl = self.tiles.get(name)
            if tl is None or not (tl.r0 <= lo and hi <= tl.r1) or (tl.c0, tl.c1) != c:
                have = f"rows [{tl.r0}, {tl.r1}) channels [{tl.c0}, {tl.c1})" if tl else \
                    "nothing"
                self.bad("read_before_write", i, f"reads rows [{lo}, {hi}) channels "
                                                 f"[{c[0]}, {c[1]}) of '{name}', which holds "
                                                 f"{have}")
                return
            tl.read = True

    def write(self, i: int, name: str, r: Range, c: Range) -> None:
        b = self.ix.buffers.get(name)
        t = self.ix.tensor_of(b) if b is not None else None
        if b is None or t is None:
            return
        if b.kind == "band":
            held = self.band(name)
            for row in range(*r):
                slot = row - held.base
                if not 0 <= slot < len(held.slots):
                    self.bad("size", i, f"writes row {row} at slot {slot} of '{name}', which "
                                        f"holds {len(held.slots)} rows")
                    return
                have = held.slots[slot][1] if held.slots[slot][0] == row else []
                held.slots[slot] = (row, [*have, c])
        elif b.kind == "tile":
            need = (r[1] - r[0]) * t.shape[2] * (c[1] - c[0]) * (t.nbytes // max(1, t.elements))
            if b.size < need:
                self.bad("size", i, f"writes {need} bytes into '{name}' of {b.size} bytes")
            old = self.tiles.get(name)
            if old is not None and not old.read:
                self.bad("slice_lost", i, f"overwrites '{name}' (rows [{old.r0}, {old.r1}) "
                                          f"channels [{old.c0}, {old.c1}) from step {old.step}) "
                                          "before it was read")
            self.tiles[name] = _Tile(r[0], r[1], c[0], c[1], i)
        elif b.kind == "accumulator":
            need = (r[1] - r[0]) * (t.elements // max(1, _height(self.ix, t.id))) * 4
            if b.size < need:
                self.bad("size", i, f"accumulates {need} bytes into '{name}' of {b.size} bytes")
            acc = self.accs.get(name)
            if c[0] == 0:  # the first slice starts the band (the kernels start from the bias)
                if acc is not None and not acc.done:
                    self.bad("slice_lost", i, f"restarts '{name}' holding rows "
                                              f"[{acc.rows[0]}, {acc.rows[1]}) from step "
                                              f"{acc.step}, never requantized")
                self.accs[name] = _Acc(r, [c], i)
            elif acc is None or acc.rows != r or acc.done:
                self.bad("read_before_write", i, f"adds to '{name}', which holds no partial "
                                                 f"sums of rows [{r[0]}, {r[1]})")
            else:
                acc.chans.append(c)

    def halo(self, i: int, name: str, r: Range) -> None:
        b = self.ix.buffers.get(name)
        if b is None or b.kind != "band":
            return
        held = self.band(name)
        kept = []
        for row in range(*r):
            slot = row - held.base
            kept.append(held.slots[slot] if 0 <= slot < len(held.slots) else (-1, []))
        held.slots = kept + [(-1, [])] * (len(held.slots) - len(kept))
        held.base = r[0]

    def requantize(self, i: int, op: Op, name: str, r: Range) -> None:
        acc = self.accs.get(name)
        c = channels(self.ix.graph.tensors[op.inputs[0]])
        if acc is None or acc.rows != r or acc.done or not covers(acc.chans, 0, c):
            have = f"rows [{acc.rows[0]}, {acc.rows[1]}) channels {sorted(acc.chans)}" \
                if acc is not None and not acc.done else "nothing"
            self.bad("read_before_write", i, f"requantizes rows [{r[0]}, {r[1]}) of '{name}' "
                                             f"holding {have} of {c} input channels")
            return
        acc.done = True
        self.rows_out.setdefault(op.outputs[0], set()).update(range(*r))


def check_hybrid_dataflow(ix: PlanIndex) -> list[Violation]:
    """Run the steps at (row, channel) granularity (see the module docstring)."""
    ops = hybrid_ops(ix)
    if not ops:
        return []
    fl = _Flow(ix)
    outputs = {ix.graph.ops[k].outputs[0] for k in ops}
    for i, s in enumerate(ix.plan.steps):
        op = ix.step_op[i]
        if op is None:
            continue
        r = _rows(ix, i, s.mode == "halo")
        if op.id in ops and s.mode == "halo" and r is not None:
            for name in s.writes:
                fl.halo(i, name, r)
        elif is_hybrid(ix, i) and r is not None:
            if s.mode == "requantize":
                for name in s.reads:
                    fl.requantize(i, op, name, r)
                continue
            c = ix.slices[i]
            if c is None:
                continue
            for name in dict.fromkeys(s.reads):
                fl.read(i, op, name, r, c)
            for name in dict.fromkeys(s.writes):
                fl.write(i, name, r, c)
        for t in dict.fromkeys(op.inputs):  # non-hybrid readers of a hybrid output
            if t in outputs and op.id not in ops:
                got = fl.rows_out.get(t, set())
                if len(got) < _height(ix, t):
                    missing = min(set(range(_height(ix, t))) - got)
                    fl.bad("read_before_write", i, f"reads row {missing} of "
                                                   f"'{ix.graph.tensors[t].name}' before it "
                                                   "is written")
    for name, tl in fl.tiles.items():
        if not tl.read:
            fl.out.append(Violation("slice_lost", f"rows [{tl.r0}, {tl.r1}) channels "
                                                  f"[{tl.c0}, {tl.c1}) of '{name}' written at "
                                                  f"step {tl.step} are never read"))
    for name, acc in fl.accs.items():
        if not acc.done:
            fl.out.append(Violation("requantize", f"rows [{acc.rows[0]}, {acc.rows[1]}) of "
                                                  f"'{name}' are never requantized"))
    return fl.out
