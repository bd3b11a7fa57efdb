"""The operator table: everything pexopt knows about an operator kind, as data.

Importer, solver, validator, simulator and emitter read `SPECS[kind]`; none of them branches on
ONNX op names. Adding an operator means adding a row here (and its kernels), nothing else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OpKind(str, enum.Enum):
    """Kinds of IR operators (after aliasing and fusion)."""

    CONV = "conv"
    DEPTHWISE = "depthwise_conv"
    GROUPED_CONV = "grouped_conv"
    FULLY_CONNECTED = "fully_connected"
    MATMUL = "matmul"
    ADD = "add"
    MUL = "mul"
    CHANNEL_AFFINE = "channel_affine"
    CONCAT = "concat"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    GLOBAL_AVGPOOL = "global_avgpool"
    REDUCE_MEAN = "reduce_mean"
    RELU = "relu"
    CLIP = "clip"
    SIGMOID = "sigmoid"
    HARD_SIGMOID = "hard_sigmoid"
    HARD_SWISH = "hard_swish"
    SOFTMAX = "softmax"
    TRANSPOSE = "transpose"
    PAD = "pad"
    RESIZE = "resize"
    OPAQUE = "opaque"


class Rows(str, enum.Enum):
    """How an operator runs on bands of output rows (row-band execution, issue #7)."""

    NONE = "none"  # never in a row band
    WINDOW = "window"  # output rows need a window of input rows (kernel/stride/pads from attrs)
    POINTWISE = "pointwise"  # output row r needs row r of every input


class Split(str, enum.Enum):
    """How an operator runs on channel slices (see the partial-execution note)."""

    NONE = "none"  # never split
    SAME_SLICE = "same_slice"  # output slice c..c+s needs input slice c..c+s
    OUTPUT_SLICE = "output_slice"  # any output slice needs all input channels (filter subset)
    CONCAT = "concat"  # output slice is a slice of one input


class Channels(str, enum.Enum):
    """What an operator does to channel identity, for structured pruning (pexopt.prune).

    PRODUCE: its filters (weight axis from `WEIGHT_AXES`) are new, removable channels; it reads
    its input's channels through weight columns, so those may be removed too.
    FOLLOW: output channel i is input channel i (per-channel constants are pruned alongside).
    TIE: element-wise over several activations: channel i of each input is one channel.
    CONCAT: output channels are the inputs' channels, part after part.
    RESHAPE: a view that keeps channels only when every other non-batch dimension is 1.
    REDUCE: follows its input when the channel axis is not among the reduced axes.
    FIXED: channels cannot be removed (what an unknown operator gets).
    """

    PRODUCE = "produce"
    FOLLOW = "follow"
    TIE = "tie"
    CONCAT = "concat"
    RESHAPE = "reshape"
    REDUCE = "reduce"
    FIXED = "fixed"


@dataclass(frozen=True)
class OpSpec:
    """Static facts about one operator kind.

    elementwise: output has the shape of its (first) input, element i depends on input element i.
    inplace: the output may overwrite an input that dies at this operator (a solver option).
    takes_activation: a following Relu/Clip that is the only consumer is fused into it (TFLite).
    is_activation: it is a Relu/Clip that may be fused into its producer.
    split: channel-slice behaviour; accumulate: may consume input slices into an int32 accumulator.
    inplace_temp: may overwrite its input channel by channel through one H x W temporary
    (TinyEngine's in-place depthwise; only when output and input have the same shape).
    prune: how it propagates or ties channels when pruning (see `Channels`).
    cost: the latency cost class of its kernel (`pexopt.latency`); a dense conv is refined to
    conv1x1 or convkxk by its kernel size there.
    cmsis_scratch: which CMSIS-NN buffer-size formula its kernel call needs
    (`pexopt.cmsis_scratch.FORMULAS`; empty: no ctx.buf).
    rows: row-band behaviour (spatially local operators only).
    runs: the back ends execute it (frontend constants, simulator kernel, C renderer); False:
    planned only, and simulate and codegen refuse it with one line.
    """

    kind: OpKind
    elementwise: bool = False
    inplace: bool = False
    takes_activation: bool = False
    is_activation: bool = False
    split: Split = Split.NONE
    accumulate: bool = False
    inplace_temp: bool = False
    prune: Channels = Channels.FIXED
    cost: str = "other"
    cmsis_scratch: str = ""
    rows: Rows = Rows.NONE
    runs: bool = True


def _spec(kind: OpKind, **kw: object) -> OpSpec:
    return OpSpec(kind, **kw)  # type: ignore[arg-type]


SPECS: dict[OpKind, OpSpec] = {
    s.kind: s
    for s in (
        _spec(OpKind.CONV, takes_activation=True, split=Split.OUTPUT_SLICE, accumulate=True,
              prune=Channels.PRODUCE, cost="conv", cmsis_scratch="conv", rows=Rows.WINDOW),
        _spec(OpKind.DEPTHWISE, takes_activation=True, split=Split.SAME_SLICE,
              inplace_temp=True, prune=Channels.FOLLOW, cost="depthwise",
              cmsis_scratch="depthwise", rows=Rows.WINDOW),
        _spec(OpKind.GROUPED_CONV, takes_activation=True, cost="conv", cmsis_scratch="conv",
              rows=Rows.WINDOW),
        _spec(OpKind.FULLY_CONNECTED, takes_activation=True, split=Split.OUTPUT_SLICE,
              accumulate=True, prune=Channels.PRODUCE, cost="fully_connected",
              cmsis_scratch="fully_connected"),
        _spec(OpKind.MATMUL, takes_activation=True, cost="fully_connected", runs=False),
        _spec(OpKind.ADD, elementwise=True, inplace=True, takes_activation=True,
              split=Split.SAME_SLICE, prune=Channels.TIE, cost="elementwise",
              rows=Rows.POINTWISE),
        _spec(OpKind.MUL, elementwise=True, inplace=True, takes_activation=True,
              split=Split.SAME_SLICE, prune=Channels.TIE, cost="elementwise",
              rows=Rows.POINTWISE),
        _spec(OpKind.CHANNEL_AFFINE, elementwise=True, inplace=True, takes_activation=True,
              split=Split.SAME_SLICE, prune=Channels.FOLLOW, rows=Rows.POINTWISE),
        _spec(OpKind.CONCAT, split=Split.CONCAT, prune=Channels.CONCAT, cost="copy"),
        _spec(OpKind.MAXPOOL, takes_activation=True, split=Split.SAME_SLICE,
              prune=Channels.FOLLOW, cost="pool", rows=Rows.WINDOW),
        _spec(OpKind.AVGPOOL, takes_activation=True, split=Split.SAME_SLICE,
              prune=Channels.FOLLOW, cost="pool", cmsis_scratch="avgpool", rows=Rows.WINDOW),
        _spec(OpKind.GLOBAL_AVGPOOL, split=Split.SAME_SLICE, prune=Channels.FOLLOW,
              cost="mean"),
        _spec(OpKind.REDUCE_MEAN, prune=Channels.REDUCE, cost="mean"),
        _spec(OpKind.RELU, elementwise=True, inplace=True, is_activation=True,
              split=Split.SAME_SLICE, prune=Channels.FOLLOW, cost="copy", rows=Rows.POINTWISE),
        _spec(OpKind.CLIP, elementwise=True, inplace=True, is_activation=True,
              split=Split.SAME_SLICE, prune=Channels.FOLLOW, cost="copy", rows=Rows.POINTWISE),
        _spec(OpKind.SIGMOID, elementwise=True, inplace=True, split=Split.SAME_SLICE,
              prune=Channels.FOLLOW, cost="copy", rows=Rows.POINTWISE),
        _spec(OpKind.HARD_SIGMOID, elementwise=True, inplace=True, split=Split.SAME_SLICE,
              prune=Channels.FOLLOW, cost="copy", rows=Rows.POINTWISE),
        _spec(OpKind.HARD_SWISH, elementwise=True, inplace=True, split=Split.SAME_SLICE,
              prune=Channels.FOLLOW, cost="copy", rows=Rows.POINTWISE),
        _spec(OpKind.SOFTMAX),
        _spec(OpKind.TRANSPOSE, prune=Channels.FOLLOW, cost="copy"),  # prune moves the axis
        _spec(OpKind.PAD, split=Split.SAME_SLICE, prune=Channels.FOLLOW,
              cost="copy"),  # if C is unchanged
        _spec(OpKind.RESIZE, split=Split.SAME_SLICE, prune=Channels.FOLLOW,
              cost="copy"),  # if C is unchanged
        _spec(OpKind.OPAQUE),
    )
}

# OPAQUE operators the kernels and the emitter still run (in float), by source operator type
OPAQUE_RUNNABLE: frozenset[str] = frozenset({"LogSoftmax"})

# ONNX op types that are pure views of their first input: no copy, no new buffer.
ALIAS_ONNX_OPS: frozenset[str] = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout",
     "QuantizeLinear", "DequantizeLinear"}
)

