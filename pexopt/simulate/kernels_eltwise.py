"""Reference kernels of element-wise ops: ADD, MUL, CHANNEL_AFFINE, RELU / CLIP and the
table-driven unaries (SIGMOID, HARD_SIGMOID, HARD_SWISH: `_UNARY`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pexopt.fixedpoint import dequantize, multiply_by_quantized_multiplier
from pexopt.graph.ir import Op
from pexopt.graph.params import OpParams
from pexopt.ops import OpKind
from pexopt.simulate.kernels_common import clamp8, finish, requant_real


def add(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
        in_channels: slice | None = None) -> np.ndarray:
    """TFLite int8 ADD (left shift 20, per-input multipliers) or float add; broadcasting."""
    a, b = inputs
    if not p.int8:
        return finish(p, a.astype(np.float64) + b.astype(np.float64))
    e = p.extra
    ls = e["left_shift"]
    x1 = (a.astype(np.int64) - p.in_qparams[0].zero_point) << ls
    x2 = (b.astype(np.int64) - p.in_qparams[1].zero_point) << ls
    s1 = multiply_by_quantized_multiplier(x1, *e["in1"])
    s2 = multiply_by_quantized_multiplier(x2, *e["in2"])
    y = multiply_by_quantized_multiplier(s1 + s2, *e["out"]) + p.out_zp
    return clamp8(p, y)


def mul(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
        in_channels: slice | None = None) -> np.ndarray:
    """TFLite int8 MUL or float multiply; broadcasting."""
    a, b = inputs
    if not p.int8:
        return finish(p, a.astype(np.float64) * b.astype(np.float64))
    prod = (a.astype(np.int64) - p.in_qparams[0].zero_point) * (
        b.astype(np.int64) - p.in_qparams[1].zero_point)
    y = multiply_by_quantized_multiplier(prod, *p.extra["out"]) + p.out_zp
    return clamp8(p, y)


def _per_channel(c: np.ndarray, out_channels: slice | None) -> np.ndarray:
    return c[..., out_channels] if out_channels is not None and c.ndim and c.shape[-1] > 1 else c


def channel_affine(op: Op, p: OpParams, inputs: list[np.ndarray],
                   out_channels: slice | None = None,
                   in_channels: slice | None = None) -> np.ndarray:
    """x * a + b with constant per-channel a, b (int8: dequantise -> float -> requantise)."""
    a = _per_channel(p.extra["a"], out_channels)
    b = _per_channel(p.extra["b"], out_channels)
    x = inputs[0]
    if p.int8:
        q = p.in_qparams[0]
        return requant_real(p, dequantize(x, q.scale, q.zero_point) * a + b)
    return finish(p, x.astype(np.float64) * a + b)


def relu_clip(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
              in_channels: slice | None = None) -> np.ndarray:
    """Stand-alone Relu / Clip; int8 is TFLite's ReluX (rescale, then quantised clamp)."""
    x = inputs[0]
    if not p.int8:
        return finish(p, x.astype(np.float64))
    y = multiply_by_quantized_multiplier(x.astype(np.int64) - p.in_zp, *p.extra["out"])
    return clamp8(p, y + p.out_zp)


def _hard_sigmoid(p: OpParams, x: np.ndarray) -> np.ndarray:
    return np.clip(p.extra.get("alpha", 0.2) * x + p.extra.get("beta", 0.5), 0.0, 1.0)


_UNARY: dict[OpKind, Callable[[OpParams, np.ndarray], np.ndarray]] = {
    OpKind.SIGMOID: lambda p, x: 1.0 / (1.0 + np.exp(-x)),
    OpKind.HARD_SIGMOID: _hard_sigmoid,
    OpKind.HARD_SWISH: lambda p, x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
}


def unary(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
          in_channels: slice | None = None) -> np.ndarray:
    """Sigmoid / HardSigmoid / HardSwish (int8: a 256-entry table computed in float64)."""
    f = _UNARY[op.kind]
    x = inputs[0]
    if not p.int8:
        return finish(p, f(p, x.astype(np.float64)))
    lut = p.extra.get("_lut")
    if lut is None:
        q = p.in_qparams[0]
        v = np.arange(-128, 128)
        lut = p.extra["_lut"] = requant_real(p, f(p, dequantize(v, q.scale, q.zero_point)))
    return lut[x.astype(np.int64) + 128]
