"""The onnxruntime session every comparison with onnxruntime uses (verify, tests)."""

from __future__ import annotations

from pathlib import Path


def ort_session(model: str | Path | bytes):  # noqa: ANN201
    """An onnxruntime session that runs the graph as written: QDQ pairs stay float
    Dequantize -> op -> Quantize (its fused int8 kernels saturate on CPUs without VNNI, so
    they are not a reference), one thread, warnings off. None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:  # optional: the arena-vs-reference check does not need it
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
