"""pexopt.quantize: float ONNX -> deterministic int8 QDQ ONNX (onnxruntime quantize_static)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import one_op_model
from onnx import TensorProto

from pexopt.errors import PexError
from pexopt.frontend.onnx_import import import_onnx

pytest.importorskip("onnxruntime")

from pexopt.quantize import load_calibration, quantize_model  # noqa: E402

KWS_SHAPE = (1, 1, 49, 10)


@pytest.fixture(scope="module")
def kws(models_dir: Path) -> Path:
    return models_dir / "dscnn_kws.onnx"


@pytest.fixture(scope="module")
def kws_q(kws: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("quant")
    a, b = d / "a.onnx", d / "sub" / "b.onnx"
    quantize_model(kws, a, "random:8")
    quantize_model(kws, b, "random:8")
    return a, b


def test_random_calibration_is_deterministic(kws_q: tuple[Path, Path]) -> None:
    a, b = kws_q
    assert a.read_bytes() == b.read_bytes()
    # written atomically: no temporary file left next to the result
    assert sorted(p.name for p in a.parent.iterdir()) == ["a.onnx", "sub"]


def test_result_is_qdq_int8(kws_q: tuple[Path, Path]) -> None:
    m = onnx.load(str(kws_q[0]))
    onnx.checker.check_model(m, full_check=True)
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert "BatchNormalization" not in ops  # folded by quant_pre_process
    assert m.producer_name == "pexopt.quantize" and not m.metadata_props
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    inits = {t.name: t for t in m.graph.initializer}
    zp = [inits[n.input[2]] for n in q if len(n.input) > 2 and n.input[2] in inits]
    assert zp and all(t.data_type == TensorProto.INT8 for t in zp)
    # per-channel weights: some DequantizeLinear has a vector of scales
    dq_scales = [inits[n.input[1]] for n in m.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[1] in inits]
    assert any(len(t.dims) == 1 and t.dims[0] > 1 for t in dq_scales)


def test_same_graph_as_bundled_int8(kws_q: tuple[Path, Path], models_dir: Path) -> None:
    """random:N uses the seed of models/build_models.py, so the graphs coincide."""
    ours = onnx.load(str(kws_q[0]))
    bundled = onnx.load(str(models_dir / "dscnn_kws_int8.onnx"))
    assert list(ours.graph.node) == list(bundled.graph.node)
    assert list(ours.graph.initializer) == list(bundled.graph.initializer)


def test_imports_with_same_ir_sizes(kws: Path, kws_q: tuple[Path, Path]) -> None:
    fg = import_onnx(kws)
    qg = import_onnx(kws_q[0])
    assert [t.shape for t in fg.tensors] == [t.shape for t in qg.tensors]
    assert [t.nbytes for t in fg.tensors] == [t.nbytes for t in qg.tensors]
    assert [o.kind for o in fg.ops] == [o.kind for o in qg.ops]
    assert all(t.qparams is not None for t in qg.tensors)


@pytest.mark.parametrize("layout", ["N_x_shape", "N_x_shape_without_batch"])
def test_npy_calibration(kws: Path, tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(7)
    shape = (4, *KWS_SHAPE) if layout == "N_x_shape" else (4, *KWS_SHAPE[1:])
    calib = tmp_path / "calib.npy"
    np.save(calib, rng.standard_normal(shape).astype(np.float32))
    rep = quantize_model(kws, tmp_path / "q.onnx", str(calib))
    assert rep.samples == 4 and rep.path.is_file() and rep.bytes == rep.path.stat().st_size
    g = import_onnx(rep.path)
    assert g.tensors[g.inputs[0]].shape == (1, 49, 10, 1)  # NHWC in the IR


def test_npy_float64_is_accepted(kws: Path, tmp_path: Path) -> None:
    calib = tmp_path / "c.npy"
    np.save(calib, np.random.default_rng(1).standard_normal((2, *KWS_SHAPE)))
    samples = load_calibration(str(calib), KWS_SHAPE)
    assert len(samples) == 2 and all(s.dtype == np.float32 and s.shape == KWS_SHAPE
                                     for s in samples)


@pytest.mark.parametrize("shape", [(4, 1, 10, 49), (4, 490), (1, 49, 10), (3, 2, 1, 49, 10)])
def test_bad_calibration_shape(kws: Path, tmp_path: Path, shape: tuple[int, ...]) -> None:
    calib = tmp_path / "bad.npy"
    np.save(calib, np.zeros(shape, dtype=np.float32))
    out = tmp_path / "q.onnx"
    with pytest.raises(PexError, match="calibration array has shape") as e:
        quantize_model(kws, out, str(calib))
    assert "\n" not in str(e.value)
    assert not out.exists()


@pytest.mark.parametrize("calib, message", [
    ("random:0", "random:N"), ("random:x", "random:N"), ("calib.txt", "neither"),
    ("missing.npy", "not found"), ("", "expected"),
])
def test_bad_calibration_argument(kws: Path, tmp_path: Path, calib: str, message: str) -> None:
    with pytest.raises(PexError, match=message):
        quantize_model(kws, tmp_path / "q.onnx", calib)


def test_nan_calibration(kws: Path, tmp_path: Path) -> None:
    calib = tmp_path / "nan.npy"
    np.save(calib, np.full((2, *KWS_SHAPE), np.nan, dtype=np.float32))
    with pytest.raises(PexError, match="NaN"):
        quantize_model(kws, tmp_path / "q.onnx", str(calib))


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(PexError, match="no such model file"):
        quantize_model(tmp_path / "nope.onnx", tmp_path / "q.onnx", "random:2")


def test_not_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff not a protobuf")
    with pytest.raises(PexError, match="not a readable ONNX model"):
        quantize_model(bad, tmp_path / "q.onnx", "random:2")


def test_already_quantised_model(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PexError, match="not a float model: it already has"):
        quantize_model(models_dir / "dscnn_kws_int8.onnx", tmp_path / "q.onnx", "random:2")


def test_int8_input_model(tmp_path: Path) -> None:
    path = one_op_model(tmp_path / "i8.onnx", "Relu", [1, 4, 8, 8], elem=TensorProto.INT8,
                        check=False)
    with pytest.raises(PexError, match="not a float model: input 'x' is int8"):
        quantize_model(path, tmp_path / "q.onnx", "random:2")


def test_dynamic_input_shape(tmp_path: Path) -> None:
    path = one_op_model(tmp_path / "dyn.onnx", "Relu", ["N", 4, 8, 8])
    with pytest.raises(PexError, match="dynamic dimension 'N'"):
        quantize_model(path, tmp_path / "q.onnx", "random:2")


def test_overwrites_existing_output(kws: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    out.write_bytes(b"old")
    rep = quantize_model(kws, out, "random:2")
    assert out.read_bytes()[:3] != b"old" and rep.samples == 2
    onnx.checker.check_model(onnx.load(str(out)))
