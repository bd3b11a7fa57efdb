"""numpy kernels, one per OpKind: int8 with TFLite / CMSIS-NN integer semantics, and float32.

Every kernel is ``kernel(op, params, inputs, out_channels=None, in_channels=None) -> array`` on
the kernel views described in `params` (NHWC for conv/pool kinds, channels last). Channel slices:
- same-slice kinds (depthwise with ch_mult 1, pools, element-wise, activations, GAP/mean,
  channel-affine, pad, resize): `inputs` hold only the slice's channels and `out_channels`
  selects the matching per-channel parameters;
- CONV / FULLY_CONNECTED: `out_channels` selects a subset of filters, the input is whole; partial
  sums over input-channel slices go through `conv_accumulate` and `requantize`.
GROUPED_CONV, DEPTHWISE with ch_mult > 1, CONCAT, TRANSPOSE and SOFTMAX run on whole tensors
only (ValueError if given slices). `in_channels` is accepted for a uniform signature; only
`conv_accumulate` uses it.

int8 arithmetic that is not integer in TFLite either, or where pexopt uses float on purpose
(documented deviations): SOFTMAX and LogSoftmax dequantise, compute in float64 and requantise;
SIGMOID / HARD_SIGMOID / HARD_SWISH use a 256-entry table built the same way (TFLite's int8
Logistic is such a table; its HardSwish is a fixed-point pipeline, so ours may differ by one step);
CHANNEL_AFFINE is dequantise -> x*a+b -> requantise; CONCAT / RESIZE / TRANSPOSE / PAD rescale an
input whose qparams differ from the output's as TFLite's float ConcatenationWithScaling does.
AVGPOOL / MAXPOOL with differing input and output qparams (TFLite requires equal ones) rescale
with an integer multiplier like MEAN; REDUCE_MEAN over one spatial axis generalises TFLite's
integer Mean (count = reduced elements). Requantisation from float rounds halves away from zero
(TfLiteRound). Convolutions accumulate in
float64 (exact for int8: every partial sum is an integer below 2^53).
"""

from __future__ import annotations

import numpy as np

from pexopt.fixedpoint import dequantize
from pexopt.graph.ir import Op
from pexopt.graph.params import OpParams
from pexopt.ops import OpKind
from pexopt.simulate.kernels_common import (
    Kernel,
    finish,
    requant_real,
    rescale,
    whole_only,
)
from pexopt.simulate.kernels_conv import conv, conv_accumulate, depthwise, requantize
from pexopt.simulate.kernels_eltwise import add, channel_affine, mul, relu_clip, unary
from pexopt.simulate.kernels_pool import avgpool, maxpool, mean

__all__ = [  # the names callers import (the kernels live in kernels_{conv,eltwise,pool,move}.py)
    "KERNELS", "Kernel", "channel_affine", "conv_accumulate", "requantize", "rescale",
]


# -- data movement ----------------------------------------------------------------------------

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


KERNELS: dict[OpKind, Kernel] = {
    OpKind.CONV: conv,
    OpKind.GROUPED_CONV: conv,
    OpKind.FULLY_CONNECTED: conv,
    OpKind.DEPTHWISE: depthwise,
    OpKind.ADD: add,
    OpKind.MUL: mul,
    OpKind.CHANNEL_AFFINE: channel_affine,
    OpKind.RELU: relu_clip,
    OpKind.CLIP: relu_clip,
    OpKind.SIGMOID: unary,
    OpKind.HARD_SIGMOID: unary,
    OpKind.HARD_SWISH: unary,
    OpKind.MAXPOOL: maxpool,
    OpKind.AVGPOOL: avgpool,
    OpKind.GLOBAL_AVGPOOL: mean,
    OpKind.REDUCE_MEAN: mean,
    OpKind.CONCAT: concat,
    OpKind.PAD: pad,
    OpKind.RESIZE: resize,
    OpKind.TRANSPOSE: transpose,
    OpKind.SOFTMAX: softmax,
    OpKind.OPAQUE: softmax,  # LogSoftmax, the only opaque op params.py accepts
}
