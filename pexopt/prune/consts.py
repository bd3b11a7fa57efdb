"""Constant values of an ONNX graph as numpy arrays: initializers and DequantizeLinear of them.

Pruning reads weights through this (dequantised, so int8 QDQ and float models rank channels the
same way) and can slice them: a QDQ weight is sliced with its per-axis scales and zero points.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def dq_axis(node: onnx.NodeProto, rank: int) -> int:
    """The (non-negative) quantisation axis of a QuantizeLinear/DequantizeLinear node."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return axis + rank if axis < 0 else axis


class Consts:
    """Read-only view of the constant values of a model (what pruning may slice)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = {i.name: i for i in model.graph.initializer}
        # DequantizeLinear of initializers only: a constant pexopt can slice consistently
        self.dq = {n.output[0]: n for n in model.graph.node
                   if n.op_type == "DequantizeLinear"
                   and all(x in self.inits for x in n.input if x)}

    def is_const(self, name: str) -> bool:
        return name in self.inits or name in self.dq

    def raw(self, name: str) -> np.ndarray:
        """The stored array (quantised for a DequantizeLinear output's input)."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return numpy_helper.to_array(self.inits[self.dq[name].input[0]])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.raw(name).shape)

    def value(self, name: str) -> np.ndarray:
        """The real value (float64): a DequantizeLinear output is dequantised here."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name]).astype(np.float64)
        node = self.dq[name]
        x = numpy_helper.to_array(self.inits[node.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(self.inits[node.input[1]]).astype(np.float64)
        zp = (numpy_helper.to_array(self.inits[node.input[2]]).astype(np.float64)
              if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
        if scale.size > 1:  # per-axis: broadcast along the node's axis
            shape = [1] * x.ndim
            shape[dq_axis(node, x.ndim)] = scale.size
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        return (x - zp) * scale
