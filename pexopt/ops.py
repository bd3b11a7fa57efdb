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
    rows: row-band behaviour (spatially local operators only).
    """

    kind: OpKind
    elementwise: bool = False
    inplace: bool = False
    takes_activation: bool = False
    is_activation: bool = False
    split: Split = Split.NONE
    accumulate: bool = False
    inplace_temp: bool = False
    rows: Rows = Rows.NONE


def _spec(kind: OpKind, **kw: object) -> OpSpec:
    return OpSpec(kind, **kw)  # type: ignore[arg-type]


SPECS: dict[OpKind, OpSpec] = {
    s.kind: s
    for s in (
        _spec(OpKind.CONV, takes_activation=True, split=Split.OUTPUT_SLICE, accumulate=True,
              rows=Rows.WINDOW),
        _spec(OpKind.DEPTHWISE, takes_activation=True, split=Split.SAME_SLICE,
              inplace_temp=True, rows=Rows.WINDOW),
        _spec(OpKind.GROUPED_CONV, takes_activation=True, rows=Rows.WINDOW),
        _spec(OpKind.FULLY_CONNECTED, takes_activation=True, split=Split.OUTPUT_SLICE,
              accumulate=True),
        _spec(OpKind.MATMUL, takes_activation=True),
        _spec(OpKind.ADD, elementwise=True, inplace=True, takes_activation=True,
              split=Split.SAME_SLICE, rows=Rows.POINTWISE),
        _spec(OpKind.MUL, elementwise=True, inplace=True, takes_activation=True,
              split=Split.SAME_SLICE, rows=Rows.POINTWISE),
        _spec(OpKind.CHANNEL_AFFINE, elementwise=True, inplace=True, takes_activation=True,
              split=Split.SAME_SLICE, rows=Rows.POINTWISE),
        _spec(OpKind.CONCAT, split=Split.CONCAT),
        _spec(OpKind.MAXPOOL, takes_activation=True, split=Split.SAME_SLICE, rows=Rows.WINDOW),
        _spec(OpKind.AVGPOOL, takes_activation=True, split=Split.SAME_SLICE, rows=Rows.WINDOW),
        _spec(OpKind.GLOBAL_AVGPOOL, split=Split.SAME_SLICE),
        _spec(OpKind.REDUCE_MEAN),
        _spec(OpKind.RELU, elementwise=True, inplace=True, is_activation=True,
              split=Split.SAME_SLICE, rows=Rows.POINTWISE),
        _spec(OpKind.CLIP, elementwise=True, inplace=True, is_activation=True,
              split=Split.SAME_SLICE, rows=Rows.POINTWISE),
        _spec(OpKind.SIGMOID, elementwise=True, inplace=True, split=Split.SAME_SLICE,
              rows=Rows.POINTWISE),
        _spec(OpKind.HARD_SIGMOID, elementwise=True, inplace=True, split=Split.SAME_SLICE,
              rows=Rows.POINTWISE),
        _spec(OpKind.HARD_SWISH, elementwise=True, inplace=True, split=Split.SAME_SLICE,
              rows=Rows.POINTWISE),
        _spec(OpKind.SOFTMAX),
        _spec(OpKind.TRANSPOSE),
        _spec(OpKind.PAD, split=Split.SAME_SLICE),
        _spec(OpKind.RESIZE, split=Split.SAME_SLICE),
        _spec(OpKind.OPAQUE),
    )
}

# ONNX op types that are pure views of their first input: no copy, no new buffer.
ALIAS_ONNX_OPS: frozenset[str] = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout",
     "QuantizeLinear", "DequantizeLinear"}
)

# ONNX op type -> IR kind for operators recognised directly. Conv is refined by its group count
# and Gemm/MatMul/Add/Mul by whether an operand is constant (see graph.onnx_import).
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
