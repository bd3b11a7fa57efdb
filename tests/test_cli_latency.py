"""`solve --latency` and `--pareto` on a real model with the shipped cortex-m4 profile: the
bound holds in the written plan's estimate, an unmeetable bound exits 3 naming the fastest plan,
and the frontier is written, monotone, every point validated and simulated."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_cli as run

from pexopt.latency.bound import parse_latency
from pexopt.latency.profile import load_profile

LIMITS = ["--time-limit", "10", "--workers", "2"]
FAST = [*LIMITS, "--no-rows"]  # pins channel-split plans (row bands: LIMITS alone)


@pytest.fixture(scope="module")
def model(models_dir: Path) -> Path:
    return models_dir / "mbv2_w035_r96_int8.onnx"


@pytest.fixture(scope="module")
def memory_optimal(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("lat") / "plan.json"
    res = run("solve", model, "-o", out, "--json", *FAST)
    assert res.exit_code == 0, res.stderr
    return json.loads(out.read_text())


def test_parse_latency_units() -> None:
    prof = load_profile("cortex-m4")
    per_ms = prof.clock_hz / 1e3 / prof.cycles_per_instruction
    assert parse_latency("150ms", prof) == int(150 * per_ms)
    assert parse_latency("0.15s", prof) == int(150 * per_ms)
    assert parse_latency("30M", prof) == int(30e6 / prof.cycles_per_instruction)
    assert parse_latency("500k", prof) == int(5e5 / prof.cycles_per_instruction)
    assert parse_latency("1200", prof) == int(1200 / prof.cycles_per_instruction)
    for bad in ("fast", "-3ms", "10 parsecs", ""):
        with pytest.raises(Exception, match="--latency"):
            parse_latency(bad, prof)


def test_latency_bound_holds(model: Path, memory_optimal: dict, front: list[dict],
                             tmp_path: Path) -> None:
    """Solve at the frontier's second-smallest point's speed: the plan meets the bound and is
    no larger than that point (nor smaller than the memory optimum)."""
    prof = load_profile("cortex-m4")
    target = front[-2]
    bound_cycles = math.ceil(int(target["instructions"]) * prof.cycles_per_instruction) + 2
    out = tmp_path / "fast.json"
    res = run("solve", model, "--sram", "256k", "--latency", bound_cycles, "-o", out, *FAST)
    assert res.exit_code == 0, res.stderr
    plan = json.loads(out.read_text())
    assert plan["latency"]["cycles"] <= bound_cycles
    assert memory_optimal["arena_bytes"] <= plan["arena_bytes"] <= int(target["arena_bytes"])
    assert plan["latency"]["cycles"] < memory_optimal["latency"]["cycles"]


def test_unmeetable_latency_exits_3_with_the_fastest(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.json"
    res = run("solve", model, "--latency", "1ms", "-o", out, *FAST)
    assert res.exit_code == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be met" in lines[0] and "the fastest plan" in lines[0]
    assert " ms)" in lines[0] and "Traceback" not in res.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--latency", "soon"], "--latency"),
    (["--latency", "10ms", "--target", "cortex-m33"], "profile"),
    (["--pareto", "front.txt"], ".csv"),
    (["--pareto", "front.csv", "--pareto-points", "1"], "--pareto-points"),
    (["--pareto", "front.csv", "--prune", "--sram", "64k"], "--prune with --pareto"),
])
def test_bad_latency_options(model: Path, tmp_path: Path, args: list[str], words: str) -> None:
    res = run("solve", model, "-o", tmp_path / "p.json",
              *[a if not a.startswith("front") else tmp_path / a for a in args], *FAST)
    assert res.exit_code == 2, res.stdout
    assert len(res.stderr.strip().splitlines()) == 1 and words in res.stderr
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def front_run(model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    front = tmp_path_factory.mktemp("front") / "front.csv"
    res = run("solve", model, "--sram", "256k", "--pareto", front, "--json", *FAST)
    assert res.exit_code == 0, res.stderr
    return front, json.loads(res.stdout)


@pytest.fixture(scope="module")
def front(front_run: tuple[Path, dict]) -> list[dict]:
    return list(csv.DictReader(front_run[0].open()))


def test_pareto_front_written_and_checked(front_run: tuple[Path, dict], front: list[dict],
                                          memory_optimal: dict) -> None:
    path, d = front_run
    rows = front
    assert len(rows) >= 3
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    instr = [int(r["instructions"]) for r in rows]
    arena = [int(r["arena_bytes"]) for r in rows]
    assert instr == sorted(instr) and arena == sorted(arena, reverse=True)
    assert arena[-1] == memory_optimal["arena_bytes"]  # ends at the memory optimum
    for r in rows:
        assert r["validated"] == "yes" and r["simulated_exact"] == "yes"
        assert r["fits_budget"] == ("yes" if int(r["arena_bytes"]) <= 262144 else "no")
        if r["latency_bound_instructions"]:
            assert int(r["instructions"]) <= int(r["latency_bound_instructions"])
    assert [p["arena_bytes"] for p in d["pareto"]] == arena


def test_mbv2_144_frontier_has_five_checked_points(models_dir: Path) -> None:
    """The issue's figure: at least 5 points from the memory-optimal plan to the no-split speed
    on MobileNetV2-0.35 at 144, each validated and simulated (pareto_model raises otherwise)."""
    from pexopt.latency.bound import ProfileCost
    from pexopt.pipeline import ImportOptions, pareto_model
    from pexopt.schedule import SolverParams
    from pexopt.solver.pareto import least_cost

    prof = load_profile("cortex-m4")
    path = models_dir / "mbv2_w035_r144_int8.onnx"
    params = SolverParams(time_limit=10, workers=2, target="cortex-m4")
    rows = pareto_model(path, ImportOptions(), params, prof, None, points=6)
    assert len(rows) >= 5
    assert all(r.exact for r in rows)
    graph = ImportOptions().load(path)
    whole = least_cost(graph, replace(params, cost=ProfileCost(prof)))
    assert rows[0].instructions <= whole + 100_000  # reaches the no-split speed (+ invoke copies)
    assert rows[-1].arena == 145_264


@pytest.fixture(scope="module")
def rows_model(models_dir: Path) -> Path:
    return models_dir / "resnet8_int8.onnx"


def test_rows_with_latency_bound(rows_model: Path, tmp_path: Path) -> None:
    """--rows --latency: a bound just above the memory-optimal row plan's estimate is met by a
    plan with row bands; an impossible one exits 3 with one line naming the fastest plan."""
    first = tmp_path / "rows.json"
    res = run("solve", rows_model, "--rows", "-o", first, *LIMITS)
    assert res.exit_code == 0, res.stderr
    base = json.loads(first.read_text())
    assert any(s["split"]["dim"] == "rows" for s in base["splits"])
    bound = base["latency"]["cycles"] + 1000
    out = tmp_path / "bounded.json"
    res = run("solve", rows_model, "--rows", "--latency", bound, "-o", out, "--json", *LIMITS)
    assert res.exit_code == 0, res.stderr
    plan = json.loads(out.read_text())
    assert plan["latency"]["cycles"] <= bound
    assert plan["arena_bytes"] <= base["arena_bytes"]
    assert json.loads(res.stdout)["latency"] == plan["latency"]
    never = tmp_path / "never.json"
    res = run("solve", rows_model, "--rows", "--latency", "1ms", "-o", never, *LIMITS)
    assert res.exit_code == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be met" in lines[0] and "Traceback" not in res.stderr
    assert not never.exists()


def test_rows_pareto_front(rows_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "front.csv"
    res = run("solve", rows_model, "--rows", "--pareto", path, "--json", *LIMITS)
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(path.open()))
    assert len(rows) >= 2
    instr = [int(r["instructions"]) for r in rows]
    arena = [int(r["arena_bytes"]) for r in rows]
    assert instr == sorted(instr) and arena == sorted(arena, reverse=True)
    assert arena[-1] == json.loads(res.stdout)["arena_bytes"]  # ends at the memory optimum
    for r in rows:
        assert r["validated"] == "yes" and r["simulated_exact"] == "yes"
