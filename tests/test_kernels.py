"""Simulator kernels: fixed-point helpers, channel-slice execution, accumulating convolutions.

Single-operator ONNX models (float and QDQ int8) are imported, their params loaded, and every
slice-capable kernel is run slice by slice and compared with its whole-tensor result: bit for
bit for int8, exactly for float. Each model is also checked against onnxruntime.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pexopt import fixedpoint as quant
from pexopt.errors import ModelError
from pexopt.frontend.onnx_import import import_onnx
from pexopt.frontend.onnx_params import OpParams, load_params
from pexopt.graph.ir import Graph, Op
from pexopt.ops import OpKind
from pexopt.simulate.kernels import KERNELS, conv_accumulate, requantize
from pexopt.simulate.onnxrt import ort_session
from pexopt.simulate.reference import (
    inputs_from_onnx,
    kernel_input,
    outputs_to_onnx,
    run_reference,
)

logging.getLogger("onnxruntime").setLevel(logging.ERROR)

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


# -- scalar pure-Python transcription of gemmlowp / TFLite (int32 semantics) -------------------

def _wrap32(x: int) -> int:
    return ((x + (1 << 31)) % (1 << 32)) - (1 << 31)


def srdhm_ref(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    x = ab + nudge
    q = abs(x) // (1 << 31)
    return q if x >= 0 else -q  # C++ int64 division truncates toward zero


def rdbp_ref(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def mbqm_ref(x: int, m: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier (int32 x, double rounding)."""
    left = shift if shift > 0 else 0
    right = 0 if shift > 0 else -shift
    return rdbp_ref(srdhm_ref(_wrap32(x * (1 << left)), m), right)


