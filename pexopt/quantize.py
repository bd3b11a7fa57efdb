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
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from pexopt import __version__
from pexopt.errors import PexError
from pexopt.frontend.onnx_import import check_scale
from pexopt.frontend.onnx_load import MAX_MODEL_BYTES, read_model
from pexopt.outputs import write_files

PRODUCER = "pexopt.quantize"
CALIB_SEED = 20240  # the seed of models/build_models.py
MAX_RANDOM_SAMPLES = 10_000
MAX_NPY_BYTES = 1 << 30  # a .npy file's declared array (checked in its header before loading)
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
    arr = read_npy(path)
    if arr.dtype.kind not in "fiu":
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
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise PexError(f"{path}: calibration array contains NaN or infinity")
    return [np.ascontiguousarray(s, dtype=np.float32) for s in samples]


def read_npy(path: Path) -> np.ndarray:
    """A .npy array whose header was checked first: its declared size must fit the cap and
    equal the bytes the file holds (a 128-byte file cannot claim 1e9x3x32x32)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, _, dtype = read(f, max_header_size=1 << 16)
            start = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError, SyntaxError) as e:
        raise PexError(f"{path}: not a readable .npy array ({_first_line(e)})") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise PexError(f"{path}: calibration array must be numeric, not {dtype}")
    n = 1
    for d in shape:
        n *= int(d)
    want = n * dtype.itemsize
    if want > MAX_NPY_BYTES:
        raise PexError(f"{path}: the array declares {want:,} B, more than the cap of "
                       f"{MAX_NPY_BYTES:,} B")
    if want != size - start:
        raise PexError(f"{path}: the header declares {'x'.join(map(str, shape)) or 'a scalar'} "
                       f"{dtype} ({want:,} B) but the file holds {size - start:,} B of data")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PexError(f"{path}: not a readable .npy array ({_first_line(e)})") from None


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


def _refuse_overflow(src: Path, calib: str, qmodel: onnx.ModelProto,
                     caught: list[warnings.WarningMessage]) -> None:
    """The calibration overflowed float32 (numpy warned, or a scale came out 0, inf or NaN):
    one line naming it, instead of the warning on stderr and a model every later command
    refuses."""
    if caught:
        raise PexError(f"{src}: calibration with '{calib}' overflows float32 "
                       f"({str(caught[0].message).strip()}); scale the calibration data")
    inits = {i.name: i for i in qmodel.graph.initializer}
    for node in qmodel.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] in inits:
            try:
                check_scale(f"{src}: node '{node.name}'", node.input[1],
                            onnx.numpy_helper.to_array(inits[node.input[1]]))
            except PexError as e:
                raise PexError(f"{e} after calibration with '{calib}' (data beyond float32's "
                               "range?)") from None


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
        if src.stat().st_size <= MAX_MODEL_BYTES:  # read_model refuses a larger file
            onnx.load(str(src), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError, ...
        raise PexError(f"{src}: not a readable ONNX model ({_first_line(e)})") from e
    model = read_model(src)  # sizes, external data, opset, node names, control flow checked
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
        with tempfile.TemporaryDirectory(prefix="pexopt_quant_") as td, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            fp, pp, qp = (os.path.join(td, f) for f in ("float.onnx", "pre.onnx", "int8.onnx"))
            # a self-contained copy (onnx.load has read any external data)
            onnx.save(model, fp)
            quant_pre_process(fp, pp, skip_symbolic_shape=True)
            quantize_static(pp, qp, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            qmodel = onnx.load(qp)
        _refuse_overflow(src, calib, qmodel, [w for w in caught
                                              if issubclass(w.category, RuntimeWarning)])
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
