"""Channel groups: which output channels of a model can be removed, and which move together.

Every activation value gets a `Layout`: its channel axis and its channels as a sequence of parts,
each part a run of channels of one group. A dense Conv/Gemm/MatMul (`Channels.PRODUCE` in
pexopt/ops.py) starts a new group; channel-preserving ops pass their input's layout on; an
element-wise op over several activations ties its inputs' groups (union-find); a Concat along
the channel axis concatenates its inputs' parts. Groups reaching a model output, a reshape that
would mix channels with other dimensions, or an op the table does not know are fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from pexopt.ops import (
    ACTIVATION_CHANNEL_AXIS,
    ALIAS_CHANNELS,
    ONNX_KIND,
    SHAPE_INPUT_OPS,
    SPECS,
    WEIGHT_AXES,
    Channels,
    OpKind,
)
from pexopt.prune.consts import Consts


@dataclass(frozen=True)
class Part:
    """`size` consecutive channels that are the channels of group `group` (original count)."""

    group: int
    size: int


@dataclass(frozen=True)
class Layout:
    """Channel axis of a value (in its ONNX shape) and its channels as parts."""

    axis: int
    parts: tuple[Part, ...]

    @property
    def channels(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass
class Groups:
    """Result of the analysis; group ids are union-find roots after `find_groups`."""

    layouts: dict[str, Layout]  # ONNX value name -> layout
    size: dict[int, int]  # group -> channels in the original model
    fixed: set[int]
    producers: dict[int, list[str]]  # group -> names of the PRODUCE nodes writing its channels
    rules: dict[str, Channels] = field(default_factory=dict)  # node name -> rule applied

    def free(self) -> list[int]:
        """Groups whose channel count may change, in a stable order."""
        return sorted(g for g in self.size if g not in self.fixed)


def node_name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def weight_axes(node: onnx.NodeProto) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of the node's weight (input 1)."""
    out_ax, in_ax = WEIGHT_AXES[node.op_type]
    if any(a.name == "transB" and a.i for a in node.attribute):
        out_ax, in_ax = in_ax, out_ax
    return out_ax, in_ax


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


