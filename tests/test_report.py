"""Reports: figures and summary.md for one plan and for a sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from pexopt.pipeline import ImportOptions, solve_model
from pexopt.report.plots import live_matrix, pareto_front, report_plan, report_sweep, split_ranges
from pexopt.solver.cpsat_layout import SolverParams
from pexopt.sweep.runner import latest_rows, read_results, run_sweep

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_figure(png: Path, svg: Path) -> None:
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert 20_000 < len(data) < 3_000_000  # a real figure, not an empty canvas
    text = svg.read_text()
    assert "<svg" in text and len(text) > 10_000


@pytest.fixture(scope="module")
def split_result(models_dir: Path):
    res = solve_model(models_dir / "mbv2_w035_r144_int8.onnx", ImportOptions(),
                      SolverParams(time_limit=20, workers=2, rows=False), budget=256 * 1024)
    assert res.plan.splits  # the point of this fixture: a plan with a split subgraph
    return res


def test_report_plan_split(split_result, tmp_path: Path) -> None:
    plan, graph = split_result.plan, split_result.graph
    paths = report_plan(plan, graph, tmp_path / "rep")
    for stem in ("memory_timeline", "arena_layout"):
        _check_figure(paths[f"{stem}_png"], paths[f"{stem}_svg"])
    md = paths["summary"].read_text()
    assert graph.name in md and f"{plan.arena_bytes:,} B" in md
    assert f"{plan.baselines['tflm_arena_bytes']:,} B" in md
    assert "fits | yes" in md and "## Split subgraphs" in md
    for sp in plan.splits:
        assert " -> ".join(sp["ops"]) in md
    assert "## Peak" in md and "memory_timeline.png" in md and "arena_layout.png" in md


def test_live_bytes_peak_is_the_arena(split_result) -> None:
    """The timeline's stacked bytes reach the plan's peak, counting in-place pairs once."""
    plan = split_result.plan
    live = live_matrix(plan)
    per_step = [sum(v[s] for v in live.values()) for s in range(len(plan.steps))]
    assert max(per_step) <= plan.arena_bytes
    assert max(per_step) == split_result.peak.live
    rng = split_ranges(plan)
    assert rng and all(plan.steps[i].mode != "whole" for a, b in rng for i in range(a, b + 1))


def test_report_plan_layerwise_without_budget(models_dir: Path, tmp_path: Path) -> None:
    res = solve_model(models_dir / "resnet8_int8.onnx", ImportOptions(),
                      SolverParams(time_limit=5, workers=2, split=False), budget=None)
    paths = report_plan(res.plan, res.graph, tmp_path)
    _check_figure(paths["arena_layout_png"], paths["arena_layout_svg"])
    md = paths["summary"].read_text()
    assert "None: every operator runs whole." in md and "| budget | - |" in md


def test_pareto_front() -> None:
    assert pareto_front([(29, 55), (31, 46), (31, 50), (40, 46), (28, 60)]) == \
        [(28, 60), (29, 55), (31, 46)]


def test_report_sweep_quick(tmp_path: Path, models_dir: Path) -> None:
    out = tmp_path / "sweep"
    s = run_sweep(ROOT / "sweeps" / "quick.yaml", out, workers=2, quiet=True)
    assert s.failed == 0
    paths = report_sweep(out / "results.jsonl", out / "report")
    rows = latest_rows(read_results(out / "results.jsonl"))
    models = sorted({r["model"] for r in rows})
    for m in models:
        _check_figure(paths[f"pareto_{m}_png"], paths[f"pareto_{m}_svg"])
    md = paths["summary"].read_text()
    assert f"{len(rows)} points" in md and "latency" in md.lower()
    for m in models:
        assert f"## {m}" in md and f"pareto_{m}.png" in md
    assert md.count("| 48.0 | split |") == 2 and md.count("| 64.0 | layerwise |") == 2
    assert "| NO |" in md  # mbv1 layer by layer does not fit in 48 kB
