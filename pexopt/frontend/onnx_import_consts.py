"""Constants of the importer: initializers, Constant nodes and what is computed from constants
only (DequantizeLinear folded to float, reshapes of constants); none of them is an activation."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pexopt.errors import ModelError
from pexopt.frontend.onnx_import_quant import QuantChecks


class ConstantFolding(QuantChecks):
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
