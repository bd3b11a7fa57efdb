"""Extents: every number of a plan that indexes a tensor, a buffer or the arena lies inside
what it indexes.

`check_extents` runs before every other rule, which (like the simulator and the C emitter after
them) iterate over rows, allocate band slots and index channels with these numbers; when it
finds anything, `validate` reports only its violations, so a row near 2^33 or a slice
[2, 1028] of an 8-channel tensor is a violation, never a MemoryError, a hang or a crash:
- a step's `slice` [c0, c1) has 0 <= c0 < c1 <= C, C = channels of the tensor it ranges over
  (an accumulate step: its op's input; otherwise its op's output); its `rows` [r0, r1) have
  0 <= r0 < r1 <= H of its op's output (a halo step may keep no rows: r0 == r1);
- a slice, band or tile buffer is at most its tensor's bytes, an accumulator 4 bytes per
  element of its tensor (the band slots and tiles of the other rules are sized from these).
Malformed ranges (not two integers) are left to the rules that report them.

`check_sizes` runs with the layout rules (nothing before them allocates by these numbers):
- a channel-slice accumulate or requantize step (no rows) uses an accumulator of the whole
  output (a band-sized one is for hybrid steps, whose rows `validator_hybrid` checks);
- a scratch buffer is at most the largest need of the steps that list it (an in-place
  temporary: one channel of the op's output; a kernel scratch: CMSIS-NN's formula on the
  plan's target), rounded up to `align`;
- `align` is a power of two <= MAX_ALIGN; arena_bytes is at most twice the buffers laid out
  without reuse (each rounded up to `align`) plus MAX_ALIGN: gaps are legal, but an arena
  beyond that is mostly bytes no buffer uses, and the simulator allocates all of it.
"""

from __future__ import annotations

from pexopt.cmsis_scratch import TARGETS, kernel_scratch_bytes
from pexopt.graph.ir import Op, Tensor
from pexopt.plan.format import Buffer, Step, is_kscratch
from pexopt.plan.validator_core import ACC_BYTES, PlanIndex, Violation, channels

MAX_ALIGN = 4096  # bytes; no MCU cache line or DMA needs more


def _fmt_step(i: int, s: Step) -> str:
    """The step without its (possibly absurd) ranges: `validator_core.step_name` prints them."""
    return f"step {i} ('{s.op}' {s.mode})"


def _height(t: Tensor) -> int:
    return t.shape[1] if len(t.shape) == 4 else 1


def _round_up(x: int, align: int) -> int:
    return -(-x // align) * align


def _range_problem(r: object, top: int, empty_ok: bool) -> bool:
    """Whether a well-formed range [lo, hi) leaves [0, top) (or is empty when it must not)."""
    if not isinstance(r, list) or len(r) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in r):
        return False  # malformed: the slice and row rules report it
    lo, hi = r
    return not (0 <= lo <= hi <= top and (lo < hi or empty_ok))


def _step_extents(ix: PlanIndex, i: int, s: Step, op: Op) -> list[Violation]:
    """The step's slice and rows lie inside the tensor they range over."""
    out: list[Violation] = []
    g = ix.graph
    if s.slice is not None:
        tid = op.inputs[0] if s.mode == "accumulate" and op.inputs else op.outputs[0]
        t = g.tensors[tid]
        if _range_problem(s.slice, channels(t), False):
            out.append(Violation("slice_range", f"{_fmt_step(i, s)} has slice {s.slice}, not "
                                                f"[c0, c1) with 0 <= c0 < c1 <= "
                                                f"{channels(t)} (channels of '{t.name}')"))
    if s.rows is not None:
        t = g.tensors[op.outputs[0]]
        if _range_problem(s.rows, _height(t), s.mode == "halo"):
            out.append(Violation("rows_range", f"{_fmt_step(i, s)} has rows {s.rows}, not "
                                               f"[r0, r1) with 0 <= r0 < r1 <= {_height(t)} "
                                               f"(rows of '{t.name}')"))
    return out


