"""Plan rules of partial execution: which channels every step computes and where they go.

An op runs completely exactly once: one "whole" step; or "slice" steps whose output-channel
ranges are disjoint and cover [0, C); or "accumulate" steps whose input-channel ranges cover
[0, C_in) of its single input, then one "requantize" step. Data flows at channel granularity:
a full tensor buffer may be filled slice by slice, a slice buffer holds one range at a time
and must be read before it is overwritten, an accumulator is read once it holds every input
channel. See /work/shared/notes/partial-execution.md and `pexopt.plan.build`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pexopt.graph.ir import Op, Tensor
from pexopt.ops import SPECS, OpKind, Split
from pexopt.plan.validator_core import (
    MODES,
    PlanIndex,
    Violation,
    channels,
    per_channel_bytes,
    step_name,
)

Range = tuple[int, int]


def covers(ranges: list[Range], lo: int, hi: int) -> bool:
    """Whether the union of half-open ranges contains [lo, hi)."""
    at = lo
    for c0, c1 in sorted(ranges):
        if c0 > at:
            break
        at = max(at, c1)
    return at >= hi


def _fmt(lo: int, hi: int) -> str:
    return f"[{lo}, {hi})"


# ---------------------------------------------------------------------------- execution


def _mode_problem(ix: PlanIndex, op: Op, mode: str) -> str | None:
    """Why op cannot run in `mode`, or None."""
    spec = SPECS[op.kind]
    g = ix.graph
    if mode not in MODES:
        return f"mode '{mode}' is not one of {', '.join(MODES)}"
    if mode == "whole":
        return None
    if not (mode == "slice" and spec.split == Split.OUTPUT_SLICE) and not all(
            op.plain_inputs or (True,)):
        return "it reads an input through a reshape that moves the channel axis"
    if len(op.outputs) != 1 or len(g.tensors[op.outputs[0]].shape) < 2:
        return f"'{op.kind.value}' with {len(op.outputs)} outputs cannot run on channel slices"
    if mode == "slice":
        if spec.split == Split.OUTPUT_SLICE:
            return None
        c = channels(g.tensors[op.outputs[0]])
        if spec.split == Split.SAME_SLICE and all(
                channels(g.tensors[t]) == c for t in op.inputs):
            return None
        return f"'{op.kind.value}' cannot compute an output slice from the same input slice"
    ins = set(op.inputs)
    if not spec.accumulate or len(ins) != 1:
        return f"'{op.kind.value}' with {len(ins)} inputs cannot accumulate over input slices"
    x = g.tensors[op.inputs[0]]
    if op.kind == OpKind.FULLY_CONNECTED and x.elements != channels(x):
        return "a fully connected op on a flattened input cannot accumulate over channels"
    return None


def _coverage(ix: PlanIndex, op: Op, steps: list[int], c: int, what: str) -> list[Violation]:
    """Slices of `steps` are disjoint and cover [0, c) exactly."""
    out: list[Violation] = []
    ranges = sorted((ix.slices[i], i) for i in steps if ix.slices[i] is not None)
    at, prev = 0, -1
    for (c0, c1), i in ranges:
        if c0 < at:
            out.append(Violation("duplicate_op", f"op '{op.name}' computes {what} "
                                                 f"{_fmt(c0, min(c1, at))} twice (steps {prev} "
                                                 f"and {i})"))
        elif c0 > at:
            out.append(Violation("slice_coverage", f"op '{op.name}' never computes {what} "
                                                   f"{_fmt(at, c0)} of {c}"))
        if c1 > at:
            at, prev = c1, i
    if at < c:
        out.append(Violation("slice_coverage", f"op '{op.name}' never computes {what} "
                                               f"{_fmt(at, c)} of {c}"))
    return out


def _step_shape(ix: PlanIndex, op: Op, i: int) -> Violation | None:
    """A step's mode is allowed for its op, and its slice field fits the mode."""
    s = ix.plan.steps[i]
    why = _mode_problem(ix, op, s.mode)
    if why is not None:
        return Violation("mode", f"{step_name(i, s)}: {why}")
    if s.mode in ("whole", "requantize"):
        return None if s.slice is None else Violation(
            "slice_range", f"{step_name(i, s)} is '{s.mode}' but has slice {s.slice}")
    t = ix.graph.tensors[op.outputs[0] if s.mode == "slice" else op.inputs[0]]
    sl = ix.slices[i]
    if sl is None or sl[1] > channels(t):
        return Violation("slice_range", f"{step_name(i, s)} has slice {s.slice}, not a range "
                                        f"[c0, c1) with 0 <= c0 < c1 <= {channels(t)} "
                                        f"(channels of '{t.name}')")
    return None


