"""Reference kernels of data movement: CONCAT, PAD, RESIZE, TRANSPOSE, and SOFTMAX / LogSoftmax
(whole tensors, float64)."""

from __future__ import annotations

import numpy as np

from pexopt.fixedpoint import dequantize
from pexopt.graph.ir import Op
from pexopt.graph.params import OpParams
from pexopt.simulate.kernels_common import finish, requant_real, rescale, whole_only


def concat(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
           in_channels: slice | None = None) -> np.ndarray:
    """Concatenation (whole tensors); int8 inputs with other qparams are rescaled."""
    whole_only(op, out_channels, in_channels)
    if p.int8:
        inputs = [rescale(x, q, p.out_qparams) for x, q in zip(inputs, p.in_qparams)]
    return np.concatenate(inputs, axis=p.extra["axis"])


def pad(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
        in_channels: slice | None = None) -> np.ndarray:
    """Pad (constant value = quantised value, reflect or edge); channel pads need whole tensors."""
    x = inputs[0]
    pads = p.extra["pads"]
    if out_channels is not None and any(pads[-1]):
        raise ValueError(f"op '{op.name}': pads the channel axis, whole tensors only")
    if p.int8:
        x = rescale(x, p.in_qparams[0], p.out_qparams)
    mode = p.extra["mode"]
    if mode == "constant":
        return np.pad(x, pads, constant_values=p.extra["value"])
    return np.pad(x, pads, mode="reflect" if mode == "reflect" else "edge")


def resize(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
           in_channels: slice | None = None) -> np.ndarray:
    """Nearest-neighbour resize by precomputed source indices per axis."""
    x = inputs[0]
    maps = list(p.extra["maps"])
    if out_channels is not None:
        maps[-1] = np.arange(x.shape[-1])
    y = x[np.ix_(*maps)]
    return rescale(y, p.in_qparams[0], p.out_qparams) if p.int8 else y


def transpose(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
              in_channels: slice | None = None) -> np.ndarray:
    whole_only(op, out_channels, in_channels)
    y = np.ascontiguousarray(np.transpose(inputs[0], p.extra["perm"]))
    return rescale(y, p.in_qparams[0], p.out_qparams) if p.int8 else y


def _softmax_f(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    lse = np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
    return z - lse if log else np.exp(z - lse)


def softmax(op: Op, p: OpParams, inputs: list[np.ndarray], out_channels: slice | None = None,
            in_channels: slice | None = None) -> np.ndarray:
    """Softmax / LogSoftmax in float64 (int8: dequantise -> softmax -> requantise)."""
    whole_only(op, out_channels, in_channels)
    x = inputs[0]
    log = p.extra.get("op_type") == "LogSoftmax"
    q = p.in_qparams[0] if p.in_qparams else None
    xr = dequantize(x, q.scale, q.zero_point) if x.dtype == np.int8 and q else x.astype(np.float64)
    axis = p.extra["axis"]
    if p.extra.get("flatten"):  # opset < 13: softmax over the flattened trailing dims
        shp = xr.shape
        y = _softmax_f(xr.reshape(int(np.prod(shp[:axis])), -1), 1, log).reshape(shp)
    else:
        y = _softmax_f(xr, axis, log)
    return requant_real(p, y) if p.int8 else finish(p, y)
