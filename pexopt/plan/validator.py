"""Independent plan checker: recomputes order, lifetimes and layout facts from the IR alone.

It deliberately imports nothing from `pexopt.solver`, so a solver bug cannot hide itself.
Steps and buffer lifetimes are inclusive step indices; for overlap tests both time and address
are turned into half-open intervals (`[first_step, last_step + 1)`, `[offset, offset + size)`).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from pexopt.errors import PexError
from pexopt.graph.ir import Graph, Op, Tensor
from pexopt.ops import SPECS
from pexopt.plan.format import Buffer, Plan, Step


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
class _Index:
    """Lookup tables shared by the checks, built once from the graph and the plan."""

    graph: Graph
    plan: Plan
    tensors: dict[str, Tensor]  # IR tensor name -> tensor
    arena: set[int]  # ids of tensors that need an arena buffer
    step_op: list[Op | None]  # plan position -> IR op (None: unknown or duplicate)
    pos: dict[int, int]  # IR op id -> plan position of its (first) step
    buffers: dict[str, Buffer]  # buffer name -> first buffer with that name
    tensor_buf: dict[int, Buffer]  # tensor id -> its (first) "tensor" buffer
    producer: dict[int, int]  # tensor id -> producing op id
    consumers: dict[int, list[int]]  # tensor id -> consuming op ids


def overlaps(a_lo: int, a_hi: int, b_lo: int, b_hi: int) -> bool:
    """Whether half-open intervals [a_lo, a_hi) and [b_lo, b_hi) share a point."""
    return a_lo < b_hi and b_lo < a_hi


def _span(b: Buffer) -> tuple[int, int]:
    """Half-open step interval of a buffer."""
    return b.first_step, b.last_step + 1


def _addr(b: Buffer) -> tuple[int, int]:
    """Half-open address interval of a buffer."""
    return b.offset, b.offset + b.size


def _desc(b: Buffer) -> str:
    return f"'{b.name}' [{b.offset}, {b.offset + b.size}) steps {b.first_step}..{b.last_step}"


def _step_name(i: int, s: Step) -> str:
    return f"step {i} ('{s.op}')"


def _in_arena(t: Tensor) -> bool:
    """Tensors that occupy arena bytes (not external, not empty)."""
    return not t.external and t.nbytes > 0


def _build_index(plan: Plan, graph: Graph) -> _Index:
    """Name maps and the step -> op assignment (first step naming an op wins)."""
    by_name: dict[str, list[Op]] = {}
    for op in graph.ops:
        by_name.setdefault(op.name, []).append(op)
    used: dict[str, int] = {}
    step_op: list[Op | None] = []
    pos: dict[int, int] = {}
    for i, s in enumerate(plan.steps):
        cands = by_name.get(s.op, [])
        k = used.get(s.op, 0)
        op = cands[k] if k < len(cands) else None
        used[s.op] = k + 1
        step_op.append(op)
        if op is not None:
            pos[op.id] = i
    buffers: dict[str, Buffer] = {}
    for b in plan.buffers:
        buffers.setdefault(b.name, b)
    tensors = {t.name: t for t in graph.tensors}
    tensor_buf: dict[int, Buffer] = {}
    for b in plan.buffers:
        t = tensors.get(b.tensor) if b.tensor is not None else None
        if b.kind == "tensor" and t is not None:
            tensor_buf.setdefault(t.id, b)
    return _Index(graph=graph, plan=plan, tensors=tensors,
                  arena={t.id for t in graph.tensors if _in_arena(t)}, step_op=step_op, pos=pos,
                  buffers=buffers, tensor_buf=tensor_buf, producer=graph.producer(),
                  consumers=graph.consumers())


def check_model_hash(plan: Plan, graph: Graph) -> list[Violation]:
    """The plan's model sha256 is the graph's source file hash."""
    got = str(plan.model.get("sha256", ""))
    if got != graph.source_sha256:
        return [Violation("model_hash", f"plan is for model sha256 {got[:12] or '-'}…, the graph "
                                        f"'{graph.name}' has {graph.source_sha256[:12] or '-'}…")]
    return []


def check_steps(ix: _Index) -> list[Violation]:
    """Steps name every IR op exactly once, index == position, in a topological order."""
    out: list[Violation] = []
    seen: set[int] = set()
    names = {op.name for op in ix.graph.ops}
    for i, s in enumerate(ix.plan.steps):
        if s.index != i:
            out.append(Violation("order", f"{_step_name(i, s)} has index {s.index}"))
        op = ix.step_op[i]
        if op is None:
            code = "duplicate_op" if s.op in names else "unknown_op"
            what = "names an op already run" if code == "duplicate_op" else "names no IR op"
            out.append(Violation(code, f"{_step_name(i, s)} {what}"))
            continue
        seen.add(op.id)
        if s.kind != op.kind.value:
            out.append(Violation("kind", f"{_step_name(i, s)} has kind '{s.kind}', the op is "
                                         f"'{op.kind.value}'"))
        for t in dict.fromkeys(op.inputs):
            p = ix.producer.get(t)
            if p is None:
                continue
            if ix.pos.get(p, i) >= i:
                tname = ix.graph.tensors[t].name
                where = f"step {ix.pos[p]}" if p in ix.pos else "no step"
                out.append(Violation("order", f"{_step_name(i, s)} reads '{tname}', which is "
                                              f"produced by '{ix.graph.ops[p].name}' at {where}"))
    for op in ix.graph.ops:
        if op.id not in seen:
            out.append(Violation("missing_op", f"op '{op.name}' has no step"))
    return out


def check_buffers(ix: _Index) -> list[Violation]:
    """Buffers name IR tensors; one "tensor" buffer of the right size per arena tensor."""
    out: list[Violation] = []
    names: set[str] = set()
    count: dict[int, int] = {}
    for b in ix.plan.buffers:
        if b.name in names:
            out.append(Violation("buffer", f"buffer name '{b.name}' is used twice"))
        names.add(b.name)
        t = ix.tensors.get(b.tensor) if b.tensor is not None else None
        if t is None:
            out.append(Violation("buffer", f"buffer '{b.name}' names no IR tensor ({b.tensor})"))
            continue
        if not _in_arena(t):
            out.append(Violation("buffer", f"buffer '{b.name}': tensor '{t.name}' is not in the "
                                           "arena (external or empty)"))
            continue
        if b.kind != "tensor":
            continue
        count[t.id] = count.get(t.id, 0) + 1
        if b.size != t.nbytes:
            out.append(Violation("size", f"buffer '{b.name}' has size {b.size}, tensor "
                                         f"'{t.name}' has {t.nbytes} bytes"))
    for t in ix.graph.tensors:
        if t.id in ix.arena and count.get(t.id, 0) != 1:
            out.append(Violation("buffer", f"tensor '{t.name}' has {count.get(t.id, 0)} "
                                           "\"tensor\" buffers, expected 1"))
    return out


def _check_names(i: int, s: Step, listed: list[str], expected: list[str], verb: str
                 ) -> list[Violation]:
    """A step's reads (or writes) are exactly the buffers of the op's inputs (or outputs)."""
    out: list[Violation] = []
    for name in listed:
        if name not in expected:
            out.append(Violation("io", f"{_step_name(i, s)} {verb} '{name}', not a buffer of "
                                       f"the op's {'inputs' if verb == 'reads' else 'outputs'}"))
    for name in expected:
        if name not in listed:
            out.append(Violation("io", f"{_step_name(i, s)} does not list '{name}' in {verb}"))
    return out


def _written_at(ix: _Index) -> dict[str, int]:
    """Buffer name -> first step that writes it (-1 for graph-input buffers)."""
    res: dict[str, int] = {}
    for t in ix.graph.inputs:
        if t in ix.tensor_buf:
            res[ix.tensor_buf[t].name] = -1
    for i, s in enumerate(ix.plan.steps):
        for name in s.writes:
            res.setdefault(name, i)
    return res


def check_step_io(ix: _Index) -> list[Violation]:
    """Reads/writes name the op's buffers; reads are live and written; writes start here."""
    out: list[Violation] = []
    written = _written_at(ix)
    for i, s in enumerate(ix.plan.steps):
        op = ix.step_op[i]
        if op is None:
            continue
        exp_r = [ix.tensor_buf[t].name for t in dict.fromkeys(op.inputs) if t in ix.tensor_buf]
        exp_w = [ix.tensor_buf[t].name for t in dict.fromkeys(op.outputs) if t in ix.tensor_buf]
        out += _check_names(i, s, s.reads, exp_r, "reads")
        out += _check_names(i, s, s.writes, exp_w, "writes")
        for name in dict.fromkeys(s.reads):
            b = ix.buffers.get(name)
            if b is None:
                continue
            if not b.first_step <= i <= b.last_step:
                out.append(Violation("not_live", f"{_step_name(i, s)} reads {_desc(b)}, not "
                                                 "live then"))
            w = written.get(name)
            in_place_here = w == i and b.alias_of is not None and b.alias_of in s.reads
            if (w is None or w >= i) and not in_place_here:
                when = "never written" if w is None else f"written at step {w}"
                out.append(Violation("read_before_write", f"{_step_name(i, s)} reads '{name}', "
                                                          f"{when}"))
        for name in dict.fromkeys(s.writes):
            b = ix.buffers.get(name)
            if b is None:
                continue
            if not b.first_step <= i <= b.last_step:
                out.append(Violation("not_live", f"{_step_name(i, s)} writes {_desc(b)}, not "
                                                 "live then"))
            elif b.first_step != i:
                out.append(Violation("lifetime", f"{_step_name(i, s)} writes {_desc(b)}, whose "
                                                 "first_step is not this step"))
    return out


