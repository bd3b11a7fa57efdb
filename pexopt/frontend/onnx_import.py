"""ONNX -> IR: constants dropped, Q/DQ and reshapes aliased, BN/bias/Pad/activations fused.

A QDQ model and its float original give the same IR: Quantize/DequantizeLinear are views of the
int8 tensor they describe, and every activation is sized in the deployment dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from pexopt.errors import ModelError
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
    QParams,
    Tensor,
)
from pexopt.ops import ALIAS_ONNX_OPS, LAYOUT_PERMS, ONNX_KIND, SPECS, OpKind

ONNX_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BOOL: "bool",
}
QUANTISED = {"int8", "float32", "float16"}
# integer types a Q/DQ node may not quantise activations to: pexopt deploys int8 activations
# (int8 weights, int32 biases); everything else would be emitted as int8 and silently wrong
INT_TYPES = {getattr(onnx.TensorProto, n) for n in (
    "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64", "UINT64", "INT4", "UINT4")}
FLOAT32_MIN_NORMAL = float(np.finfo(np.float32).tiny)  # 1.1754944e-38


@dataclass
class _Op:
    """Mutable op while fusing; frozen into `ir.Op` at the end."""

    node: onnx.NodeProto
    kind: OpKind
    inputs: list[str]
    outputs: list[str]
    consts: list[str]
    attrs: ConvAttrs | PoolAttrs | None = None
    activation: Activation | None = None
    fused: list[str] = field(default_factory=list)
    dead: bool = False
    raw_inputs: list[str] = field(default_factory=list)  # the ONNX values read, per input


class _Importer:
    def __init__(self, model: onnx.ModelProto, path: str, dtype: str, fold_pad: bool) -> None:
        self.model = model
        self.g = model.graph
        self.path = path
        self.dtype = dtype
        self.fold_pad = fold_pad
        self.values: dict[str, onnx.ValueInfoProto] = {}
        for vi in list(self.g.input) + list(self.g.value_info) + list(self.g.output):
            self.values[vi.name] = vi
        self.const_vals: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        self.consts: set[str] = set(self.const_vals)
        self.root: dict[str, str] = {}
        self.qparams: dict[str, QParams] = {}
        self.channels_last: set[str] = set()
        self.view_perm: dict[str, tuple[int, ...] | None] = {}
        self.ops: list[_Op] = []

    # -- helpers ---------------------------------------------------------------------------
    def _where(self, node: onnx.NodeProto) -> str:
        return f"{self.path}: node '{node.name or node.output[0]}' ({node.op_type})"

    def shape(self, name: str) -> tuple[int, ...] | None:
        vi = self.values.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            if name in self.const_vals:
                return tuple(self.const_vals[name].shape)
            return None
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            return None
        return tuple(int(d.dim_value) for d in dims)

    def elem_type(self, name: str) -> int:
        vi = self.values.get(name)
        return vi.type.tensor_type.elem_type if vi is not None else 0

    def const(self, name: str) -> np.ndarray | None:
        """Value of a constant input: an initializer, a Constant node, or a DQ of one."""
        return self.const_vals.get(name)

    def r(self, name: str) -> str:
        return self.root.get(name, name)

    # -- passes ----------------------------------------------------------------------------
    def find_constants(self) -> None:
        for node in self.g.node:
            if node.op_type == "Constant":
                self.consts.update(node.output)
                self.const_vals[node.output[0]] = numpy_helper.to_array(
                    onnx.helper.get_attribute_value(node.attribute[0])) if node.attribute[
                    0].name == "value" else np.asarray(
                    onnx.helper.get_attribute_value(node.attribute[0]))
            elif node.input and all(not i or i in self.consts for i in node.input):
                self.consts.update(node.output)
                if node.op_type == "DequantizeLinear":
                    self._check_qdq(node)  # before its values are used
                    self._fold_dequant(node)
                elif node.op_type in ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Cast"):
                    v = self.const_vals.get(node.input[0])
                    shp = self.shape(node.output[0])
                    if v is not None and shp is not None and int(np.prod(shp)) == v.size:
                        self.const_vals[node.output[0]] = v.reshape(shp)

    def _fold_dequant(self, node: onnx.NodeProto) -> None:
        x = self.const_vals.get(node.input[0])
        s = self.const_vals.get(node.input[1])
        if x is None or s is None:
            return
        zp = self.const_vals.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if s.size > 1 or (zp is not None and zp.size > 1):  # per-axis
            if not -x.ndim <= axis < x.ndim or x.shape[axis] != s.size:
                axis = 0 if x.ndim == 1 else axis  # a rank-1 tensor has only axis 0
            if not -x.ndim <= axis < x.ndim or x.shape[axis] != s.size:
                raise ModelError(f"{self._where(node)}: {s.size} scales do not match axis "
                                 f"{axis} of a {x.shape} tensor")
            shape = [1] * x.ndim
            shape[axis] = -1
            s = s.reshape(shape)
            zp = zp.reshape(shape) if zp is not None and zp.size > 1 else zp
        zp = np.asarray(zp if zp is not None else 0).astype(np.float64)
        self.const_vals[node.output[0]] = (x.astype(np.float64) - zp) * s.astype(np.float64)

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

    def _record_qparams(self, node: onnx.NodeProto, root: str) -> None:
        scale = self.const(node.input[1])
        zp = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or scale.size != 1:
            raise ModelError(f"{self._where(node)}: activation scale must be one constant "
                             "(per-tensor quantisation)")
        z = int(zp.reshape(-1)[0]) if zp is not None else 0
        self.qparams.setdefault(root, QParams(float(scale.reshape(-1)[0]), z))

    # -- quantisation parameters -----------------------------------------------------------
    def check_quantisation(self) -> None:
        """Every Q/DQ node: int8 activations, int8 weights / int32 biases, scales that are
        finite, positive float32 normals, zero points of the data's dtype, per-axis vectors
        that match their axis. Run after find_constants (constants known)."""
        for node in self.g.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                self._check_qdq(node)

    def _check_qdq(self, node: onnx.NodeProto) -> None:
        where = self._where(node)
        if any(a.name == "block_size" and a.i for a in node.attribute):
            raise ModelError(f"{where}: blocked quantisation (block_size) is not supported")
        quant = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
        et = self.elem_type(quant)
        if not et and quant in self.const_vals:
            et = onnx.helper.np_dtype_to_tensor_dtype(self.const_vals[quant].dtype)
        activation = node.input[0] not in self.consts
        allowed = {onnx.TensorProto.INT8} if activation else {
            onnx.TensorProto.INT8, onnx.TensorProto.INT32}
        if et not in allowed:
            name = onnx.TensorProto.DataType.Name(et) if et else "unknown"
            what = "activations" if activation else "constants"
            raise ModelError(f"{where}: quantises {what} to {name}; pexopt deploys int8 "
                             "activations, int8 weights and int32 biases")
        scale = self._qdq_const(node, 1, "scale")
        check_scale(where, node.input[1], scale, signed=not activation)
        zp = self._qdq_const(node, 2, "zero point") if len(node.input) > 2 and node.input[2] \
            else None
        if zp is not None:
            if onnx.helper.np_dtype_to_tensor_dtype(zp.dtype) != et:
                raise ModelError(f"{where}: zero point '{node.input[2]}' is {zp.dtype}, the "
                                 "quantised data is "
                                 f"{onnx.TensorProto.DataType.Name(et)}")
            if zp.size != scale.size or (scale.size > 1 and zp.shape != scale.shape):
                raise ModelError(f"{where}: zero point '{node.input[2]}' has shape "
                                 f"{list(zp.shape)}, its scale {list(scale.shape)}")
        if scale.size > 1 or scale.ndim > 1:  # one value, scalar or [1]: per-tensor
            self._check_axis(node, where, scale)

    def _qdq_const(self, node: onnx.NodeProto, k: int, what: str) -> np.ndarray:
        v = self.const(node.input[k]) if len(node.input) > k else None
        if v is None:
            raise ModelError(f"{self._where(node)}: the {what} must be a constant")
        return np.asarray(v)

    def _check_axis(self, node: onnx.NodeProto, where: str, scale: np.ndarray) -> None:
        """A per-axis scale is a vector as long as the data's quantised axis."""
        shape = self.shape(node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim != 1 or shape is None:
            raise ModelError(f"{where}: scale '{node.input[1]}' has shape "
                             f"{list(scale.shape)}; per-axis scales are a vector")
        if len(shape) == 1 and shape[0] == scale.size:
            return  # a bias vector (quantisers write axis 0 or leave the default)
        if not -len(shape) <= axis < len(shape) or shape[axis] != scale.size:
            raise ModelError(f"{where}: {scale.size} scales do not match axis {axis} of "
                             f"shape {list(shape)}")

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

    # -- fusion ----------------------------------------------------------------------------
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

    # -- freeze ----------------------------------------------------------------------------
    def nhwc(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) == 4 and name not in self.channels_last:
            return (shape[0], shape[2], shape[3], shape[1])
        return shape

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


def check_scale(where: str, name: str, scale: np.ndarray, signed: bool = False) -> None:
    """Scales of 0, NaN, inf or below float32's smallest normal make multipliers that saturate
    or overflow in the int8 kernels; a negative one is refused too, except for constants
    (`signed`: weights and biases, whose values the kernels' loader negates with it)."""
    if scale.dtype.kind != "f" or scale.size == 0:
        raise ModelError(f"{where}: scale '{name}' is {scale.dtype}, not a float")
    s = scale.astype(np.float64).reshape(-1)
    mag = np.abs(s) if signed else s
    bad = ~np.isfinite(s) | ~(mag >= FLOAT32_MIN_NORMAL)
    if bad.any():
        v = float(s[np.argmax(bad)])
        why = "not finite" if not np.isfinite(v) else "zero" if v == 0 else \
            "negative" if v < 0 and not signed else \
            "a denormal (below float32's smallest normal)"
        raise ModelError(f"{where}: scale '{name}' is {v:g}: {why}")


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
