"""Random valid CNN-like ONNX models for property-based tests (hypothesis).

A model is described by a plain, printable `Spec` (input shape, weight seed, list of layers);
`build_model(spec, int8)` turns a spec into an ONNX model deterministically, so a failing
example found by hypothesis becomes a regression test by copying its spec (no hypothesis).

Layers (each keeps the tensor NCHW, batch 1):
- ("conv", cout, k, stride, pad, act)   dense k x k conv, k in (1, 3, 5), symmetric pads
- ("dw", k, stride, pad, act)           depthwise conv (group = C)
- ("pw", cout, act)                     pointwise 1x1 conv
- ("pool", "max"|"avg", k, stride)      MaxPool / AveragePool, no pads
- ("res", k, act)                       x + conv_kxk(x) (same channels, same size), then act
- ("cat", c1, c2, act)                  Concat(pw_c1(x), dw3x3(pw_c2(x))) over channels
- ("act", act)                          a standalone Relu / Clip(0, 6)
act is "", "relu" or "clip". A spec may end with a head: GlobalAveragePool + Flatten + Gemm.

Two flavours: float32, and int8 QDQ built directly: QuantizeLinear on the input; per op int8
per-channel weights (DequantizeLinear axis 0), int32 bias with scale sx * sw, and a
Quantize/DequantizeLinear pair (per-tensor scale, int8 zero point) on every activation. The
activation ranges come from one onnxruntime run of the float model on a fixed input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from pexopt.simulate.onnxrt import ort_session

OPSET = 17
ACTS = ("", "relu", "clip")


@dataclass(frozen=True)
class Spec:
    c: int
    h: int
    w: int
    seed: int
    layers: tuple[tuple, ...]
    head: int | None = None  # number of classes of a GAP + Flatten + Gemm head
    name: str = "fuzz"

    def describe(self) -> str:
        return (f"Spec(c={self.c}, h={self.h}, w={self.w}, seed={self.seed}, "
                f"layers={self.layers!r}, head={self.head!r})")


# -- float graph as a list of logical ops --------------------------------------------------------

@dataclass
class _LOp:
    """One logical op: ONNX op type, activation inputs, float weight/bias, attributes."""

    op_type: str
    inputs: list[str]
    output: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    act: str = ""  # fused into the op's output (no Q/DQ between op and act)


class _Builder:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.ops: list[_LOp] = []
        self.shapes: dict[str, tuple[int, ...]] = {"x": (1, spec.c, spec.h, spec.w)}
        self.n = 0

    def _name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def conv(self, x: str, cout: int, k: int, stride: int, pad: int, group: int = 1,
             act: str = "") -> str:
        _, cin, h, w = self.shapes[x]
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        fan_in = (cin // group) * k * k
        wt = (self.rng.standard_normal((cout, cin // group, k, k)) *
              np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.1).astype(np.float32)
        y = self._name("conv")
        self.ops.append(_LOp("Conv", [x], y, wt, b, dict(kernel_shape=[k, k],
                                                          strides=[stride, stride],
                                                          pads=[pad] * 4, group=group), act))
        self.shapes[y] = (1, cout, oh, ow)
        return y

    def pool(self, x: str, kind: str, k: int, stride: int) -> str:
        _, c, h, w = self.shapes[x]
        y = self._name(kind + "pool")
        self.ops.append(_LOp("MaxPool" if kind == "max" else "AveragePool", [x], y,
                             attrs=dict(kernel_shape=[k, k], strides=[stride, stride])))
        self.shapes[y] = (1, c, (h - k) // stride + 1, (w - k) // stride + 1)
        return y

    def act(self, x: str, act: str) -> str:
        y = self._name(act)
        self.ops.append(_LOp("Relu" if act == "relu" else "Clip", [x], y))
        self.shapes[y] = self.shapes[x]
        return y

    def add(self, a: str, b: str, act: str) -> str:
        y = self._name("add")
        self.ops.append(_LOp("Add", [a, b], y, act=act))
        self.shapes[y] = self.shapes[a]
        return y

    def concat(self, a: str, b: str) -> str:
        y = self._name("cat")
        self.ops.append(_LOp("Concat", [a, b], y, attrs=dict(axis=1)))
        sa, sb = self.shapes[a], self.shapes[b]
        self.shapes[y] = (1, sa[1] + sb[1], sa[2], sa[3])
        return y

    def head(self, x: str, classes: int) -> str:
        _, c, _, _ = self.shapes[x]
        g = self._name("gap")
        self.ops.append(_LOp("GlobalAveragePool", [x], g))
        self.shapes[g] = (1, c, 1, 1)
        f = self._name("flat")
        self.ops.append(_LOp("Flatten", [g], f, attrs=dict(axis=1)))
        self.shapes[f] = (1, c)
        y = self._name("fc")
        wt = (self.rng.standard_normal((classes, c)) * np.sqrt(1.0 / c)).astype(np.float32)
        b = (self.rng.standard_normal(classes) * 0.1).astype(np.float32)
        self.ops.append(_LOp("Gemm", [f], y, wt, b, dict(transB=1)))
        self.shapes[y] = (1, classes)
        return y


def logical_graph(spec: Spec) -> _Builder:
    """Apply the spec's layers (a layer that does not fit the current size is skipped)."""
    b = _Builder(spec)
    x = "x"
    for layer in spec.layers:
        kind = layer[0]
        _, c, h, w = b.shapes[x]
        if kind == "conv":
            _, cout, k, s, pad, act = layer
            if h + 2 * pad < k or w + 2 * pad < k:
                continue
            x = b.conv(x, cout, k, s, pad, act=act)
        elif kind == "dw":
            _, k, s, pad, act = layer
            if h + 2 * pad < k or w + 2 * pad < k:
                continue
            x = b.conv(x, c, k, s, pad, group=c, act=act)
        elif kind == "pw":
            _, cout, act = layer
            x = b.conv(x, cout, 1, 1, 0, act=act)
        elif kind == "pool":
            _, pk, k, s = layer
            if h < k or w < k:
                continue
            x = b.pool(x, pk, k, s)
        elif kind == "res":
            _, k, act = layer
            y = b.conv(x, c, k, 1, (k - 1) // 2, act="relu")
            x = b.add(x, y, act)
        elif kind == "cat":
            _, c1, c2, act = layer
            a = b.conv(x, c1, 1, 1, 0, act=act)
            m = b.conv(x, c2, 1, 1, 0, act=act)
            d = b.conv(m, c2, 3, 1, 1, group=c2, act=act)
            x = b.concat(a, d)
        elif kind == "act":
            x = b.act(x, layer[1])
        else:  # pragma: no cover
            raise ValueError(f"unknown layer {layer!r}")
    if not b.ops and spec.head is None:  # every layer skipped: keep one op
        x = b.act(x, "relu")
    if spec.head is not None:
        x = b.head(x, spec.head)
    b.out = x  # type: ignore[attr-defined]
    return b


# -- ONNX emission ------------------------------------------------------------------------------

def _f32(name: str, a: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def _act_nodes(lop: _LOp, pre: str, out: str, inits: list) -> list[onnx.NodeProto]:
    if not lop.act:
        return []
    if lop.act == "relu":
        return [helper.make_node("Relu", [pre], [out], name=f"{lop.output}_relu")]
    lo, hi = f"{lop.output}_clip_lo", f"{lop.output}_clip_hi"
    inits += [_f32(lo, 0.0), _f32(hi, 6.0)]
    return [helper.make_node("Clip", [pre, lo, hi], [out], name=f"{lop.output}_clip")]


def _main_node(lop: _LOp, ins: list[str], out: str, inits: list) -> onnx.NodeProto:
    if lop.op_type == "Clip":
        lo, hi = f"{lop.output}_lo", f"{lop.output}_hi"
        inits += [_f32(lo, 0.0), _f32(hi, 6.0)]
        ins = [*ins, lo, hi]
    return helper.make_node(lop.op_type, ins, [out], name=lop.output, **lop.attrs)


def _model(b: _Builder, nodes: list, inits: list, out: str, out_shape: tuple) -> onnx.ModelProto:
    spec = b.spec
    graph = helper.make_graph(
        nodes, spec.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(b.shapes["x"]))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pexopt-fuzz")
    model.ir_version = 8
    model.doc_string = spec.describe()
    onnx.checker.check_model(model)
    return model


def float_model(spec: Spec) -> onnx.ModelProto:
    b = logical_graph(spec)
    nodes, inits = [], []
    for lop in b.ops:
        ins = list(lop.inputs)
        if lop.weight is not None:
            inits += [_f32(lop.output + "_w", lop.weight), _f32(lop.output + "_b", lop.bias)]
            ins += [lop.output + "_w", lop.output + "_b"]
        pre = lop.output + "_pre" if lop.act else lop.output
        nodes.append(_main_node(lop, ins, pre, inits))
        nodes += _act_nodes(lop, pre, lop.output, inits)
    return _model(b, nodes, inits, b.out, b.shapes[b.out])


def fixed_input(spec: Spec) -> np.ndarray:
    rng = np.random.default_rng(1234 + spec.seed)
    return rng.standard_normal((1, spec.c, spec.h, spec.w)).astype(np.float32)


def activation_ranges(spec: Spec) -> dict[str, tuple[float, float]]:
    """min/max of every activation tensor of the float model on a fixed input (onnxruntime)."""

    b = logical_graph(spec)
    m = float_model(spec)
    names = [lop.output for lop in b.ops]
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                          for n in names)
    sess = ort_session(m.SerializeToString())
    x = fixed_input(spec)
    res = dict(zip(names, sess.run(names, {"x": x})))
    res["x"] = x
    return {k: (float(v.min()), float(v.max())) for k, v in res.items()}


def _qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 (scale, zero point) covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = max(hi - lo, 1e-3)
    scale = span / 255.0
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return float(np.float32(scale)), zp


def qdq_model(spec: Spec) -> onnx.ModelProto:
    b = logical_graph(spec)
    ranges = activation_ranges(spec)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    qp: dict[str, tuple[float, int]] = {}

    def qdq(src: str, dst: str) -> None:
        """src (float) -> Q -> DQ -> dst (float), per-tensor scale, int8 zero point."""
        s, zp = _qparams(*ranges[src if src in ranges else dst])
        qp[dst] = (s, zp)
        sn, zn = f"{dst}_scale", f"{dst}_zp"
        inits.extend([_f32(sn, s), numpy_helper.from_array(np.asarray(zp, np.int8), zn)])
        nodes.append(helper.make_node("QuantizeLinear", [src, sn, zn], [dst + "_q"],
                                      name=dst + "_Q"))
        nodes.append(helper.make_node("DequantizeLinear", [dst + "_q", sn, zn], [dst],
                                      name=dst + "_DQ"))

    qdq("x", "x_dq")
    alias = {"x": "x_dq"}
    for lop in b.ops:
        ins = [alias[i] for i in lop.inputs]
        if lop.op_type == "Flatten":  # a view: no Q/DQ of its own (keeps the scale)
            nodes.append(_main_node(lop, ins, lop.output, inits))
            alias[lop.output] = lop.output
            qp[lop.output] = qp[ins[0]]
            continue
        if lop.weight is not None:
            w = lop.weight.reshape(lop.weight.shape[0], -1)
            sw = np.maximum(np.abs(w).max(axis=1), 1e-6) / 127.0
            sw = sw.astype(np.float32)
            shape = (-1,) + (1,) * (lop.weight.ndim - 1)
            wq = np.clip(np.round(lop.weight / sw.reshape(shape)), -127, 127).astype(np.int8)
            sx = qp[ins[0]][0]
            sb = (np.float32(sx) * sw).astype(np.float32)
            bq = np.round(lop.bias / sb).astype(np.int32)
            n = lop.output
            inits += [numpy_helper.from_array(wq, n + "_wq"), _f32(n + "_ws", sw),
                      numpy_helper.from_array(np.zeros(len(sw), np.int8), n + "_wzp"),
                      numpy_helper.from_array(bq, n + "_bq"), _f32(n + "_bs", sb),
                      numpy_helper.from_array(np.zeros(len(sw), np.int32), n + "_bzp")]
            nodes.append(helper.make_node("DequantizeLinear", [n + "_wq", n + "_ws", n + "_wzp"],
                                          [n + "_w"], name=n + "_wDQ", axis=0))
            nodes.append(helper.make_node("DequantizeLinear", [n + "_bq", n + "_bs", n + "_bzp"],
                                          [n + "_b"], name=n + "_bDQ", axis=0))
            ins += [n + "_w", n + "_b"]
        pre = lop.output + "_pre" if lop.act else lop.output + "_f"
        nodes.append(_main_node(lop, ins, pre, inits))
        if lop.act:
            nodes += _act_nodes(lop, pre, lop.output + "_f", inits)
        qdq(lop.output + "_f", lop.output)
        alias[lop.output] = lop.output
    out = alias[b.out]
    return _model(b, nodes, inits, out, b.shapes[b.out])


def build_model(spec: Spec, int8: bool) -> onnx.ModelProto:
    return qdq_model(spec) if int8 else float_model(spec)


# -- hypothesis strategies ----------------------------------------------------------------------

def _layer(max_c: int) -> st.SearchStrategy[tuple]:
    ch = st.integers(1, max_c)
    act = st.sampled_from(ACTS)
    k = st.sampled_from((1, 3, 5))
    s = st.sampled_from((1, 2))
    return st.one_of(
        st.tuples(st.just("conv"), ch, k, s, st.integers(0, 2), act),
        st.tuples(st.just("dw"), k, s, st.integers(0, 2), act),
        st.tuples(st.just("pw"), ch, act),
        st.tuples(st.just("pool"), st.sampled_from(("max", "avg")), st.sampled_from((2, 3)), s),
        st.tuples(st.just("res"), st.sampled_from((1, 3)), act),
        st.tuples(st.just("cat"), st.integers(1, max_c // 2 or 1), st.integers(1, max_c // 2 or 1),
                  act),
        st.tuples(st.just("act"), st.sampled_from(("relu", "clip"))),
    )


def _fix_pads(layer: tuple) -> tuple:
    """Symmetric pads no larger than k // 2 (ONNX allows more, CNNs never use it)."""
    if layer[0] == "conv":
        _, cout, k, s, pad, act = layer
        return ("conv", cout, k, s, min(pad, k // 2), act)
    if layer[0] == "dw":
        _, k, s, pad, act = layer
        return ("dw", k, s, min(pad, k // 2), act)
    return layer


@st.composite
def specs(draw: st.DrawFn, max_c: int = 48, max_res: int = 32, max_layers: int = 6,
          min_head: int = 1) -> Spec:
    c = draw(st.integers(1, max_c))
    h = draw(st.integers(4, max_res))
    w = draw(st.one_of(st.just(h), st.integers(4, max_res)))
    layers = tuple(_fix_pads(x) for x in draw(st.lists(_layer(max_c), min_size=1,
                                                        max_size=max_layers)))
    head = draw(st.one_of(st.none(), st.integers(min_head, 16)))
    seed = draw(st.integers(0, 2**16))
    return Spec(c, h, w, seed, layers, head)
