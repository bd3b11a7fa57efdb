#!/usr/bin/env python3
"""Build the deterministic random-weight benchmark models used by pexopt.

Usage::

    python models/build_models.py [--out DIR] [--only NAME ...]

For every architecture two files are written:

* ``<name>.onnx``       float32 model (opset 17, NCHW, batch 1, Conv + BatchNormalization
                        + Relu/Clip exactly as a PyTorch export would look), and
* ``<name>_int8.onnx``  QDQ model made by ``onnxruntime.quantization.quantize_static``
                        (per-channel int8 weights, int8 activations, MinMax calibration
                        on 8 fixed-seed standard-normal inputs).

Only ``onnx.helper`` and numpy are used to build the graphs (no torch, no network).
Weights are random but fixed per model (numpy seed), He-scaled; the BatchNormalization
running statistics are set from an analytic propagation of per-channel mean/variance
through the network, so every BN output is roughly N(beta, gamma^2) and activations stay
in a sane range (which matters for quantisation).  Running the script twice gives
byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17
PRODUCER = "pexopt/models/build_models.py"

# --------------------------------------------------------------------------------------
# Graph builder
# --------------------------------------------------------------------------------------


class Stats(NamedTuple):
    """Per-channel mean and variance estimate of an activation tensor (N, C, H, W)."""

    mean: np.ndarray  # shape (C,)
    var: np.ndarray  # shape (C,)


def _relu_stats(mu: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean/variance of max(0, X) for X ~ N(mu, var), element-wise."""
    sd = np.sqrt(np.maximum(var, 1e-12))
    a = mu / sd
    pdf = np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(a / math.sqrt(2.0)))
    m1 = mu * cdf + sd * pdf
    m2 = (mu * mu + var) * cdf + mu * sd * pdf
    return m1, np.maximum(m2 - m1 * m1, 1e-6)


