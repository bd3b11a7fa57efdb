"""Fuzzing reaches the generated C: a sample of random int8 QDQ models (tests/fuzz_graphs.py) is
solved with splits (every other graph with row bands too), emitted as C, compiled with gcc
(ASan + UBSan, -Werror) and run; the outputs equal the byte-exact arena simulation bit for bit,
or the emitter refuses the model with one clean PexError.

Quick profile by default; `make fuzz` runs 1,000.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import onnx
from hypothesis import HealthCheck, given, settings
from test_codegen import _build, _invoke, kernels_obj  # noqa: F401  (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_graphs import Spec, build_model, specs  # noqa: E402

from pexopt.codegen import emit_c  # noqa: E402
from pexopt.errors import PexError  # noqa: E402
from pexopt.frontend.onnx_params import load_params  # noqa: E402
from pexopt.pipeline import ImportOptions, solve_model  # noqa: E402
from pexopt.schedule import SolverParams  # noqa: E402
from pexopt.simulate.arena import run_plan  # noqa: E402
from pexopt.simulate.reference import inputs_from_onnx, onnx_index  # noqa: E402
from pexopt.simulate.verify import random_feeds  # noqa: E402

EXAMPLES = int(os.environ.get("PEXOPT_FUZZ_CODEGEN_EXAMPLES", "40"))
SAMPLE = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture],
                  print_blob=False)
OUTCOMES: dict[str, int] = {"exact": 0, "refused": 0, "exact_with_bands": 0}


@SAMPLE
@given(spec=specs(max_c=24, max_res=20, max_layers=5))
def test_fuzz_generated_c_bit_exact(spec: Spec, kernels_obj: Path) -> None:  # noqa: F811
    with tempfile.TemporaryDirectory(prefix="pexfuzzc") as d:
        folder = Path(d)
        path = folder / "fuzz_int8.onnx"
        onnx.save(build_model(spec, int8=True), str(path))
        rows = spec.seed % 2 == 0
        res = solve_model(path, ImportOptions(), SolverParams(time_limit=5, workers=1,
                                                              rows=rows), budget=None)
        graph, plan = res.graph, res.plan
        try:
            emit_c(plan, graph, path, folder / "c")
        except PexError as e:  # an operator the emitter does not support: a clean refusal
            assert "\n" not in str(e)
            OUTCOMES["refused"] += 1
            return
        exe = _build(folder / "c", kernels_obj)
        ox = onnx_index(path)
        feed = random_feeds(graph, ox, 1, seed=spec.seed)[0]
        ir = inputs_from_onnx(graph, feed)
        x = ir[graph.tensors[graph.inputs[0]].name]
        out = graph.tensors[graph.outputs[0]]
        want = run_plan(plan, graph, load_params(ox, graph), ir, seed=0)[out.name].reshape(-1)
        got = _invoke(exe, [x], out.elements)[0]
        assert (got == want).all(), f"{int((got != want).sum())} of {want.size} outputs differ"
        OUTCOMES["exact"] += 1
        OUTCOMES["exact_with_bands"] += any(s.mode == "band" for s in plan.steps)


def test_fuzz_sample_mostly_reaches_the_c() -> None:
    """The sample above must exercise the C, not only refusals (runs after it, file order)."""
    print(f"\nfuzzed C: {OUTCOMES}")
    total = OUTCOMES["exact"] + OUTCOMES["refused"]
    assert OUTCOMES["exact_with_bands"] >= total // 5, OUTCOMES  # row bands reach the C too
    assert total >= EXAMPLES // 2, OUTCOMES
    assert OUTCOMES["exact"] >= 0.75 * total, OUTCOMES
