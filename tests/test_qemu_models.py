"""Every model codegen supports: its split plan's C runs bit-exactly on emulated Cortex-M."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pexopt.pipeline import ImportOptions, solve_model
from pexopt.schedule import SolverParams
from pexopt.target.measure import measure_plan

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models" / "onnx"
UNSUPPORTED = {"tinyengine_detection", "tinyengine_mnist_lenet300100"}  # 3 outputs; float op


def _models() -> list[Path]:
    bundled = sorted((ROOT / "models").glob("*_int8.onnx"))
    if not SHARED.is_dir():
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"{SHARED} is missing")
        return bundled
    return bundled + sorted(p for p in SHARED.glob("*.onnx") if p.stem not in UNSUPPORTED)


@pytest.mark.parametrize("model", _models(), ids=lambda p: p.stem)
def test_split_plan_bit_exact_on_cortex_m4(model: Path) -> None:
    res = solve_model(model, ImportOptions(), SolverParams(time_limit=20, workers=2, rows=False),
                      None)
    m = measure_plan(res.plan, res.graph, "cortex-m4")
    assert m.exact, model.stem
    assert m.instructions > 0 and m.ram_bytes >= res.plan.arena_bytes


@pytest.mark.parametrize("name", ["mbv2_w035_r96_int8", "mcunet_mixed_int8"])
def test_both_plans_on_cortex_m7(name: str) -> None:
    model = ROOT / "models" / f"{name}.onnx"
    for split in (False, True):
        res = solve_model(model, ImportOptions(),
                          SolverParams(time_limit=20, split=split, rows=False), None)
        assert measure_plan(res.plan, res.graph, "cortex-m7").exact
