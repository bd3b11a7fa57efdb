"""Hybrid steps (rows and a channel slice at once) in the byte-exact arena.

As `simulate.bands` does for bands, a step rebuilds each input as a full-size array holding only
what the plan says is there: a band buffer's rows at their slots (every channel), a tile's band
of one slice at rows base.. and channels [c0, c1), zeros elsewhere; full tensors as they are.
It runs the whole-tensor kernel on the channel slice (as `arena._sliced` / `_accumulate` do)
and keeps only rows [r0, r1): into the band buffer's slots and channels, into the tile, or into
the band accumulator (rows at slot 0). A requantize step with rows writes the band's rows of
the full output. Reading rows or channels a buffer does not hold computes with zeros and fails
the comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pexopt.graph.ir import Op, Tensor
from pexopt.graph.params import OpParams
from pexopt.ops import SPECS, Split
from pexopt.plan.format import Step
from pexopt.simulate.bands import _band_rows, _full_from_band
from pexopt.simulate.kernels import KERNELS, conv_accumulate, requantize
from pexopt.simulate.reference import kernel_input

if TYPE_CHECKING:
    from pexopt.simulate.arena import _Ctx


def _tile(ctx: _Ctx, name: str, t: Tensor, rows: int, width: int) -> np.ndarray:
    """A tile as (rows, W, width) of t's stored dtype."""
    from pexopt.simulate.arena import _view, element_dtype

    return _view(ctx, ctx.bufs[name], element_dtype(t), (rows, t.shape[2], width))


def _acc(ctx: _Ctx, name: str, t: Tensor, rows: int, p: OpParams) -> np.ndarray:
    from pexopt.simulate.arena import _view

    dt = np.dtype(np.int32) if p.int8 else np.dtype(np.float32)
    return _view(ctx, ctx.bufs[name], dt, (rows, t.shape[2], t.shape[3]))


def _inputs(ctx: _Ctx, tiles: dict[str, tuple[int, int]], bases: dict[str, int], step: Step,
            op: Op, p: OpParams, c0: int, c1: int, whole_input: bool) -> list[np.ndarray]:
    """Kernel inputs of a step: full-size, or their channel slice unless `whole_input`."""
    from pexopt.simulate.arena import _tensor_view, _to_kernel, element_dtype

    by_tensor = {ctx.bufs[n].tensor: n for n in step.reads if n in ctx.bufs}
    xs = []
    for k, i in enumerate(op.inputs):
        t = ctx.graph.tensors[i]
        name = by_tensor.get(t.name)
        kind = ctx.bufs[name].kind if name is not None else "tensor"
        if kind == "band":
            full = _full_from_band(ctx, bases.get(name, 0), name, t)
        elif kind == "tile":
            base, n = tiles.get(name, (0, 0))
            full = np.zeros(t.shape, dtype=element_dtype(t))
            full[0, base:base + n, :, c0:c1] = _tile(ctx, name, t, n, c1 - c0)
        else:
            full = np.array(_tensor_view(ctx, t.name))
        xs.append(np.array(kernel_input(t, p, k, full)) if whole_input
                  else _to_kernel(t, p, k, full[..., c0:c1]))
    return xs


def hybrid_band(ctx: _Ctx, tiles: dict[str, tuple[int, int]], bases: dict[str, int],
                step: Step, op: Op, p: OpParams) -> None:
    """Rows step.rows of channels step.slice of op's output."""
    from pexopt.simulate.arena import SimulationError, _from_kernel

    (r0, r1), (c0, c1) = step.rows, step.slice
    out = ctx.graph.tensors[op.outputs[0]]
    dense = SPECS[op.kind].split == Split.OUTPUT_SLICE  # a filter subset of the whole input
    xs = _inputs(ctx, tiles, bases, step, op, p, c0, c1, dense)
    with np.errstate(over="ignore", invalid="ignore"):  # arena garbage in rows not kept
        y = _from_kernel(out, p, KERNELS[op.kind](op, p, xs, slice(c0, c1), None))
    y = y.reshape(out.shape[:-1] + (c1 - c0,))[0, r0:r1]
    name = step.writes[0]
    if ctx.bufs[name].kind == "band":
        base = bases.get(name, 0)
        rows = _band_rows(ctx, name, out)
        if r0 - base < 0 or r1 - base > rows.shape[0]:
            raise SimulationError(f"step {step.index}: rows [{r0}, {r1}) do not fit "
                                  f"'{name}' at base {base}")
        rows[r0 - base:r1 - base, :, c0:c1] = y
    else:
        _tile(ctx, name, out, r1 - r0, c1 - c0)[...] = y
        tiles[name] = (r0, r1 - r0)


def hybrid_accumulate(ctx: _Ctx, tiles: dict[str, tuple[int, int]], bases: dict[str, int],
                      step: Step, op: Op, p: OpParams) -> None:
    """Partial sums of input channels step.slice for output rows step.rows (the first slice
    starts from the bias, as `pex_conv_acc_s8` does)."""
    (r0, r1), (c0, c1) = step.rows, step.slice
    out = ctx.graph.tensors[op.outputs[0]]
    x, = _inputs(ctx, tiles, bases, step, op, p, c0, c1, False)
    acc = _acc(ctx, step.writes[0], out, r1 - r0, p)
    prev = None
    if c0 != 0:
        prev = np.zeros(out.shape, dtype=acc.dtype)
        prev[0, r0:r1] = acc
    with np.errstate(over="ignore", invalid="ignore"):  # arena garbage in rows not kept
        new = conv_accumulate(op, p, x, slice(c0, c1), prev)
    acc[...] = np.asarray(new).reshape(out.shape)[0, r0:r1].astype(acc.dtype)


def hybrid_requantize(ctx: _Ctx, step: Step, op: Op, p: OpParams) -> None:
    """The band accumulator -> rows step.rows of the full output."""
    from pexopt.simulate.arena import _from_kernel, _tensor_view

    r0, r1 = step.rows
    out = ctx.graph.tensors[op.outputs[0]]
    acc = np.array(_acc(ctx, step.reads[0], out, r1 - r0, p))
    y = requantize(op, p, acc.astype(np.int64) if p.int8 else acc.astype(np.float64))
    _tensor_view(ctx, step.writes[0])[0, r0:r1] = _from_kernel(out, p, y).reshape(acc.shape)
