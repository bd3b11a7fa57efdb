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
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pexopt.errors import ModelError
from pexopt.fixedpoint import activation_range_int8, round_half_away
from pexopt.frontend.onnx_index import (
    NHWC,
    OnnxIndex,
    nhwc_shape,
    node_attrs,
    perm_for,
)
from pexopt.frontend.onnx_load import load_model
from pexopt.frontend.onnx_params_conv import bn_affine, build_conv, build_fc
from pexopt.frontend.onnx_params_ctx import (
    OpContext,
    checked_multiplier,
    layout_follow,
    layout_nchw,
    layout_onnx,
    set_layout,
    set_requant,
)
from pexopt.graph.ir import Graph, Op
from pexopt.graph.params import OpParams
from pexopt.ops import OPAQUE_RUNNABLE, OpKind

# re-exported: callers and tests import these from here
__all__ = ["NHWC", "OnnxIndex", "OpParams", "load_params", "nhwc_shape", "perm_for"]


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


# -- element-wise and the rest ---------------------------------------------------------------

def _build_add_mul(ctx: OpContext, p: OpParams) -> None:
    layout_follow(ctx, p)
    if len(ctx.ins) != 2:
        raise ModelError(f"{ctx.where}: expected two activation inputs")
    if not p.int8:
        return
    s1, s2 = (float(q.scale) for q in p.in_qparams)
    so = float(p.out_qparams.scale)
    if ctx.op.kind == OpKind.ADD:
        left_shift = 20
        twice_max = 2.0 * max(s1, s2)
        m1 = checked_multiplier(ctx.where, s1 / twice_max)
        m2 = checked_multiplier(ctx.where, s2 / twice_max)
        mo = checked_multiplier(ctx.where, twice_max / ((1 << left_shift) * so))
        p.extra.update(left_shift=left_shift, in1=m1, in2=m2, out=mo)
    else:
        p.extra["out"] = checked_multiplier(ctx.where, s1 * s2 / so)


def _build_affine(ctx: OpContext, p: OpParams) -> None:
    """x * a + b with constant a, b broadcast in the kernel layout (x*a+b of BN/Add/Mul)."""
    perm = layout_follow(ctx, p)
    rank = len(perm)
    main = ctx.main
    if main.op_type == "BatchNormalization":
        scale, shift = bn_affine(ctx, main)
        cshape = (1, -1) + (1,) * (rank - 2)
        a, b = scale.reshape(cshape), shift.reshape(cshape)
    else:
        cn = ctx.ox.const_inputs(main)
        c = ctx.ox.const(cn[0]) if len(cn) == 1 else None
        if c is None:
            raise ModelError(f"{ctx.where}: needs exactly one constant operand")
        c = np.asarray(c, dtype=np.float64)
        if main.op_type == "Add":
            a, b = np.ones(()), c
        elif main.op_type == "Mul":
            a, b = c, np.zeros(())
        else:
            raise ModelError(f"{ctx.where}: unsupported channel-affine operator")
    p.extra["a"] = _const_view(a, rank, perm)
    p.extra["b"] = _const_view(b, rank, perm)


def _const_view(c: np.ndarray, rank: int, perm: tuple[int, ...]) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.ascontiguousarray(np.transpose(c.reshape((1,) * (rank - c.ndim) + c.shape), perm))


def _build_unary(ctx: OpContext, p: OpParams) -> None:
    """Relu / Clip / Sigmoid / HardSigmoid / HardSwish (stand-alone)."""
    layout_follow(ctx, p)
    kind, main = ctx.op.kind, ctx.main
    lo: float | None = None
    hi: float | None = None
    if kind == OpKind.RELU:
        lo = 0.0
    elif kind == OpKind.CLIP:
        a = node_attrs(main)
        lo, hi = a.get("min"), a.get("max")
        for k, attr in ((1, "lo"), (2, "hi")):
            if len(main.input) > k and main.input[k]:
                v = ctx.ox.const(main.input[k])
                if v is None:
                    raise ModelError(f"{ctx.where}: Clip bounds must be constant")
                if attr == "lo":
                    lo = float(v.reshape(-1)[0])
                else:
                    hi = float(v.reshape(-1)[0])
    elif kind == OpKind.HARD_SIGMOID:
        a = node_attrs(main)
        p.extra["alpha"] = float(a.get("alpha", 0.2))
        p.extra["beta"] = float(a.get("beta", 0.5))
    p.extra["lo"], p.extra["hi"] = lo, hi
    if kind in (OpKind.RELU, OpKind.CLIP):
        if p.int8:
            q = p.out_qparams
            amin, amax = activation_range_int8(lo, hi, q.scale, q.zero_point)
            p.act_min, p.act_max = max(p.act_min, amin), min(p.act_max, amax)
            p.extra["out"] = checked_multiplier(ctx.where,
                                                float(p.in_qparams[0].scale) / float(q.scale))
        else:
            p.act_min = max(p.act_min, -math.inf if lo is None else lo)
            p.act_max = min(p.act_max, math.inf if hi is None else hi)


