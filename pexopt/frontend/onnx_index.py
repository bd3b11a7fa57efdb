"""The ONNX side of the frontend: an index over a shape-inferred model (nodes, producers, static
shapes, constants folded through DequantizeLinear / Reshape / Transpose / ...), and the memory
offsets of an IR tensor's elements in the ONNX layout (the kernel views of onnx_params.py's
docstring are built from them). Knows nothing of the kernels' constants (onnx_params*.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from pexopt.errors import ModelError
from pexopt.graph.ir import Op, Tensor
from pexopt.ops import ALIAS_ONNX_OPS

NHWC = (0, 2, 3, 1)


def nhwc_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)


class OnnxIndex:
    """Index over a shape-inferred ONNX model: nodes, producers, shapes and constant values."""

    def __init__(self, model: onnx.ModelProto, path: str) -> None:
        g = model.graph
        self.path = path
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          13)
        self.inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.shapes: dict[str, tuple[int, ...]] = {n: tuple(v.shape) for n, v in self.inits.items()}
        self.elem: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            self.elem[vi.name] = tt.elem_type
            if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                self.shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in g.node for o in n.output if o}
        self.by_name: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            self.by_name.setdefault(n.name or n.output[0], []).append(n)
        self.consts: set[str] = set(self.inits)
        for n in g.node:
            if n.op_type == "Constant" or (n.input and all(not i or i in self.consts
                                                           for i in n.input)):
                self.consts.update(o for o in n.output if o)
        self.outputs = [o.name for o in g.output]
        self._cache: dict[str, np.ndarray | None] = {}

    def where(self, op: Op) -> str:
        return f"{self.path}: node '{op.name}' ({op.onnx_type})"

    def node(self, name: str, op_type: str | None = None) -> onnx.NodeProto:
        cands = [n for n in self.by_name.get(name, []) if op_type is None or n.op_type == op_type]
        if not cands:
            raise ModelError(f"{self.path}: node '{name}' not found in the ONNX model")
        return cands[0]

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise ModelError(f"{self.path}: value '{name}' has no static shape")
        return self.shapes[name]

    def act_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and i not in self.consts]

    def const_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and i in self.consts]

    # -- constants -------------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        """Value of a constant (initializer, Constant, folded DQ/Reshape/... of constants)."""
        if name not in self._cache:
            self._cache[name] = self._const(name)
        return self._cache[name]

    def _const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return self.inits[name]
        n = self.producer.get(name)
        if n is None or name not in self.consts:
            return None
        if n.op_type == "Constant":
            a = n.attribute[0]
            v = onnx.helper.get_attribute_value(a)
            return numpy_helper.to_array(v) if a.name == "value" else np.asarray(v)
        ins = [self.const(i) if i else None for i in n.input]
        if ins[0] is None:
            return None
        if n.op_type == "DequantizeLinear":
            return _dequant(ins[0], ins[1], ins[2] if len(ins) > 2 else None,
                            node_attrs(n).get("axis", 1))
        if n.op_type in ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"):
            shp = self.shapes.get(n.output[0])
            return ins[0].reshape(shp) if shp is not None else ins[0]
        if n.op_type == "Transpose":
            perm = node_attrs(n).get("perm")
            return np.transpose(ins[0], perm)
        return None

    def quantized(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        """(raw ints, scale, zero point, axis) if `name` is a DequantizeLinear of constants."""
        n = self.producer.get(name)
        if n is None or n.op_type != "DequantizeLinear":
            return None
        raw, scale = self.const(n.input[0]), self.const(n.input[1])
        if raw is None or scale is None or raw.dtype.kind not in "iu":
            return None
        zp = self.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        zp = np.zeros_like(scale, dtype=np.int64) if zp is None else zp.astype(np.int64)
        axis = int(node_attrs(n).get("axis", 1))
        return raw, scale.astype(np.float64), zp, axis % max(raw.ndim, 1)

    # -- layout ----------------------------------------------------------------------------
    def root_index(self, t: Tensor) -> np.ndarray:
        """Memory offset of every element of tensor `t`'s ONNX value (ONNX shape)."""
        return _mem_to_onnx(t.shape, self.shape(t.name), self.path, t.name)

    def index_of(self, t: Tensor, value: str, skip: set[str]) -> np.ndarray:
        """Memory offsets (in `t`'s buffer) of the elements of ONNX value `value`.

        `value` is reached from `t` through aliased nodes; Pads named in `skip` (folded into a
        conv) are passed over: the result then has the unpadded shape.
        """
        path: list[onnx.NodeProto] = []
        v = value
        while v != t.name:
            n = self.producer.get(v)
            if n is None or not n.input:
                raise ModelError(f"{self.path}: value '{value}' is not a view of '{t.name}'")
            path.append(n)
            v = n.input[0]
        idx = self.root_index(t)
        padded = False
        for n in reversed(path):
            idx, padded = self._replay(n, idx, skip, padded)
        return idx

    def _replay(self, n: onnx.NodeProto, idx: np.ndarray, skip: set[str],
                padded: bool) -> tuple[np.ndarray, bool]:
        key = n.name or n.output[0]
        if n.op_type == "Pad" and key in skip:
            return idx, True
        if n.op_type == "Transpose":
            perm = node_attrs(n).get("perm")
            return np.transpose(idx, perm), padded
        if n.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            if padded:
                raise ModelError(f"{self.path}: node '{key}': a {n.op_type} after a folded Pad "
                                 "is not supported by the simulator")
            return idx.reshape(self.shape(n.output[0])), padded
        if n.op_type in ALIAS_ONNX_OPS:
            return idx, padded
        raise ModelError(f"{self.path}: node '{key}' ({n.op_type}) is not a view")


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _dequant(x: np.ndarray, s: np.ndarray | None, zp: np.ndarray | None, axis: int) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    z = np.zeros(1) if zp is None else np.asarray(zp, dtype=np.float64)
    if s.ndim == 1 and s.size > 1 and x.ndim > 0:
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
        z = z.reshape(shape) if z.size > 1 else z
    return (x.astype(np.float64) - z) * s


