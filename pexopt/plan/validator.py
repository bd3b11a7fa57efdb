"""Independent plan checker: recomputes order, lifetimes and layout facts from the IR alone.

It deliberately imports nothing from `pexopt.solver` or `pexopt.plan.build`, so a solver or
plan-builder bug cannot hide itself. Steps and buffer lifetimes are inclusive step indices; for
overlap tests both time and address are half-open intervals (`[first_step, last_step + 1)`,
`[offset, offset + size)`).

This module holds the shared index and the rules of whole tensors, names, lifetimes, layout and
aliasing; `validator_slices` holds the rules of partial execution (which channels every step
computes, slice buffers and accumulators).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pexopt.errors import PexError
from pexopt.graph.ir import Graph, Op, Tensor
from pexopt.ops import SPECS
from pexopt.plan.format import Buffer, Plan, Step, is_kscratch

MODES = ("whole", "slice", "accumulate", "requantize", "band", "halo")
BUFFER_KINDS = ("tensor", "slice", "accumulator", "scratch", "band", "tile")
ACC_BYTES = 4  # int32 accumulator element

# Buffer kinds a step may name, per mode, for an input tensor (reads) and an output (writes).
# (a hybrid step, rows and a slice at once, reads and writes band buffers and tiles)
READ_KINDS = {"whole": ("tensor",), "slice": ("tensor", "slice"),
              "accumulate": ("tensor", "slice", "band", "tile"), "requantize": (),
              "band": ("tensor", "band", "tile"), "halo": ()}
WRITE_KINDS = {"whole": ("tensor",), "slice": ("tensor", "slice"),
               "accumulate": ("accumulator",), "requantize": ("tensor",),
               "band": ("tensor", "band", "tile"), "halo": ("band",)}


@dataclass(frozen=True)
class Violation:
    """One broken rule: a short `code` and a one-line message naming the step / buffer(s)."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class PlanInvalid(PexError):
    """A plan breaks at least one rule; the message is the first violation plus the count."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = list(violations)
        n = len(self.violations)
        more = f" (+{n - 1} more violation{'s' if n > 2 else ''})" if n > 1 else ""
        super().__init__(f"plan invalid: {self.violations[0]}{more}")


@dataclass
class PlanIndex:
    """Lookup tables shared by the checks, built once from the graph and the plan."""

    graph: Graph
    plan: Plan
    tensors: dict[str, Tensor]  # IR tensor name -> tensor
    arena: set[int]  # ids of tensors that need arena bytes
    step_op: list[Op | None]  # plan position -> IR op (None: names no IR op)
    op_steps: dict[int, list[int]]  # IR op id -> plan positions of its steps
    slices: list[tuple[int, int] | None]  # plan position -> well-formed [c0, c1), if any
    buffers: dict[str, Buffer]  # buffer name -> first buffer with that name
    tensor_buf: dict[int, Buffer]  # tensor id -> its (first) "tensor" buffer
    producer: dict[int, int]  # tensor id -> producing op id
    consumers: dict[int, list[int]]  # tensor id -> consuming op ids

    def tensor_of(self, b: Buffer) -> Tensor | None:
        return self.tensors.get(b.tensor) if isinstance(b.tensor, str) else None


def overlaps(a_lo: int, a_hi: int, b_lo: int, b_hi: int) -> bool:
    """Whether half-open intervals [a_lo, a_hi) and [b_lo, b_hi) share a point."""
    return a_lo < b_hi and b_lo < a_hi


def channels(t: Tensor) -> int:
    """Channels (last dimension, NHWC) of a tensor."""
    return t.shape[-1] if t.shape else 1


def per_channel_bytes(t: Tensor) -> int:
    return t.nbytes // max(1, channels(t))


def _span(b: Buffer) -> tuple[int, int]:
    """Half-open step interval of a buffer."""
    return b.first_step, b.last_step + 1


def _addr(b: Buffer) -> tuple[int, int]:
    """Half-open address interval of a buffer."""
    return b.offset, b.offset + b.size


def desc(b: Buffer) -> str:
    return f"'{b.name}' [{b.offset}, {b.offset + b.size}) steps {b.first_step}..{b.last_step}"


def step_name(i: int, s: Step) -> str:
    where = f" {s.mode} [{s.slice[0]}, {s.slice[1]})" if _slice_of(s) else ""
    if isinstance(s.rows, list) and len(s.rows) == 2:
        where = f" {s.mode} rows [{s.rows[0]}, {s.rows[1]})" + (
            f" channels [{s.slice[0]}, {s.slice[1]})" if _slice_of(s) else "")
    return f"step {i} ('{s.op}'{where})"


def _in_arena(t: Tensor) -> bool:
    """Tensors that occupy arena bytes (not external, not empty)."""
    return not t.external and t.nbytes > 0


def _slice_of(s: Step) -> tuple[int, int] | None:
    """The step's channel range if it is two ints 0 <= c0 < c1 (bounds are checked later)."""
    sl = s.slice
    if not isinstance(sl, list) or len(sl) != 2 or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in sl):
        return None
    return (sl[0], sl[1]) if 0 <= sl[0] < sl[1] else None


