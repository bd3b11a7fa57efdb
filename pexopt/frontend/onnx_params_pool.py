"""Kernel constants of pooling and mean: MaxPool / AveragePool, GlobalAveragePool (NHWC views)
and ReduceMean (the reduced axes in the kernel's layout)."""

from __future__ import annotations

import numpy as np

from pexopt.errors import ModelError
from pexopt.frontend.onnx_index import node_attrs, perm_for
from pexopt.frontend.onnx_params_ctx import OpContext, layout_nchw, set_layout, set_requant
from pexopt.graph.params import OpParams


def build_pool(ctx: OpContext, p: OpParams) -> None:
    layout_nchw(ctx, p)
    a = node_attrs(ctx.main)
    if any(d != 1 for d in a.get("dilations", [1])):
        raise ModelError(f"{ctx.where}: dilated pooling is not supported by the simulator")
    p.extra["count_include_pad"] = bool(a.get("count_include_pad", 0))
    if p.int8:
        set_requant(ctx, p)


def build_gap(ctx: OpContext, p: OpParams) -> None:
    layout_nchw(ctx, p)
    p.extra["axes"] = (1, 2)
    if p.int8:
        set_requant(ctx, p)


def build_reduce_mean(ctx: OpContext, p: OpParams) -> None:
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
