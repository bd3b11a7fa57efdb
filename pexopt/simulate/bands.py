"""Band and halo steps in the byte-exact arena (row-band execution, issue #7).

A band step rebuilds each input as a full-size array holding only what the plan says is there
(a band buffer's slots at rows base.., zeros elsewhere; full tensors as they are), runs the
whole-tensor kernel and stores only rows [r0, r1) of the output: into the full output tensor or
at slots r - base of its band buffer. Padding is therefore the whole tensor's (top padding for
the first band only, rows past the end act as padding); a plan that reads a row its band buffer
does not hold computes with garbage and fails the comparison. A halo step moves the kept rows to
the top of the band buffer, on the arena bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pexopt.graph.ir import Op, Tensor
from pexopt.graph.params import OpParams
from pexopt.plan.format import Buffer, Plan, Step
from pexopt.simulate.kernels import KERNELS
from pexopt.simulate.reference import kernel_input, store_output

if TYPE_CHECKING:
    from pexopt.simulate.arena import _Ctx


def _row_bytes(t: Tensor, itemsize: int) -> int:
    return t.elements // t.shape[1] * itemsize


def _band_rows(ctx: _Ctx, name: str, t: Tensor) -> np.ndarray:
    """The band buffer as (capacity, W, C) rows of t's stored dtype."""
    from pexopt.simulate.arena import SimulationError, element_dtype

    b = ctx.bufs[name]
    dt = element_dtype(t)
    rb = _row_bytes(t, dt.itemsize)
    cap = b.size // rb
    if b.offset < 0 or b.offset + cap * rb > ctx.mem.size:
        raise SimulationError(f"buffer '{name}' lies outside the arena")
    raw = ctx.mem[b.offset:b.offset + cap * rb]
    return raw.view(dt).reshape((cap,) + t.shape[2:])


def _full_from_band(ctx: _Ctx, base: int, name: str, t: Tensor) -> np.ndarray:
    from pexopt.simulate.arena import element_dtype

    rows = _band_rows(ctx, name, t)
    full = np.zeros(t.shape, dtype=element_dtype(t))
    n = max(0, min(t.shape[1] - base, rows.shape[0]))
    full[0, base:base + n] = rows[:n]
    return full


def band_step(ctx: _Ctx, bases: dict[str, int], step: Step, op: Op, p: OpParams) -> None:
    """Compute output rows step.rows of op (see the module docstring)."""
    from pexopt.simulate.arena import SimulationError, _tensor_view

    r0, r1 = step.rows or (0, 0)
    bufs, graph = ctx.bufs, ctx.graph
    by_tensor = {bufs[n].tensor: n for n in step.reads if n in bufs}
    xs = []
    out = graph.tensors[op.outputs[0]]
    # a band buffer's slots past the rows written so far hold arena garbage (random float
    # bits, signalling NaNs among them); the rows computed from them are never stored
    with np.errstate(over="ignore", invalid="ignore"):
        for k, i in enumerate(op.inputs):
            t = graph.tensors[i]
            name = by_tensor.get(t.name)
            if name is not None and bufs[name].kind == "band":
                full = _full_from_band(ctx, bases.get(name, 0), name, t)
            else:
                full = np.array(_tensor_view(ctx, t.name))
            xs.append(np.array(kernel_input(t, p, k, full)))
        y = store_output(out, p, KERNELS[op.kind](op, p, xs, None, None))[:, r0:r1]
    for name in step.writes:
        if bufs[name].kind == "band":
            base = bases.get(name, 0)
            rows = _band_rows(ctx, name, out)
            if r0 - base < 0 or r1 - base > rows.shape[0]:
                raise SimulationError(f"step {step.index}: rows [{r0}, {r1}) do not fit "
                                      f"'{name}' at base {base}")
            rows[r0 - base:r1 - base] = y[0]
        else:
            _tensor_view(ctx, name)[:, r0:r1] = y


def halo_step(ctx: _Ctx, bases: dict[str, int], step: Step) -> None:
    """Move rows step.rows of the band buffer to its top (a memmove on the arena)."""
    from pexopt.simulate.arena import SimulationError

    r0, r1 = step.rows or (0, 0)
    for name in step.writes:
        t = ctx.tensors[ctx.bufs[name].tensor]
        rows = _band_rows(ctx, name, t)
        base = bases.get(name, 0)
        if r0 - base < 0 or r1 - base > rows.shape[0]:
            raise SimulationError(f"step {step.index}: halo rows [{r0}, {r1}) are not in "
                                  f"'{name}' at base {base}")
        rows[:r1 - r0] = np.array(rows[r0 - base:r1 - base])
        bases[name] = r0


def streamed_over(plan: Plan) -> dict[str, list[Buffer]]:
    """Band-written tensor buffer -> the live tensor buffers it overlaps when it is born
    (streaming in place): its birth must not scribble over their bytes."""
    writers: dict[str, set[str]] = {}
    for s in plan.steps:
        for n in s.writes:  # a hybrid requantize with rows writes output rows like a band
            writers.setdefault(n, set()).add(
                "band" if s.mode == "requantize" and s.rows is not None else s.mode)
    tensors = [b for b in plan.buffers if b.kind == "tensor"]
    res: dict[str, list[Buffer]] = {}
    for b in tensors:
        if writers.get(b.name) != {"band"}:
            continue
        for a in tensors:
            if (a is not b and a.first_step <= b.first_step <= a.last_step
                    and a.offset < b.offset + b.size and b.offset < a.offset + a.size):
                res.setdefault(b.name, []).append(a)
    return res
