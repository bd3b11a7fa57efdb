"""Collection of the importer: each ONNX node on activations is an alias (a view of its input's
root) or an op, its kind (conv, depthwise, grouped, fully connected, ...) and its conv or pool
attributes decided here."""

from __future__ import annotations

import onnx

from pexopt.errors import ModelError
from pexopt.frontend.onnx_import_base import _Op
from pexopt.frontend.onnx_import_layout import LayoutTracking
from pexopt.graph.ir import ConvAttrs, PoolAttrs
from pexopt.ops import ALIAS_ONNX_OPS, ONNX_KIND, OpKind


class OpCollection(LayoutTracking):
    def alias_and_collect(self) -> None:
        for node in self.g.node:
            if all(o in self.consts for o in node.output if o):
                continue
            act_in = [i for i in node.input if i and i not in self.consts]
            if not act_in:
                raise ModelError(f"{self._where(node)}: has no activation input")
            op_type = node.op_type
            if op_type in ALIAS_ONNX_OPS or self._is_layout_transpose(node):
                src = self.r(node.input[0])
                self.root[node.output[0]] = src
                self.view_perm[node.output[0]] = self._compose(node)
                if op_type in ("QuantizeLinear", "DequantizeLinear"):
                    self._record_qparams(node, src)
                if self.view_perm[node.output[0]] == (0, 3, 1, 2):
                    self.channels_last.add(src)  # NHWC data viewed as NCHW
                continue
            self.ops.append(self._make_op(node))
        self._propagate_channels_last()
        self._graph_inputs_layout()

    def _conv_attrs(self, node: onnx.NodeProto, wshape: tuple[int, ...] | None) -> ConvAttrs:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            ishape = self.shape(node.input[0])
            oshape = self.shape(node.output[0])
            pads = self._same_pads(a, ishape, oshape, wshape)
        else:
            p = list(a.get("pads", [0, 0, 0, 0]))
            if len(p) == 2:  # 1-D conv: treat as H=1
                p = [0, p[0], 0, p[1]]
            pads = (p[0], p[1], p[2], p[3])
        k = tuple(a.get("kernel_shape", wshape[2:] if wshape else (1, 1)))
        s = tuple(a.get("strides", (1, 1)))
        d = tuple(a.get("dilations", (1, 1)))
        if len(k) == 1:
            k, s, d = (1, k[0]), (1, s[0]), (1, d[0])
        return ConvAttrs(kernel=(int(k[0]), int(k[1])), stride=(int(s[0]), int(s[1])),
                         dilation=(int(d[0]), int(d[1])), pads=pads,
                         group=int(a.get("group", 1)))

    @staticmethod
    def _same_pads(a: dict, ishape, oshape, wshape) -> tuple[int, int, int, int]:
        k = list(a.get("kernel_shape", wshape[2:] if wshape else (1, 1)))
        s = list(a.get("strides", (1, 1)))
        d = list(a.get("dilations", (1, 1)))
        if ishape is None or oshape is None or len(k) != 2:
            return (0, 0, 0, 0)
        tot = [max(0, (oshape[2 + i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - ishape[2 + i])
               for i in range(2)]
        lower = a.get("auto_pad") in (b"SAME_LOWER", "SAME_LOWER")
        first = [(t + 1) // 2 if lower else t // 2 for t in tot]
        return (first[0], first[1], tot[0] - first[0], tot[1] - first[1])

    def _pool_attrs(self, node: onnx.NodeProto) -> PoolAttrs:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        k = tuple(a.get("kernel_shape", (1, 1)))
        s = tuple(a.get("strides", (1,) * len(k)))
        p = list(a.get("pads", [0] * 2 * len(k)))
        if len(k) == 1:
            k, s, p = (1, k[0]), (1, s[0]), [0, p[0], 0, p[1]]
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            p = list(self._same_pads({"kernel_shape": k, "strides": s, **a},
                                     self.shape(node.input[0]), self.shape(node.output[0]), None))
        return PoolAttrs(kernel=(int(k[0]), int(k[1])), stride=(int(s[0]), int(s[1])),
                         pads=(p[0], p[1], p[2], p[3]))

    def _make_op(self, node: onnx.NodeProto) -> _Op:
        act_in = [self.r(i) for i in node.input if i and i not in self.consts]
        consts = [i for i in node.input if i and i in self.consts]
        outputs = [o for o in node.output if o]
        kind = ONNX_KIND.get(node.op_type, OpKind.OPAQUE)
        attrs: ConvAttrs | PoolAttrs | None = None
        if node.op_type == "Conv":
            if len(act_in) != 1:
                raise ModelError(f"{self._where(node)}: weights must be constant")
            wshape = self.shape(node.input[1])
            attrs = self._conv_attrs(node, wshape)
            ishape = self.shape(node.input[0])
            cin = ishape[1] if ishape and len(ishape) > 1 else 0
            cout = wshape[0] if wshape else 0
            g = attrs.group
            if g < 1 or cin % g or cout % g or (wshape and len(wshape) > 1 and
                                                wshape[1] * g != cin):
                raise ModelError(f"{self._where(node)}: group {g} does not divide its {cin} "
                                 f"input and {cout} output channels into weights "
                                 f"{list(wshape or ())}")
            if attrs.group == 1:
                kind = OpKind.CONV
            elif attrs.group == cin and cout % cin == 0:
                kind = OpKind.DEPTHWISE
            else:
                kind = OpKind.GROUPED_CONV
        elif node.op_type in ("Gemm", "MatMul"):
            kind = OpKind.FULLY_CONNECTED if len(act_in) == 1 else OpKind.MATMUL
        elif node.op_type in ("Add", "Mul") and len(act_in) == 1:
            kind = OpKind.CHANNEL_AFFINE
        elif node.op_type in ("MaxPool", "AveragePool"):
            attrs = self._pool_attrs(node)
        for o in outputs:
            shp = self.shape(o)
            if shp is None:
                raise ModelError(f"{self._where(node)}: output '{o}' has no static shape; "
                                 "pass --input-shape to fix the input dimensions")
        raw = [i for i in node.input if i and i not in self.consts]
        return _Op(node=node, kind=kind, inputs=act_in, outputs=outputs, consts=consts,
                   attrs=attrs, fused=[node.name or node.output[0]], raw_inputs=raw)
