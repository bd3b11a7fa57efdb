"""Kernel constants of the element-wise operators: ADD / MUL of two activations (TFLite's
requantisation), CHANNEL_AFFINE (x * a + b with constant a, b: BatchNormalization, Add or Mul of
a constant) and the unary kinds (Relu, Clip, Sigmoid, HardSigmoid, HardSwish). Their kernels work
in the output's memory order (layout_follow)."""

from __future__ import annotations

import math

import numpy as np

from pexopt.errors import ModelError
from pexopt.fixedpoint import activation_range_int8
from pexopt.frontend.onnx_index import node_attrs
from pexopt.frontend.onnx_params_conv import bn_affine
from pexopt.frontend.onnx_params_ctx import OpContext, checked_multiplier, layout_follow
from pexopt.graph.params import OpParams
from pexopt.ops import OpKind


def build_add_mul(ctx: OpContext, p: OpParams) -> None:
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


def build_affine(ctx: OpContext, p: OpParams) -> None:
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


def build_unary(ctx: OpContext, p: OpParams) -> None:
    """Relu / Clip / Sigmoid / HardSigmoid / HardSwish (stand-alone)."""
    layout_follow(ctx, p)
    kind, main = ctx.op.kind, ctx.main
    lo: float | None = None
    hi: float | None = None
    if kind == OpKind.RELU:
        lo = 0.0
    elif kind == OpKind.CLIP:
        lo, hi = _clip_bounds(ctx)
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


def _clip_bounds(ctx: OpContext) -> tuple[float | None, float | None]:
    """Clip's bounds: the min / max attributes (opset < 11), overridden by constant inputs 1, 2."""
    main = ctx.main
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
    return lo, hi