def required_lifetimes(ix: _Index) -> dict[int, tuple[int, int]]:
    """Arena tensor id -> (latest allowed first_step, earliest allowed last_step) for the plan's
    step order: the writing step (0 for graph inputs) and the last reading step (the last step
    for graph outputs). Tensors whose producer has no step are skipped, absent readers ignored."""
    n = len(ix.plan.steps)
    outs = set(ix.graph.outputs)
    res: dict[int, tuple[int, int]] = {}
    for t in ix.arena:
        p = ix.producer.get(t)
        if p is not None and p not in ix.pos:
            continue  # producer has no step: reported as missing_op
        first = ix.pos[p] if p is not None else 0
        reads = [ix.pos[c] for c in ix.consumers[t] if c in ix.pos]
        last = n - 1 if t in outs else max(reads, default=first)
        res[t] = (first, max(first, last))
    return res


def check_lifetimes(ix: _Index) -> list[Violation]:
    """Recorded [first_step, last_step] lie in the plan and cover the required lifetime."""
    out: list[Violation] = []
    n = len(ix.plan.steps)
    for b in ix.plan.buffers:
        if not 0 <= b.first_step <= b.last_step < max(n, 1):
            out.append(Violation("lifetime", f"buffer {_desc(b)} is not a step range of the "
                                             f"{n}-step plan"))
    for t, (first, last) in sorted(required_lifetimes(ix).items()):
        b = ix.tensor_buf.get(t)
        if b is None:
            continue
        if b.first_step > first or b.last_step < last:
            out.append(Violation("lifetime", f"buffer {_desc(b)} must live over steps "
                                             f"{first}..{last}"))
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
            out.append(Violation("out_of_arena", f"buffer {_desc(b)} is outside the arena "
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


def alias_problem(ix: _Index, b: Buffer) -> str | None:
    """Why buffer `b` (with alias_of set) is not a legal in-place overwrite, or None if it is."""
    a = ix.buffers.get(b.alias_of) if b.alias_of is not None else None
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
        return f"{_step_name(s, step)} does not read '{a.name}' and write '{b.name}'"
    if op is None or not SPECS[op.kind].inplace:
        kind = op.kind.value if op is not None else "unknown"
        return f"{_step_name(s, step)} of kind '{kind}' cannot run in place"
    t = ix.tensors.get(a.tensor) if a.tensor is not None else None
    if t is not None and t.id in ix.graph.outputs:
        return f"'{a.name}' is a graph output and must not be overwritten"
    return None


def check_aliases(ix: _Index) -> tuple[list[Violation], set[tuple[str, str]]]:
    """Every alias_of is a legal in-place overwrite; returns the violations and the legal
    (input buffer, output buffer) name pairs that may share memory."""
    out: list[Violation] = []
    ok: set[tuple[str, str]] = set()
    for b in ix.plan.buffers:
        if b.alias_of is None:
            continue
        why = alias_problem(ix, b)
        if why is None:
            ok.add((b.alias_of, b.name))
        else:
            out.append(Violation("alias", f"buffer '{b.name}' alias_of '{b.alias_of}': {why}"))
    return out, ok


def find_overlaps(buffers: Sequence[Buffer]) -> list[tuple[int, int]]:
    """Index pairs (i, j) of buffers that share both a step and an address.

    Sweep over addresses: buffers sorted by offset, a heap of the address-active ones keyed by
    end address; O(B log B + P) where P counts the address-overlapping pairs.
    """
    order = sorted(range(len(buffers)), key=lambda i: (buffers[i].offset, i))
    active: list[tuple[int, int]] = []  # (address end, index)
    pairs: list[tuple[int, int]] = []
    for i in order:
        b = buffers[i]
        lo, hi = _addr(b)
        if hi <= lo or b.last_step < b.first_step:
            continue
        while active and active[0][0] <= lo:
            heapq.heappop(active)
        for _, j in active:
            c = buffers[j]
            if overlaps(*_addr(c), lo, hi) and overlaps(*_span(c), *_span(b)):
                pairs.append((min(i, j), max(i, j)))
        heapq.heappush(active, (hi, i))
    return sorted(pairs)


def check_overlap(plan: Plan, legal_aliases: set[tuple[str, str]]) -> list[Violation]:
    """No two simultaneously live buffers share bytes, except legal in-place alias pairs."""
    out: list[Violation] = []
    for i, j in find_overlaps(plan.buffers):
        a, b = plan.buffers[i], plan.buffers[j]
        if (a.name, b.name) in legal_aliases or (b.name, a.name) in legal_aliases:
            continue
        out.append(Violation("overlap", f"buffers {_desc(a)} and {_desc(b)} overlap"))
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
    ix = _build_index(plan, graph)
    out: list[Violation] = check_model_hash(plan, graph) if check_hash else []
    out += check_steps(ix)
    out += check_buffers(ix)
    out += check_step_io(ix)
    out += check_lifetimes(ix)
    out += check_offsets(plan)
    out += check_arena_bytes(plan)
    alias_violations, legal = check_aliases(ix)
    out += alias_violations
    out += check_overlap(plan, legal)
    out += check_fits(plan)
    return out


def check(plan: Plan, graph: Graph, check_hash: bool = True) -> None:
    """Raise PlanInvalid (first violation + count) unless the plan is valid for the graph."""
    violations = validate(plan, graph, check_hash)
    if violations:
        raise PlanInvalid(violations)