def _assign_ops(plan: Plan, graph: Graph) -> list[Op | None]:
    """Plan position -> IR op, by name. Ops sharing a name (rare) are taken in turn by whole
    steps; split steps of such a name join the op its current split run started on."""
    by_name: dict[str, list[Op]] = {}
    for op in graph.ops:
        by_name.setdefault(op.name, []).append(op)
    used: dict[str, int] = {}
    split_run: dict[str, Op] = {}
    res: list[Op | None] = []
    for s in plan.steps:
        cands = by_name.get(s.op, [])
        if len(cands) <= 1:
            res.append(cands[0] if cands else None)
            continue
        if s.mode != "whole" and s.op in split_run:
            res.append(split_run[s.op])
        else:
            k = used.get(s.op, 0)
            used[s.op] = k + 1
            res.append(cands[min(k, len(cands) - 1)])
            if s.mode != "whole":
                split_run[s.op] = cands[min(k, len(cands) - 1)]
        if s.mode == "requantize":
            split_run.pop(s.op, None)
    return res


def build_index(plan: Plan, graph: Graph) -> PlanIndex:
    step_op = _assign_ops(plan, graph)
    op_steps: dict[int, list[int]] = {}
    for i, op in enumerate(step_op):
        if op is not None:
            op_steps.setdefault(op.id, []).append(i)
    buffers: dict[str, Buffer] = {}
    for b in plan.buffers:
        buffers.setdefault(b.name, b)
    tensors = {t.name: t for t in graph.tensors}
    tensor_buf: dict[int, Buffer] = {}
    for b in plan.buffers:
        t = tensors.get(b.tensor) if isinstance(b.tensor, str) else None
        if b.kind == "tensor" and t is not None:
            tensor_buf.setdefault(t.id, b)
    return PlanIndex(graph=graph, plan=plan, tensors=tensors,
                     arena={t.id for t in graph.tensors if _in_arena(t)}, step_op=step_op,
                     op_steps=op_steps, slices=[_slice_of(s) for s in plan.steps],
                     buffers=buffers, tensor_buf=tensor_buf, producer=graph.producer(),
                     consumers=graph.consumers())


# ---------------------------------------------------------------------------- whole-plan facts


def check_model_hash(plan: Plan, graph: Graph) -> list[Violation]:
    """The plan's model sha256 is the graph's source file hash."""
    got = str(plan.model.get("sha256", ""))
    if got != graph.source_sha256:
        return [Violation("model_hash", f"plan is for model sha256 {got[:12] or '-'}…, the graph "
                                        f"'{graph.name}' has {graph.source_sha256[:12] or '-'}…")]
    return []