def quantize_multiplier_ref(d: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier, written independently with float.hex-free integer maths."""
    if d == 0.0:
        return 0, 0
    import math
    q, shift = math.frexp(d)
    v = q * (1 << 31)
    q_fixed = int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def _edge_int32(rng: np.random.Generator, n: int) -> np.ndarray:
    edge = [0, 1, -1, 2, -2, INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, 1 << 30,
            -(1 << 30), (1 << 30) + 1, 12345, -12345, 255, -256]
    return np.concatenate([np.array(edge, dtype=np.int64),
                           rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True),
                           rng.integers(-(1 << 16), 1 << 16, n)])


def test_srdhm_and_rdbp_match_scalar_reference() -> None:
    rng = np.random.default_rng(1)
    a = _edge_int32(rng, 3000)
    b = np.concatenate([_edge_int32(rng, 3000)[: a.size - 16], a[:16][::-1]])
    got = quant.saturating_rounding_doubling_high_mul(a, b)
    assert got.tolist() == [srdhm_ref(int(x), int(y)) for x, y in zip(a, b)]
    for e in range(0, 32):
        got = quant.rounding_divide_by_pot(a, e)
        assert got.tolist() == [rdbp_ref(int(x), e) for x in a], e


def test_multiply_by_quantized_multiplier_matches_scalar_reference() -> None:
    rng = np.random.default_rng(2)
    x = _edge_int32(rng, 400)
    mults = [1 << 30, (1 << 31) - 1, 1518500250, *rng.integers(1 << 30, 1 << 31, 6).tolist()]
    for shift in range(-31, 31):
        for m in mults:
            got = quant.multiply_by_quantized_multiplier(x, m, shift)
            assert got.tolist() == [mbqm_ref(int(v), int(m), shift) for v in x], (m, shift)
    # per-channel broadcasting: one multiplier/shift per last-axis element
    acc = rng.integers(-(1 << 20), 1 << 20, (5, 7))
    m = rng.integers(1 << 30, 1 << 31, 7)
    s = rng.integers(-12, 3, 7)
    got = quant.multiply_by_quantized_multiplier(acc, m, s)
    want = [[mbqm_ref(int(acc[i, j]), int(m[j]), int(s[j])) for j in range(7)] for i in range(5)]
    assert got.tolist() == want


def test_quantize_multiplier_matches_reference_and_range() -> None:
    rng = np.random.default_rng(3)
    reals = [1.0, 0.5, 0.25, 2.0, 1e-10, 3e-10, 1 - 2.0 ** -40, 0.75, 123.456,
             *np.exp(rng.uniform(np.log(1e-9), np.log(100.0), 500)).tolist()]
    for d in reals:
        m, s = quant.quantize_multiplier(d)
        assert (m, s) == quantize_multiplier_ref(d), d
        if m:
            assert (1 << 30) <= m < (1 << 31)
            assert abs(m * 2.0 ** (s - 31) - d) <= d * 2.0 ** -30
    assert quant.quantize_multiplier(0.0) == (0, 0)
    assert quant.quantize_multiplier(1 - 2.0 ** -40) == (1 << 30, 1)  # rounds up to 2^31
    assert quant.quantize_multiplier(2.0 ** -40) == (0, 0)  # flushed, as TFLite does


def test_activation_range_int8() -> None:
    assert quant.activation_range_int8(None, None, 0.1, 3) == (-128, 127)
    assert quant.activation_range_int8(0.0, 6.0, 0.05, -10) == (-10, 110)
    assert quant.activation_range_int8(0.0, 6.0, 0.01, -128) == (-128, 127)


# -- tiny models: float, and QDQ int8 with our own calibration -------------------------------

def save_model(path: Path, nodes: list[onnx.NodeProto], inputs: dict[str, tuple[int, ...]],
               outputs: list[str], inits: dict[str, np.ndarray], opset: int = 17) -> Path:
    """A float model; output shapes come from shape inference."""
    for k, n in enumerate(nodes):
        n.name = n.name or f"{n.op_type.lower()}_{k}"
    g = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    for o in m.graph.output:  # take the inferred shapes for the declared outputs
        vi = next((v for v in m.graph.value_info if v.name == o.name), None)
        if vi is not None:
            o.CopyFrom(vi)
    onnx.save(m, str(path))
    return path


def _values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in have:
                m.graph.output.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
    s = ort_session(m.SerializeToString())
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _act_qparams(x: np.ndarray) -> tuple[np.float32, np.int8]:
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255.0 or 1.0
    return np.float32(scale), np.int8(np.clip(round(-128 - lo / scale), -128, 127))


def to_qdq(src: Path, dst: Path, feeds: dict[str, np.ndarray]) -> Path:
    """Quantise a float model to QDQ: per-tensor int8 activations (min/max of `feeds`), int8
    symmetric per-channel Conv/Gemm/MatMul weights, int32 biases of scale sx * sw; a Relu/Clip
    right after a Conv/Gemm/MatMul/Add is quantised only at its output (TFLite's fusion)."""
    model = onnx.load(str(src))
    vals = _values(model, feeds)
    g = model.graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    nodes: list[onnx.NodeProto] = []
    new_inits: dict[str, np.ndarray] = {}
    qp: dict[str, tuple[np.float32, np.int8]] = {}

    def qdq(name: str, src_name: str, dst_name: str) -> None:
        s, z = qp[name]
        new_inits[f"{name}_s"], new_inits[f"{name}_z"] = np.array(s), np.array(z)
        nodes.append(helper.make_node("QuantizeLinear", [src_name, f"{name}_s", f"{name}_z"],
                                      [f"{name}_q"], name=f"{name}_quant"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s",
                                                           f"{name}_z"], [dst_name],
                                      name=f"{name}_dequant"))

    def weight(name: str, axis: int) -> tuple[str, np.ndarray]:
        w = init[name]
        red = tuple(a for a in range(w.ndim) if a != axis)
        sw = np.maximum(np.max(np.abs(w), axis=red), 1e-8) / 127.0
        shape = [1] * w.ndim
        shape[axis] = -1
        new_inits[f"{name}_i8"] = np.clip(np.rint(w / sw.reshape(shape)), -127, 127).astype(
            np.int8)
        new_inits[f"{name}_ws"] = sw.astype(np.float32)
        new_inits[f"{name}_wz"] = np.zeros(sw.size, np.int8)
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_i8", f"{name}_ws",
                                                           f"{name}_wz"], [f"{name}_dq"],
                                      axis=axis, name=f"{name}_wdq"))
        return f"{name}_dq", sw.astype(np.float32).astype(np.float64)

    def bias(name: str, bscale: np.ndarray) -> str:
        new_inits[f"{name}_i32"] = np.rint(init[name].reshape(-1) / bscale).astype(np.int32)
        new_inits[f"{name}_bs"] = bscale.astype(np.float32)
        new_inits[f"{name}_bz"] = np.zeros(bscale.size, np.int32)
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_i32", f"{name}_bs",
                                                           f"{name}_bz"], [f"{name}_dq"],
                                      axis=0, name=f"{name}_bdq"))
        return f"{name}_dq"

    producer = {o: n for n in g.node for o in n.output}
    fused_act = {n.input[0] for n in g.node if n.op_type in ("Relu", "Clip")
                 and n.input[0] in producer and producer[n.input[0]].op_type in (
                     "Conv", "Gemm", "MatMul", "Add")}
    rename: dict[str, str] = {}
    for i in g.input:
        qp[i.name] = _act_qparams(vals[i.name] if i.name in vals else feeds[i.name])
        qdq(i.name, i.name, f"{i.name}_dq")
        rename[i.name] = f"{i.name}_dq"
    for n in g.node:
        ins = [rename.get(i, i) for i in n.input]
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in init:
            trans_b = any(a.name == "transB" and a.i for a in n.attribute)
            axis = 0 if n.op_type == "Conv" or trans_b else 1
            ins[1], sw = weight(n.input[1], axis)
            if len(n.input) > 2 and n.input[2] in init:
                sx = np.float64(qp[n.input[0]][0])
                ins[2] = bias(n.input[2], np.float32(sx * sw).astype(np.float64))
        new = helper.make_node(n.op_type, ins, [f"{o}_f" for o in n.output], name=n.name)
        new.attribute.extend(n.attribute)
        nodes.append(new)
        for o in n.output:
            if o in fused_act:  # TFLite semantics: no requantisation before a fused Relu/Clip
                nodes[-1].output[list(n.output).index(o)] = o
                continue
            qp[o] = _act_qparams(vals[o])
            qdq(o, f"{o}_f", o)
    out = helper.make_graph(nodes, g.name, list(g.input), list(g.output),
                            list(g.initializer) + [numpy_helper.from_array(v, k)
                                                   for k, v in new_inits.items()])
    m = helper.make_model(out, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    onnx.save(m, str(dst))
    return dst


# -- single-operator cases ---------------------------------------------------------------------

def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def case(name: str, rng: np.random.Generator) -> tuple[list, dict, list, dict]:
    """(nodes, inputs, outputs, inits) of a one-operator model named `name`."""
    c, h, w = 6, 9, 8
    x = {"x": (1, c, h, w)}
    mk = helper.make_node
    if name == "depthwise":
        return ([mk("Conv", ["x", "w", "b"], ["y"], group=c, kernel_shape=[3, 2],
                    strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])], x, ["y"],
                {"w": _rand(rng, c, 1, 3, 2), "b": _rand(rng, c)})
    if name == "depthwise_relu6":
        return ([mk("Conv", ["x", "w", "b"], ["t"], group=c, kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1]),
                 mk("Clip", ["t", "lo", "hi"], ["y"])], x, ["y"],
                {"w": _rand(rng, c, 1, 3, 3), "b": _rand(rng, c),
                 "lo": np.float32(0.0), "hi": np.float32(2.0)})
    if name == "depthwise_mult2":
        return ([mk("Conv", ["x", "w"], ["y"], group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                x, ["y"], {"w": _rand(rng, 2 * c, 1, 3, 3)})
    if name == "conv":
        return ([mk("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 2], strides=[2, 1],
                    pads=[0, 1, 2, 0], dilations=[1, 2])], x, ["y"],
                {"w": _rand(rng, 10, c, 3, 2), "b": _rand(rng, 10)})
    if name == "grouped_conv":
        return ([mk("Conv", ["x", "w", "b"], ["y"], group=2, kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1])], x, ["y"],
                {"w": _rand(rng, 4, c // 2, 3, 3), "b": _rand(rng, 4)})
    if name == "gemm":
        return ([mk("Flatten", ["x"], ["f"]),
                 mk("Gemm", ["f", "w", "b"], ["y"], transB=1)], x, ["y"],
                {"w": _rand(rng, 7, c * h * w) * 0.1, "b": _rand(rng, 7)})
    if name == "maxpool":
        return ([mk("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 1],
                    pads=[1, 0, 1, 1])], x, ["y"], {})
    if name == "avgpool":
        return ([mk("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                    pads=[1, 1, 1, 1])], x, ["y"], {})
    if name == "avgpool_incl":
        return ([mk("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                    pads=[1, 1, 1, 1], count_include_pad=1)], x, ["y"], {})
    if name == "avgpool_ceil":
        return ([mk("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                    pads=[0, 1, 0, 0], ceil_mode=1)], x, ["y"], {})
    if name in ("add", "mul"):
        return ([mk(name.capitalize(), ["x", "z"], ["y"])], {**x, "z": (1, c, h, w)}, ["y"], {})
    if name in ("add_bcast", "mul_bcast"):
        op = name.split("_")[0].capitalize()
        return ([mk(op, ["x", "z"], ["y"])], {**x, "z": (1, c, 1, 1)}, ["y"], {})
    if name in ("affine_mul", "affine_add"):
        op = name.split("_")[1].capitalize()
        return ([mk(op, ["x", "k"], ["y"])], x, ["y"], {"k": _rand(rng, c, 1, 1)})
    if name == "batchnorm":
        return ([mk("BatchNormalization", ["x", "g", "beta", "mu", "var"], ["y"])], x, ["y"],
                {"g": _rand(rng, c), "beta": _rand(rng, c), "mu": _rand(rng, c),
                 "var": np.abs(_rand(rng, c)) + 0.5})
    if name == "relu":
        return [mk("Relu", ["x"], ["y"])], x, ["y"], {}
    if name == "clip":
        return ([mk("Clip", ["x", "lo", "hi"], ["y"])], x, ["y"],
                {"lo": np.float32(-0.5), "hi": np.float32(1.0)})
    if name in ("sigmoid", "hardsigmoid", "hardswish"):
        op = {"sigmoid": "Sigmoid", "hardsigmoid": "HardSigmoid", "hardswish": "HardSwish"}
        return [mk(op[name], ["x"], ["y"])], x, ["y"], {}
    if name == "gap":
        return [mk("GlobalAveragePool", ["x"], ["y"])], x, ["y"], {}
    if name == "reduce_mean":
        return [mk("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)], x, ["y"], {}
    if name == "reduce_mean_w":
        return [mk("ReduceMean", ["x"], ["y"], axes=[3], keepdims=0)], x, ["y"], {}
    if name in ("pad", "pad_reflect"):
        mode = "reflect" if name == "pad_reflect" else "constant"
        return ([mk("Pad", ["x", "pads"], ["y"], mode=mode)], x, ["y"],
                {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)})
    if name == "resize":
        return ([mk("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                x, ["y"], {"scales": np.array([1, 1, 2, 2], np.float32)})
    if name == "resize_half_pixel":
        return ([mk("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest")], x, ["y"],
                {"sizes": np.array([1, c, 13, 5], np.int64)})
    if name == "concat":
        return ([mk("Concat", ["x", "z"], ["y"], axis=1)], {**x, "z": (1, 3, h, w)}, ["y"], {})
    if name == "softmax":
        return ([mk("Flatten", ["x"], ["f"]), mk("Softmax", ["f"], ["y"])], x, ["y"], {})
    if name == "transpose":
        return [mk("Transpose", ["x"], ["y"], perm=[0, 1, 3, 2])], x, ["y"], {}
    raise KeyError(name)


SAME_SLICE = ("depthwise", "depthwise_relu6", "maxpool", "avgpool", "avgpool_incl",
              "avgpool_ceil", "add",
              "mul", "add_bcast", "mul_bcast", "affine_mul", "affine_add", "batchnorm", "relu",
              "clip", "sigmoid", "hardsigmoid", "hardswish", "gap", "reduce_mean", "pad",
              "pad_reflect", "resize", "resize_half_pixel")
FILTER_SLICE = ("conv", "gemm")
WHOLE_ONLY = ("depthwise_mult2", "grouped_conv", "concat", "softmax", "transpose",
              "reduce_mean_w")


def build_case(tmp_path: Path, name: str, int8: bool,
               seed: int = 0) -> tuple[Path, Graph, dict[int, OpParams], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    nodes, inputs, outputs, inits = case(name, rng)
    path = save_model(tmp_path / f"{name}.onnx", nodes, inputs, outputs, inits)
    feeds = {k: _rand(rng, *s) for k, s in inputs.items()}
    if int8:
        path = to_qdq(path, tmp_path / f"{name}_int8.onnx", feeds)
    g = import_onnx(path, dtype="int8" if int8 else "float32")
    return path, g, load_params(path, g), feeds


def _main_op(g: Graph) -> Op:
    return max(g.ops, key=lambda o: o.macs)


def random_slices(rng: np.random.Generator, n: int) -> list[slice]:
    """A random partition of range(n): widths include 1 and non-divisors of n."""
    widths = [1] if n > 1 else []
    while sum(widths) < n:
        widths.append(int(min(rng.integers(1, max(2, n // 2) + 1), n - sum(widths))))
    rng.shuffle(widths)
    out, start = [], 0
    for wd in widths:
        out.append(slice(start, start + wd))
        start += wd
    return out


def _kernel_inputs(g: Graph, op: Op, p: OpParams, values: dict[str, np.ndarray]) -> list:
    return [kernel_input(g.tensors[t], p, k, values[g.tensors[t].name])
            for k, t in enumerate(op.inputs)]


def _slice_input(x: np.ndarray, sl: slice) -> np.ndarray:
    return x if x.shape[-1] == 1 else x[..., sl]


def _check_vs_ort(path: Path, g: Graph, values: dict[str, np.ndarray],
                  feeds: dict[str, np.ndarray], int8: bool) -> None:
    s = ort_session(path)
    ref = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
    got = outputs_to_onnx(g, values, path)
    for name, r in ref.items():
        m = got[name]
        assert m.shape == r.shape
        if int8:
            step = g.tensors[g.outputs[0]].qparams.scale
            assert np.max(np.abs(m - r)) <= step * 1.001, name
        else:
            np.testing.assert_allclose(m, r, rtol=1e-5, atol=1e-5 * (1 + np.ptp(r)))


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
@pytest.mark.parametrize("name", SAME_SLICE + FILTER_SLICE + WHOLE_ONLY)
def test_single_op_slices_and_onnxruntime(tmp_path: Path, name: str, int8: bool) -> None:
    path, g, params, feeds = build_case(tmp_path, name, int8)
    values = run_reference(g, params, inputs_from_onnx(g, feeds))
    _check_vs_ort(path, g, values, feeds, int8)
    op = _main_op(g)
    p = params[op.id]
    assert p.int8 == int8 or op.kind == OpKind.OPAQUE
    xs = _kernel_inputs(g, op, p, values)
    whole = KERNELS[op.kind](op, p, xs, None, None)
    if name in WHOLE_ONLY:
        return
    rng = np.random.default_rng(7)
    cout = whole.shape[-1]
    for _ in range(3):
        parts = []
        for sl in random_slices(rng, cout):
            if name in FILTER_SLICE:
                parts.append(KERNELS[op.kind](op, p, xs, sl, None))
            else:
                parts.append(KERNELS[op.kind](op, p, [_slice_input(x, sl) for x in xs], sl,
                                              None))
        got = np.concatenate(parts, axis=-1)
        assert got.dtype == whole.dtype
        assert np.array_equal(got, whole), name


# -- accumulating conv / fully connected over input-channel slices -----------------------------

def _conv_case(rng: np.random.Generator) -> tuple[list, dict, list, dict]:
    cin, cout = int(rng.integers(1, 12)), int(rng.integers(1, 9))
    kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    dh, dw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    h = int(rng.integers((kh - 1) * dh + 1, 14))
    w = int(rng.integers((kw - 1) * dw + 1, 14))
    pads = [int(v) for v in rng.integers(0, 3, 4)]
    pads = [min(pads[0], kh - 1), min(pads[1], kw - 1), min(pads[2], kh - 1), min(pads[3], kw - 1)]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[kh, kw],
                            strides=[sh, sw], dilations=[dh, dw], pads=pads)
    return ([node], {"x": (1, cin, h, w)}, ["y"],
            {"w": _rand(rng, cout, cin, kh, kw), "b": _rand(rng, cout)})


def _fc_case(rng: np.random.Generator) -> tuple[list, dict, list, dict]:
    """Conv 1x1 (so the FC input is an NHWC tensor) -> Flatten (NCHW order) -> Gemm."""
    cin, c, h, w = 3, int(rng.integers(2, 9)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
    m = int(rng.integers(1, 8))
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t"], kernel_shape=[1, 1]),
             helper.make_node("Flatten", ["t"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)]
    return (nodes, {"x": (1, cin, h, w)}, ["y"],
            {"w0": _rand(rng, c, cin, 1, 1), "w": _rand(rng, m, c * h * w) * 0.3,
             "b": _rand(rng, m)})


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
@pytest.mark.parametrize("kind", ["conv", "fc"])
def test_accumulate_over_input_slices_equals_whole(tmp_path: Path, kind: str,
                                                   int8: bool) -> None:
    rng = np.random.default_rng(11 if kind == "conv" else 12)
    for k in range(8):
        nodes, inputs, outputs, inits = (_conv_case if kind == "conv" else _fc_case)(rng)
        path = save_model(tmp_path / f"{kind}{k}.onnx", nodes, inputs, outputs, inits)
        feeds = {n: _rand(rng, *s) for n, s in inputs.items()}
        if int8:
            path = to_qdq(path, tmp_path / f"{kind}{k}_int8.onnx", feeds)
        g = import_onnx(path, dtype="int8" if int8 else "float32")
        params = load_params(path, g)
        values = run_reference(g, params, inputs_from_onnx(g, feeds))
        _check_vs_ort(path, g, values, feeds, int8)
        op = g.ops[-1]
        p = params[op.id]
        assert op.kind == (OpKind.CONV if kind == "conv" else OpKind.FULLY_CONNECTED)
        whole = KERNELS[op.kind](op, p, _kernel_inputs(g, op, p, values), None, None)
        t = g.tensors[op.inputs[0]]
        x = values[t.name]
        if kind == "conv":
            x = kernel_input(t, p, 0, x)
        for sl_out in (None, slice(0, max(1, whole.shape[-1] // 2))):
            acc = None
            for sl in random_slices(rng, x.shape[-1]):
                acc = conv_accumulate(op, p, x[..., sl], sl, acc, sl_out)
            assert acc.dtype == (np.int32 if int8 else np.float64)
            got = requantize(op, p, acc, sl_out)
            want = whole[..., sl_out] if sl_out is not None else whole
            if int8:
                assert np.array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_fc_weights_follow_nhwc_memory(tmp_path: Path) -> None:
    """ONNX flattens NCHW; the FC weight columns are permuted to the NHWC buffer order."""
    rng = np.random.default_rng(5)
    nodes, inputs, outputs, inits = _fc_case(rng)
    inits["w0"] = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)[:, :, :, :]
    nodes[0] = helper.make_node("Conv", ["x", "w0"], ["t"], kernel_shape=[1, 1])
    inputs = {"x": (1, 3, 4, 2)}
    inits["w"], inits["b"] = _rand(rng, 5, 3 * 4 * 2), _rand(rng, 5)
    path = save_model(tmp_path / "fc.onnx", nodes, inputs, outputs, inits)
    g = import_onnx(path, dtype="float32")
    p = load_params(path, g)[g.ops[-1].id]
    cols = np.arange(24).reshape(3, 4, 2).transpose(1, 2, 0).reshape(-1)  # NHWC position -> k
    np.testing.assert_array_equal(p.weights, inits["w"][:, cols])


def test_unsupported_operator_is_a_model_error(tmp_path: Path) -> None:
    nodes = [helper.make_node("Erf", ["x"], ["y"], name="my_erf")]
    path = save_model(tmp_path / "erf.onnx", nodes, {"x": (1, 4)}, ["y"], {})
    g = import_onnx(path, dtype="float32")
    with pytest.raises(ModelError, match="my_erf"):
        load_params(path, g)


def test_depthwise_slices_need_multiplier_one(tmp_path: Path) -> None:
    _, g, params, feeds = build_case(tmp_path, "depthwise_mult2", False)
    op = _main_op(g)
    values = run_reference(g, params, inputs_from_onnx(g, feeds))
    xs = _kernel_inputs(g, op, params[op.id], values)
    with pytest.raises(ValueError):
        KERNELS[op.kind](op, params[op.id], xs, slice(0, 2), None)
