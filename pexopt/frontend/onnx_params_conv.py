"""Kernel constants of the weighted operators: CONV / DEPTHWISE / GROUPED_CONV and
FULLY_CONNECTED (MatMul / Gemm), with what they share: BatchNormalization folding, int8 weights
(symmetric, per channel), the int32 bias and the per-channel requantisation multipliers. The
layouts they produce are the contract of onnx_params.py's docstring."""

from __future__ import annotations

import numpy as np
import onnx

from pexopt.errors import ModelError
from pexopt.frontend.onnx_index import is_identity, node_attrs
from pexopt.frontend.onnx_params_ctx import OpContext, checked_multiplier, layout_nchw
from pexopt.graph.params import OpParams
from pexopt.ops import OpKind

# -- conv / depthwise / grouped ---------------------------------------------------------------

def build_conv(ctx: OpContext, p: OpParams) -> None:
    layout_nchw(ctx, p)
    w_name = ctx.main.input[1]
    b_name = ctx.main.input[2] if len(ctx.main.input) > 2 and ctx.main.input[2] else None
    wf = ctx.ox.const(w_name)
    if wf is None:
        raise ModelError(f"{ctx.where}: weights are not constant")
    if wf.ndim == 3:  # 1-D conv: (O, I, K) -> (O, I, 1, K)
        wf = wf[:, :, None, :]
    cout = wf.shape[0]
    bf = _const_or_zeros(ctx, b_name, cout)
    bn = ctx.fused_of("BatchNormalization")
    if p.int8:
        if bn is not None:
            raise ModelError(f"{ctx.where}: a BatchNormalization after a quantised conv is not "
                             "supported by the simulator")
        w_int, sw = _int8_weights(ctx, w_name, wf, out_axis=0)
        if w_int.ndim == 3:
            w_int = w_int[:, :, None, :]
        _set_int8_weights(ctx, p, w_int, sw, b_name, bf)
    else:
        wf, bf = _fold_bn(ctx, bn, wf.astype(np.float64), bf)
        p.weights, p.bias = wf.astype(np.float32), bf.astype(np.float32)
    w = np.transpose(p.weights, (0, 2, 3, 1))  # OIHW -> OHWI
    cin = p.in_shapes[0][3]
    if ctx.op.kind == OpKind.DEPTHWISE:
        p.weights = np.ascontiguousarray(w[:, :, :, 0].transpose(1, 2, 0))  # (KH, KW, C_out)
        p.extra["ch_mult"] = cout // cin
    else:
        p.weights = np.ascontiguousarray(w)
        p.extra["group"] = ctx.op.attrs.group if ctx.op.attrs else 1


def _const_or_zeros(ctx: OpContext, name: str | None, n: int) -> np.ndarray:
    if name is None:
        return np.zeros(n, dtype=np.float64)
    b = ctx.ox.const(name)
    if b is None:
        raise ModelError(f"{ctx.where}: bias '{name}' is not constant")
    return np.broadcast_to(np.asarray(b, dtype=np.float64).reshape(-1), (n,)).copy()