def check_steps(ix: PlanIndex) -> list[Violation]:
    """index == position, every step names an IR op of its kind (how often an op runs and in
    which order is `validator_slices.check_execution` / `check_order`)."""
    out: list[Violation] = []
    for i, s in enumerate(ix.plan.steps):
        if s.index != i:
            out.append(Violation("order", f"{step_name(i, s)} has index {s.index}"))
        op = ix.step_op[i]
        if op is None:
            out.append(Violation("unknown_op", f"{step_name(i, s)} names no IR op"))
        elif s.kind != op.kind.value:
            out.append(Violation("kind", f"{step_name(i, s)} has kind '{s.kind}', the op is "
                                         f"'{op.kind.value}'"))
    return out


def _slice_only(ix: PlanIndex, t: Tensor, slice_bufs: set[int]) -> bool:
    """Tensor t is held only as slices (or bands): it has a slice (band) buffer, is no graph
    input/output, and every step of its producer is a slice (band, halo) step."""
    p = ix.producer.get(t.id)
    steps = ix.op_steps.get(p, []) if p is not None else []
    return (t.id in slice_bufs and t.id not in ix.graph.outputs and bool(steps)
            and all(ix.plan.steps[i].mode in ("slice", "band", "halo") for i in steps))


def _buffer_problem(ix: PlanIndex, b: Buffer) -> tuple[str, str] | None:
    """(code, why) if one buffer's kind, name, tensor or size is wrong."""
    if b.kind not in BUFFER_KINDS:
        return "buffer", f"has unknown kind '{b.kind}'"
    if b.kind == "scratch":
        return ("buffer", f"is scratch but names tensor '{b.tensor}'") if b.tensor is not None \
            else None
    t = ix.tensor_of(b)
    if t is None:
        return "buffer", f"names no IR tensor ({b.tensor})"
    if not _in_arena(t):
        return "buffer", f"tensor '{t.name}' is not in the arena (external or empty)"
    want = {"tensor": t.name, "slice": f"{t.name}@slice", "accumulator": f"{t.name}@acc",
            "band": f"{t.name}@band", "tile": f"{t.name}@tile"}[b.kind]
    if b.name != want:
        return "buffer", f"a {b.kind} buffer of '{t.name}' must be named '{want}'"
    if b.kind == "tensor" and b.size != t.nbytes:
        return "size", f"has size {b.size}, tensor '{t.name}' has {t.nbytes} bytes"
    row = t.elements // max(1, t.shape[1]) * ACC_BYTES if len(t.shape) == 4 else 0
    if b.kind == "accumulator" and b.size != t.elements * ACC_BYTES and not (
            row and b.size % row == 0 and 0 < b.size < t.elements * ACC_BYTES):
        # a hybrid segment's band accumulator holds whole rows
        return "size", f"has size {b.size}, {t.elements} int32 elements need " \
                       f"{t.elements * ACC_BYTES}"
    return None


def check_buffers(ix: PlanIndex) -> list[Violation]:
    """Buffers are well formed; every arena tensor has one "tensor" buffer unless it is held
    only as slices, at most one slice buffer and at most one accumulator."""
    out: list[Violation] = []
    names: set[str] = set()
    count: dict[tuple[str, int], int] = {}
    for b in ix.plan.buffers:
        if b.name in names:
            out.append(Violation("buffer", f"buffer name '{b.name}' is used twice"))
        names.add(b.name)
        why = _buffer_problem(ix, b)
        if why is not None:
            out.append(Violation(why[0], f"buffer '{b.name}' {why[1]}"))
        t = ix.tensor_of(b)
        if t is not None and b.kind in BUFFER_KINDS:
            count[b.kind, t.id] = count.get((b.kind, t.id), 0) + 1
    slice_bufs = {t for (k, t), n in count.items() if k in ("slice", "band", "tile")}
    for t in ix.graph.tensors:
        if t.id not in ix.arena:
            continue
        n = count.get(("tensor", t.id), 0)
        if n != 1 and not (n == 0 and _slice_only(ix, t, slice_bufs)):
            out.append(Violation("buffer", f"tensor '{t.name}' has {n} \"tensor\" buffers, "
                                           "expected 1 (0 only if held only as slices)"))
        for kind in ("slice", "accumulator", "band", "tile"):
            if count.get((kind, t.id), 0) > 1:
                out.append(Violation("buffer", f"tensor '{t.name}' has "
                                               f"{count[kind, t.id]} {kind} buffers"))
    return out


