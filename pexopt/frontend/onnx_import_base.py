"""The ONNX importer's state (onnx_import.py runs its passes): the dtype tables, the mutable op
while fusing, and the lookups every pass shares (shapes, element types, constants, roots of
views). Each pass is a class in its own module, each built on the one before:
onnx_import_quant.py, onnx_import_consts.py, onnx_import_layout.py, onnx_import_ops.py,
onnx_import_fuse.py, onnx_import_freeze.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from pexopt.graph.ir import Activation, ConvAttrs, PoolAttrs, QParams
from pexopt.ops import OpKind

ONNX_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BOOL: "bool",
}
QUANTISED = {"int8", "float32", "float16"}
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


class ImporterBase:
    """What the passes share: the model's values, constants, view roots, activation qparams,
    the NHWC tensors and the ops collected so far."""

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
