"""Reproducibility and limits: the same model and options give the same plan and C bytes, for
any worker count when the solver proves optimality; --time-limit holds within 10%."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from typer.testing import CliRunner

from pexopt.cli import app
from pexopt.graph.synthetic import KB_SIZES, random_dag
from pexopt.pipeline import ImportOptions
from pexopt.plan.build import build_plan
from pexopt.schedule import SolverParams
from pexopt.solver.cpsat_layout import solve_layout

runner = CliRunner()


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _solve_cli(model: Path, out: Path, workers: int) -> dict[str, str]:
    res = runner.invoke(app, ["solve", str(model), "--sram", "256k", "--workers", str(workers),
                              "--time-limit", "30", "-o", str(out / "plan.json"),
                              "--emit-c", str(out / "c"), "--quiet"])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return _digest(out)


def test_plan_and_c_bytes_equal_across_runs_and_worker_counts(models_dir: Path,
                                                               tmp_path: Path) -> None:
    model = models_dir / "mbv2_w035_r144_int8.onnx"
    runs = [_solve_cli(model, tmp_path / f"run{i}", w) for i, w in enumerate((1, 2, 2))]
    assert "plan.json" in runs[0] and "c/pex_model.c" in runs[0]
    assert runs[0] == runs[1] == runs[2]
    plan = (tmp_path / "run0" / "plan.json").read_text()
    assert '"splits": []' not in plan  # the split plan, not a trivial one
    assert '"seconds"' not in plan and '"workers"' not in plan


def test_optimal_schedules_equal_across_worker_counts() -> None:
    """Proven-optimal schedules are canonical, whatever the thread count (imported models and
    random DAGs, splits on and off)."""
    graphs = [random_dag(s, 24, sizes=KB_SIZES) for s in (1, 2, 3)]
    graphs.append(ImportOptions().load(Path(__file__).parents[1] / "models"
                                       / "dscnn_kws_int8.onnx"))
    for g in graphs:
        for split in (False, True):
            plans = []
            for workers in (1, 2, 3):
                s = solve_layout(g, SolverParams(time_limit=30, workers=workers, split=split))
                assert s.status == "OPTIMAL", (g.name, workers)
                plans.append(build_plan(g, s).to_json())
            assert plans[0] == plans[1] == plans[2], (g.name, split)


def test_time_limit_is_respected_within_ten_percent() -> None:
    """A model that cannot be proven optimal in the limit stops in time, every stage included."""
    g = random_dag(7, 90, sizes=KB_SIZES)
    limit = 4.0
    t0 = time.perf_counter()
    s = solve_layout(g, SolverParams(time_limit=limit, workers=2))
    took = time.perf_counter() - t0
    assert s.status == "FEASIBLE", "the graph was solved early: pick a harder one"
    assert s.arena > 0 and s.bound <= s.arena
    assert took <= 1.10 * limit, f"{took:.2f} s for a {limit} s limit"
