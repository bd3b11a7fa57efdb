"""Plan rules of arena layout: offsets, arena_bytes, in-place and requantize aliases, the
overlap sweep (no two live buffers share bytes except legal handovers) and the budget.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

from pexopt.graph.ir import Op
from pexopt.ops import SPECS
from pexopt.plan.format import Buffer, Plan, is_kscratch
from pexopt.plan.validator_core import (
    PlanIndex,
    Violation,
    desc,
    overlaps,
    per_channel_bytes,
    step_name,
)


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


def _span(b: Buffer) -> tuple[int, int]:
    """Half-open step interval of a buffer."""
    return b.first_step, b.last_step + 1


def _addr(b: Buffer) -> tuple[int, int]:
    """Half-open address interval of a buffer."""
    return b.offset, b.offset + b.size


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
