"""Kernel constants of the data-movement operators: Concat, Pad, Resize (nearest) and Transpose;
and of Softmax and the opaque operators, which like Transpose see their inputs in ONNX order."""

from __future__ import annotations

import numpy as np

from pexopt.errors import ModelError
from pexopt.fixedpoint import round_half_away
from pexopt.frontend.onnx_index import node_attrs
from pexopt.frontend.onnx_params_ctx import OpContext, layout_follow, layout_onnx, set_requant
from pexopt.graph.params import OpParams


def build_concat(ctx: OpContext, p: OpParams) -> None:
    if ctx.ox.const_inputs(ctx.main):
        raise ModelError(f"{ctx.where}: Concat with constant inputs is not supported by the "
                         "simulator")
    perm = layout_follow(ctx, p)
    axis = int(node_attrs(ctx.main).get("axis", 1)) % len(perm)
    p.extra["axis"] = perm.index(axis)


def build_pad(ctx: OpContext, p: OpParams) -> None:
    perm = layout_follow(ctx, p)
    main = ctx.main
    a = node_attrs(main)
    pads = a.get("pads")
    if len(main.input) > 1 and main.input[1]:
        pads = ctx.ox.const(main.input[1])
    value, raw = _pad_value(ctx, a)
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


def _pad_value(ctx: OpContext, a: dict) -> tuple[float, int | None]:
    """(float value, raw int value or None) of a constant Pad: attribute or input 2."""
    main = ctx.main
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
    return value, raw


def build_resize(ctx: OpContext, p: OpParams) -> None:
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


def build_transpose(ctx: OpContext, p: OpParams) -> None:
    layout_onnx(ctx, p)
    perm = node_attrs(ctx.main).get("perm")
    p.extra["perm"] = tuple(perm) if perm else tuple(reversed(range(len(p.in_shapes[0]))))
    set_requant(ctx, p)


def build_softmax(ctx: OpContext, p: OpParams) -> None:
    layout_onnx(ctx, p)
    rank = len(p.in_shapes[0])
    default = -1 if ctx.ox.opset >= 13 else 1
    p.extra["axis"] = int(node_attrs(ctx.main).get("axis", default)) % rank
    p.extra["flatten"] = ctx.ox.opset < 13


def build_opaque(ctx: OpContext, p: OpParams) -> None:
    build_softmax(ctx, p)
    p.extra["op_type"] = ctx.op.onnx_type
