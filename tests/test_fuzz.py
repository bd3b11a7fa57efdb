"""Property-based fuzzing: random CNN-like ONNX models (tests/fuzz_graphs.py), float32 and int8 QDQ.

For every model: solve layer by layer, with channel splits and with row bands too (hybrid
segments included; 5 s, 1 worker); every plan validates, rows <= channel splits <= layer by
layer in arena, and every plan executed in the byte-exact arena equals the unsplit reference
(bit for bit for int8, within tolerance for float32) on one input. Hybrid plans of the model's
first candidates are also built directly (the solver need not pick them) and checked alike.

Quick profile by default (`FUZZ_EXAMPLES` per flavour); the long profile:
    PEXOPT_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_fuzz.py
Every failure found becomes a plain regression test at the end of this file.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_graphs import Spec, build_model, fixed_input, specs  # noqa: E402
from test_rows import manual_schedule  # noqa: E402

from pexopt.graph.ir import Graph  # noqa: E402
from pexopt.partial.hybrid import find_hybrid_segments  # noqa: E402
from pexopt.pipeline import ImportOptions, solve_model  # noqa: E402
from pexopt.plan.build import build_plan  # noqa: E402
from pexopt.plan.validator import validate  # noqa: E402
from pexopt.schedule import SolverParams  # noqa: E402
from pexopt.simulate.onnxrt import ort_session  # noqa: E402
from pexopt.simulate.verify import verify_plan  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("PEXOPT_FUZZ_EXAMPLES", "300"))  # per flavour
ORT_FLOAT_TOL = 1e-3  # float32 models: simulator vs onnxruntime, relative to the output range

FUZZ = settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                print_blob=False)


def check_model(model: onnx.ModelProto, int8: bool, folder: Path) -> None:
    """Solve (layer by layer, split), validate, compare arenas, simulate bit-exactly."""
    path = folder / ("fuzz_int8.onnx" if int8 else "fuzz.onnx")
    onnx.save(model, str(path))
    opts = ImportOptions(dtype="int8" if int8 else "float32")
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    # verify's relative error divides by the output's range (floored at 1e-12): meaningless for
    # a one-element output (see test_ort_error_of_one_element_output below)
    ort_check = not int8 and math.prod(out_dims) > 1
    arenas, status = {}, {}
    for mode, kw in (("layerwise", {"split": False}), ("split", {}), ("rows", {"rows": True})):
        res = solve_model(path, opts, SolverParams(time_limit=5, workers=1, **kw), budget=None)
        assert validate(res.plan, res.graph) == [], mode
        rep = verify_plan(res.plan, res.graph, n_inputs=1, seed=0)
        assert rep.exact, f"{mode}: max error {rep.max_error} {rep.notes}"
        if ort_check and rep.ort_max_error is not None:
            assert rep.ort_max_error <= ORT_FLOAT_TOL, \
                f"{mode}: simulator vs onnxruntime {rep.ort_max_error}"
        arenas[mode] = res.plan.arena_bytes
        status[mode] = res.plan.solver.status
    _check_hybrid(res.graph, path)
    assert arenas["split"] <= arenas["layerwise"], arenas
    assert arenas["rows"] <= arenas["layerwise"], arenas
    if status["rows"] == "OPTIMAL":  # the row-band model contains every channel-split plan
        assert arenas["rows"] <= arenas["split"], arenas


def _check_hybrid(graph: Graph, path: Path) -> None:
    """Hybrid plans (bands x channel slices) of up to two candidates, at a middle band height,
    laid out without reuse: they validate and equal the reference, whatever the solver chose."""
    for seg in find_hybrid_segments(graph)[:2]:
        h = seg.widths[len(seg.widths) // 2]
        plan = build_plan(graph, manual_schedule(graph, seg, h))
        assert validate(plan, graph) == [], f"hybrid {seg.ops} h {h}"
        assert verify_plan(plan, graph, n_inputs=1, onnxruntime=False).exact, \
            f"hybrid {seg.ops} h {h}"


def run_spec(spec: Spec, int8: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="pexfuzz") as d:
        check_model(build_model(spec, int8), int8, Path(d))


@FUZZ
@given(spec=specs())
def test_fuzz_float32(spec: Spec) -> None:
    run_spec(spec, int8=False)


@FUZZ
@given(spec=specs())
def test_fuzz_int8_qdq(spec: Spec) -> None:
    run_spec(spec, int8=True)


def test_generated_models_check_and_run() -> None:
    """The generator itself: a few fixed specs pass onnx.checker (inside build_model) and run in
    onnxruntime, float and QDQ."""
    import numpy as np

    for spec in REGRESSION_SPECS:
        for int8 in (False, True):
            m = build_model(spec, int8)
            sess = ort_session(m.SerializeToString())
            (y,) = sess.run(None, {"x": fixed_input(spec)})
            assert np.isfinite(y).all()


# -- regressions: fixed specs (plain functions, no hypothesis) --------------------------------

REGRESSION_SPECS = [
    # every layer kind once, with a head
    Spec(3, 16, 16, 0, (("conv", 8, 3, 2, 1, "relu"), ("dw", 3, 1, 1, "clip"), ("pw", 16, ""),
                        ("res", 3, "relu"), ("cat", 4, 4, "relu"), ("pool", "max", 2, 2),
                        ("act", "clip")), head=10),
    # a 1-channel input, 5x5 convs without pads down to 1x1, average pool
    Spec(1, 9, 9, 7, (("conv", 5, 5, 1, 0, ""), ("pool", "avg", 3, 2), ("dw", 1, 2, 0, "relu"))),
]


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
@pytest.mark.parametrize("k", range(len(REGRESSION_SPECS)))
def test_regression_specs(k: int, int8: bool, tmp_path: Path) -> None:
    check_model(build_model(REGRESSION_SPECS[k], int8), int8, tmp_path)


def test_ort_error_of_one_element_output(tmp_path: Path) -> None:
    spec = Spec(c=1, h=4, w=4, seed=0, layers=(("dw", 1, 1, 0, ""),), head=1)
    path = tmp_path / "one.onnx"
    onnx.save(build_model(spec, int8=False), str(path))
    res = solve_model(path, ImportOptions(dtype="float32"),
                      SolverParams(time_limit=5, workers=1, split=False), budget=None)
    rep = verify_plan(res.plan, res.graph, n_inputs=1, seed=0)
    assert rep.exact
    assert rep.ort_max_error is not None and rep.ort_max_error <= ORT_FLOAT_TOL


def test_split_float_one_element_output_exact(tmp_path: Path) -> None:
    """Found by test_fuzz_float32: x(1,1,4,4) -> Conv 1x1 (3 ch, stride 1, no pad) ->
    GlobalAveragePool -> Flatten -> Gemm (1 class); float32; split=True."""
    spec = Spec(c=1, h=4, w=4, seed=0, layers=(("conv", 3, 1, 1, 0, ""),), head=1)
    check_model(build_model(spec, int8=False), False, tmp_path)


def test_split_float_output_that_cancels_to_near_zero(tmp_path: Path) -> None:
    """Found by the long test_fuzz_float32 run: a one-class FC whose output cancels to about
    -2.9e-4 from inputs up to 6.0; the channel-split plan's float32 accumulator differs by 6e-8,
    which is float rounding, not an error (the tolerance is relative to the inputs' magnitude)."""
    spec = Spec(c=31, h=9, w=14, seed=960,
                layers=(("res", 3, "clip"), ("pw", 44, "clip"), ("res", 3, "clip"),
                        ("conv", 32, 3, 1, 1, "relu"), ("pw", 44, "clip"), ("pool", "max", 3, 1)),
                head=1)
    check_model(build_model(spec, int8=False), False, tmp_path)