def _op_execution(ix: PlanIndex, op: Op, steps: list[int]) -> list[Violation]:
    """One op runs completely exactly once (see the module docstring)."""
    out: list[Violation] = []
    by_mode: dict[str, list[int]] = {m: [] for m in MODES}
    for i in steps:
        bad = _step_shape(ix, op, i)
        if bad is not None:
            out.append(bad)
        by_mode.setdefault(ix.plan.steps[i].mode, []).append(i)
    whole, sl = by_mode["whole"], by_mode["slice"]
    acc, req = by_mode["accumulate"], by_mode["requantize"]
    if whole and len(steps) > 1:
        again = sorted(set(steps) - {whole[0]})
        out.append(Violation("duplicate_op", f"op '{op.name}' runs whole at step {whole[0]} "
                                             f"and again at steps {again}"))
        return out
    if sl and acc:
        out.append(Violation("mode", f"op '{op.name}' mixes slice steps {sl} and accumulate "
                                     f"steps {acc}"))
    if sl and not _mode_problem(ix, op, "slice"):
        out += _coverage(ix, op, sl, channels(ix.graph.tensors[op.outputs[0]]),
                         "output channels")
    if acc and not _mode_problem(ix, op, "accumulate"):
        out += _coverage(ix, op, acc, channels(ix.graph.tensors[op.inputs[0]]),
                         "input channels")
    if len(req) > 1:
        out.append(Violation("duplicate_op", f"op '{op.name}' is requantized at steps {req}"))
    if acc and not req:
        out.append(Violation("requantize", f"op '{op.name}' accumulates but is never "
                                           "requantized"))
    elif req and not acc:
        out.append(Violation("requantize", f"op '{op.name}' is requantized at step {req[0]} "
                                           "without accumulate steps"))
    elif req and req[0] < max(acc):
        out.append(Violation("requantize", f"op '{op.name}' is requantized at step {req[0]} "
                                           f"before its last accumulate step {max(acc)}"))
    return out


def check_execution(ix: PlanIndex, skip: set[int] | None = None) -> list[Violation]:
    """Every IR op runs completely exactly once, in modes its kind allows (ops in `skip` run
    in row bands: `validator_rows` checks them)."""
    out: list[Violation] = []
    for op in ix.graph.ops:
        steps = ix.op_steps.get(op.id, [])
        if skip and op.id in skip:
            continue
        if not steps:
            out.append(Violation("missing_op", f"op '{op.name}' has no step"))
        else:
            out += _op_execution(ix, op, steps)
    return out


# ---------------------------------------------------------------------------- order


def produced(ix: PlanIndex, t: int) -> list[tuple[int, int, int]]:
    """(step, c0, c1) of every step that completes channels [c0, c1) of tensor t."""
    p = ix.producer.get(t)
    if p is None:
        return []
    c = channels(ix.graph.tensors[t])
    res = []
    for i in ix.op_steps.get(p, []):
        mode, sl = ix.plan.steps[i].mode, ix.slices[i]
        if mode in ("whole", "requantize"):
            res.append((i, 0, c))
        elif mode == "slice" and sl is not None:
            res.append((i, sl[0], min(sl[1], c)))
    return res


def needed(ix: PlanIndex, i: int, op: Op, t: Tensor) -> Range | None:
    """Channels [c0, c1) of input t that step i needs (None: none, or a malformed step)."""
    s, sl = ix.plan.steps[i], ix.slices[i]
    c = channels(t)
    if s.mode == "whole":
        return 0, c
    if s.mode == "requantize" or s.mode not in MODES or sl is None:
        return None
    if s.mode == "slice" and SPECS[op.kind].split != Split.SAME_SLICE:
        return 0, c  # an output slice needs every input channel
    lo, hi = sl[0], min(sl[1], c)
    return (lo, hi) if lo < hi else None


def check_order(ix: PlanIndex) -> list[Violation]:
    """Topological order at channel level: every step comes after the steps that produce the
    input channels it needs (the whole producer, or, inside a segment, the same slice)."""
    out: list[Violation] = []
    prods: dict[int, list[tuple[int, int, int]]] = {}
    for i, op in enumerate(ix.step_op):
        if op is None:
            continue
        for t in dict.fromkeys(op.inputs):
            need = needed(ix, i, op, ix.graph.tensors[t])
            if need is None or ix.producer.get(t) in (None, op.id):
                continue
            writes = prods.setdefault(t, produced(ix, t))
            before = [(c0, c1) for j, c0, c1 in writes if j < i]
            later = [j for j, c0, c1 in writes if j >= i and c0 < need[1] and need[0] < c1]
            if later and not covers(before, *need):
                s, p = ix.plan.steps[i], ix.graph.ops[ix.producer[t]]
                out.append(Violation("order", f"{step_name(i, s)} needs channels "
                                              f"{_fmt(*need)} of '{ix.graph.tensors[t].name}', "
                                              f"produced by '{p.name}' at step {later[0]}"))
    return out


# ---------------------------------------------------------------------------- data flow


@dataclass
class _Held:
    """What a slice buffer holds: channels [c0, c1) written at `step`, read yet or not."""

    c0: int
    c1: int
    step: int
    read: bool = False


