"""Quantisation checks of the importer: every Q/DQ node's dtypes, scales, zero points and axes,
and the activation qparams a Q/DQ view records for its root."""

from __future__ import annotations

import numpy as np
import onnx

from pexopt.errors import ModelError
from pexopt.frontend.onnx_import_base import FLOAT32_MIN_NORMAL, ImporterBase
from pexopt.graph.ir import QParams


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


class QuantChecks(ImporterBase):
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

    def _record_qparams(self, node: onnx.NodeProto, root: str) -> None:
        scale = self.const(node.input[1])
        zp = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or scale.size != 1:
            raise ModelError(f"{self._where(node)}: activation scale must be one constant "
                             "(per-tensor quantisation)")
        z = int(zp.reshape(-1)[0]) if zp is not None else 0
        self.qparams.setdefault(root, QParams(float(scale.reshape(-1)[0]), z))
