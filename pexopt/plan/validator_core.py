"""The plan validator's shared core: the violation type, the index of a plan against its graph
and the small helpers every rule module uses. It imports no other validator module; the rule
modules (validator_buffers, validator_layout, validator_slices, validator_rows,
validator_hybrid, validator_extents, validator_scratch) import it, and `validator` runs them.

Steps and buffer lifetimes are inclusive step indices; for overlap tests both time and address
are half-open intervals (`[first_step, last_step + 1)`, `[offset, offset + size)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pexopt.errors import PexError
from pexopt.graph.ir import Graph, Op, Tensor
from pexopt.plan.format import Buffer, Plan, Step

MODES = ("whole", "slice", "accumulate", "requantize", "band", "halo")
BUFFER_KINDS = ("tensor", "slice", "accumulator", "scratch", "band", "tile")
ACC_BYTES = 4  # int32 accumulator element


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

