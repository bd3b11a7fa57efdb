"""What every IR op's kernel needs, read from the ONNX file the IR graph was imported from.

Layouts (weights are ours, activations are the IR's NHWC):
- CONV / GROUPED_CONV weights: OHWI ``(C_out, KH, KW, C_in / group)``, CMSIS-NN's filter order.
- DEPTHWISE weights: ``(KH, KW, C_out)`` (CMSIS-NN ``{1, KH, KW, C_out}``);
  ``ch_mult = C_out / C_in``.
- FULLY_CONNECTED weights: ``(C_out, K)`` with K in the *memory* order of the IR input tensor:
  ONNX flattens NCHW, our activations are NHWC, so the columns are permuted at load time and the
  kernel reads its input buffer as it lies in memory.
- float ops: float32 weights with BatchNormalization folded in, float32 bias.
- int8 ops (graph dtype int8 and every activation input and output has qparams; other ops run in
  float32 on dequantised inputs): int8 weights, symmetric (zero point 0)
  per-channel or per-tensor scales, int32 bias (taken from the DQ'd initializer when its scale is
  ``sx * sw[c]``, else quantised from the float bias), per-output-channel ``(multiplier, shift)``
  from TFLite's QuantizeMultiplier(``sx * sw[c] / so``), clamp = [-128, 127] ∩ quantised activation.

Kernel views: a kernel sees each input as an array of ``in_shapes[k]`` (NHWC for conv/pool kinds,
channels last for element-wise kinds) and returns ``out_shape``. When the IR buffer is that view
as it lies in memory, ``in_index[k]`` / ``out_index`` are None (a reshape); otherwise they hold the
memory offset of every view element (a layout copy; happens only where the importer's IR shapes
disagree with the ONNX layout of the data, e.g. a tensor read both through and without a layout
Transpose). Offsets come from replaying the aliased ONNX nodes (Reshape, Flatten, Transpose, Q/DQ)
between the IR tensor and the node's input.

This module holds `load_params` and `_BUILDERS`, one builder per operator kind; the ONNX index and
the offsets are onnx_index.py, what the builders share onnx_params_ctx.py, the builders by family
onnx_params_conv.py (conv, fully connected), onnx_params_eltwise.py, onnx_params_move.py (data
movement, Softmax, opaque) and onnx_params_pool.py (pooling, mean).
"""

from __future__ import annotations

import math
from pathlib import Path

from pexopt.errors import ModelError
from pexopt.fixedpoint import activation_range_int8
from pexopt.frontend.onnx_index import OnnxIndex
from pexopt.frontend.onnx_load import load_model
from pexopt.frontend.onnx_params_conv import build_conv, build_fc
from pexopt.frontend.onnx_params_ctx import OpContext
from pexopt.frontend.onnx_params_eltwise import build_add_mul, build_affine, build_unary
from pexopt.frontend.onnx_params_move import (
    build_concat,
    build_opaque,
    build_pad,
    build_resize,
    build_softmax,
    build_transpose,
)
from pexopt.frontend.onnx_params_pool import build_gap, build_pool, build_reduce_mean
from pexopt.graph.ir import Graph, Op
from pexopt.graph.params import OpParams
from pexopt.ops import OPAQUE_RUNNABLE, OpKind

__all__ = [
    "OpParams", "load_params",
]


def load_params(model_path: str | Path | OnnxIndex, graph: Graph,
                input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[int, OpParams]:
    """Op id -> OpParams for every op of `graph` (imported from `model_path`).

    Raises ModelError naming the node for an operator or parameter the kernels cannot run.
    """
    ox = model_path if isinstance(model_path, OnnxIndex) else OnnxIndex(
        load_model(model_path, input_shapes), str(model_path))
    return {op.id: _build(ox, graph, op) for op in graph.ops}


# -- per-op construction ----------------------------------------------------------------------

def _build(ox: OnnxIndex, graph: Graph, op: Op) -> OpParams:
    ins = [graph.tensors[t] for t in op.inputs]
    outs = [graph.tensors[t] for t in op.outputs]
    if len(outs) != 1:
        raise ModelError(f"{ox.where(op)}: operators with {len(outs)} outputs are not supported "
                         "by the simulator")
    if op.kind == OpKind.OPAQUE and op.onnx_type not in OPAQUE_RUNNABLE:
        raise ModelError(f"{ox.where(op)}: operator {op.onnx_type} is not supported by the "
                         "simulator")
    builder = _BUILDERS.get(op.kind)
    if builder is None:
        raise ModelError(f"{ox.where(op)}: operator kind '{op.kind.value}' is not supported by "
                         "the simulator")
    main = ox.node(op.name, op.onnx_type)
    fused = [ox.node(n) for n in op.onnx_nodes]
    int8 = graph.dtype == "int8" and all(t.qparams is not None for t in ins + outs)
    p = OpParams(op_id=op.id, name=op.name, kind=op.kind, int8=int8,
                 in_qparams=tuple(t.qparams for t in ins), out_qparams=outs[0].qparams)
    ctx = OpContext(ox, graph, op, main, fused, ins, outs[0])
    _set_activation(ctx, p)
    builder(ctx, p)
    return p


def _set_activation(ctx: OpContext, p: OpParams) -> None:
    act = ctx.op.activation
    lo = act.lo if act is not None else None
    hi = act.hi if act is not None else None
    if p.int8:
        q = p.out_qparams
        assert q is not None
        p.act_min, p.act_max = activation_range_int8(lo, hi, q.scale, q.zero_point)
    else:
        p.act_min = -math.inf if lo is None else float(lo)
        p.act_max = math.inf if hi is None else float(hi)


# -- one builder per operator kind (onnx_params_conv / _eltwise / _move / _pool.py) ------

_BUILDERS = {
    OpKind.CONV: build_conv,
    OpKind.DEPTHWISE: build_conv,
    OpKind.GROUPED_CONV: build_conv,
    OpKind.FULLY_CONNECTED: build_fc,
    OpKind.ADD: build_add_mul,
    OpKind.MUL: build_add_mul,
    OpKind.CHANNEL_AFFINE: build_affine,
    OpKind.RELU: build_unary,
    OpKind.CLIP: build_unary,
    OpKind.SIGMOID: build_unary,
    OpKind.HARD_SIGMOID: build_unary,
    OpKind.HARD_SWISH: build_unary,
    OpKind.CONCAT: build_concat,
    OpKind.PAD: build_pad,
    OpKind.RESIZE: build_resize,
    OpKind.TRANSPOSE: build_transpose,
    OpKind.SOFTMAX: build_softmax,
    OpKind.OPAQUE: build_opaque,
    OpKind.MAXPOOL: build_pool,
    OpKind.AVGPOOL: build_pool,
    OpKind.GLOBAL_AVGPOOL: build_gap,
    OpKind.REDUCE_MEAN: build_reduce_mean,
}
