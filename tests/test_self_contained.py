"""The IR is self-contained (issue #14 item 2): after import, no back end reads the model file."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from pexopt.codegen.emit import render_c
from pexopt.errors import ModelError
from pexopt.graph.params import graph_params
from pexopt.graph.synthetic import random_dag
from pexopt.pipeline import ImportOptions, solve_model
from pexopt.plan.validator import validate
from pexopt.schedule import SolverParams
from pexopt.simulate.ort_layers import layer_agreement
from pexopt.simulate.verify import random_feeds, verify_plan


def test_validate_simulate_codegen_with_the_model_file_deleted(models_dir: Path,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    shutil.copy(models_dir / "mcunet_mixed_int8.onnx", path)
    res = solve_model(path, ImportOptions(), SolverParams(time_limit=10, workers=1,
                                                          rows=True), None)
    assert res.plan.splits  # a split plan: slices or bands, not only whole operators
    path.unlink()
    graph = pickle.loads(pickle.dumps(res.graph))  # as a sweep worker receives it
    assert validate(res.plan, graph) == []
    rep = verify_plan(res.plan, graph, n_inputs=1)
    assert rep.exact and rep.ort_ok  # onnxruntime runs the model as imported, from memory
    files = render_c(res.plan, graph, path)
    assert "pex_weights.c" in files and "pex_invoke" in files["pex_model.c"]
    feed = random_feeds(graph, graph.source.index(), 1, 0)[0]
    rows = layer_agreement(graph, feed)
    assert rows and max(r.max_steps for r in rows) <= 1
    assert not path.exists()


def test_constants_are_the_file_s(models_dir: Path) -> None:
    """What the graph carries equals what loading the file gives, op by op."""
    from pexopt.frontend.onnx_params import load_params

    path = models_dir / "resnet8_int8.onnx"
    graph = ImportOptions().load(path)
    carried, loaded = graph_params(graph), load_params(path, graph)
    assert carried.keys() == loaded.keys()
    for k, p in carried.items():
        q = loaded[k]
        for f in ("weights", "bias", "multiplier", "shift"):
            a, b = getattr(p, f), getattr(q, f)
            assert (a is None) == (b is None) and (a is None or np.array_equal(a, b)), (k, f)


def test_a_graph_without_a_frontend_has_no_constants() -> None:
    with pytest.raises(ModelError, match="not imported from a model file"):
        graph_params(random_dag(1, 6))
