"""Shared fixtures: the third-party model folder, the bundled models, a tiny ONNX builder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "models"
SHARED_MODELS_DIR = ROOT.parent / "shared" / "models" / "onnx"

# Float/QDQ pairs that models/build_models.py writes into models/.
BUNDLED_PAIRS = ("dscnn_kws", "resnet8", "mcunet_mixed", "mbv1_w025_r96", "mbv2_w035_r96")
BUNDLED_ALL = (*BUNDLED_PAIRS, "mbv2_w035_r144")

# The third-party ONNX models of ../shared/models/onnx (README there).
SHARED_MODELS = (
    "mcunet_in3_320kb_1mb_imagenet", "mlperf_ad_autoencoder_int8", "mlperf_ic_resnet8_int8",
    "mlperf_ic_resnet_large_int8", "mlperf_kws_dscnn_int8", "mlperf_sww_int8",
    "mlperf_vww_96_int8", "tflm_hello_world_int8", "tflm_micro_speech_int8",
    "tflm_person_detect", "tinyengine_detection", "tinyengine_mcunetv2_large",
    "tinyengine_mnist_lenet300100", "tinyengine_vww",
)


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201, ARG001
    """In CI a skipped test is a failed one: a missing tool or file must not pass silently."""
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI (CI=true), which counts as a failure: {reason}"


def run_cli(*args: object):  # noqa: ANN201
    """Invoke the pexopt CLI in-process; an exception other than the exit itself is a test
    failure (it would be a traceback for a user)."""
    from typer.testing import CliRunner

    from pexopt.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


@pytest.fixture(scope="session")
def tflm():  # noqa: ANN201
    """TensorFlow Lite Micro's Python runtime (a test dependency)."""
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        if _in_ci():
            pytest.fail("tflite-micro is not installed (a test dependency)")
        pytest.skip("tflite-micro is not installed")
    return runtime


@pytest.fixture(scope="session")
def qemu_tools() -> None:
    """arm-none-eabi-gcc, qemu-system-arm and the instruction-count plugin's build tools."""
    from pexopt.target.qemu import missing_tools

    msg = missing_tools()
    if msg is not None:
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_models_dir() -> Path:
    """../shared/models/onnx; missing: a failure in CI, a skip elsewhere."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "onnx"
    if not path.is_dir():
        msg = f"third-party models not found at {path}"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """models/ with every bundled model; builds the missing ones (deterministic, atomic)."""
    missing = [n for n in BUNDLED_ALL
               if not (MODELS_DIR / f"{n}.onnx").is_file()
               or not (MODELS_DIR / f"{n}_int8.onnx").is_file()]
    if missing:
        subprocess.run([sys.executable, str(MODELS_DIR / "build_models.py"), "--out",
                        str(MODELS_DIR), "--only", *missing], check=True,
                       stdout=subprocess.DEVNULL)
    return MODELS_DIR


# -- a tiny ONNX builder ----------------------------------------------------------------------

def vi(name: str, shape: Sequence[int | str] | None,
       elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A value info; str dims are symbolic (dynamic)."""
    return helper.make_tensor_value_info(name, elem, shape)


def const(name: str, value: np.ndarray | Sequence[float], dtype: object = np.float32
          ) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def conv_weights(name: str, cout: int, cin_per_group: int, kh: int, kw: int,
                 seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return const(name, rng.standard_normal((cout, cin_per_group, kh, kw)))


def make_onnx(path: Path, nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto],
              initializers: Sequence[onnx.TensorProto] = (), opset: int = 17,
              check: bool = True) -> Path:
    """Write a one-graph model (opset 17 by default); `check=False` for deliberately bad ones.

    Graph outputs need a shape (onnx.checker insists); nodes without a name get one.
    """
    nodes = list(nodes)
    for k, n in enumerate(nodes):
        if not n.name:
            n.name = f"{n.op_type.lower()}_{k}"
    graph = helper.make_graph(nodes, Path(path).stem, list(inputs), list(outputs),
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="pexopt-tests")
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def one_op_model(path: Path, op_type: str, shape: Sequence[int | str],
                 out_shape: Sequence[int | str] | None = None, elem: int = TensorProto.FLOAT,
                 check: bool = True, **attrs: object) -> Path:
    """x -> op_type -> y."""
    node = helper.make_node(op_type, ["x"], ["y"], name=op_type.lower(), **attrs)
    return make_onnx(path, [node], [vi("x", shape, elem)],
                     [vi("y", out_shape if out_shape is not None else shape, elem)], check=check)


@pytest.fixture
def small_conv_model(tmp_path: Path) -> Path:
    """x(1,3,8,8) -> Conv 3x3 (4 ch, pads 1) -> Relu -> y(1,4,8,8): a fast model for the CLI."""
    return make_onnx(
        tmp_path / "small.onnx",
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])], [conv_weights("w", 4, 3, 3, 3)])