@dataclass
class _Flow:
    """Channel-level contents of every buffer while the steps run in plan order."""

    full: dict[str, list[Range]]  # tensor buffer -> channel ranges written
    acc: dict[str, list[Range]]  # accumulator -> input channel ranges accumulated
    held: dict[str, _Held]  # slice buffer -> current content


def _acc_channels(ix: PlanIndex, t: Tensor) -> int:
    """Input channels an accumulator of output t must hold before requantization."""
    p = ix.producer.get(t.id)
    ins = ix.graph.ops[p].inputs if p is not None else ()
    return channels(ix.graph.tensors[ins[0]]) if ins else 1


def _read(ix: PlanIndex, fl: _Flow, i: int, op: Op, name: str) -> Violation | None:
    """Step i reads buffer `name`: the channels it needs are there (not overwritten)."""
    s, b = ix.plan.steps[i], ix.buffers.get(name)
    t = ix.tensor_of(b) if b is not None else None
    if b is None or t is None:
        return None  # reported by the io / buffer rules
    if b.kind == "tensor":
        need = needed(ix, i, op, t) if t.id in op.inputs else (0, channels(t))
        if need is None or covers(fl.full.get(name, []), *need):
            return None
        have = sorted(fl.full.get(name, []))
        when = f"holds only channels {have}" if have else "never written before"
        return Violation("read_before_write", f"{step_name(i, s)} reads channels "
                                              f"{_fmt(*need)} of '{name}', {when}")
    if b.kind == "slice":
        need, held = needed(ix, i, op, t) if t.id in op.inputs else None, fl.held.get(name)
        if need is None or s.mode == "whole":
            return None  # not an input, or a slice buffer read by a whole step: io rule
        if held is None:
            return Violation("read_before_write", f"{step_name(i, s)} reads '{name}', never "
                                                  "written before")
        if (held.c0, held.c1) != need:
            return Violation("read_before_write", f"{step_name(i, s)} needs channels "
                                                  f"{_fmt(*need)} of '{name}', which holds "
                                                  f"{_fmt(held.c0, held.c1)} from step "
                                                  f"{held.step}")
        held.read = True
        return None
    if b.kind == "accumulator":
        c = _acc_channels(ix, t)
        if not covers(fl.acc.get(name, []), 0, c):
            return Violation("read_before_write", f"{step_name(i, s)} reads '{name}' holding "
                                                  f"input channels {sorted(fl.acc.get(name, []))}"
                                                  f" of {c}")
    return None


def _write(ix: PlanIndex, fl: _Flow, i: int, name: str) -> Violation | None:
    """Step i writes buffer `name`: a slice fits its slice buffer and loses no unread slice."""
    s, b = ix.plan.steps[i], ix.buffers.get(name)
    t = ix.tensor_of(b) if b is not None else None
    if b is None or t is None:
        return None
    sl = ix.slices[i]
    if b.kind == "tensor":
        fl.full.setdefault(name, []).append(sl if s.mode == "slice" and sl else
                                            (0, channels(t)))
    elif b.kind == "accumulator" and sl is not None:
        fl.acc.setdefault(name, []).append(sl)
    elif b.kind == "slice" and sl is not None:
        held, fl.held[name] = fl.held.get(name), _Held(sl[0], sl[1], i)
        need = per_channel_bytes(t) * (sl[1] - sl[0])
        if b.size < need:
            return Violation("size", f"{step_name(i, s)} writes {sl[1] - sl[0]} channels "
                                     f"({need} bytes) into '{name}' of {b.size} bytes")
        if held is not None and not held.read:
            return Violation("slice_lost", f"{step_name(i, s)} overwrites channels "
                                           f"{_fmt(held.c0, held.c1)} of '{name}' written at "
                                           f"step {held.step} before they were read")
    return None


def check_dataflow(ix: PlanIndex) -> list[Violation]:
    """Run the steps in order at channel granularity: every read finds the channels it needs
    written and not overwritten, no slice is overwritten (or left) unread, every slice fits
    its buffer."""
    fl = _Flow(full={}, acc={}, held={})
    for t in ix.graph.inputs:
        if t in ix.tensor_buf:
            fl.full[ix.tensor_buf[t].name] = [(0, channels(ix.graph.tensors[t]))]
    out: list[Violation] = []
    for i, s in enumerate(ix.plan.steps):
        op = ix.step_op[i]
        if op is None:
            continue
        for name in dict.fromkeys(s.reads):
            v = _read(ix, fl, i, op, name)
            if v is not None:
                out.append(v)
        for name in dict.fromkeys(s.writes):
            v = _write(ix, fl, i, name)
            if v is not None:
                out.append(v)
    for name, held in fl.held.items():
        if not held.read:
            out.append(Violation("slice_lost", f"channels {_fmt(held.c0, held.c1)} of "
                                               f"'{name}' written at step {held.step} are "
                                               "never read"))
    return out
