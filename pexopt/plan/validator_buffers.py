"""Plan rules of steps, buffers, step I/O and lifetimes: every step names an IR op of its kind,
buffers are well formed and one per tensor, reads and writes name the buffers of the op's
inputs and outputs, and every buffer lives from its first write to its last use.
"""

from __future__ import annotations

from pexopt.graph.ir import Op, Tensor
from pexopt.plan.format import Buffer, Step
from pexopt.plan.validator_core import (
    ACC_BYTES,
    BUFFER_KINDS,
    MODES,
    PlanIndex,
    Violation,
    _in_arena,
    desc,
    step_name,
)

# Buffer kinds a step may name, per mode, for an input tensor (reads) and an output (writes).
# (a hybrid step, rows and a slice at once, reads and writes band buffers and tiles)
READ_KINDS = {"whole": ("tensor",), "slice": ("tensor", "slice"),
              "accumulate": ("tensor", "slice", "band", "tile"), "requantize": (),
              "band": ("tensor", "band", "tile"), "halo": ()}
WRITE_KINDS = {"whole": ("tensor",), "slice": ("tensor", "slice"),
               "accumulate": ("accumulator",), "requantize": ("tensor",),
               "band": ("tensor", "band", "tile"), "halo": ("band",)}


# ---------------------------------------------------------------------------- steps, buffers


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
