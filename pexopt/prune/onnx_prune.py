"""Write a structurally pruned ONNX model: fewer filters, and consumers that read fewer channels.

For every node, the kept channels of its input and output values (from the group layouts)
decide what is cut: a producer's filters (weight output axis, bias, per-channel quantisation
scales and zero points) and its weight columns for removed input channels; a channel-following
op's per-channel constants (depthwise weights, BatchNormalization parameters, per-axis QDQ
scales) and its `group` attribute; a channel-keeping Reshape's target shape. Ties (Add) and
Concat need no change: their inputs are already cut consistently.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from pexopt.errors import PexError
from pexopt.ops import CHANNEL_VECTOR_OPS, SHAPE_INPUT_OPS, WEIGHT_AXES, Channels
from pexopt.prune.consts import Consts, dq_axis
from pexopt.prune.groups import Groups, Layout, node_name, weight_axes

Cut = tuple[int, np.ndarray]  # (axis, kept indices)


def kept_channels(layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray | None:
    """Kept channel indices of a value, or None when it keeps all its channels."""
    idx, off, cut = [], 0, False
    for p in layout.parts:
        k = keep.get(p.group)
        if k is not None and len(k) < p.size:
            cut = True
            idx.append(off + k)
        else:
            idx.append(off + np.arange(p.size))
        off += p.size
    return np.concatenate(idx).astype(np.int64) if cut else None


class _Writer:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.m = model
        self.consts = Consts(model)
        self.names = {i.name for i in model.graph.initializer} | {
            o for n in model.graph.node for o in n.output} | {n.name for n in model.graph.node}
        self.new_nodes: list[onnx.NodeProto] = []

    def unique(self, base: str) -> str:
        name, k = f"{base}_pruned", 1
        while name in self.names:
            k += 1
            name = f"{base}_pruned{k}"
        self.names.add(name)
        return name

    def add_init(self, base: str, arr: np.ndarray) -> str:
        name = self.unique(base)
        self.m.graph.initializer.append(numpy_helper.from_array(arr, name))
        return name

    def cut(self, value: str, cuts: list[Cut]) -> str:
        """A new constant: `value` with only the kept indices along each cut axis."""
        cuts = [(a, k) for a, k in cuts if k is not None]
        if not cuts:
            return value
        if value in self.consts.inits:
            arr = numpy_helper.to_array(self.consts.inits[value])
            for axis, keep in cuts:
                arr = np.take(arr, keep, axis=axis)
            return self.add_init(value, arr)
        node = self.consts.dq[value]  # DequantizeLinear: cut the data and per-axis params
        x = numpy_helper.to_array(self.consts.inits[node.input[0]])
        qaxis = dq_axis(node, x.ndim)
        new_in = [self.cut(node.input[0], cuts)]
        for p in node.input[1:]:
            if p and numpy_helper.to_array(self.consts.inits[p]).size > 1:
                new_in.append(self.cut(p, [(0, k) for a, k in cuts if a == qaxis]))
            else:
                new_in.append(p)
        out = self.unique(value)
        dq = helper.make_node("DequantizeLinear", new_in, [out], name=self.unique(node.name
                                                                                   or value))
        dq.attribute.extend(node.attribute)
        self.new_nodes.append(dq)
        return out

    def vector_axis(self, node: onnx.NodeProto, const: str, axis: int, rank: int,
                    channels: int) -> int | None:
        """Axis of a per-channel constant of `node` (None: not per-channel, leave it)."""
        shape = self.consts.shape(const)
        if node.op_type in CHANNEL_VECTOR_OPS and len(shape) == 1:
            return 0 if shape[0] == channels and channels > 1 else None
        k = axis - (rank - len(shape))  # numpy broadcasting aligns from the right
        return k if 0 <= k < len(shape) and shape[k] == channels and channels > 1 else None


def prune_onnx(model: onnx.ModelProto, groups: Groups, keep: dict[int, np.ndarray]
               ) -> onnx.ModelProto:
    """A copy of `model` keeping, for each group, the channel indices in `keep[group]`."""
    for g, k in keep.items():
        if g in groups.fixed and len(k) < groups.size[g]:
            raise PexError(f"pruning: channel group {g} is fixed and cannot lose channels")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    w = _Writer(m)
    lay = groups.layouts

    def kept(v: str) -> np.ndarray | None:
        return kept_channels(lay[v], keep) if v in lay else None

    for node in m.graph.node:
        rule = groups.rules.get(node_name(node))
        if rule is None or rule == Channels.FIXED:
            continue
        out = node.output[0]
        k_out = kept(out)
        if rule == Channels.PRODUCE:
            out_ax, in_ax = weight_axes(node)
            node.input[1] = w.cut(node.input[1], [(out_ax, k_out), (in_ax, kept(node.input[0]))])
            if len(node.input) > 2 and node.input[2] and k_out is not None:
                b = node.input[2]
                ax = w.vector_axis(node, b, lay[out].axis, len(_rank(m, out, lay[out])),
                                   lay[out].channels)
                if ax is not None:
                    node.input[2] = w.cut(b, [(ax, k_out)])
                elif w.consts.raw(b).size > 1:
                    raise PexError(f"pruning: bias '{b}' of '{node_name(node)}' is not per "
                                   "output channel")
        elif rule == Channels.FOLLOW and k_out is not None:
            src = lay[node.input[0]]
            for j, c in enumerate(node.input[1:], start=1):
                if not c or not w.consts.is_const(c):
                    continue
                if node.op_type in WEIGHT_AXES and j == 1:  # depthwise weight: its output axis
                    ax: int | None = weight_axes(node)[0]
                else:
                    ax = w.vector_axis(node, c, src.axis, len(_rank(m, node.input[0], src)),
                                       src.channels)
                if ax is not None:
                    node.input[j] = w.cut(c, [(ax, k_out)])
            for a in node.attribute:
                if a.name == "group" and a.i == src.channels:
                    a.i = len(k_out)
        elif rule == Channels.RESHAPE and k_out is not None and node.op_type in SHAPE_INPUT_OPS:
            shape = numpy_helper.to_array(w.consts.inits[node.input[1]]).copy()
            ax = lay[out].axis
            if shape[ax] == lay[out].channels:
                shape[ax] = len(k_out)
                node.input[1] = w.add_init(node.input[1], shape)
    m.graph.node.extend(w.new_nodes)
    _tidy(m)
    return m


def _rank(m: onnx.ModelProto, value: str, layout: Layout) -> tuple[int, ...]:
    for vi in (*m.graph.value_info, *m.graph.input, *m.graph.output):
        if vi.name == value:
            return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
    return (0,) * (layout.axis + 1)


def _tidy(m: onnx.ModelProto) -> None:
    """Drop what is no longer read, sort topologically, re-infer shapes and check."""
    g = m.graph
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input} | outputs
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    del g.value_info[:]
    produced: set[str] = {i.name for i in g.input} | {i.name for i in g.initializer}
    nodes, pending = [], list(g.node)
    while pending:  # new DequantizeLinear nodes were appended after their consumers
        ready = [n for n in pending if all(not i or i in produced for i in n.input)]
        if not ready:
            raise PexError("pruning: the pruned graph has an unresolved input")
        for n in ready:
            nodes.append(n)
            produced.update(o for o in n.output if o)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del g.node[:]
    g.node.extend(nodes)
    try:
        inferred = shape_inference.infer_shapes(m, strict_mode=True)
        onnx.checker.check_model(inferred)
    except Exception as e:  # a bug of ours: say where, not a traceback
        raise PexError(f"pruning: the pruned model is not valid ONNX: "
                       f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
    g.value_info.extend(inferred.graph.value_info)