def _fold_bn(ctx: OpContext, bn: onnx.NodeProto | None, w: np.ndarray,
             b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if bn is None:
        return w, b
    scale, shift = bn_affine(ctx, bn)
    return w * scale.reshape((-1,) + (1,) * (w.ndim - 1)), b * scale + shift


def bn_affine(ctx: OpContext, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    vals = [ctx.ox.const(i) for i in bn.input[1:5]]
    if any(v is None for v in vals):
        raise ModelError(f"{ctx.where}: BatchNormalization parameters are not constant")
    g, beta, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in vals)
    eps = float(node_attrs(bn).get("epsilon", 1e-5))
    scale = g / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _int8_weights(ctx: OpContext, name: str, wf: np.ndarray,
                  out_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights in ONNX order, per-output-channel scales) of a DQ'd (or float) weight."""
    cout = wf.shape[out_axis]
    q = ctx.ox.quantized(name)
    if q is None:  # float weights in an int8 op: symmetric per-channel quantisation
        wmax = np.max(np.abs(np.moveaxis(wf, out_axis, 0)).reshape(cout, -1), axis=1)
        sw = np.where(wmax > 0, wmax / 127.0, 1.0)
        shape = [1] * wf.ndim
        shape[out_axis] = -1
        return np.clip(np.rint(wf / sw.reshape(shape)), -127, 127).astype(np.int8), sw
    raw, scale, zp, axis = q
    if np.any(zp != 0):
        raise ModelError(f"{ctx.where}: weights '{name}' have a non-zero zero point "
                         "(CMSIS-NN needs symmetric weights)")
    if raw.dtype != np.int8:
        raise ModelError(f"{ctx.where}: weights '{name}' are {raw.dtype}, not int8")
    if scale.size > 1 and axis != out_axis:
        raise ModelError(f"{ctx.where}: weights '{name}' are quantised along axis {axis}, not "
                         "the output-channel axis")
    sw = np.broadcast_to(scale.reshape(-1), (cout,)).astype(np.float64)
    return _positive_scales(ctx, name, raw, sw, out_axis)


def _positive_scales(ctx: OpContext, name: str, raw: np.ndarray, sw: np.ndarray,
                     out_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """A channel with a negative scale (some converters write them) is negated: q * s =
    (-q) * (-s), so every requantisation multiplier stays positive, as CMSIS-NN requires."""
    neg = sw < 0
    if not neg.any():
        return raw, sw
    w = np.moveaxis(raw, out_axis, 0).astype(np.int16)
    if (w[neg] == -128).any():
        c = int(np.flatnonzero(neg & (w.reshape(len(sw), -1) == -128).any(axis=1))[0])
        raise ModelError(f"{ctx.where}: weights '{name}' channel {c} has a negative scale and "
                         "the value -128, which has no int8 negation")
    w[neg] = -w[neg]
    return np.moveaxis(w.astype(np.int8), 0, out_axis), np.abs(sw)


def _set_int8_weights(ctx: OpContext, p: OpParams, w_int: np.ndarray, sw: np.ndarray,
                      b_name: str | None, bf: np.ndarray) -> None:
    sx = p.in_qparams[0].scale
    so = p.out_qparams.scale
    p.weights = w_int
    p.w_scales = sw
    p.bias = _int32_bias(ctx, b_name, bf, sx * sw)
    mults = [checked_multiplier(ctx.where, float(sx) * float(s) / float(so)) for s in sw]
    p.multiplier = np.array([m for m, _ in mults], dtype=np.int32)
    p.shift = np.array([s for _, s in mults], dtype=np.int32)


def _int32_bias(ctx: OpContext, name: str | None, bf: np.ndarray, bscale: np.ndarray) -> np.ndarray:
    """The DQ'd int32 bias when its scale is sx*sw[c], else round(b / (sx*sw[c])); a bias
    that does not fit int32 at that scale is refused (clipping it would be silently wrong)."""
    q = ctx.ox.quantized(name) if name else None
    if q is not None:
        raw, scale, zp, _ = q
        s = np.broadcast_to(scale.reshape(-1), bscale.shape)
        if np.all(zp == 0) and np.allclose(s, bscale, rtol=1e-5, atol=0) and raw.size == bf.size:
            return raw.reshape(-1).astype(np.int32)
    with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN are refused just below
        b = np.rint(bf / bscale)
    bad = ~(np.abs(b) <= (1 << 31) - 1)
    if bad.any():
        c = int(np.argmax(bad))
        raise ModelError(f"{ctx.where}: bias '{name}' channel {c} ({float(bf[c]):g}) does not "
                         f"fit int32 at scale {float(bscale[c]):g} (input x weight scale)")
    return b.astype(np.int32)


# -- fully connected ----------------------------------------------------------------------------

def build_fc(ctx: OpContext, p: OpParams) -> None:
    main = ctx.main
    a = node_attrs(main)
    a_name = ctx.ox.act_inputs(main)[0]
    if main.input[0] != a_name or a.get("transA", 0):
        raise ModelError(f"{ctx.where}: the activation must be the first, untransposed operand")
    w_name = main.input[1]
    wf = ctx.ox.const(w_name)
    if wf is None or wf.ndim != 2:
        raise ModelError(f"{ctx.where}: weights must be a constant 2-D matrix")
    trans_b = bool(a.get("transB", 0)) if main.op_type == "Gemm" else False
    out_axis = 0 if trans_b else 1
    cout = wf.shape[out_axis]
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    b_name, bf = _fc_bias(ctx, cout, beta)
    if p.int8:
        if alpha != 1.0 or beta != 1.0:
            raise ModelError(f"{ctx.where}: int8 Gemm needs alpha = beta = 1")
        w_int, sw = _int8_weights(ctx, w_name, wf, out_axis)
        w_int = w_int if trans_b else w_int.T
        _set_int8_weights(ctx, p, w_int, sw, b_name, bf)
        w = p.weights
    else:
        w = (wf if trans_b else wf.T).astype(np.float64) * alpha
        p.bias = bf.astype(np.float32)
    _fc_layout(ctx, p, w, a_name, cout)


def _fc_layout(ctx: OpContext, p: OpParams, w: np.ndarray, a_name: str, cout: int) -> None:
    """Weights `w` (C_out, K) in ONNX column order -> p.weights, and the kernel views."""
    t = ctx.ins[0]
    # column permutation: ONNX's A columns -> positions in the memory of the IR input tensor
    idx = ctx.ox.index_of(t, a_name, set())
    k = w.shape[1]
    idx2 = idx.reshape(-1, k)
    rows = idx2.shape[0]
    if is_identity(idx2, t):
        p.weights = np.ascontiguousarray(w).astype(p.weights.dtype if p.int8 else np.float32)
    elif rows == 1 and idx2.size == t.elements:
        wm = np.empty_like(w)
        wm[:, idx2[0]] = w
        p.weights = wm.astype(np.int8 if p.int8 else np.float32)
    else:
        raise ModelError(f"{ctx.where}: cannot map the input layout onto the weights")
    p.in_shapes, p.in_index = ((rows, k),), (None,)
    p.extra["in_last"] = t.shape[-1] if t.shape else 1
    oshape = ctx.ox.shape(ctx.out.name)
    oidx = ctx.ox.root_index(ctx.out).reshape(rows, -1) if int(np.prod(oshape)) == rows * cout \
        else None
    if oidx is None:
        raise ModelError(f"{ctx.where}: unexpected output shape {oshape}")
    p.out_shape = (rows, cout)
    p.out_index = None if is_identity(oidx, ctx.out) else oidx


def _fc_bias(ctx: OpContext, cout: int, beta: float) -> tuple[str | None, np.ndarray]:
    main = ctx.main
    name = main.input[2] if main.op_type == "Gemm" and len(main.input) > 2 and main.input[2] \
        else None
    bf = _const_or_zeros(ctx, name, cout) * beta
    add = ctx.fused_of("Add")
    if add is not None:
        cn = ctx.ox.const_inputs(add)
        if len(cn) != 1:
            raise ModelError(f"{ctx.where}: fused bias Add has no constant operand")
        if name is not None:
            return None, bf + _const_or_zeros(ctx, cn[0], cout)
        name, bf = cn[0], _const_or_zeros(ctx, cn[0], cout)
    return name, bf
