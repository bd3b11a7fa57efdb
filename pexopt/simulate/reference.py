"""Whole-tensor reference run of an IR graph, op by op in file order, with ONNX-layout helpers.

Values are keyed by IR tensor name and hold the tensor's buffer in its IR shape (NHWC memory):
int8 for a tensor with qparams in an int8 graph, float32 otherwise. A float op reading an int8
tensor dequantises it; a float op writing a quantised tensor quantises (TFLite rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pexopt.errors import ModelError
from pexopt.fixedpoint import dequantize, quantize_real
from pexopt.frontend.onnx_index import NHWC, OnnxIndex, perm_for
from pexopt.frontend.onnx_load import load_model
from pexopt.graph.ir import Graph, QParams, Tensor
from pexopt.graph.params import OpParams
from pexopt.simulate.kernels import KERNELS


def stored_int8(t: Tensor) -> bool:
    """Whether the reference keeps tensor `t` as int8 (it has qparams and deploys as int8)."""
    return t.qparams is not None and t.dtype == "int8"


def kernel_input(t: Tensor, p: OpParams, k: int, buf: np.ndarray) -> np.ndarray:
    """The kernel view of input `k` (tensor `t`, buffer `buf`) in the op's arithmetic dtype."""
    idx = p.in_index[k]
    x = buf.reshape(-1)[idx] if idx is not None else buf.reshape(p.in_shapes[k])
    if p.int8:
        if x.dtype != np.int8:
            raise ValueError(f"op '{p.name}': int8 op fed a {x.dtype} tensor '{t.name}'")
        return x
    if x.dtype == np.int8:
        q = t.qparams
        return dequantize(x, q.scale, q.zero_point).astype(np.float32)
    return x.astype(np.float32, copy=False)


def store_output(t: Tensor, p: OpParams, y: np.ndarray) -> np.ndarray:
    """Kernel output -> buffer of tensor `t` (IR shape, stored dtype)."""
    if stored_int8(t) and y.dtype != np.int8:
        y = quantize_real(y, t.qparams.scale, t.qparams.zero_point)
    elif not stored_int8(t) and y.dtype == np.int8:
        y = dequantize(y, p.out_qparams.scale, p.out_qparams.zero_point).astype(np.float32)
    if p.out_index is None:
        return y.reshape(t.shape)
    buf = np.empty(t.elements, dtype=y.dtype)
    buf[p.out_index.reshape(-1)] = y.reshape(-1)
    return buf.reshape(t.shape)


def run_reference(graph: Graph, params: dict[int, OpParams],
                  inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every op on whole tensors; returns every tensor's buffer by IR tensor name.

    `inputs` are IR buffers (see `inputs_from_onnx` for ONNX-layout inputs).
    """
    values: dict[str, np.ndarray] = {}
    for tid in graph.inputs:
        t = graph.tensors[tid]
        if t.name not in inputs:
            raise ModelError(f"missing input '{t.name}'")
        x = np.asarray(inputs[t.name])
        if x.size != t.elements:
            raise ModelError(f"input '{t.name}' has {x.size} elements, expected {t.elements}")
        want = np.int8 if stored_int8(t) else np.float32
        if x.dtype != want:
            raise ModelError(f"input '{t.name}' is {x.dtype}, expected {np.dtype(want)}")
        values[t.name] = x.reshape(t.shape)
    for op in graph.ops:
        p = params[op.id]
        xs = [kernel_input(graph.tensors[t], p, k, values[graph.tensors[t].name])
              for k, t in enumerate(op.inputs)]
        y = KERNELS[op.kind](op, p, xs, None, None)
        out = graph.tensors[op.outputs[0]]
        values[out.name] = store_output(out, p, y)
    return values


def inputs_from_onnx(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX-layout graph inputs (e.g. float NCHW) -> IR buffers (NHWC; int8 via the input's
    qparams with ONNX QuantizeLinear rounding: halves to even, saturating)."""
    out: dict[str, np.ndarray] = {}
    for tid in graph.inputs:
        t = graph.tensors[tid]
        x = np.asarray(feeds[t.name])
        if perm_for(t.shape, x.shape) == NHWC:  # same convention as the kernel views
            x = x.transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x).reshape(t.shape)
        if stored_int8(t):
            x = _onnx_quantize(x, t.qparams) if x.dtype.kind == "f" else x.astype(np.int8)
        else:
            x = x.astype(np.float32)
        out[t.name] = x
    return out


