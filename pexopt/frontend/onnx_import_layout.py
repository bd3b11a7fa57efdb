"""Views and layout of the importer: the axes of a view (Q/DQ, Identity, layout Transpose) in
terms of its root's, which tensors are stored NHWC already (channels_last), and the NHWC shape
the IR gives every tensor."""

from __future__ import annotations

import numpy as np
import onnx

from pexopt.frontend.onnx_import_consts import ConstantFolding
from pexopt.ops import LAYOUT_PERMS, SPECS, OpKind


class LayoutTracking(ConstantFolding):
    def _graph_inputs_layout(self) -> None:
        """A 4-D graph input is NCHW only if an operator reads it with its own shape (not
        through a Reshape or a layout Transpose, as converters from NHWC frameworks emit)."""
        init = {i.name for i in self.g.initializer}
        for inp in self.g.input:
            shape = self.shape(inp.name)
            if inp.name in init or shape is None or len(shape) != 4:
                continue
            direct = any(self.r(i) == inp.name and self.shape(i) == shape
                         for op in self.ops for i in op.node.input if i)
            if not direct:
                self.channels_last.add(inp.name)

    def _propagate_channels_last(self) -> None:
        """A layout-free op (pad, element-wise) before an NHWC->NCHW transpose is NHWC too."""
        prod = {t: op for op in self.ops for t in op.outputs}
        work = list(self.channels_last)
        while work:
            p = prod.get(work.pop())
            if p is None or not (SPECS[p.kind].elementwise or p.kind == OpKind.PAD):
                continue
            for raw in p.node.input:
                if not raw or raw in self.consts:
                    continue
                t = self.r(raw)
                perm = self.view_perm.get(raw)
                direct = raw == t or perm == tuple(range(len(perm or ())))
                if direct and t not in self.channels_last and len(self.shape(t) or ()) == 4:
                    self.channels_last.add(t)
                    work.append(t)

    def _compose(self, node: onnx.NodeProto) -> tuple[int, ...] | None:
        """Axes of this view in terms of its root's axes (None after a reshape)."""
        src = node.input[0]
        base = self.view_perm.get(src, tuple(range(len(self.shape(src) or ()))))
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Identity", "Dropout"):
            return base
        if node.op_type == "Transpose" and base is not None:
            return tuple(base[i] for i in self._perm(node))
        return None

    def _perm(self, node: onnx.NodeProto) -> tuple[int, ...]:
        for a in node.attribute:
            if a.name == "perm":
                return tuple(a.ints)
        return ()

    def _is_layout_transpose(self, node: onnx.NodeProto) -> bool:
        return node.op_type == "Transpose" and self._perm(node) in LAYOUT_PERMS

    def _plain_view(self, raw: str, root: str) -> bool:
        """The op reads the tensor as stored (NHWC), not through a reshape that moves the
        channel axis, so a channel slice of the tensor is a channel slice of what it reads."""
        if raw == root or self.view_perm.get(raw) is not None:
            return True
        rs, vs = self.shape(root), self.shape(raw)
        if rs is None or vs is None or not vs:
            return False
        c = self.nhwc(root, rs)[-1]
        return int(np.prod(vs)) == c and vs[-1] == c  # e.g. (1, 1, 1, C) viewed as (1, C)

    def nhwc(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) == 4 and name not in self.channels_last:
            return (shape[0], shape[2], shape[3], shape[1])
        return shape