# ---------------------------------------------------------------------------- step I/O


def _io_problems(ix: PlanIndex, i: int, s: Step, op: Op, listed: list[str],
                 expected: dict[int, tuple[str, ...]], verb: str) -> list[Violation]:
    """`listed` names, for every expected tensor, exactly one of its buffers of an allowed
    kind, and nothing else."""
    out: list[Violation] = []
    hits: dict[int, int] = {}
    what = "inputs" if verb == "reads" else "outputs"
    for name in dict.fromkeys(listed):
        b = ix.buffers.get(name)
        t = ix.tensor_of(b) if b is not None else None
        if b is None or t is None or t.id not in expected:
            out.append(Violation("io", f"{step_name(i, s)} {verb} '{name}', not a buffer of "
                                       f"the op's {what}"))
        elif b.kind not in expected[t.id]:
            out.append(Violation("io", f"{step_name(i, s)} {verb} {b.kind} buffer '{name}' in "
                                       f"mode '{s.mode}' (allowed: {', '.join(expected[t.id])})"))
        else:
            hits[t.id] = hits.get(t.id, 0) + 1
    for t, kinds in expected.items():
        if kinds and hits.get(t, 0) != 1:
            tname = ix.graph.tensors[t].name
            out.append(Violation("io", f"{step_name(i, s)} {verb} {hits.get(t, 0)} buffers of "
                                       f"'{tname}', expected 1"))
    return out


def check_step_io(ix: PlanIndex) -> list[Violation]:
    """Reads/writes name the buffers of the op's inputs/outputs, of the kinds its mode allows
    (a requantize step reads its output's accumulator); scratch names scratch buffers."""
    out: list[Violation] = []
    for i, s in enumerate(ix.plan.steps):
        op = ix.step_op[i]
        if op is None or s.mode not in MODES:
            continue
        ins = [t for t in dict.fromkeys(op.inputs) if t in ix.arena]
        outs = [t for t in dict.fromkeys(op.outputs) if t in ix.arena]
        exp_r = {t: READ_KINDS[s.mode] for t in ins}
        if s.mode == "requantize":
            exp_r = {t: ("accumulator",) for t in outs}
        out += _io_problems(ix, i, s, op, s.reads, exp_r, "reads")
        out += _io_problems(ix, i, s, op, s.writes, {t: WRITE_KINDS[s.mode] for t in outs},
                            "writes")
        for name in s.scratch:
            b = ix.buffers.get(name)
            if b is None or b.kind != "scratch":
                out.append(Violation("scratch", f"{step_name(i, s)} lists scratch '{name}', "
                                                "not a scratch buffer"))
    return out


# ---------------------------------------------------------------------------- lifetimes, layout


