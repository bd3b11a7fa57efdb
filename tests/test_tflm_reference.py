"""Our int8 reference (the oracle of the simulator and of the generated C) against TensorFlow
Lite Micro running the original `.tflite` files the shared ONNX models were converted from."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pexopt.frontend.onnx_import import import_onnx
from pexopt.frontend.onnx_params import load_params
from pexopt.simulate.reference import (
    inputs_from_onnx,
    onnx_index,
    outputs_to_onnx,
    run_reference,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "models"

# Known differences of the converted ONNX file itself (onnxruntime on it differs from TFLM the
# same way), so they are not differences of our int8 semantics.
CONVERSION = {
    # tf2onnx lost the final zero point (-44): every output is shifted by exactly 44 steps
    "mcunet_in3_320kb_1mb_imagenet": "constant zero-point shift in the converted file",
}
FLOAT_OUTPUT = {"tinyengine_mnist_lenet300100"}  # ends in a float LogSoftmax


def _models() -> list[str]:
    if not (SHARED / "onnx").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED} is missing")
        pytest.skip("shared models are not beside the checkout")
    return sorted(p.stem for p in (SHARED / "onnx").glob("*.onnx"))


@pytest.mark.parametrize("name", _models() if (SHARED / "onnx").is_dir() else ["missing"])
def test_reference_equals_tflm(name: str, tflm) -> None:  # noqa: ANN001
    if name == "missing":
        _models()
    onnx_path = SHARED / "onnx" / f"{name}.onnx"
    it = tflm.Interpreter.from_file(str(SHARED / "tflite" / f"{name}.tflite"))
    graph = import_onnx(onnx_path)
    ox = onnx_index(onnx_path)
    params = load_params(ox, graph)
    detail = it.get_input_details(0)
    rng = np.random.default_rng(0)
    in_name = graph.tensors[graph.inputs[0]].name
    for _ in range(3):
        if detail["dtype"] == np.int8:
            x = rng.integers(-128, 128, detail["shape"], dtype=np.int8)
        else:
            x = rng.standard_normal(detail["shape"]).astype(np.float32)
        it.set_input(x, 0)
        it.invoke()
        want = it.get_output(0).reshape(-1)
        feed = {in_name: x.reshape(ox.shapes[in_name])}
        values = run_reference(graph, params, inputs_from_onnx(graph, feed))
        got = next(iter(outputs_to_onnx(graph, values, ox,
                                        dequantize_outputs=want.dtype != np.int8).values()))
        got = got.reshape(-1)
        if name in FLOAT_OUTPUT:
            np.testing.assert_allclose(got, want, atol=1e-4)
        elif name in CONVERSION:
            shift = got.astype(np.int32) - want.astype(np.int32)
            assert len(set(shift.tolist())) <= 3, CONVERSION[name]  # constant up to rounding
        else:
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)  # bit for bit, softmax included