# ONNX op type -> IR kind for operators recognised directly. Conv is refined by its group count
# and Gemm/MatMul/Add/Mul by whether an operand is constant (see frontend/onnx_import_ops.py).
ONNX_KIND: dict[str, OpKind] = {
    "Conv": OpKind.CONV,
    "Gemm": OpKind.FULLY_CONNECTED,
    "MatMul": OpKind.MATMUL,
    "Add": OpKind.ADD,
    "Mul": OpKind.MUL,
    "BatchNormalization": OpKind.CHANNEL_AFFINE,
    "Concat": OpKind.CONCAT,
    "MaxPool": OpKind.MAXPOOL,
    "AveragePool": OpKind.AVGPOOL,
    "GlobalAveragePool": OpKind.GLOBAL_AVGPOOL,
    "ReduceMean": OpKind.REDUCE_MEAN,
    "Relu": OpKind.RELU,
    "Clip": OpKind.CLIP,
    "Sigmoid": OpKind.SIGMOID,
    "HardSigmoid": OpKind.HARD_SIGMOID,
    "HardSwish": OpKind.HARD_SWISH,
    "Softmax": OpKind.SOFTMAX,
    "Transpose": OpKind.TRANSPOSE,
    "Pad": OpKind.PAD,
    "Resize": OpKind.RESIZE,
}

