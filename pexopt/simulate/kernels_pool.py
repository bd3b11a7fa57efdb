"""Reference kernels of pooling and reductions: MAXPOOL, AVGPOOL, GLOBAL_AVGPOOL / REDUCE_MEAN."""

from __future__ import annotations

import numpy as np

from pexopt.fixedpoint import multiply_by_quantized_multiplier
from pexopt.graph.ir import Op, PoolAttrs
from pexopt.graph.params import OpParams
from pexopt.simulate.kernels_common import clamp8, finish, pad_hw, round_div, taps


def maxpool(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
            in_channels: slice | None = None) -> np.ndarray:
    """Max over windows; padding never wins (TFLite excludes it)."""
    x = inputs[0]
    oh, ow = p.out_shape[1], p.out_shape[2]
    low = -128 if p.int8 else -np.inf
    xp = pad_hw(x.astype(np.int64) if p.int8 else x.astype(np.float64), op.attrs, oh, ow, low)
    out = None
    for _, _, tap in taps(xp, op.attrs, oh, ow):
        out = tap.copy() if out is None else np.maximum(out, tap)
    if not p.int8:
        return finish(p, out)
    if not p.extra["same_q"]:
        out = multiply_by_quantized_multiplier(out - p.in_zp, *p.extra["out"]) + p.out_zp
    return clamp8(p, out)


def _window_counts(x_shape: tuple[int, ...], op: Op, oh: int, ow: int,
                   include_pad: bool) -> np.ndarray:
    """Number of elements each window averages over, shape (1, OH, OW, 1)."""
    top, left, bottom, right = op.attrs.pads
    h, w = x_shape[1], x_shape[2]
    mask = np.ones((1, h, w, 1), dtype=np.int64)
    if include_pad:
        mask = np.pad(mask, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=1)
        attrs = PoolAttrs(op.attrs.kernel, op.attrs.stride, (0, 0, 0, 0))
        mp = pad_hw(mask, attrs, oh, ow, 0)
    else:
        attrs = op.attrs
        mp = pad_hw(mask, attrs, oh, ow, 0)
    return sum(tap for _, _, tap in taps(mp, attrs, oh, ow))


def avgpool(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
            in_channels: slice | None = None) -> np.ndarray:
    """Average pool; TFLite int8 rounding (sum + count/2) / count, padding not counted."""
    x = inputs[0]
    oh, ow = p.out_shape[1], p.out_shape[2]
    counts = _window_counts(x.shape, op, oh, ow, p.extra.get("count_include_pad", False))
    if not p.int8:
        xp = pad_hw(x.astype(np.float64), op.attrs, oh, ow, 0.0)
        return finish(p, sum(t for _, _, t in taps(xp, op.attrs, oh, ow)) / counts)
    same = p.extra["same_q"]
    xi = x.astype(np.int64) if same else x.astype(np.int64) - p.in_zp
    xp = pad_hw(xi, op.attrs, oh, ow, 0)
    acc = sum(t for _, _, t in taps(xp, op.attrs, oh, ow))
    if same:
        return clamp8(p, round_div(acc, counts))
    acc = multiply_by_quantized_multiplier(acc, *p.extra["out"])
    return clamp8(p, round_div(acc, counts) + p.out_zp)


def mean(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
         in_channels: slice | None = None) -> np.ndarray:
    """GLOBAL_AVGPOOL / REDUCE_MEAN (keepdims); int8 = TFLite reference_integer_ops::Mean:
    sum(x - zi), rescale by si/so, rounded division by the count, + zo."""
    x = inputs[0]
    axes = p.extra["axes"]
    n = int(np.prod([x.shape[a] for a in axes]))
    if not p.int8:
        return finish(p, np.mean(x.astype(np.float64), axis=axes, keepdims=True))
    acc = np.sum(x.astype(np.int64) - p.in_zp, axis=axes, keepdims=True)
    acc = multiply_by_quantized_multiplier(acc, *p.extra["out"])
    return clamp8(p, round_div(acc, n) + p.out_zp)
