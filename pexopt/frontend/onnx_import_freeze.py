"""Freeze of the importer: the live ops and their tensors into the frozen IR (`ir.Tensor`,
`ir.Op`), each tensor sized in its deployment dtype, with the caps of onnx_load.py."""

from __future__ import annotations

import numpy as np
import onnx

from pexopt.errors import ModelError
from pexopt.frontend.onnx_import_base import ONNX_DTYPES, QUANTISED, _Op
from pexopt.frontend.onnx_import_fuse import Fusion
from pexopt.frontend.onnx_load import MAX_ACTIVATION_BYTES, MAX_ELEMENTS
from pexopt.graph.ir import DTYPE_BYTES, ConvAttrs, Op, PoolAttrs, Tensor
from pexopt.ops import OpKind


class Freezer(Fusion):
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