class GraphBuilder:
    """Tiny helper that appends Conv/BN/activation nodes and tracks shapes and stats."""

    def __init__(self, name: str, input_shape: tuple[int, ...], seed: int, bn_eps: float):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.bn_eps = bn_eps
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.stats: dict[str, Stats] = {}
        self.n_convs = 0
        self._names: set[str] = set()
        self.input_shape = input_shape
        self.shapes["input"] = input_shape
        c = input_shape[1]
        # the calibration / test inputs are standard normal
        self.stats["input"] = Stats(np.zeros(c), np.ones(c))
        self._relu6_bounds: tuple[str, str] | None = None

    # -- bookkeeping -------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate name {name!r}")
        self._names.add(name)
        return name

    def _init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), self._unique(name)))
        return name

    def _node(self, op: str, inputs: list[str], name: str, out: str | None = None, **attrs) -> str:
        name = self._unique(name)
        out = self._unique(out if out is not None else f"{name}_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    # -- layers ------------------------------------------------------------------------
    def conv(
        self,
        x: str,
        name: str,
        cout: int,
        k: int | tuple[int, int],
        stride: int = 1,
        groups: int = 1,
        pads: list[int] | None = None,
        gain: float = 2.0,
    ) -> str:
        n, cin, h, w = self.shapes[x]
        kh, kw = (k, k) if isinstance(k, int) else k
        if pads is None:  # PyTorch style symmetric padding = k // 2
            pads = [kh // 2, kw // 2, kh // 2, kw // 2]
        cin_g = cin // groups
        assert cin % groups == 0 and cout % groups == 0
        fan_in = cin_g * kh * kw
        wgt = self.rng.standard_normal((cout, cin_g, kh, kw)) * math.sqrt(gain / fan_in)
        wgt = wgt.astype(np.float32)
        wname = self._init(f"{name}.weight", wgt)
        y = self._node(
            "Conv",
            [x, wname],
            name,
            dilations=[1, 1],
            group=groups,
            kernel_shape=[kh, kw],
            pads=pads,
            strides=[stride, stride],
        )
        oh = (h + pads[0] + pads[2] - kh) // stride + 1
        ow = (w + pads[1] + pads[3] - kw) // stride + 1
        self.shapes[y] = (n, cout, oh, ow)
        # analytic per-channel stats (inputs treated as independent)
        st = self.stats[x]
        w64 = wgt.astype(np.float64)
        mu_in = st.mean.reshape(groups, 1, cin_g)
        var_in = st.var.reshape(groups, 1, cin_g)
        wg = w64.reshape(groups, cout // groups, cin_g, kh * kw)
        mean = (wg.sum(-1) * mu_in).sum(-1).reshape(cout)
        var = ((wg**2).sum(-1) * var_in).sum(-1).reshape(cout)
        self.stats[y] = Stats(mean, var)
        self.n_convs += 1
        return y

    def bn(self, x: str, name: str, residual_branch: bool = False) -> str:
        c = self.shapes[x][1]
        st = self.stats[x]
        r = self.rng
        if residual_branch:  # keep the residual stream from growing too fast
            gamma = r.uniform(0.4, 0.8, c)
            beta = r.normal(0.0, 0.1, c)
        else:
            gamma = r.uniform(0.7, 1.3, c)
            beta = r.normal(0.1, 0.2, c)
        sd = np.sqrt(st.var)
        mean = st.mean + r.normal(0.0, 0.05, c) * sd
        var = st.var * r.uniform(0.8, 1.25, c)
        ins = [x]
        for suffix, arr in (
            ("scale", gamma),
            ("bias", beta),
            ("running_mean", mean),
            ("running_var", var),
        ):
            ins.append(self._init(f"{name}.{suffix}", arr.astype(np.float32)))
        y = self._node("BatchNormalization", ins, name, epsilon=self.bn_eps, momentum=0.9)
        self.shapes[y] = self.shapes[x]
        # y = gamma * (x - mean) / sqrt(var + eps) + beta
        s = gamma / np.sqrt(var + self.bn_eps)
        self.stats[y] = Stats(s * (st.mean - mean) + beta, s * s * st.var)
        return y

    def act(self, x: str, name: str, kind: str) -> str:
        st = self.stats[x]
        if kind == "relu":
            y = self._node("Relu", [x], name)
        elif kind == "relu6":
            if self._relu6_bounds is None:
                self._relu6_bounds = (
                    self._init("relu6_min", np.array(0.0, np.float32)),
                    self._init("relu6_max", np.array(6.0, np.float32)),
                )
            y = self._node("Clip", [x, *self._relu6_bounds], name)
        else:
            raise ValueError(kind)
        self.shapes[y] = self.shapes[x]
        self.stats[y] = Stats(*_relu_stats(st.mean, st.var))
        return y

    def conv_bn_act(
        self,
        x: str,
        prefix: str,
        cout: int,
        k,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        pads: list[int] | None = None,
        residual_branch: bool = False,
    ) -> str:
        y = self.conv(x, f"{prefix}_conv", cout, k, stride, groups, pads, gain=2.0 if act else 1.0)
        y = self.bn(y, f"{prefix}_bn", residual_branch=residual_branch)
        if act:
            y = self.act(y, f"{prefix}_{act}", act)
        return y

    def add(self, a: str, b: str, name: str) -> str:
        assert self.shapes[a] == self.shapes[b], (a, b)
        y = self._node("Add", [a, b], name)
        self.shapes[y] = self.shapes[a]
        self.stats[y] = Stats(
            self.stats[a].mean + self.stats[b].mean, self.stats[a].var + self.stats[b].var
        )
        return y

    def global_avg_pool(self, x: str, name: str) -> str:
        y = self._node("GlobalAveragePool", [x], name)
        n, c, _, _ = self.shapes[x]
        self.shapes[y] = (n, c, 1, 1)
        self.stats[y] = self.stats[x]
        return y

    def avg_pool(self, x: str, name: str, kernel: tuple[int, int]) -> str:
        n, c, h, w = self.shapes[x]
        y = self._node(
            "AveragePool",
            [x],
            name,
            kernel_shape=list(kernel),
            pads=[0, 0, 0, 0],
            strides=list(kernel),
        )
        self.shapes[y] = (n, c, h // kernel[0], w // kernel[1])
        self.stats[y] = self.stats[x]
        return y

    def classifier(self, x: str, num_classes: int, prefix: str = "classifier") -> str:
        """Flatten + Gemm (PyTorch nn.Linear layout: weight [out, in], transB=1)."""
        n, c, h, w = self.shapes[x]
        f = self._node("Flatten", [x], f"{prefix}_flatten", axis=1)
        self.shapes[f] = (n, c * h * w)
        fan_in = c * h * w
        wgt = (self.rng.standard_normal((num_classes, fan_in)) / math.sqrt(fan_in)).astype(
            np.float32
        )
        bias = self.rng.normal(0.0, 0.01, num_classes).astype(np.float32)
        ins = [f, self._init(f"{prefix}.weight", wgt), self._init(f"{prefix}.bias", bias)]
        y = self._node("Gemm", ins, f"{prefix}_gemm", out="output", alpha=1.0, beta=1.0, transB=1)
        self.shapes[y] = (n, num_classes)
        return y

    # -- finish ------------------------------------------------------------------------
    def model(self, output: str, doc: str) -> onnx.ModelProto:
        assert output == "output"
        graph = helper.make_graph(
            self.nodes,
            self.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(self.shapes[output]))],
            initializer=self.inits,
        )
        graph.doc_string = doc
        m = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            producer_version="1",
            ir_version=IR_VERSION,
        )
        m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
        # sanity: our own shape bookkeeping agrees with ONNX shape inference
        inferred = {
            vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
            for vi in list(m.graph.value_info) + list(m.graph.output)
        }
        for k, v in inferred.items():
            if k in self.shapes and self.shapes[k] != v:
                raise AssertionError(
                    f"{self.name}: shape mismatch for {k}: {self.shapes[k]} vs {v}"
                )
        return m


# --------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------

# MobileNetV2 width 0.35 (MCUNet "mbv2-w0.35-r144_imagenet.json"):
# (in_channels, out_channels, kernel, stride, expand_ratio); shortcut = identity when
# stride == 1 and in == out (that is exactly where the config has an IdentityLayer).
MBV2_W035_BLOCKS = [
    (16, 8, 3, 1, 1),
    (8, 8, 3, 2, 6),
    (8, 8, 3, 1, 6),
    (8, 16, 3, 2, 6),
    (16, 16, 3, 1, 6),
    (16, 16, 3, 1, 6),
    (16, 24, 3, 2, 6),
    (24, 24, 3, 1, 6),
    (24, 24, 3, 1, 6),
    (24, 24, 3, 1, 6),
    (24, 32, 3, 1, 6),
    (32, 32, 3, 1, 6),
    (32, 32, 3, 1, 6),
    (32, 56, 3, 2, 6),
    (56, 56, 3, 1, 6),
    (56, 56, 3, 1, 6),
    (56, 112, 3, 1, 6),
]
MBV2_W035_STEM = 16  # first_conv: 3 -> 16, 3x3, stride 2, relu6
MBV2_W035_MIX = 448  # feature_mix_layer: 1x1 conv 112 -> 448, relu6
MBV2_W035_CLASSES = 1000  # classifier: Linear 448 -> 1000 (bias)
MBV2_BN_EPS = 1e-3  # config "bn": {"eps": 0.001}

# Our own MCUNet-style block table (mixed kernels 3/5/7, mixed expand ratios).
MCUNET_MIXED_BLOCKS = [
    (16, 8, 3, 1, 1),
    (8, 16, 7, 2, 3),
    (16, 16, 5, 1, 4),
    (16, 24, 7, 2, 6),
    (24, 24, 3, 1, 4),
    (24, 40, 5, 2, 6),
    (40, 40, 7, 1, 4),
    (40, 48, 3, 1, 6),
    (48, 48, 5, 1, 4),
]


def _inverted_residual_net(b: GraphBuilder, blocks, stem: int, mix: int, classes: int) -> str:
    x = b.conv_bn_act("input", "stem", stem, 3, stride=2, act="relu6")
    for i, (cin, cout, k, s, e) in enumerate(blocks, start=1):
        p = f"block{i}"
        assert b.shapes[x][1] == cin, (p, b.shapes[x], cin)
        residual = s == 1 and cin == cout
        mid = int(round(cin * e))
        y = x
        if e != 1:
            y = b.conv_bn_act(y, f"{p}_expand", mid, 1, act="relu6")
        y = b.conv_bn_act(y, f"{p}_dw", mid, k, stride=s, groups=mid, act="relu6")
        y = b.conv_bn_act(y, f"{p}_project", cout, 1, act=None, residual_branch=residual)
        x = b.add(x, y, f"{p}_add") if residual else y
    if mix:
        x = b.conv_bn_act(x, "feature_mix", mix, 1, act="relu6")
    x = b.global_avg_pool(x, "global_pool")
    return b.classifier(x, classes)


def build_mbv2(res: int, name: str, seed: int) -> tuple[onnx.ModelProto, int]:
    b = GraphBuilder(name, (1, 3, res, res), seed, MBV2_BN_EPS)
    out = _inverted_residual_net(
        b, MBV2_W035_BLOCKS, MBV2_W035_STEM, MBV2_W035_MIX, MBV2_W035_CLASSES
    )
    return b.model(
        out, f"MobileNetV2 w0.35 r{res} (MCUNet mbv2-w0.35 config), random weights"
    ), b.n_convs


def build_mcunet_mixed(name: str, seed: int) -> tuple[onnx.ModelProto, int]:
    b = GraphBuilder(name, (1, 3, 96, 96), seed, 1e-3)
    out = _inverted_residual_net(b, MCUNET_MIXED_BLOCKS, 16, 160, 10)
    return b.model(
        out, "MCUNet-style mixed-kernel inverted-residual net, 96x96, random weights"
    ), b.n_convs


def build_mbv1(name: str, seed: int) -> tuple[onnx.ModelProto, int]:
    """MobileNetV1 width 0.25 at 96x96 (MLPerf Tiny visual wake words), 2 classes."""
    b = GraphBuilder(name, (1, 3, 96, 96), seed, 1e-3)
    x = b.conv_bn_act("input", "stem", 8, 3, stride=2, act="relu")
    # (pointwise out channels, depthwise stride)
    table = [
        (16, 1),
        (32, 2),
        (32, 1),
        (64, 2),
        (64, 1),
        (128, 2),
        (128, 1),
        (128, 1),
        (128, 1),
        (128, 1),
        (128, 1),
        (256, 2),
        (256, 1),
    ]
    for i, (cout, s) in enumerate(table, start=1):
        cin = b.shapes[x][1]
        x = b.conv_bn_act(x, f"block{i}_dw", cin, 3, stride=s, groups=cin, act="relu")
        x = b.conv_bn_act(x, f"block{i}_pw", cout, 1, act="relu")
    _, _, h, w = b.shapes[x]
    x = b.avg_pool(x, "avg_pool", (h, w))
    out = b.classifier(x, 2)
    return b.model(out, "MobileNetV1 w0.25 r96 (MLPerf Tiny VWW), random weights"), b.n_convs


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (begin, end) for one spatial axis."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def build_dscnn(name: str, seed: int) -> tuple[onnx.ModelProto, int]:
    """MLPerf Tiny keyword spotting DS-CNN (small): 49x10 MFCC -> 12 classes."""
    b = GraphBuilder(name, (1, 1, 49, 10), seed, 1e-3)
    ph, pw = _same_pads(49, 10, 2), _same_pads(10, 4, 2)
    x = b.conv_bn_act(
        "input", "stem", 64, (10, 4), stride=2, act="relu", pads=[ph[0], pw[0], ph[1], pw[1]]
    )  # -> 25x5 like TF padding='same'
    for i in range(1, 5):
        x = b.conv_bn_act(x, f"block{i}_dw", 64, 3, groups=64, act="relu")
        x = b.conv_bn_act(x, f"block{i}_pw", 64, 1, act="relu")
    _, _, h, w = b.shapes[x]
    x = b.avg_pool(x, "avg_pool", (h, w))
    out = b.classifier(x, 12)
    return b.model(out, "MLPerf Tiny KWS DS-CNN, random weights"), b.n_convs


def build_resnet8(name: str, seed: int) -> tuple[onnx.ModelProto, int]:
    """MLPerf Tiny image classification ResNet-8 (CIFAR-10, 32x32)."""
    b = GraphBuilder(name, (1, 3, 32, 32), seed, 1e-3)
    x = b.conv_bn_act("input", "stem", 16, 3, act="relu")
    for i, (c, s) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        p = f"stage{i}"
        y = b.conv_bn_act(x, f"{p}_conv1", c, 3, stride=s, act="relu")
        y = b.conv_bn_act(y, f"{p}_conv2", c, 3, act=None, residual_branch=True)
        if s != 1 or b.shapes[x][1] != c:
            x = b.conv_bn_act(x, f"{p}_shortcut", c, 1, stride=s, act=None, residual_branch=True)
        x = b.add(x, y, f"{p}_add")
        x = b.act(x, f"{p}_relu", "relu")
    x = b.global_avg_pool(x, "global_pool")
    out = b.classifier(x, 10)
    return b.model(out, "MLPerf Tiny ResNet-8 (CIFAR-10), random weights"), b.n_convs


class Spec(NamedTuple):
    build: Callable[[], tuple[onnx.ModelProto, int]]
    modelled_after: str


MODELS: dict[str, Spec] = {
    "mbv2_w035_r144": Spec(
        lambda: build_mbv2(144, "mbv2_w035_r144", 1001),
        "MCUNet `mbv2-w0.35-r144_imagenet` (MobileNetV2 w0.35), 1000 classes",
    ),
    "mbv2_w035_r96": Spec(
        lambda: build_mbv2(96, "mbv2_w035_r96", 1002), "same architecture at 96x96"
    ),
    "mbv1_w025_r96": Spec(
        lambda: build_mbv1("mbv1_w025_r96", 1003), "MLPerf Tiny VWW MobileNetV1 w0.25, 2 classes"
    ),
    "dscnn_kws": Spec(lambda: build_dscnn("dscnn_kws", 1004), "MLPerf Tiny KWS DS-CNN, 12 classes"),
    "resnet8": Spec(
        lambda: build_resnet8("resnet8", 1005), "MLPerf Tiny IC ResNet-8 (CIFAR-10), 10 classes"
    ),
    "mcunet_mixed": Spec(
        lambda: build_mcunet_mixed("mcunet_mixed", 1006),
        "own MCUNet-style net: k3/5/7, expand 1/3/4/6, 10 classes",
    ),
}

# --------------------------------------------------------------------------------------
# Quantisation and canonical serialisation
# --------------------------------------------------------------------------------------

CALIB_SEED = 20240
CALIB_SAMPLES = 8


def calibration_inputs(
    shape: tuple[int, ...], n: int = CALIB_SAMPLES, seed: int = CALIB_SEED
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def canonicalize(m: onnx.ModelProto) -> onnx.ModelProto:
    """Make serialisation independent of hash-map orders and tool versions."""
    from pexopt.quantize import sort_model  # the same ordering as `pexopt quantize`

    m.producer_name = PRODUCER
    m.producer_version = "1"
    m.domain = ""
    m.model_version = 0
    del m.metadata_props[:]
    return sort_model(m)


def quantize(float_model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    shape = tuple(d.dim_value for d in float_model.graph.input[0].type.tensor_type.shape.dim)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": x} for x in calibration_inputs(shape)])

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="pexopt_q_") as td:
        fp = os.path.join(td, "float.onnx")
        pp = os.path.join(td, "pre.onnx")
        qp = os.path.join(td, "int8.onnx")
        onnx.save(float_model, fp)
        # ORT basic graph optimisation (folds BatchNormalization into Conv) + ONNX shape
        # inference.  Shapes are static, so the symbolic pass (which needs sympy) is skipped.
        quant_pre_process(fp, pp, skip_symbolic_shape=True)
        quantize_static(
            pp,
            qp,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        q = onnx.load(qp)
    q.graph.name = float_model.graph.name + "_int8"
    q.graph.doc_string = float_model.graph.doc_string + " (QDQ int8, onnxruntime quantize_static)"
    return canonicalize(q)


def _save(m: onnx.ModelProto, path: Path) -> bytes:
    data = m.SerializeToString(deterministic=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


def build(
    name: str, out_dir: str | os.PathLike, quantized: bool = True, verbose: bool = True
) -> list[Path]:
    """Build model ``name`` (and its int8 version) into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = MODELS[name]
    fm, _ = spec.build()
    fm = canonicalize(fm)
    onnx.checker.check_model(fm, full_check=True)
    paths = [out_dir / f"{name}.onnx"]
    models = [fm]
    if quantized:
        qm = quantize(fm)
        onnx.checker.check_model(qm, full_check=True)
        paths.append(out_dir / f"{name}_int8.onnx")
        models.append(qm)
    for m, p in zip(models, paths):
        data = _save(m, p)
        if verbose:
            print(
                f"{p.name:28s} nodes={len(m.graph.node):4d} bytes={len(data):9d} "
                f"sha256={hashlib.sha256(data).hexdigest()[:16]}"
            )
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent),
        help="output directory (default: the directory of this script)",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        choices=sorted(MODELS),
        metavar="NAME",
        help=f"build only these models ({', '.join(MODELS)})",
    )
    ap.add_argument("--no-int8", action="store_true", help="skip the quantised models")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    for name in args.only or list(MODELS):
        build(name, args.out, quantized=not args.no_int8)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
