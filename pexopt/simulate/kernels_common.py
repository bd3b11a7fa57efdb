"""What the reference kernels share (kernels.py describes the kernels and their semantics):
the kernel type, parameter and quantisation helpers, and the window geometry of conv and pool."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from pexopt.fixedpoint import dequantize, quantize_real
from pexopt.graph.ir import ConvAttrs, Op, PoolAttrs
from pexopt.graph.params import OpParams

Kernel = Callable[..., np.ndarray]


def whole_only(op: Op, *slices: slice | None) -> None:
    if any(s is not None for s in slices):
        raise ValueError(f"op '{op.name}' ({op.kind.value}) runs on whole tensors only")


def f64(p: OpParams) -> np.ndarray:
    """The weights as float64 (cached)."""
    w = p.extra.get("_w64")
    if w is None:
        w = p.extra["_w64"] = p.weights.astype(np.float64)
    return w


def centered(p: OpParams, x: np.ndarray, k: int = 0) -> np.ndarray:
    """x - zero point as float64 (int8), or x as float64 (float)."""
    if p.int8:
        return x.astype(np.float64) - p.in_qparams[k].zero_point
    return x.astype(np.float64)


def finish(p: OpParams, y: np.ndarray) -> np.ndarray:
    """Float result -> fused activation clamp -> float32."""
    return np.clip(y, p.act_min, p.act_max).astype(np.float32)


def clamp8(p: OpParams, y: np.ndarray) -> np.ndarray:
    return np.clip(y, p.act_min, p.act_max).astype(np.int8)


def requant_real(p: OpParams, y: np.ndarray) -> np.ndarray:
    """Real values -> output int8 (TFLite rounding) within the activation range."""
    q = p.out_qparams
    return quantize_real(y, q.scale, q.zero_point, int(p.act_min), int(p.act_max))


def round_div(acc: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """C `acc > 0 ? (acc + n/2) / n : (acc - n/2) / n` with truncating division."""
    acc = np.asarray(acc, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    num = np.where(acc > 0, acc + n // 2, acc - n // 2)
    return np.sign(num) * (np.abs(num) // n)


def rescale(x: np.ndarray, qi, qo) -> np.ndarray:
    """TFLite's float rescale of int8 data between two quantisations (identity if equal)."""
    if qi == qo:
        return x
    return quantize_real(dequantize(x, qi.scale, qi.zero_point), qo.scale, qo.zero_point)


# -- window geometry (conv, pool) -----------------------------------------------------------------

def _geometry(attrs: ConvAttrs | PoolAttrs) -> tuple[int, int, int, int, int, int]:
    kh, kw = attrs.kernel
    sh, sw = attrs.stride
    dh, dw = attrs.dilation if isinstance(attrs, ConvAttrs) else (1, 1)
    return kh, kw, sh, sw, dh, dw


def pad_hw(x: np.ndarray, attrs: ConvAttrs | PoolAttrs, oh: int, ow: int,
           value: float) -> np.ndarray:
    """Pad H, W by the attrs' top/left and as much bottom/right as the windows reach."""
    kh, kw, sh, sw, dh, dw = _geometry(attrs)
    top, left = attrs.pads[0], attrs.pads[1]
    bottom = max(0, (oh - 1) * sh + (kh - 1) * dh + 1 - x.shape[1] - top)
    right = max(0, (ow - 1) * sw + (kw - 1) * dw + 1 - x.shape[2] - left)
    if not (top or left or bottom or right):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def taps(xp: np.ndarray, attrs: ConvAttrs | PoolAttrs, oh: int,
         ow: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(i, j, strided view (N, OH, OW, C) of the input under tap (i, j))."""
    kh, kw, sh, sw, dh, dw = _geometry(attrs)
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i * dh: i * dh + (oh - 1) * sh + 1: sh,
                           j * dw: j * dw + (ow - 1) * sw + 1: sw, :]
