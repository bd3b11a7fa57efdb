"""The cost model against QEMU: estimated instructions within 15% of pex_invoke's exact count.

Needs arm-none-eabi-gcc, qemu-system-arm and gcc: missing tools skip, except in CI (CI=true)
where they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_cli import run

from pexopt.latency.cost import estimate
from pexopt.latency.profile import load_profile
from pexopt.pipeline import ImportOptions, solve_model
from pexopt.solver.cpsat_layout import SolverParams
from pexopt.target.measure import measure_plan
from pexopt.target.qemu import missing_tools

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "models").glob("*_int8.onnx"))
TOLERANCE = 0.15


@pytest.fixture(scope="module")
def tools() -> None:
    msg = missing_tools()
    if msg is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.mark.parametrize("split", [False, True], ids=["layerwise", "split"])
@pytest.mark.parametrize("model", BUNDLED, ids=lambda p: p.stem)
def test_estimate_within_15_percent_of_qemu(tools: None, model: Path, split: bool) -> None:
    prof = load_profile("cortex-m4")
    res = solve_model(model, ImportOptions(), SolverParams(time_limit=20, workers=2,
                                                           split=split), None)
    measured = measure_plan(res.plan, res.graph, model, "cortex-m4")
    assert measured.exact
    est = estimate(prof, res.graph, res.plan).instructions
    err = est / measured.instructions - 1
    print(f"{model.stem} split={split}: estimated {est:,.0f}, measured "
          f"{measured.instructions:,}, error {100 * err:+.1f}%")
    assert abs(err) <= TOLERANCE, (model.stem, split, est, measured.instructions)


def test_calibrate_quick_writes_a_valid_profile(tools: None, tmp_path: Path) -> None:
    out = tmp_path / "m4.yaml"
    res = run("calibrate", "--target", "cortex-m4", "--quick", "-o", out, "--quiet")
    assert res.exit_code == 0, res.stderr
    prof = load_profile(str(out))
    assert prof.core == "cortex-m4" and prof.qemu_board == "mps2-an386"
    assert out.read_text().startswith("# pexopt target profile cortex-m4: produced by "
                                      "`pexopt calibrate --target cortex-m4 --quick")
    assert prof.fit["all"]["samples"] >= 10
    assert prof.fit["all"]["max_rel_error"] < 0.15
