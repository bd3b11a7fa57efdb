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

from pexopt.ops import OpKind
from pexopt.simulate.kernels_common import Kernel, rescale
from pexopt.simulate.kernels_conv import conv, conv_accumulate, depthwise, requantize
from pexopt.simulate.kernels_eltwise import add, channel_affine, mul, relu_clip, unary
from pexopt.simulate.kernels_move import concat, pad, resize, softmax, transpose
from pexopt.simulate.kernels_pool import avgpool, maxpool, mean

__all__ = [  # the names callers import (the kernels live in kernels_{conv,eltwise,pool,move}.py)
    "KERNELS", "channel_affine", "conv_accumulate", "requantize", "rescale",
]


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
