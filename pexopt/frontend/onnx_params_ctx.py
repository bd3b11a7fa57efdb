"""What every kernel-constant builder (onnx_params_*.py) shares: the per-op context, the kernel
views (the layout contract of onnx_params.py's docstring) and the requantisation multipliers the
int32 kernels can apply."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from pexopt.errors import ModelError
from pexopt.fixedpoint import quantize_multiplier
from pexopt.frontend.onnx_index import (
    NHWC,
    OnnxIndex,
    expand_rank,
    is_identity,
    perm_for,
    to4d_nchw,
)
from pexopt.graph.ir import Graph, Op, Tensor
from pexopt.graph.params import OpParams

MAX_MULTIPLIER = float(1 << 31)  # a larger real multiplier needs a left shift beyond int32


@dataclass
class OpContext:
    """The op being built: its ONNX node (`main`), the nodes fused into it, its IR tensors."""

    ox: OnnxIndex
    graph: Graph
    op: Op
    main: onnx.NodeProto
    fused: list[onnx.NodeProto]
    ins: list[Tensor]
    out: Tensor

    @property
    def where(self) -> str:
        return self.ox.where(self.op)

    def fused_of(self, op_type: str) -> onnx.NodeProto | None:
        return next((n for n in self.fused if n.op_type == op_type and n is not self.main), None)


# -- kernel views ------------------------------------------------------------------------------

def set_layout(ctx: OpContext, p: OpParams, perm: tuple[int, ...], in_fix, out_fix) -> None:
    """Kernel views: ONNX index arrays, rank-fixed by `in_fix`/`out_fix`, permuted by `perm`."""
    skip = {n.name or n.output[0] for n in ctx.fused if n.op_type == "Pad"}
    values = ctx.ox.act_inputs(ctx.main)
    if len(values) != len(ctx.ins):
        raise ModelError(f"{ctx.where}: {len(values)} activation inputs, IR has {len(ctx.ins)}")
    shapes, index = [], []
    for t, v in zip(ctx.ins, values):
        idx = np.transpose(in_fix(ctx.ox.index_of(t, v, skip)), perm)
        shapes.append(tuple(idx.shape))
        index.append(None if is_identity(idx, t) else idx)
    oidx = np.transpose(out_fix(ctx.ox.root_index(ctx.out)), perm)
    p.in_shapes, p.in_index = tuple(shapes), tuple(index)
    p.out_shape = tuple(oidx.shape)
    p.out_index = None if is_identity(oidx, ctx.out) else oidx


def layout_nchw(ctx: OpContext, p: OpParams) -> None:
    fix = lambda i: to4d_nchw(i, ctx.where)  # noqa: E731
    set_layout(ctx, p, NHWC, fix, fix)


def layout_follow(ctx: OpContext, p: OpParams, out_fix=None) -> tuple[int, ...]:
    """Element-wise kinds: the kernel works in the output's memory order; returns the perm."""
    oshape = ctx.ox.shape(ctx.out.name)
    rank = len(oshape)
    perm = perm_for(ctx.out.shape, oshape)
    set_layout(ctx, p, perm, lambda i: expand_rank(i, rank), out_fix or (lambda i: i))
    return perm


def layout_onnx(ctx: OpContext, p: OpParams) -> None:
    set_layout(ctx, p, tuple(range(len(ctx.ox.shape(ctx.out.name)))), lambda i: i, lambda i: i)


# -- requantisation -----------------------------------------------------------------------------

def checked_multiplier(where: str, real: float) -> tuple[int, int]:
    """quantize_multiplier of a real rescale factor the int32 kernels can apply: finite,
    positive and below 2^31 (scales are checked at import; their ratios can still overflow)."""
    if not (math.isfinite(real) and 0 < real < MAX_MULTIPLIER):
        raise ModelError(f"{where}: requantisation factor {real:g} (input x weight / output "
                         f"scale) is outside (0, 2^31): the quantisation scales are unusable")
    return quantize_multiplier(real)


def set_requant(ctx: OpContext, p: OpParams) -> None:
    """Whether an int8 data-movement op must rescale (input and output qparams differ)."""
    if not p.int8:
        return
    qi, qo = p.in_qparams[0], p.out_qparams
    p.extra["same_q"] = qi == qo
    p.extra["out"] = checked_multiplier(ctx.where, float(qi.scale) / float(qo.scale))