def _build_concat(ctx: OpContext, p: OpParams) -> None:
    if ctx.ox.const_inputs(ctx.main):
        raise ModelError(f"{ctx.where}: Concat with constant inputs is not supported by the "
                         "simulator")
    perm = layout_follow(ctx, p)
    axis = int(node_attrs(ctx.main).get("axis", 1)) % len(perm)
    p.extra["axis"] = perm.index(axis)


def _build_pad(ctx: OpContext, p: OpParams) -> None:
    perm = layout_follow(ctx, p)
    main = ctx.main
    a = node_attrs(main)
    pads = a.get("pads")
    if len(main.input) > 1 and main.input[1]:
        pads = ctx.ox.const(main.input[1])
    value, raw = float(a.get("value", 0.0)), None
    if len(main.input) > 2 and main.input[2]:
        vq = ctx.ox.quantized(main.input[2])
        v = ctx.ox.const(main.input[2])
        if vq is not None:
            raw = int(vq[0].reshape(-1)[0])  # DQ'd int8 constant: its raw value
        elif v is not None and v.size:
            if v.dtype.kind in "iu":
                raw = int(v.reshape(-1)[0])  # a Pad on int8 data pads with a raw int8 value
            else:
                value = float(v.reshape(-1)[0])
    if pads is None or (len(main.input) > 3 and main.input[3]):
        raise ModelError(f"{ctx.where}: Pad needs constant pads over all axes")
    pads = [int(x) for x in np.asarray(pads).reshape(-1)]
    r = len(perm)
    if any(x < 0 for x in pads):
        raise ModelError(f"{ctx.where}: negative pads are not supported")
    p.extra["pads"] = [(pads[perm[k]], pads[perm[k] + r]) for k in range(r)]
    p.extra["mode"] = a.get("mode", "constant")
    q = p.out_qparams
    if p.int8:
        p.extra["value"] = raw if raw is not None else int(
            np.clip(q.zero_point + round_half_away(np.float64(value / q.scale)), -128, 127))
    else:
        p.extra["value"] = value if raw is None or q is None else (raw - q.zero_point) * q.scale


def _build_resize(ctx: OpContext, p: OpParams) -> None:
    perm = layout_follow(ctx, p)
    a = node_attrs(ctx.main)
    if a.get("mode", "nearest") != "nearest":
        raise ModelError(f"{ctx.where}: only nearest Resize is supported by the simulator")
    ishape = ctx.ox.shape(ctx.ox.act_inputs(ctx.main)[0])
    oshape = ctx.ox.shape(ctx.out.name)
    scales = None
    if len(ctx.main.input) > 2 and ctx.main.input[2]:
        s = ctx.ox.const(ctx.main.input[2])
        scales = [float(x) for x in s.reshape(-1)] if s is not None and s.size else None
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    nmode = a.get("nearest_mode", "round_prefer_floor")
    maps = []
    for ax in range(len(oshape)):
        sc = scales[ax] if scales else oshape[ax] / ishape[ax]
        maps.append(_nearest_map(ishape[ax], oshape[ax], sc, ctm, nmode, ctx.where))
    p.extra["maps"] = [maps[perm[k]] for k in range(len(perm))]


