"""Float ONNX -> int8 QDQ ONNX with onnxruntime's static quantisation, deterministically.

`quantize_model(float_onnx, out_path, calib)` runs `quant_pre_process` (ORT basic graph
optimisation, which folds BatchNormalization into Conv, and ONNX shape inference; the symbolic
pass is skipped since shapes are static) and `quantize_static` (QDQ format, int8 activations
and per-channel int8 weights, MinMax calibration), then canonicalises the model (producer,
metadata, initializer/value_info order, unused opset imports) so that the same inputs give the
same bytes, and writes it atomically.

Calibration (`calib`): the path of a `.npy` file holding N samples, shaped (N, *input_shape)
or, for a batch-1 input, (N, *input_shape[1:]); or `random:N` for N fixed-seed standard-normal
samples (a smoke test; the bundled `models/*_int8.onnx` are made the same way).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from pexopt import __version__
from pexopt.errors import PexError
from pexopt.outputs import write_files

PRODUCER = "pexopt.quantize"
CALIB_SEED = 20240  # the seed of models/build_models.py
MAX_RANDOM_SAMPLES = 10_000
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
           "MatMulInteger", "DynamicQuantizeLinear"}


@dataclass(frozen=True)
class QuantizeReport:
    """What quantize_model wrote."""

    path: Path
    samples: int  # calibration samples used
    nodes: int  # nodes of the QDQ model
    bytes: int
    sha256: str


def _model_input(model: onnx.ModelProto, path: Path) -> tuple[str, tuple[int, ...]]:
    """Name and static shape of the model's only float32 input; PexError otherwise."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise PexError(f"{path}: quantize needs a model with one input, this one has "
                       f"{len(inputs)}")
    vi = inputs[0]
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise PexError(f"{path}: input '{vi.name}' is not a tensor")
    if tt.elem_type != onnx.TensorProto.FLOAT:
        dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else "unknown"
        raise PexError(f"{path}: not a float model: input '{vi.name}' is {dt}, "
                       "quantize needs float32")
    quant = sorted({n.op_type for n in model.graph.node if n.op_type in QDQ_OPS})
    if quant:
        raise PexError(f"{path}: not a float model: it already has {', '.join(quant)} nodes")
    shape = []
    for d in tt.shape.dim:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise PexError(f"{path}: input '{vi.name}' has a dynamic dimension "
                           f"'{d.dim_param or '?'}'; quantize needs a static input shape")
        shape.append(d.dim_value)
    return vi.name, tuple(shape)


def load_calibration(calib: str, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The calibration samples, each float32 of `shape`; PexError (one line) if unusable."""
    if not isinstance(calib, str) or not calib:
        raise PexError("--calib: expected a .npy file or random:N")
    if calib.startswith("random:"):
        text = calib[len("random:"):]
        if not text.isdigit() or not 0 < int(text) <= MAX_RANDOM_SAMPLES:
            raise PexError(f"--calib: '{calib}': N in random:N must be 1..{MAX_RANDOM_SAMPLES}")
        rng = np.random.default_rng(CALIB_SEED)
        return [rng.standard_normal(shape).astype(np.float32) for _ in range(int(text))]
    path = Path(calib)
    if path.suffix != ".npy":
        raise PexError(f"--calib: '{calib}' is neither a .npy file nor random:N")
    if not path.is_file():
        raise PexError(f"{path}: calibration file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PexError(f"{path}: not a readable .npy array ({e})") from e
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise PexError(f"{path}: calibration array must be numeric, not {arr.dtype}")
    if arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        samples = [arr[i] for i in range(arr.shape[0])]
    elif shape and shape[0] == 1 and arr.ndim == len(shape) and arr.shape[1:] == shape[1:]:
        samples = [arr[i:i + 1] for i in range(arr.shape[0])]
    else:
        want = "x".join(map(str, shape))
        alt = f" or Nx{'x'.join(map(str, shape[1:]))}" if shape and shape[0] == 1 else ""
        raise PexError(f"{path}: calibration array has shape "
                       f"{'x'.join(map(str, arr.shape)) or 'scalar'}, expected Nx{want}{alt}")
    if not samples:
        raise PexError(f"{path}: calibration array holds no samples")
    out = [np.ascontiguousarray(s, dtype=np.float32) for s in samples]
    if not all(np.isfinite(s).all() for s in out):
        raise PexError(f"{path}: calibration array contains NaN or infinity")
    return out


def canonicalize(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Make serialisation independent of hash-map orders, tool versions and metadata."""
    model.producer_name = PRODUCER
    model.producer_version = __version__
    model.domain = ""
    model.model_version = 0
    model.doc_string = ""
    del model.metadata_props[:]
    model.graph.name = name
    return sort_model(model)


def sort_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sort initializers and value infos by name, drop opset imports no node uses."""
    g = model.graph
    inits = sorted(g.initializer, key=lambda t: t.name)
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = sorted(g.value_info, key=lambda v: v.name)
    del g.value_info[:]
    g.value_info.extend(vis)
    # ORT's optimiser imports every domain it knows; keep the used ones (and the default)
    used = {n.domain for n in g.node} | {""}
    ops = sorted((o for o in model.opset_import if o.domain in used), key=lambda o: o.domain)
    del model.opset_import[:]
    model.opset_import.extend(ops)
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def quantize_model(float_onnx: str | os.PathLike, out_path: str | os.PathLike,
                   calib: str) -> QuantizeReport:
    """Quantise a float32 ONNX model to int8 QDQ (per-channel weights) into out_path.

    Raises PexError with one line for a missing or unreadable model, a non-float model, a
    missing or wrongly shaped calibration array, or a failure inside onnxruntime.
    """
    src = Path(float_onnx)
    out = Path(out_path)
    if not src.is_file():
        raise PexError(f"{src}: no such model file")
    try:
        model = onnx.load(str(src))
    except Exception as e:  # protobuf DecodeError, OSError, ...
        raise PexError(f"{src}: not a readable ONNX model ({_first_line(e)})") from e
    name, shape = _model_input(model, src)
    samples = load_calibration(calib, shape)
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise PexError("quantize needs onnxruntime (pip install onnxruntime)") from e

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{name: x} for x in samples])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    ort_log = logging.getLogger("onnxruntime")  # keep quantize_static's advice off the console
    level = ort_log.level
    ort_log.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="pexopt_quant_") as td:
            fp, pp, qp = (os.path.join(td, f) for f in ("float.onnx", "pre.onnx", "int8.onnx"))
            # a self-contained copy (onnx.load has read any external data)
            onnx.save(model, fp)
            quant_pre_process(fp, pp, skip_symbolic_shape=True)
            quantize_static(pp, qp, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            qmodel = onnx.load(qp)
    except PexError:
        raise
    except Exception as e:
        raise PexError(f"{src}: quantisation failed: {_first_line(e)}") from e
    finally:
        ort_log.setLevel(level)
    qmodel = canonicalize(qmodel, (model.graph.name or src.stem) + "_int8")
    try:
        onnx.checker.check_model(qmodel)
    except onnx.checker.ValidationError as e:
        raise PexError(f"{src}: the quantised model is invalid: {_first_line(e)}") from e
    data = qmodel.SerializeToString(deterministic=True)
    write_files({out: data}, "-o", [src, calib if os.path.isfile(calib) else None])
    return QuantizeReport(out, len(samples), len(qmodel.graph.node), len(data),
                          hashlib.sha256(data).hexdigest())