def check_lifetimes(ix: PlanIndex) -> list[Violation]:
    """Every step that reads, writes or uses a buffer as scratch lies in its lifetime; the
    lifetime starts at its first write (step 0 for graph inputs) and reaches its last use (the
    last step for graph outputs)."""
    out: list[Violation] = []
    n = len(ix.plan.steps)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    first_write: dict[str, int] = {}
    for i, s in enumerate(ix.plan.steps):
        for verb, names in (("writes", s.writes), ("uses as scratch", s.scratch),
                            ("reads", s.reads)):
            for name in dict.fromkeys(names):
                first.setdefault(name, i)
                last[name] = i
                if verb != "reads":
                    first_write.setdefault(name, i)
                b = ix.buffers.get(name)
                if b is not None and not b.first_step <= i <= b.last_step:
                    out.append(Violation("not_live", f"{step_name(i, s)} {verb} {desc(b)}, "
                                                     "not live then"))
    ends = {ix.graph.tensors[t].name: (0 if t in ix.graph.inputs else None,
                                       n - 1 if t in ix.graph.outputs else None)
            for t in (*ix.graph.inputs, *ix.graph.outputs)}
    for b in ix.plan.buffers:
        if not 0 <= b.first_step <= b.last_step < max(n, 1):
            out.append(Violation("lifetime", f"buffer {desc(b)} is not a step range of the "
                                             f"{n}-step plan"))
            continue
        lo, hi = first.get(b.name), last.get(b.name)
        io_lo, io_hi = ends.get(b.name, (None, None)) if b.kind == "tensor" else (None, None)
        lo = io_lo if io_lo is not None else lo
        hi = io_hi if io_hi is not None else hi
        if lo is not None and hi is not None and (b.first_step > lo or b.last_step < hi):
            out.append(Violation("lifetime", f"buffer {desc(b)} must live over steps "
                                             f"{lo}..{hi}"))
        elif io_lo is None and b.name in first_write and b.first_step < first_write[b.name]:
            s = ix.plan.steps[first_write[b.name]]
            out.append(Violation("lifetime", f"{step_name(first_write[b.name], s)} first "
                                             f"writes {desc(b)}, whose first_step is earlier"))
    return out


def check_offsets(plan: Plan) -> list[Violation]:
    """Offsets are aligned, non-negative and inside arena_bytes; sizes are not negative."""
    out: list[Violation] = []
    if plan.align < 1:
        out.append(Violation("alignment", f"plan align {plan.align} is not positive"))
    for b in plan.buffers:
        if b.size < 0:
            out.append(Violation("size", f"buffer '{b.name}' has negative size {b.size}"))
        if b.offset < 0 or b.offset + b.size > plan.arena_bytes:
            out.append(Violation("out_of_arena", f"buffer {desc(b)} is outside the arena "
                                                 f"[0, {plan.arena_bytes})"))
        if plan.align >= 1 and b.offset % plan.align:
            out.append(Violation("alignment", f"buffer '{b.name}' offset {b.offset} is not a "
                                              f"multiple of {plan.align}"))
    return out


def check_arena_bytes(plan: Plan) -> list[Violation]:
    """arena_bytes is the highest buffer end (0 without buffers)."""
    top = max((b.offset + b.size for b in plan.buffers), default=0)
    if plan.arena_bytes != top:
        return [Violation("arena_bytes", f"arena_bytes is {plan.arena_bytes}, the buffers end "
                                         f"at {top}")]
    return []


# ---------------------------------------------------------------------------- aliases, overlap


def _inplace_problem(ix: PlanIndex, a: Buffer, b: Buffer, s: int, op: Op) -> str | None:
    """Why a whole step cannot write tensor buffer b over its dying input a, or None."""
    step = ix.plan.steps[s]
    ta, tb = ix.tensor_of(a), ix.tensor_of(b)
    if a.kind != "tensor" or b.kind != "tensor" or step.mode != "whole":
        return f"{step_name(s, step)} is not a whole step from tensor to tensor buffer"
    if ta is not None and ta.id in ix.graph.outputs:
        return f"'{a.name}' is a graph output and must not be overwritten"
    spec = SPECS[op.kind]
    if spec.inplace:
        return None
    if not spec.inplace_temp:
        return f"{step_name(s, step)} of kind '{op.kind.value}' cannot run in place"
    if ta is None or tb is None or ta.shape != tb.shape:
        return f"{step_name(s, step)} cannot run in place: input and output shapes differ"
    need = per_channel_bytes(tb)
    for name in step.scratch:
        t = ix.buffers.get(name)
        if t is not None and t.kind == "scratch" and t.size >= need and not is_kscratch(name) \
                and t.first_step <= s <= t.last_step:
            return None
    return f"{step_name(s, step)} cannot run in place without a live scratch buffer of " \
           f">= {need} bytes"