def _nearest_map(n_in: int, n_out: int, scale: float, ctm: str, nmode: str,
                 where: str) -> np.ndarray:
    """ONNX Resize (nearest) source index of every output index along one axis."""
    o = np.arange(n_out, dtype=np.float64)
    if ctm == "asymmetric":
        x = o / scale
    elif ctm == "half_pixel":
        x = (o + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        x = (o + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(o)
    elif ctm == "align_corners":
        x = o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(o)
    elif ctm == "tf_half_pixel_for_nn":
        x = (o + 0.5) / scale
    else:
        raise ModelError(f"{where}: Resize coordinate_transformation_mode '{ctm}' unsupported")
    if nmode == "floor":
        i = np.floor(x)
    elif nmode == "ceil":
        i = np.ceil(x)
    elif nmode == "round_prefer_ceil":
        i = np.floor(x + 0.5)
    else:  # round_prefer_floor
        i = np.ceil(x - 0.5)
    return np.clip(i, 0, n_in - 1).astype(np.int64)


def _build_transpose(ctx: OpContext, p: OpParams) -> None:
    layout_onnx(ctx, p)
    perm = node_attrs(ctx.main).get("perm")
    p.extra["perm"] = tuple(perm) if perm else tuple(reversed(range(len(p.in_shapes[0]))))
    set_requant(ctx, p)


def _build_softmax(ctx: OpContext, p: OpParams) -> None:
    layout_onnx(ctx, p)
    rank = len(p.in_shapes[0])
    default = -1 if ctx.ox.opset >= 13 else 1
    p.extra["axis"] = int(node_attrs(ctx.main).get("axis", default)) % rank
    p.extra["flatten"] = ctx.ox.opset < 13


def _build_opaque(ctx: OpContext, p: OpParams) -> None:
    _build_softmax(ctx, p)
    p.extra["op_type"] = ctx.op.onnx_type


def _build_pool(ctx: OpContext, p: OpParams) -> None:
    layout_nchw(ctx, p)
    a = node_attrs(ctx.main)
    if any(d != 1 for d in a.get("dilations", [1])):
        raise ModelError(f"{ctx.where}: dilated pooling is not supported by the simulator")
    p.extra["count_include_pad"] = bool(a.get("count_include_pad", 0))
    if p.int8:
        set_requant(ctx, p)


def _build_gap(ctx: OpContext, p: OpParams) -> None:
    layout_nchw(ctx, p)
    p.extra["axes"] = (1, 2)
    if p.int8:
        set_requant(ctx, p)


def _build_reduce_mean(ctx: OpContext, p: OpParams) -> None:
    main = ctx.main
    a = node_attrs(main)
    ishape = ctx.ox.shape(ctx.ox.act_inputs(main)[0])
    rank = len(ishape)
    axes = a.get("axes")
    if len(main.input) > 1 and main.input[1]:
        v = ctx.ox.const(main.input[1])
        axes = None if v is None else [int(x) for x in v.reshape(-1)]
    if axes is None or len(axes) == 0:
        if a.get("noop_with_empty_axes", 0):
            raise ModelError(f"{ctx.where}: ReduceMean without axes is not supported")
        axes = list(range(rank))
    axes = sorted({int(x) % rank for x in axes})
    keep = bool(a.get("keepdims", 1))
    perm = perm_for(ctx.ins[0].shape, ishape)

    def out_fix(idx: np.ndarray) -> np.ndarray:
        kshape = tuple(1 if k in axes else d for k, d in enumerate(ishape))
        return idx.reshape(kshape)

    set_layout(ctx, p, perm, lambda i: i, out_fix if not keep else (lambda i: i))
    p.extra["axes"] = tuple(sorted(perm.index(x) for x in axes))
    if p.int8:
        set_requant(ctx, p)


_BUILDERS = {
    OpKind.CONV: build_conv,
    OpKind.DEPTHWISE: build_conv,
    OpKind.GROUPED_CONV: build_conv,
    OpKind.FULLY_CONNECTED: build_fc,
    OpKind.ADD: _build_add_mul,
    OpKind.MUL: _build_add_mul,
    OpKind.CHANNEL_AFFINE: _build_affine,
    OpKind.RELU: _build_unary,
    OpKind.CLIP: _build_unary,
    OpKind.SIGMOID: _build_unary,
    OpKind.HARD_SIGMOID: _build_unary,
    OpKind.HARD_SWISH: _build_unary,
    OpKind.CONCAT: _build_concat,
    OpKind.PAD: _build_pad,
    OpKind.RESIZE: _build_resize,
    OpKind.TRANSPOSE: _build_transpose,
    OpKind.SOFTMAX: _build_softmax,
    OpKind.OPAQUE: _build_opaque,
    OpKind.MAXPOOL: _build_pool,
    OpKind.AVGPOOL: _build_pool,
    OpKind.GLOBAL_AVGPOOL: _build_gap,
    OpKind.REDUCE_MEAN: _build_reduce_mean,
}