def _mem_to_onnx(ir_shape: tuple[int, ...], onnx_shape: tuple[int, ...], path: str,
                 name: str) -> np.ndarray:
    n = int(np.prod(ir_shape, dtype=np.int64))
    if n != int(np.prod(onnx_shape, dtype=np.int64)):
        raise ModelError(f"{path}: tensor '{name}': IR shape {ir_shape} does not match its "
                         f"ONNX shape {onnx_shape}")
    ar = np.arange(n, dtype=np.int64).reshape(ir_shape)
    if perm_for(ir_shape, onnx_shape) == NHWC:
        return ar.transpose(0, 3, 1, 2)
    return ar.reshape(onnx_shape)


def is_identity(idx: np.ndarray, t: Tensor) -> bool:
    return idx.size == t.elements and bool(
        np.array_equal(idx.reshape(-1), np.arange(idx.size, dtype=np.int64)))


def perm_for(ir_shape: tuple[int, ...], onnx_shape: tuple[int, ...]) -> tuple[int, ...]:
    """NHWC when the IR stores this 4-D ONNX value channels-last, else the ONNX order.

    A shape with C == H == W is ambiguous; it is taken as NHWC (the IR's convention). Either
    choice computes the same values, since readers and writers use the same convention.
    """
    if len(onnx_shape) == 4 and tuple(ir_shape) == nhwc_shape(onnx_shape) \
            and (tuple(ir_shape) != tuple(onnx_shape) or len(set(onnx_shape[1:])) == 1):
        return NHWC
    return tuple(range(len(onnx_shape)))


def expand_rank(idx: np.ndarray, rank: int) -> np.ndarray:
    """Left-pad with size-1 dims (ONNX broadcasting)."""
    return idx.reshape((1,) * (rank - idx.ndim) + idx.shape)


def to4d_nchw(idx: np.ndarray, where: str) -> np.ndarray:
    """(N, C, L) 1-D layouts become (N, C, 1, L)."""
    if idx.ndim == 3:
        return idx.reshape(idx.shape[0], idx.shape[1], 1, idx.shape[2])
    if idx.ndim != 4:
        raise ModelError(f"{where}: expected a 3-D or 4-D input, got rank {idx.ndim}")
    return idx
