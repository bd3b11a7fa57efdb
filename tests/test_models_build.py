"""Tests for models/build_models.py (deterministic random-weight ONNX benchmark models)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from pexopt.simulate.onnxrt import ort_session

ort = pytest.importorskip("onnxruntime")

SCRIPT = Path(__file__).resolve().parents[1] / "models" / "build_models.py"


@pytest.fixture(scope="module")
def bm():
    spec = importlib.util.spec_from_file_location("pexopt_build_models", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort_session(path)
    return sess.run(["output"], {"input": x})[0]


@pytest.fixture(scope="module")
def dscnn_builds(bm, tmp_path_factory):
    a = bm.build("dscnn_kws", tmp_path_factory.mktemp("a"), verbose=False)
    b = bm.build("dscnn_kws", tmp_path_factory.mktemp("b"), verbose=False)
    return a, b


def test_dscnn_deterministic(dscnn_builds):
    a, b = dscnn_builds
    assert [p.name for p in a] == ["dscnn_kws.onnx", "dscnn_kws_int8.onnx"]
    for pa, pb in zip(a, b):
        assert _sha(pa) == _sha(pb), pa.name


def test_dscnn_valid(dscnn_builds):
    fp, qp = dscnn_builds[0]
    fm, qm = onnx.load(fp), onnx.load(qp)
    for m in (fm, qm):
        onnx.checker.check_model(m, full_check=True)
        assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [17]
        names = [n.name for n in m.graph.node]
        assert all(names) and len(names) == len(set(names))
        assert m.graph.input[0].name == "input" and m.graph.output[0].name == "output"
    fops = {n.op_type for n in fm.graph.node}
    assert {"Conv", "BatchNormalization", "Relu", "AveragePool", "Gemm"} <= fops
    convs = [n for n in fm.graph.node if n.op_type == "Conv"]
    assert len(convs) == 9
    for n in convs:
        attrs = {a.name for a in n.attribute}
        assert "pads" in attrs and "auto_pad" not in attrs
    qops = {n.op_type for n in qm.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= qops
    assert "BatchNormalization" not in qops  # folded by quant_pre_process


def test_dscnn_int8_close_to_float(dscnn_builds):
    fp, qp = dscnn_builds[0]
    rng = np.random.default_rng(12345)  # different from the calibration seed
    fo, qo = [], []
    for _ in range(4):
        x = rng.standard_normal((1, 1, 49, 10)).astype(np.float32)
        f, q = _run(fp, x), _run(qp, x)
        assert f.shape == q.shape == (1, 12)
        fo.append(f[0])
        qo.append(q[0])
    fo, qo = np.array(fo), np.array(qo)
    assert np.all(np.isfinite(fo)) and np.all(np.isfinite(qo))
    for f, q in zip(fo, qo):
        assert np.corrcoef(f, q)[0, 1] > 0.9
        assert np.argmax(f) == np.argmax(q)
    # also the input-dependent part of the logits must survive quantisation
    mu = fo.mean(0)
    assert np.corrcoef((fo - mu).ravel(), (qo - mu).ravel())[0, 1] > 0.8


def test_mbv2_r144_shapes(bm, tmp_path):
    (fp,) = bm.build("mbv2_w035_r144", tmp_path, quantized=False, verbose=False)
    m = onnx.load(fp)
    del m.graph.value_info[:]  # recompute from scratch
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    shapes = {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
              for vi in list(m.graph.value_info) + list(m.graph.output)}
    assert shapes["stem_conv_out"] == (1, 16, 72, 72)
    assert shapes["stem_relu6_out"] == (1, 16, 72, 72)
    assert shapes["block1_dw_relu6_out"] == (1, 16, 72, 72)
    assert shapes["block1_project_bn_out"] == (1, 8, 72, 72)
    assert shapes["block2_expand_conv_out"] == (1, 48, 72, 72)
    assert shapes["block2_expand_relu6_out"] == (1, 48, 72, 72)
    assert shapes["block2_dw_conv_out"] == (1, 48, 36, 36)
    assert shapes["block2_project_bn_out"] == (1, 8, 36, 36)
    assert shapes["block3_add_out"] == (1, 8, 36, 36)
    assert shapes["feature_mix_relu6_out"] == (1, 448, 5, 5)
    assert shapes["output"] == (1, 1000)
    n_conv = sum(n.op_type == "Conv" for n in m.graph.node)
    n_add = sum(n.op_type == "Add" for n in m.graph.node)
    assert (n_conv, n_add) == (52, 10)
