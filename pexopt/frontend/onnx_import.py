"""ONNX -> IR: constants dropped, Q/DQ and reshapes aliased, BN/bias/Pad/activations fused.

A QDQ model and its float original give the same IR: Quantize/DequantizeLinear are views of the
int8 tensor they describe, and every activation is sized in the deployment dtype.

The passes, each a class built on the one before: onnx_import_base.py (state, lookups),
onnx_import_quant.py (Q/DQ checks), onnx_import_consts.py (constants), onnx_import_layout.py
(views, NCHW/NHWC), onnx_import_ops.py (aliases and ops), onnx_import_fuse.py (fusion),
onnx_import_freeze.py (into the IR).
"""

from __future__ import annotations

from pathlib import Path

from pexopt.errors import ModelError
from pexopt.frontend.onnx_import_freeze import Freezer
from pexopt.frontend.onnx_import_quant import check_scale
from pexopt.frontend.onnx_load import load_model, sha256_file
from pexopt.frontend.onnx_source import OnnxSource
from pexopt.graph.ir import Graph

__all__ = ["check_scale", "import_onnx"]


class _Importer(Freezer):
    """The ONNX importer: every pass (onnx_import_*.py), run in order by import_onnx."""


def import_onnx(path: str | Path, dtype: str = "int8", input_external: bool = False,
                fold_pad: bool = True,
                input_shapes: dict[str, tuple[int, ...]] | None = None) -> Graph:
    """Import an ONNX file into the fused IR.

    dtype: deployment dtype of activations ('int8' or 'float32'); input_external: the graph input
    is not in the arena; fold_pad: fold zero Pads into the convs that read them (TFLM does not).
    """
    if dtype not in ("int8", "float32"):
        raise ModelError(f"--dtype: '{dtype}' is not int8 or float32")
    model = load_model(path, input_shapes)
    imp = _Importer(model, str(path), dtype, fold_pad)
    imp.find_constants()
    imp.check_quantisation()
    imp.alias_and_collect()
    if not imp.ops:
        raise ModelError(f"{path}: the model has no operators on activations")
    imp.fuse()
    tensors, ops, inputs, outputs = imp.freeze(input_external)
    notes = []
    if input_external:
        notes.append("graph input external (not in the arena)")
    return Graph(name=Path(path).stem, tensors=tuple(tensors), ops=tuple(ops),
                 inputs=tuple(inputs), outputs=tuple(outputs), dtype=dtype,
                 source_sha256=sha256_file(path), source_path=str(path), notes=tuple(notes),
                 source=OnnxSource(model, str(path)))