def _partial_cap(ix: PlanIndex, b: Buffer) -> int | None:
    """Largest size of a slice, band, tile or accumulator buffer (None: another kind, or no
    IR tensor, which `validator_buffers.check_buffers` reports)."""
    t = ix.tensor_of(b)
    if t is None:
        return None
    if b.kind in ("slice", "band", "tile"):
        return t.nbytes
    return t.elements * ACC_BYTES if b.kind == "accumulator" else None


def check_extents(ix: PlanIndex) -> list[Violation]:
    """Steps' slices and rows, and partial buffers' sizes (see the module docstring)."""
    out: list[Violation] = []
    for i, s in enumerate(ix.plan.steps):
        op = ix.step_op[i]
        if op is not None:
            out += _step_extents(ix, i, s, op)
    for b in ix.plan.buffers:
        cap = _partial_cap(ix, b)
        if cap is not None and b.size > cap:
            out.append(Violation("size", f"buffer '{b.name}' ({b.kind}) has size {b.size}, more "
                                         f"than the {cap} bytes its tensor can fill"))
    return out


def _channel_accumulators(ix: PlanIndex) -> list[Violation]:
    """A channel-slice accumulate or requantize step uses a whole-output accumulator."""
    out: list[Violation] = []
    for i, s in enumerate(ix.plan.steps):
        if s.mode not in ("accumulate", "requantize") or s.rows is not None:
            continue
        for name in s.writes if s.mode == "accumulate" else s.reads:
            b = ix.buffers.get(name)
            t = ix.tensor_of(b) if b is not None else None
            if b is not None and t is not None and b.kind == "accumulator" \
                    and b.size < t.elements * ACC_BYTES:
                out.append(Violation("size", f"{_fmt_step(i, s)} uses accumulator '{name}' of "
                                             f"{b.size} bytes; all of '{t.name}' needs "
                                             f"{t.elements * ACC_BYTES}"))
    return out


def _scratch_needs(ix: PlanIndex) -> dict[str, int]:
    """Scratch buffer name -> the largest need of the steps that list it."""
    need: dict[str, int] = {}
    target = ix.plan.target
    for i, s in enumerate(ix.plan.steps):
        op = ix.step_op[i]
        if op is None:
            continue
        for name in s.scratch:
            if is_kscratch(name):  # as `validator_scratch` computes it
                sl = ix.slices[i] if s.mode != "whole" else None
                n = kernel_scratch_bytes(ix.graph, op.id, target, sl, s.mode) \
                    if target in TARGETS else 0
            else:  # the H x W temporary of an in-place depthwise conv
                t = ix.graph.tensors[op.outputs[0]]
                n = t.nbytes // max(1, channels(t))
            need[name] = max(need.get(name, 0), n)
    return need


def check_sizes(ix: PlanIndex) -> list[Violation]:
    """Accumulators of channel steps, scratch sizes, align and the arena's size (see the
    module docstring)."""
    plan = ix.plan
    out = _channel_accumulators(ix)
    if not 1 <= plan.align <= MAX_ALIGN or plan.align & (plan.align - 1):
        out.append(Violation("alignment", f"plan align {plan.align} is not a power of two in "
                                          f"[1, {MAX_ALIGN}]"))
    align = plan.align if 1 <= plan.align <= MAX_ALIGN else 1
    needs = _scratch_needs(ix)
    for b in plan.buffers:
        if b.kind == "scratch" and b.size > _round_up(needs.get(b.name, 0), align):
            out.append(Violation("size", f"scratch buffer '{b.name}' has size {b.size}; the "
                                         "steps that list it need at most "
                                         f"{needs.get(b.name, 0)}"))
    cap = 2 * sum(_round_up(max(0, b.size), align) for b in plan.buffers) + MAX_ALIGN
    if plan.arena_bytes > cap:
        out.append(Violation("arena_bytes", f"arena_bytes {plan.arena_bytes} exceeds {cap}, "
                                            "twice its buffers laid out without reuse + "
                                            f"{MAX_ALIGN}"))
    return out