def _requantize_problem(ix: PlanIndex, a: Buffer, b: Buffer, s: int, op: Op) -> str | None:
    """Why the requantize handover of accumulator a to output buffer b is wrong, or None."""
    step = ix.plan.steps[s]
    if step.mode != "requantize" or b.kind != "tensor":
        return f"{step_name(s, step)} is not the requantize step writing a tensor buffer"
    if a.tensor != b.tensor or b.tensor not in {ix.graph.tensors[t].name for t in op.outputs}:
        return f"'{a.name}' and '{b.name}' do not both hold the output of '{op.name}'"
    return None


def alias_problem(ix: PlanIndex, b: Buffer) -> str | None:
    """Why buffer `b` (with alias_of set) is not a legal overwrite of the buffer it aliases at
    the single handover step, or None if it is."""
    a = ix.buffers.get(b.alias_of) if isinstance(b.alias_of, str) else None
    if a is None or a is b:
        return f"alias_of '{b.alias_of}' is not another buffer"
    if b.offset != a.offset:
        return f"offset {b.offset} differs from '{a.name}' offset {a.offset}"
    if b.size > a.size:
        return f"size {b.size} exceeds '{a.name}' size {a.size}"
    if b.first_step != a.last_step:
        return f"first_step {b.first_step} is not the last step {a.last_step} of '{a.name}'"
    s = b.first_step
    if not 0 <= s < len(ix.plan.steps):
        return f"step {s} does not exist"
    step, op = ix.plan.steps[s], ix.step_op[s]
    if a.name not in step.reads or b.name not in step.writes:
        return f"{step_name(s, step)} does not read '{a.name}' and write '{b.name}'"
    if op is None:
        return f"{step_name(s, step)} names no IR op"
    if a.kind == "accumulator":
        return _requantize_problem(ix, a, b, s, op)
    return _inplace_problem(ix, a, b, s, op)


def check_aliases(ix: PlanIndex) -> tuple[list[Violation], set[tuple[str, str]]]:
    """Every alias_of is a legal handover; returns the violations and the legal
    (old buffer, new buffer) name pairs that may share memory at that step."""
    out: list[Violation] = []
    ok: set[tuple[str, str]] = set()
    for b in ix.plan.buffers:
        if b.alias_of is None:
            continue
        why = alias_problem(ix, b)
        if why is None:
            ok.add((str(b.alias_of), b.name))
        else:
            out.append(Violation("alias", f"buffer '{b.name}' alias_of '{b.alias_of}': {why}"))
    return out, ok


def find_overlaps(buffers: Sequence[Buffer]) -> list[tuple[int, int]]:
    """Index pairs (i, j) of buffers that share both a step and an address.

    Sweep over the dimension that gives fewer candidate pairs: buffers sorted by start, a heap
    of the active ones keyed by end; O(B log B + P), P the pairs overlapping in that dimension.
    (Over addresses alone, a long chain whose buffers reuse a few offsets gave P ~ B^2.)
    """
    keep = [i for i, b in enumerate(buffers)
            if _addr(b)[0] < _addr(b)[1] and b.first_step <= b.last_step]
    by_time = _sweep(buffers, keep, _span, _addr, count_only=True)
    by_addr = _sweep(buffers, keep, _addr, _span, count_only=True)
    first, other = (_span, _addr) if by_time <= by_addr else (_addr, _span)
    return sorted(_sweep(buffers, keep, first, other))


