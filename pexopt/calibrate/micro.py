"""Micro models for calibration: one kernel (or one split chain) of a chosen shape, as ONNX.

`MICRO_MODELS` lists them: single convolutions (1x1, k x k, depthwise), fully connected layers,
adds, pools, means, copies, a softmax, and inverted-bottleneck chains solved with one allowed
slice width so that slice, accumulate and requantize steps are measured. Float NCHW models are
built here with fixed seeds and quantised to int8 QDQ by `pexopt.quantize` like any user model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240


class _Net:
    """Appends NCHW float nodes with shapes tracked; `model()` closes it as `output`."""

    def __init__(self, name: str, c: int, h: int, w: int, seed: int = SEED) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {"input": (1, c, h, w)}

    def _const(self, name: str, a: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    def _node(self, op: str, ins: list[str], shape: tuple[int, ...], **attrs: object) -> str:
        out = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, ins, [out], name=f"{op.lower()}{len(self.nodes)}",
                                           **attrs))
        self.shapes[out] = shape
        return out

    def conv(self, x: str, cout: int, k: int, stride: int = 1, groups: int = 1,
             relu: bool = True) -> str:
        _, cin, h, w = self.shapes[x]
        pad = k // 2
        wt = self.rng.standard_normal((cout, cin // groups, k, k)) * math.sqrt(
            2.0 / (cin // groups * k * k))
        b = self.rng.normal(0.0, 0.1, cout)
        i = len(self.nodes)
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        y = self._node("Conv", [x, self._const(f"w{i}", wt), self._const(f"b{i}", b)],
                       (1, cout, oh, ow), kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad] * 4, group=groups)
        return self._node("Relu", [y], self.shapes[y]) if relu else y

    def dw(self, x: str, k: int, stride: int = 1) -> str:
        return self.conv(x, self.shapes[x][1], k, stride, groups=self.shapes[x][1])

    def gemm(self, x: str, n: int) -> str:
        shape = self.shapes[x]
        if len(shape) > 2:
            x = self._node("Flatten", [x], (1, int(np.prod(shape[1:]))), axis=1)
        k = self.shapes[x][1]
        i = len(self.nodes)
        wt = self.rng.standard_normal((n, k)) / math.sqrt(k)
        return self._node("Gemm", [x, self._const(f"w{i}", wt),
                                   self._const(f"b{i}", self.rng.normal(0, 0.1, n))],
                          (1, n), transB=1)

    def op(self, op: str, ins: list[str], shape: tuple[int, ...] | None = None,
           **attrs: object) -> str:
        return self._node(op, ins, shape or self.shapes[ins[0]], **attrs)

    def pool(self, x: str, op: str, k: int, stride: int, pad: int = 0) -> str:
        n, c, h, w = self.shapes[x]
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        return self._node(op, [x], (n, c, oh, ow), kernel_shape=[k, k], strides=[stride] * 2,
                          pads=[pad] * 4)

    def model(self, out: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [out], ["output"], name="out"))
        g = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                           list(self.shapes["input"]))],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(self.shapes[out]))],
            self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="pexopt.calibrate.micro")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


@dataclass(frozen=True)
class Micro:
    """One calibration model: how to build it and how to solve it.

    split: None solves layer by layer; a width solves with that one slice width allowed.
    The name's first word says what it probes (the calibration groups its fit error so).
    """

    name: str
    build: Callable[[], onnx.ModelProto]
    split: int | None = None
    quick: bool = False


def _conv(c: int, h: int, cout: int, k: int, s: int = 1) -> Callable[[], onnx.ModelProto]:
    def b() -> onnx.ModelProto:
        n = _Net("conv", c, h, h)
        return n.model(n.conv("input", cout, k, s))
    return b


def _dw(c: int, h: int, k: int, s: int = 1) -> Callable[[], onnx.ModelProto]:
    def b() -> onnx.ModelProto:
        n = _Net("dw", c, h, h)
        return n.model(n.dw("input", k, s))
    return b


def _fc(k: int, out: int, softmax: bool = False) -> Callable[[], onnx.ModelProto]:
    def b() -> onnx.ModelProto:
        n = _Net("fc", k, 1, 1)
        y = n.gemm("input", out)
        return n.model(n.op("Softmax", [y], axis=1) if softmax else y)
    return b


def _add(c: int, h: int) -> Callable[[], onnx.ModelProto]:
    def b() -> onnx.ModelProto:
        n = _Net("add", c, h, h)
        return n.model(n.op("Add", [n.conv("input", c, 1), "input"]))
    return b


def _pool(op: str, c: int, h: int, k: int, s: int, pad: int = 0
          ) -> Callable[[], onnx.ModelProto]:
    def b() -> onnx.ModelProto:
        n = _Net("pool", c, h, h)  # behind a conv: ORT quantises pools of int8 inputs only
        return n.model(n.pool(n.conv("input", c, 1), op, k, s, pad))
    return b


def _gap(c: int, h: int) -> Callable[[], onnx.ModelProto]:
    def b() -> onnx.ModelProto:
        n = _Net("gap", c, h, h)
        return n.model(n.op("GlobalAveragePool", [n.conv("input", c, 1)], (1, c, 1, 1)))
    return b


def _copy(c: int, h: int, concat: bool) -> Callable[[], onnx.ModelProto]:
    def b() -> onnx.ModelProto:
        n = _Net("copy", c, h, h)
        if concat:
            y = n.conv("input", c, 1)
            return n.model(n.op("Concat", [y, "input"], (1, 2 * c, h, h), axis=1))
        return n.model(n.op("Sigmoid", [n.conv("input", c, 1, relu=False)]))
    return b


def _bottleneck(c: int, h: int, e: int, k: int = 3, cout: int | None = None
                ) -> Callable[[], onnx.ModelProto]:
    def b() -> onnx.ModelProto:
        n = _Net("ir", c, h, h)
        y = n.conv("input", c * e, 1)
        y = n.dw(y, k)
        return n.model(n.conv(y, cout or c, 1, relu=False))
    return b


def _conv_chain(c: int, h: int, mid: int) -> Callable[[], onnx.ModelProto]:
    def b() -> onnx.ModelProto:
        n = _Net("cc", c, h, h)
        y = n.conv("input", mid, 3)
        return n.model(n.conv(y, c, 3, relu=False))
    return b


def _pool_chain(c: int, h: int, e: int) -> Callable[[], onnx.ModelProto]:
    def b() -> onnx.ModelProto:
        n = _Net("pc", c, h, h)
        y = n.pool(n.conv("input", c * e, 1), "MaxPool", 2, 2)
        return n.model(n.conv(y, c, 1, relu=False))
    return b


def _stem(c: int, h: int, mid: int, out: int) -> Callable[[], onnx.ModelProto]:
    """A MobileNet stem: strided 3x3 conv, depthwise 3x3, 1x1 projection."""
    def b() -> onnx.ModelProto:
        n = _Net("st", c, h, h)
        y = n.dw(n.conv("input", mid, 3, 2), 3)
        return n.model(n.conv(y, out, 1, relu=False))
    return b


MICRO_MODELS: tuple[Micro, ...] = (
    Micro("conv1x1_8x16_h16", _conv(8, 16, 16, 1), quick=True),
    Micro("conv1x1_16x8_h16", _conv(16, 16, 8, 1)),
    Micro("conv1x1_32x32_h8", _conv(32, 8, 32, 1), quick=True),
    Micro("conv1x1_3x16_h24", _conv(3, 24, 16, 1)),
    Micro("conv1x1_64x16_h4", _conv(64, 4, 16, 1)),
    Micro("conv1x1_16x96_h12", _conv(16, 12, 96, 1)),
    Micro("conv3x3s2_3x8_h32", _conv(3, 32, 8, 3, 2), quick=True),
    Micro("conv3x3_8x16_h16", _conv(8, 16, 16, 3), quick=True),
    Micro("conv5x5_16x16_h8", _conv(16, 8, 16, 5)),
    Micro("conv7x7s2_4x8_h16", _conv(4, 16, 8, 7, 2)),
    Micro("conv3x3_24x24_h8", _conv(24, 8, 24, 3)),
    Micro("conv3x3_4x4_h24", _conv(4, 24, 4, 3)),
    Micro("dw3x3_16_h16", _dw(16, 16, 3), quick=True),
    Micro("dw3x3s2_32_h8", _dw(32, 8, 3, 2), quick=True),
    Micro("dw5x5_24_h12", _dw(24, 12, 5)),
    Micro("dw7x7_48_h8", _dw(48, 8, 7)),
    Micro("dw3x3_8_h32", _dw(8, 32, 3)),
    Micro("dw3x3_96_h4", _dw(96, 4, 3)),
    Micro("fc_64x10", _fc(64, 10), quick=True),
    Micro("fc_256x32", _fc(256, 32)),
    Micro("fc_16x100", _fc(16, 100)),
    Micro("fc_448x64", _fc(448, 64), quick=True),
    Micro("add_16_h16", _add(16, 16), quick=True),
    Micro("add_32_h8", _add(32, 8)),
    Micro("add_8_h24", _add(8, 24)),
    Micro("maxpool2_16_h16", _pool("MaxPool", 16, 16, 2, 2), quick=True),
    Micro("avgpool3_8_h12", _pool("AveragePool", 8, 12, 3, 1, 1), quick=True),
    Micro("avgpool5_32_h10", _pool("AveragePool", 32, 10, 5, 5)),
    Micro("gap_32_h8", _gap(32, 8), quick=True),
    Micro("gap_8_h24", _gap(8, 24)),
    Micro("gap_112_h3", _gap(112, 3)),
    Micro("sigmoid_16_h16", _copy(16, 16, False), quick=True),
    Micro("concat_8_h16", _copy(8, 16, True)),
    Micro("softmax_32x100", _fc(32, 100, softmax=True), quick=True),
    Micro("ir_8x6_h16_layer", _bottleneck(8, 16, 6), quick=True),
    Micro("ir_8x6_h16_w1", _bottleneck(8, 16, 6), split=1, quick=True),
    Micro("ir_8x6_h16_w4", _bottleneck(8, 16, 6), split=4),
    Micro("ir_8x6_h16_w12", _bottleneck(8, 16, 6), split=12, quick=True),
    Micro("ir_16x6_h8_w8", _bottleneck(16, 8, 6), split=8),
    Micro("ir_16x6_h8_w2", _bottleneck(16, 8, 6), split=2),
    Micro("ir_4x6_h24_w6", _bottleneck(4, 24, 6, 5), split=6),
    Micro("ir_24x4_h6_w32", _bottleneck(24, 6, 4), split=32),
    Micro("ir_16x6_h8_w1", _bottleneck(16, 8, 6), split=1),
    Micro("ir_8x4_h12_w1_o32", _bottleneck(8, 12, 4, cout=32), split=1, quick=True),
    Micro("ir_24x4_h6_w1_o4", _bottleneck(24, 6, 4, cout=4), split=1),
    Micro("ir_8x6_h20_w3_o16", _bottleneck(8, 20, 6, cout=16), split=3),
    Micro("cc_8x64_h12_w4", _conv_chain(8, 12, 64), split=4, quick=True),
    Micro("cc_4x32_h16_w16", _conv_chain(4, 16, 32), split=16),
    Micro("cc_4x32_h10_w1", _conv_chain(4, 10, 32), split=1),
    Micro("maxpool3s2_24_h12", _pool("MaxPool", 24, 12, 3, 2, 1)),
    Micro("avgpool2_8_h16", _pool("AveragePool", 8, 16, 2, 2)),
    Micro("softmax_16x20", _fc(16, 20, softmax=True)),
    Micro("maxpool2_4_h16", _pool("MaxPool", 4, 16, 2, 2)),
    Micro("avgpool3s2_64_h8", _pool("AveragePool", 64, 8, 3, 2, 1)),
    Micro("pc_8x6_h16_w4", _pool_chain(8, 16, 6), split=4),
    Micro("pc_8x6_h16_w1", _pool_chain(8, 16, 6), split=1),
    # one or two output channels over many pixels: what a narrow slice costs per pixel
    Micro("conv1x1_8x1_h32", _conv(8, 32, 1, 1)),
    Micro("conv1x1_16x2_h24", _conv(16, 24, 2, 1), quick=True),
    Micro("conv3x3_8x1_h24", _conv(8, 24, 1, 3)),
    Micro("dw3x3s2_2_h32", _dw(2, 32, 3, 2)),
    Micro("dw3x3_1_h32", _dw(1, 32, 3)),
    Micro("add_1_h32", _add(1, 32)),
    Micro("st_3x16_h32_layer", _stem(3, 32, 16, 8)),
    Micro("st_3x16_h32_w1", _stem(3, 32, 16, 8), split=1, quick=True),
    Micro("st_3x16_h32_w2", _stem(3, 32, 16, 8), split=2),
    Micro("st_3x24_h24_w4", _stem(3, 24, 24, 16), split=4),
)


PROBES = {"conv1x1": "conv1x1", "conv3x3": "convkxk", "conv3x3s2": "convkxk",
          "conv5x5": "convkxk", "conv7x7s2": "convkxk", "dw3x3": "depthwise",
          "dw3x3s2": "depthwise", "dw5x5": "depthwise", "dw7x7": "depthwise",
          "fc": "fully_connected", "add": "elementwise", "maxpool2": "pool",
          "maxpool3s2": "pool", "avgpool2": "pool", "avgpool3": "pool", "avgpool3s2": "pool",
          "avgpool5": "pool", "gap": "mean", "sigmoid": "copy", "concat": "copy",
          "softmax": "other", "ir": "split chains", "cc": "split chains", "pc": "split chains",
          "st": "split chains"}


def probes(m: Micro) -> str:
    """What a micro model measures: a cost class, or `split chains` (slice, accumulate,
    requantize steps)."""
    return PROBES[m.name.split("_")[0]]


def write_micro(m: Micro, folder: Path) -> Path:
    """The int8 QDQ ONNX of a micro model in `folder` (float model quantised, fixed seeds)."""
    from pexopt.quantize import quantize_model

    folder.mkdir(parents=True, exist_ok=True)
    fp = folder / f"{m.name}.onnx"
    onnx.save(m.build(), str(fp))
    out = folder / f"{m.name}_int8.onnx"
    quantize_model(fp, out, "random:8")
    return out