# Transposes between ONNX's NCHW convention and pexopt's NHWC memory layout move no bytes.
LAYOUT_PERMS: frozenset[tuple[int, ...]] = frozenset({(0, 3, 1, 2), (0, 2, 3, 1)})

# Channel behaviour of the view ops (they never become IR operators), for pexopt.prune.
ALIAS_CHANNELS: dict[str, Channels] = {
    "QuantizeLinear": Channels.FOLLOW, "DequantizeLinear": Channels.FOLLOW,
    "Identity": Channels.FOLLOW, "Dropout": Channels.FOLLOW,
    "Reshape": Channels.RESHAPE, "Flatten": Channels.RESHAPE, "Squeeze": Channels.RESHAPE,
    "Unsqueeze": Channels.RESHAPE,
}

# View ops whose input 1 is the target shape (pruning rewrites its channel entry).
SHAPE_INPUT_OPS: frozenset[str] = frozenset({"Reshape"})

# ONNX op type -> (output-channel axis, input-channel axis) of its weight (input 1), for pruning.
# Gemm's axes swap when transB=1 (pexopt.prune.groups reads the attribute).
WEIGHT_AXES: dict[str, tuple[int, int]] = {"Conv": (0, 1), "Gemm": (1, 0), "MatMul": (1, 0)}
# ... and the channel axis of its activation input and output (NCHW for Conv, last otherwise).
ACTIVATION_CHANNEL_AXIS: dict[str, int] = {"Conv": 1, "Gemm": -1, "MatMul": -1}

# ONNX ops whose per-channel constants are 1-D vectors along the channel axis (not broadcast
# from the right): BatchNormalization's parameters, a Conv bias, per-axis QDQ scales.
CHANNEL_VECTOR_OPS: frozenset[str] = frozenset(
    {"BatchNormalization", "Conv", "QuantizeLinear", "DequantizeLinear"})
