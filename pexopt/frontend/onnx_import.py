"""ONNX -> IR: constants dropped, Q/DQ and reshapes aliased, BN/bias/Pad/activations fused.

A QDQ model and its float original give the same IR: Quantize/DequantizeLinear are views of the
int8 tensor they describe, and every activation is sized in the deployment dtype.

The importer's state and lookups are in onnx_import_base.py, its Q/DQ checks in
onnx_import_quant.py, its constants in onnx_import_consts.py, its views and NCHW/NHWC tracking
in onnx_import_layout.py, each class built on the one before.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from pexopt.errors import ModelError
from pexopt.frontend.onnx_import_base import ONNX_DTYPES, QUANTISED, _Op
from pexopt.frontend.onnx_import_layout import LayoutTracking
from pexopt.frontend.onnx_import_quant import check_scale
from pexopt.frontend.onnx_load import (
    MAX_ACTIVATION_BYTES,
    MAX_ELEMENTS,
    load_model,
    sha256_file,
)
from pexopt.frontend.onnx_source import OnnxSource
from pexopt.graph.ir import (
    DTYPE_BYTES,
    Activation,
    ConvAttrs,
    Graph,
    Op,
    PoolAttrs,
    Tensor,
)
from pexopt.ops import ALIAS_ONNX_OPS, ONNX_KIND, SPECS, OpKind

__all__ = ["check_scale", "import_onnx"]


class _Importer(LayoutTracking):
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

    def _consumers(self) -> dict[str, list[_Op]]:
        cons: dict[str, list[_Op]] = {}
        for op in self.ops:
            if not op.dead:
                for t in op.inputs:
                    cons.setdefault(t, []).append(op)
        return cons

    def _graph_outputs(self) -> set[str]:
        return {self.r(o.name) for o in self.g.output}

    def _fuse_into_producer(self, want: callable, producer_ok: callable,
                            apply: callable) -> None:
        """Fuse each op accepted by `want` into the sole-consumer producer `producer_ok` accepts."""
        outs = self._graph_outputs()
        prod = {t: op for op in self.ops if not op.dead for t in op.outputs}
        cons = self._consumers()
        for op in self.ops:
            if op.dead or not want(op) or len(op.inputs) != 1:
                continue
            t = op.inputs[0]
            p = prod.get(t)
            if p is None or p.dead or len(p.outputs) != 1 or t in outs or not producer_ok(p, op):
                continue
            if len(cons.get(t, [])) != 1:
                continue
            apply(p, op)
            p.outputs = op.outputs
            p.fused += op.fused
            p.consts += op.consts
            op.dead = True
            for o in op.outputs:
                prod[o] = p

    def fuse(self) -> None:
        # BatchNormalization into the conv before it; a constant bias Add into Gemm/MatMul.
        self._fuse_into_producer(
            lambda op: op.node.op_type == "BatchNormalization",
            lambda p, op: p.kind in (OpKind.CONV, OpKind.DEPTHWISE, OpKind.GROUPED_CONV),
            lambda p, op: None)
        self._fuse_into_producer(
            lambda op: op.node.op_type == "Add" and op.kind == OpKind.CHANNEL_AFFINE,
            lambda p, op: p.kind == OpKind.FULLY_CONNECTED and p.activation is None
            and len(p.consts) < 2,
            lambda p, op: None)
        self._fuse_into_producer(
            lambda op: SPECS[op.kind].is_activation,
            lambda p, op: SPECS[p.kind].takes_activation and p.activation is None,
            lambda p, op: setattr(p, "activation", self._activation(op)))
        if self.fold_pad:
            self._fold_pads()

    def _activation(self, op: _Op) -> Activation:
        if op.kind == OpKind.RELU:
            return Activation("relu", 0.0, None)
        lo = hi = None
        node = op.node
        if len(node.input) > 1 and node.input[1]:
            v = self.const(node.input[1])
            lo = float(np.asarray(v).reshape(-1)[0]) if v is not None else None
        if len(node.input) > 2 and node.input[2]:
            v = self.const(node.input[2])
            hi = float(np.asarray(v).reshape(-1)[0]) if v is not None else None
        for a in node.attribute:
            if a.name == "min":
                lo = a.f
            elif a.name == "max":
                hi = a.f
        name = "relu6" if (lo, hi) == (0.0, 6.0) else ("relu" if lo == 0.0 and hi is None
                                                        else "clip")
        return Activation(name, lo, hi)

    def _fold_pads(self) -> None:
        """Fold a zero constant spatial Pad into every conv that reads it (convs pad with zp)."""
        cons = self._consumers()
        outs = self._graph_outputs()
        for op in self.ops:
            if op.dead or op.node.op_type != "Pad" or len(op.inputs) != 1:
                continue
            t = op.outputs[0]
            readers = cons.get(t, [])
            if not readers or t in outs or any(
                    c.kind not in (OpKind.CONV, OpKind.DEPTHWISE, OpKind.GROUPED_CONV)
                    for c in readers):
                continue
            pads = self._pad_amounts(op)
            if pads is None:
                continue
            for c in readers:
                a = c.attrs
                assert isinstance(a, ConvAttrs)
                c.attrs = replace(a, pads=tuple(x + y for x, y in zip(a.pads, pads)))
                c.raw_inputs = [op.raw_inputs[0] if i == t else r
                                for i, r in zip(c.inputs, c.raw_inputs)]
                c.inputs = [op.inputs[0] if i == t else i for i in c.inputs]
                c.fused = op.fused + c.fused
            op.dead = True

    def _pad_amounts(self, op: _Op) -> tuple[int, int, int, int] | None:
        node = op.node
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        if mode not in (b"constant", "constant"):
            return None
        pads = self.const(node.input[1]) if len(node.input) > 1 else None
        if pads is None:
            return None
        value = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if value is not None and float(np.asarray(value, dtype=np.float64).reshape(-1)[0]) != 0.0:
            zp = self.qparams.get(op.inputs[0])
            raw = np.asarray(value).reshape(-1)[0]
            if not (zp is not None and value.dtype.kind in "iu" and int(raw) == zp.zero_point):
                return None
        p = [int(x) for x in np.asarray(pads).reshape(-1)]
        if len(p) != 8:
            return None
        if op.outputs[0] in self.channels_last:  # begins (N, H, W, C) then ends (N, H, W, C)
            p = [p[0], p[3], p[1], p[2], p[4], p[7], p[5], p[6]]
        if any(p[i] for i in (0, 1, 4, 5)) or any(x < 0 for x in p):
            return None  # only non-negative spatial pads
        # begins (N, C, H, W) then ends (N, C, H, W); ours: top, left, bottom, right
        return (p[2], p[3], p[6], p[7])

    def tensor_dtype(self, name: str) -> str:
        et = self.elem_type(name)
        dt = ONNX_DTYPES.get(et)
        if dt is None:
            raise ModelError(f"{self.path}: tensor '{name}' has unsupported dtype "
                             f"{onnx.TensorProto.DataType.Name(et) if et else 'unknown'}")
        return dt

    def _reduced_dim(self, op: _Op) -> int | None:
        """K of a Gemm/MatMul: the last (Gemm transA: first) dim of its ONNX input A."""
        if op.kind not in (OpKind.FULLY_CONNECTED, OpKind.MATMUL):
            return None
        shape = self.shape(op.node.input[0])
        if not shape:
            return None
        trans_a = any(a.name == "transA" and a.i for a in op.node.attribute)
        return shape[-2] if trans_a and len(shape) >= 2 else shape[-1]

    def freeze(self, input_external: bool) -> tuple[list[Tensor], list[Op], list[int], list[int]]:
        live_ops = [op for op in self.ops if not op.dead]
        init = {i.name for i in self.g.initializer}
        graph_inputs = [self.r(i.name) for i in self.g.input if i.name not in init]
        graph_outputs = [self.r(o.name) for o in self.g.output]
        names: list[str] = []
        for t in graph_inputs:
            names.append(t)
        for op in live_ops:
            names.extend(op.outputs)
        for op in live_ops:
            names.extend(op.inputs)
        names.extend(graph_outputs)
        order = list(dict.fromkeys(names))
        tid = {n: i for i, n in enumerate(order)}
        tensors: list[Tensor] = []
        for n in order:
            shape = self.shape(n)
            if shape is None:
                raise ModelError(f"{self.path}: tensor '{n}' has no static shape")
            if any(d <= 0 for d in shape) and shape:
                raise ModelError(f"{self.path}: tensor '{n}' has a zero or negative dimension")
            dt = self.tensor_dtype(n)
            q = self.qparams.get(n)
            deploy = self.dtype if dt in QUANTISED else dt
            if self.qparams and q is None and dt in ("float32", "float16"):
                deploy = dt  # a QDQ model computes this tensor in float on the device too
            if q is not None and self.dtype == "int8":
                deploy = "int8"
            elems = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if elems > MAX_ELEMENTS:
                raise ModelError(f"{self.path}: tensor '{n}' has {elems} elements, too large "
                                 f"for an MCU (cap {MAX_ELEMENTS:,} per tensor)")
            ext = input_external and n in graph_inputs
            tensors.append(Tensor(id=tid[n], name=n, shape=self.nhwc(n, shape), dtype=deploy,
                                  nbytes=elems * DTYPE_BYTES[deploy], qparams=q, external=ext))
        total = sum(t.nbytes for t in tensors)
        if total > MAX_ACTIVATION_BYTES:
            raise ModelError(f"{self.path}: the activation tensors hold {total:,} B together, "
                             f"more than the cap of {MAX_ACTIVATION_BYTES:,} B")
        ops: list[Op] = []
        for k, op in enumerate(live_ops):
            ins = tuple(tid[t] for t in op.inputs)
            outs = tuple(tid[t] for t in op.outputs)
            ops.append(Op(id=k, name=op.node.name or op.node.output[0], kind=op.kind,
                          onnx_type=op.node.op_type, inputs=ins, outputs=outs,
                          macs=_macs(op.kind, op.attrs, [tensors[i] for i in ins],
                                     [tensors[o] for o in outs], self._reduced_dim(op)),
                          attrs=op.attrs, activation=op.activation, consts=tuple(op.consts),
                          onnx_nodes=tuple(op.fused),
                          plain_inputs=tuple(self._plain_view(r, t)
                                             for r, t in zip(op.raw_inputs, op.inputs))))
        return tensors, ops, [tid[t] for t in dict.fromkeys(graph_inputs)], [
            tid[t] for t in dict.fromkeys(graph_outputs)]


def _macs(kind: OpKind, attrs: object, ins: list[Tensor], outs: list[Tensor],
          reduced: int | None = None) -> int:
    out_elems = sum(t.elements for t in outs)
    if isinstance(attrs, ConvAttrs) and ins:
        cin = ins[0].shape[-1] if len(ins[0].shape) == 4 else 1
        return out_elems * (cin // attrs.group) * attrs.kernel[0] * attrs.kernel[1]
    if kind in (OpKind.FULLY_CONNECTED, OpKind.MATMUL) and ins:
        # the reduced dimension is the one the ONNX node sees, not the last dimension of the
        # tensor a Reshape/Flatten before it aliases (e.g. (1,28,28,1) flattened to (1,784))
        k = reduced if reduced else (ins[0].shape[-1] if ins[0].shape else 1)
        return out_elems * k
    if isinstance(attrs, PoolAttrs):
        return out_elems * attrs.kernel[0] * attrs.kernel[1]
    if kind in (OpKind.GLOBAL_AVGPOOL, OpKind.REDUCE_MEAN) and ins:
        return ins[0].elements
    return out_elems


def import_onnx(path: str | Path, dtype: str = "int8", input_external: bool = False,
                fold_pad: bool = True,
                input_shapes: dict[str, tuple[int, ...]] | None = None) -> Graph:
    """Import an ONNX file into the fused IR.

    dtype: deployment dtype of activations ('int8' or 'float32'); input_external: the graph input
    is not in the arena; fold_pad: fold zero Pads into the convs that read them (TFLM does not).
    """
    if dtype not in ("int8", "float32"):
        raise ModelError(f"--dtype: '{dtype}' is not int8 or float32")
    model = load_model(path, input_shapes)
    imp = _Importer(model, str(path), dtype, fold_pad)
    imp.find_constants()
    imp.check_quantisation()
    imp.alias_and_collect()
    if not imp.ops:
        raise ModelError(f"{path}: the model has no operators on activations")
    imp.fuse()
    tensors, ops, inputs, outputs = imp.freeze(input_external)
    notes = []
    if input_external:
        notes.append("graph input external (not in the arena)")
    return Graph(name=Path(path).stem, tensors=tuple(tensors), ops=tuple(ops),
                 inputs=tuple(inputs), outputs=tuple(outputs), dtype=dtype,
                 source_sha256=sha256_file(path), source_path=str(path), notes=tuple(notes),
                 source=OnnxSource(model, str(path)))
