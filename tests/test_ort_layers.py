"""Our int8 operators against onnxruntime on the bundled QDQ models (made by onnxruntime's
quantiser), each operator fed onnxruntime's own int8 inputs: at most one quantisation step apart,
and rarely (onnxruntime requantises in float, TFLite and pexopt in fixed point)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BUNDLED_ALL

from pexopt.pipeline import ImportOptions
from pexopt.simulate.ort_layers import layer_agreement
from pexopt.simulate.reference import onnx_index, stored_int8
from pexopt.simulate.verify import random_feeds


@pytest.mark.parametrize("name", BUNDLED_ALL)
def test_every_operator_within_one_step_of_onnxruntime(name: str, models_dir: Path) -> None:
    path = models_dir / f"{name}_int8.onnx"
    graph = ImportOptions().load(path)
    for seed in (0, 1):
        feed = random_feeds(graph, onnx_index(path), 1, seed=seed)[0]
        rows = layer_agreement(graph, feed)
        int8_ops = [op for op in graph.ops if stored_int8(graph.tensors[op.outputs[0]])]
        assert len(rows) == len(int8_ops)  # every int8 operator was compared
        for r in rows:
            assert r.max_steps <= 1, r
            assert r.mean_steps <= 0.05, r
