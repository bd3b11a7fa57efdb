"""Reference kernels of convolutions: CONV, GROUPED_CONV, FULLY_CONNECTED (whole, or partial sums
over input-channel slices with `conv_accumulate` and `requantize`) and DEPTHWISE."""

from __future__ import annotations

import numpy as np

from pexopt.fixedpoint import multiply_by_quantized_multiplier
from pexopt.graph.ir import ConvAttrs, Op
from pexopt.graph.params import OpParams
from pexopt.ops import OpKind
from pexopt.simulate.kernels_common import (
    centered,
    clamp8,
    f64,
    finish,
    pad_hw,
    taps,
    whole_only,
)


def _sl(s: slice | None) -> slice:
    return slice(None) if s is None else s


def _conv_sum(x: np.ndarray, w: np.ndarray, attrs: ConvAttrs, oh: int, ow: int) -> np.ndarray:
    """sum_{i,j,c} x[.., c] * w[o, i, j, c] for float64 x (zero-padded) and OHWI w."""
    xp = pad_hw(x, attrs, oh, ow, 0.0)
    n, c = x.shape[0], x.shape[3]
    out = np.zeros((n * oh * ow, w.shape[0]))
    for i, j, tap in taps(xp, attrs, oh, ow):
        out += tap.reshape(-1, c) @ w[:, i, j, :].T
    return out.reshape(n, oh, ow, w.shape[0])


def _partial(op: Op, p: OpParams, x: np.ndarray, in_ch: slice | None,
             out_ch: slice | None) -> np.ndarray:
    """Partial sums (float64, no bias) of CONV / GROUPED_CONV / FULLY_CONNECTED."""
    w = f64(p)[_sl(out_ch)]
    xc = centered(p, x)
    if op.kind == OpKind.FULLY_CONNECTED:
        rows = p.in_shapes[0][0]
        if in_ch is None:
            return xc.reshape(rows, -1) @ w.T
        c_last = p.extra["in_last"]
        ws = w.reshape(w.shape[0], -1, c_last)[:, :, in_ch]
        return xc.reshape(rows, -1) @ ws.reshape(w.shape[0], -1).T
    attrs = op.attrs
    oh, ow = p.out_shape[1], p.out_shape[2]
    group = p.extra.get("group", 1)
    if group == 1:
        return _conv_sum(xc, w if in_ch is None else w[..., in_ch], attrs, oh, ow)
    whole_only(op, in_ch, out_ch)
    cig, cog = xc.shape[3] // group, w.shape[0] // group
    return np.concatenate([_conv_sum(xc[..., g * cig:(g + 1) * cig], w[g * cog:(g + 1) * cog],
                                     attrs, oh, ow) for g in range(group)], axis=-1)


def _bias(p: OpParams, out_ch: slice | None) -> np.ndarray:
    b = p.bias[_sl(out_ch)]
    return b.astype(np.int64) if p.int8 else b.astype(np.float64)


def conv(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
         in_channels: slice | None = None) -> np.ndarray:
    """CONV / GROUPED_CONV / FULLY_CONNECTED on whole inputs (optionally a subset of filters)."""
    if in_channels is not None:
        raise ValueError("use conv_accumulate for input-channel slices")
    part = _partial(op, p, inputs[0], None, out_channels)
    acc = _bias(p, out_channels) + (part.astype(np.int64) if p.int8 else part)
    return requantize(op, p, acc, out_channels)


def conv_accumulate(op: Op, p: OpParams, x_slice: np.ndarray, in_channels: slice,
                    acc: np.ndarray | None, out_channels: slice | None = None) -> np.ndarray:
    """Add the partial sums of one input-channel slice to `acc` (bias-initialised if None).

    int8: int32 accumulator, sum_c w[o, c] * (x[c] - zx) over the slice; float: float64.
    `x_slice` is the slice of the NHWC input (CONV) or of the IR input tensor's last axis (FC).
    """
    part = _partial(op, p, x_slice, in_channels, out_channels)
    if acc is None:
        shape = p.out_shape[:-1] + (part.shape[-1],)
        acc = np.broadcast_to(_bias(p, out_channels), shape)
    if p.int8:
        return (acc.astype(np.int64) + part.astype(np.int64)).astype(np.int32)
    return acc + part


def requantize(op: Op, p: OpParams, acc: np.ndarray,
               out_channels: slice | None = None) -> np.ndarray:
    """Accumulator -> output: per-channel multiplier/shift, + output zp, clamp (int8);
    activation clamp -> float32 (float)."""
    if not p.int8:
        return finish(p, acc)
    sl = _sl(out_channels)
    y = multiply_by_quantized_multiplier(acc, p.multiplier[sl], p.shift[sl]) + p.out_zp
    return clamp8(p, y)


def depthwise(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
              in_channels: slice | None = None) -> np.ndarray:
    """Depthwise conv; channel slices need ch_mult 1 (inputs then hold the slice)."""
    m = p.extra.get("ch_mult", 1)
    if m != 1 and out_channels is not None:
        raise ValueError(f"op '{op.name}': channel slices need a channel multiplier of 1")
    sl = _sl(out_channels)
    x = inputs[0]
    oh, ow = p.out_shape[1], p.out_shape[2]
    if p.int8:
        xc = x.astype(np.int64) - p.in_zp
        w = p.weights[..., sl].astype(np.int64)
    else:
        xc, w = x.astype(np.float64), f64(p)[..., sl]
    if m != 1:
        xc = np.repeat(xc, m, axis=-1)
    xp = pad_hw(xc, op.attrs, oh, ow, 0)
    acc = np.zeros((x.shape[0], oh, ow, w.shape[-1]), dtype=xc.dtype)
    for i, j, tap in taps(xp, op.attrs, oh, ow):
        acc += tap * w[i, j]
    acc = acc + _bias(p, out_channels)
    return requantize(op, p, acc, out_channels)