def _sweep(buffers: Sequence[Buffer], keep: list[int], key: Callable, other: Callable,
           count_only: bool = False) -> Any:
    """Pairs overlapping in `key` and in `other` (or, with count_only, how many pairs overlap
    in `key`: the work of this sweep)."""
    order = sorted(keep, key=lambda i: (key(buffers[i])[0], i))
    active: list[tuple[int, int]] = []  # (end, index)
    pairs: list[tuple[int, int]] = []
    count = 0
    for i in order:
        b = buffers[i]
        lo, hi = key(b)
        while active and active[0][0] <= lo:
            heapq.heappop(active)
        if count_only:
            count += len(active)
        else:
            for _, j in active:
                c = buffers[j]
                if overlaps(*key(c), lo, hi) and overlaps(*other(c), *other(b)):
                    pairs.append((min(i, j), max(i, j)))
        heapq.heappush(active, (hi, i))
    return count if count_only else pairs


def check_overlap(plan: Plan, legal_aliases: set[tuple[str, str]]) -> list[Violation]:
    """No two simultaneously live buffers share bytes, except legal alias pairs (whose
    lifetimes meet only at the handover step, see alias_problem)."""
    out: list[Violation] = []
    for i, j in find_overlaps(plan.buffers):
        a, b = plan.buffers[i], plan.buffers[j]
        if (a.name, b.name) in legal_aliases or (b.name, a.name) in legal_aliases:
            continue
        out.append(Violation("overlap", f"buffers {desc(a)} and {desc(b)} overlap"))
    return out


def check_fits(plan: Plan) -> list[Violation]:
    """With a budget, `fits` says whether arena_bytes <= budget_bytes."""
    if plan.budget_bytes is None:
        return []
    out: list[Violation] = []
    if plan.budget_bytes < 0:
        out.append(Violation("budget", f"budget_bytes {plan.budget_bytes} is negative"))
    want = plan.arena_bytes <= plan.budget_bytes
    if plan.fits != want:
        out.append(Violation("fits", f"fits is {plan.fits} but arena {plan.arena_bytes} "
                                     f"{'<=' if want else '>'} budget {plan.budget_bytes}"))
    return out


def validate(plan: Plan, graph: Graph, check_hash: bool = True) -> list[Violation]:
    """Every rule the plan breaks for this graph (empty when the plan is valid)."""
    from pexopt.plan import validator_hybrid as vh
    from pexopt.plan import validator_rows as vr  # builds on this module's index
    from pexopt.plan import validator_slices as vs
    from pexopt.plan.validator_extents import check_extents, check_sizes
    from pexopt.plan.validator_scratch import check_kernel_scratch

    ix = build_index(plan, graph)
    out: list[Violation] = check_model_hash(plan, graph) if check_hash else []
    extents = check_extents(ix)
    if extents:  # the rules below would index, iterate or allocate with these numbers
        return out + extents
    out += check_steps(ix)
    hybrid = vh.hybrid_ops(ix)
    out += vs.check_execution(ix, skip=vr.row_ops(ix) | hybrid)
    out += vr.check_row_execution(ix, skip=hybrid)
    out += vh.check_hybrid_execution(ix)
    out += vs.check_order(ix)
    out += check_buffers(ix)
    out += check_step_io(ix)
    out += vs.check_dataflow(ix)
    out += vr.check_row_dataflow(ix)
    out += vh.check_hybrid_dataflow(ix)
    out += check_lifetimes(ix)
    out += check_kernel_scratch(ix)
    out += check_offsets(plan)
    out += check_arena_bytes(plan)
    out += check_sizes(ix)
    alias_violations, legal = check_aliases(ix)
    legal |= vr.check_streaming(ix)
    out += alias_violations
    out += check_overlap(plan, legal)
    out += check_fits(plan)
    return out


def check(plan: Plan, graph: Graph, check_hash: bool = True) -> None:
    """Raise PlanInvalid (first violation + count) unless the plan is valid for the graph."""
    violations = validate(plan, graph, check_hash)
    if violations:
        raise PlanInvalid(violations)