class _Analysis:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.consts = Consts(model)
        self.shapes: dict[str, tuple[int, ...]] = {}
        for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self.shapes[vi.name] = tuple(d.dim_value for d in dims)
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.fixed: set[int] = set()
        self.producers: dict[int, list[str]] = {}
        self.layouts: dict[str, Layout] = {}
        self.rules: dict[str, Channels] = {}

    # -- union-find ----------------------------------------------------------------------------
    def new_group(self, size: int, fixed: bool = False) -> int:
        g = len(self.parent)
        self.parent[g], self.size[g] = g, size
        if fixed:
            self.fixed.add(g)
        return g

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.fixed:
                self.fixed.add(ra)

    def fix(self, layout: Layout | None) -> None:
        for p in layout.parts if layout else ():
            self.fixed.add(self.find(p.group))

    def fresh(self, name: str, fixed: bool = True) -> None:
        """A layout of one new group for value `name` (fixed unless said otherwise)."""
        shape = self.shapes.get(name)
        if shape is None or len(shape) < 2:
            self.layouts[name] = Layout(0, (Part(self.new_group(0, True), 0),))
            return
        self.layouts[name] = Layout(1, (Part(self.new_group(shape[1], fixed), shape[1]),))

    # -- classification ------------------------------------------------------------------------
    def rule(self, node: onnx.NodeProto, acts: list[str]) -> Channels:
        """The table's channel rule for this node, after the importer's refinements."""
        if node.op_type in ALIAS_CHANNELS:
            return ALIAS_CHANNELS[node.op_type]
        kind = ONNX_KIND.get(node.op_type, OpKind.OPAQUE)
        if kind == OpKind.CONV:
            w = node.input[1] if len(node.input) > 1 else ""
            if not self.consts.is_const(w) or acts != [node.input[0]]:
                return Channels.FIXED
            group, ishape = _attr(node, "group", 1), self.shapes.get(node.input[0], ())
            cin, cout = (ishape[1] if len(ishape) > 1 else 0), self.consts.shape(w)[0]
            kind = (OpKind.CONV if group == 1 else OpKind.DEPTHWISE
                    if group == cin == cout else OpKind.GROUPED_CONV)
        elif kind in (OpKind.FULLY_CONNECTED, OpKind.MATMUL):
            w = node.input[1] if len(node.input) > 1 else ""
            ok = acts == [node.input[0]] and self.consts.is_const(w) and not _attr(
                node, "transA", 0)
            kind = OpKind.FULLY_CONNECTED if ok else OpKind.MATMUL
        elif kind in (OpKind.ADD, OpKind.MUL) and len(acts) == 1:
            kind = OpKind.CHANNEL_AFFINE
        return SPECS[kind].prune

    # -- propagation ---------------------------------------------------------------------------
    def run(self) -> None:
        g = self.model.graph
        inits = {i.name for i in g.initializer}
        for vi in g.input:
            if vi.name not in inits:
                self.fresh(vi.name)
        for node in g.node:
            ins = [i for i in node.input if i]
            if ins and all(self.consts.is_const(i) for i in ins):
                continue  # constant subgraph (a weight's DequantizeLinear)
            acts = [i for i in ins if not self.consts.is_const(i)]
            rule = self.rule(node, acts)
            if any(a not in self.layouts for a in acts) or not acts:
                rule = Channels.FIXED
            ok = getattr(self, f"_{rule.value}")(node, acts)
            if not ok:
                rule = Channels.FIXED
                self._fixed(node, acts)
            self.rules[node_name(node)] = rule
        for vi in g.output:
            self.fix(self.layouts.get(vi.name))

    def _out(self, node: onnx.NodeProto) -> str | None:
        outs = [o for o in node.output if o]
        return outs[0] if len(outs) == 1 and outs[0] in self.shapes else None

    def _fixed(self, node: onnx.NodeProto, acts: list[str]) -> bool:
        for a in acts:
            self.fix(self.layouts.get(a))
        for o in node.output:
            if o:
                self.fresh(o)
        return True

    def _produce(self, node: onnx.NodeProto, acts: list[str]) -> bool:
        out = self._out(node)
        x = self.layouts[acts[0]]
        ishape = self.shapes.get(acts[0], ())
        if out is None or not ishape:
            return False
        act_axis = ACTIVATION_CHANNEL_AXIS[node.op_type]
        out_axis = act_axis % len(self.shapes[out])
        out_ax, in_ax = weight_axes(node)
        wshape = self.consts.shape(node.input[1])
        if x.axis != act_axis % len(ishape) or wshape[in_ax] != x.channels:
            self.fix(x)  # the input's channels do not map to weight columns one to one
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and not self.consts.is_const(bias):
            return False
        c = wshape[out_ax]
        grp = self.new_group(c)
        self.producers[grp] = [node_name(node)]
        self.layouts[out] = Layout(out_axis, (Part(grp, c),))
        return True

    def _follow(self, node: onnx.NodeProto, acts: list[str]) -> bool:
        out = self._out(node)
        src = self.layouts[acts[0]]
        if out is None or len(acts) != 1:
            return False
        axis = src.axis
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if perm is not None:  # a Transpose moves the channel axis
            axis = perm.index(axis)
        oshape = self.shapes[out]
        if axis >= len(oshape) or oshape[axis] != src.channels:
            return False  # e.g. a Pad over channels
        self.layouts[out] = Layout(axis, src.parts)
        return True

    def _tie(self, node: onnx.NodeProto, acts: list[str]) -> bool:
        out = self._out(node)
        lays = [self.layouts[a] for a in acts]
        ranks = {len(self.shapes.get(a, ())) for a in acts}
        sizes = {tuple(p.size for p in la.parts) for la in lays}
        # broadcasting over other dimensions (x * gate[N, C, 1, 1]) keeps channel identity
        if out is None or len(ranks) != 1 or len(sizes) != 1 or len({la.axis for la in lays}) != 1:
            return False
        for la in lays[1:]:
            for p, q in zip(lays[0].parts, la.parts):
                self.union(p.group, q.group)
        self.layouts[out] = lays[0]
        return True

    def _concat(self, node: onnx.NodeProto, acts: list[str]) -> bool:
        out = self._out(node)
        if out is None or acts != [i for i in node.input if i]:
            return False
        lays = [self.layouts[a] for a in acts]
        axis = _attr(node, "axis", 1)
        axis = axis + len(self.shapes[out]) if axis < 0 else axis
        if any(la.axis != axis for la in lays):
            return False
        self.layouts[out] = Layout(axis, tuple(p for la in lays for p in la.parts))
        return True

    def _reduce(self, node: onnx.NodeProto, acts: list[str]) -> bool:
        out = self._out(node)
        src = self.layouts[acts[0]]
        rank = len(self.shapes.get(acts[0], ()))
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        if axes is None and len(node.input) > 1 and node.input[1] in self.consts.inits:
            axes = [int(a) for a in self.consts.raw(node.input[1]).ravel()]  # opset 18
        if out is None or not axes or not rank:
            return False  # no axes: everything is reduced
        axes = [a % rank for a in axes]
        if src.axis in axes:
            return False
        keep = _attr(node, "keepdims", 1)
        self.layouts[out] = Layout(src.axis if keep else src.axis - sum(a < src.axis
                                                                        for a in axes),
                                   src.parts)
        return True

    def _reshape(self, node: onnx.NodeProto, acts: list[str]) -> bool:
        """Keeps channels only for [N, C, 1, 1] <-> [N, C]-like views (no index mapping)."""
        out = self._out(node)
        src = self.layouts[acts[0]]
        ishape = self.shapes.get(acts[0])
        if out is None or ishape is None:
            return False
        oshape = self.shapes[out]
        c = src.channels
        if any(d != 1 for k, d in enumerate(ishape) if k not in (0, src.axis)):
            return False
        hits = [k for k, d in enumerate(oshape) if k > 0 and d == c]
        rest = [d for k, d in enumerate(oshape) if k > 0 and k not in hits[:1]]
        if len(hits) != 1 or any(d != 1 for d in rest) or oshape[0] != ishape[0] or c <= 1:
            return False
        shape_in = node.input[1] if len(node.input) > 1 else ""
        if node.op_type in SHAPE_INPUT_OPS and shape_in not in self.consts.inits:
            return False  # a computed target shape cannot be rewritten
        self.layouts[out] = Layout(hits[0], src.parts)
        return True


def find_groups(model: onnx.ModelProto) -> Groups:
    """Analyse a shape-inferred, topologically sorted model (pexopt.frontend.onnx_load)."""
    an = _Analysis(model)
    an.run()
    roots = {g: an.find(g) for g in an.parent}
    layouts = {v: Layout(la.axis, tuple(Part(roots[p.group], p.size) for p in la.parts))
               for v, la in an.layouts.items()}
    fixed = {roots[g] for g in an.fixed}
    producers: dict[int, list[str]] = {}
    for g, names in an.producers.items():
        producers.setdefault(roots[g], []).extend(names)
    size = {r: an.size[r] for r in set(roots.values())}
    for r in size:
        if r not in producers or size[r] <= 1:
            fixed.add(r)  # no filters to rank (or nothing to remove)
    return Groups(layouts, size, fixed, producers, an.rules)