def outputs_to_onnx(graph: Graph, values: dict[str, np.ndarray],
                    model: str | Path | OnnxIndex | None = None,
                    dequantize_outputs: bool = True) -> dict[str, np.ndarray]:
    """IR output buffers -> the ONNX graph outputs in ONNX layout, keyed by ONNX output name.

    The aliased nodes between the IR tensor and the ONNX output are replayed on the values,
    including a trailing DequantizeLinear -> QuantizeLinear pair that requantises. int8 results
    are dequantised when the ONNX output is float (and `dequantize_outputs`).
    """
    ox = model if isinstance(model, OnnxIndex) else (
        onnx_index(model) if model is not None else graph.source.index())
    names = {t.name: t for t in graph.tensors}
    res: dict[str, np.ndarray] = {}
    for name in ox.outputs:
        path = []
        v = name
        while v not in names:
            n = ox.producer.get(v)
            if n is None or not n.input:
                raise ModelError(f"{ox.path}: output '{name}' is not a view of an IR tensor")
            path.append(n)
            v = n.input[0]
        t = names[v]
        arr = values[t.name].reshape(-1)[ox.root_index(t)]
        q = t.qparams if arr.dtype == np.int8 else None
        for n in reversed(path):
            arr, q = _replay_value(ox, n, arr, q)
        float_out = ox.elem.get(name) in (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
        if q is not None and float_out and dequantize_outputs:
            arr = dequantize(arr, q.scale, q.zero_point).astype(np.float32)
        res[name] = arr
    return res


def _node_qparams(ox: OnnxIndex, n) -> QParams:
    s = ox.const(n.input[1])
    z = ox.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if s is None or s.size != 1:
        raise ModelError(f"{ox.path}: node '{n.name}': per-tensor constant qparams expected")
    return QParams(float(s.reshape(-1)[0]), int(z.reshape(-1)[0]) if z is not None else 0)


def _replay_value(ox: OnnxIndex, n, arr: np.ndarray,
                  q: QParams | None) -> tuple[np.ndarray, QParams | None]:
    """Apply one aliased ONNX node to a value (int8 with qparams `q`, or float if q is None)."""
    if n.op_type == "Transpose":
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
        return np.transpose(arr, perm), q
    if n.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return arr.reshape(ox.shape(n.output[0])), q
    if n.op_type == "DequantizeLinear":
        nq = _node_qparams(ox, n)
        return (arr, nq) if q is not None else (arr, None)
    if n.op_type == "QuantizeLinear":
        nq = _node_qparams(ox, n)
        if q is None:
            return _onnx_quantize(arr, nq), nq
        if nq != q:
            return _onnx_quantize(dequantize(arr, q.scale, q.zero_point), nq), nq
        return arr, q
    return arr, q


def _onnx_quantize(x: np.ndarray, q: QParams) -> np.ndarray:
    """ONNX QuantizeLinear to int8: halves to even, saturating."""
    return np.clip(np.rint(np.asarray(x, np.float64) / q.scale) + q.zero_point,
                   -128, 127).astype(np.int8)


def onnx_index(model_path: str | Path,
               input_shapes: dict[str, tuple[int, ...]] | None = None) -> OnnxIndex:
    """Load and index an ONNX model once (for repeated `outputs_to_onnx` calls)."""
    return OnnxIndex(load_model(model_path, input_shapes), str(model_path))
