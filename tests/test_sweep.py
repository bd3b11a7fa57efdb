"""Sweeps: validation with file/line/field, local (and Ray) runs, resume, failures, safe names."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from pexopt.errors import PexError
from pexopt.plan.format import load_plan
from pexopt.sweep.config import load_sweep
from pexopt.sweep.runner import (
    ROW_FIELDS,
    read_results,
    run_sweep,
    safe_name,
    strip_timing,
)

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "sweeps" / "quick.yaml"


def _lines(p: Path) -> list[str]:
    return p.read_text().splitlines() if p.exists() else []


def _all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, models_dir: Path):
    out = tmp_path_factory.mktemp("quick") / "out"
    summary = run_sweep(QUICK, out, workers=2, quiet=True)
    return out, summary


# -- a full run, then a re-run ------------------------------------------------------------------

def test_quick_sweep_rows(quick_run) -> None:
    out, s = quick_run
    assert (s.total, s.skipped, s.computed, s.failed, s.interrupted) == (8, 0, 8, 0, False)
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    assert {r["model"] for r in rows} == {"mbv1_w025_r96_int8", "resnet8_int8"}
    assert {(r["budget"], r["mode"]) for r in rows} == {
        (b, m) for b in (48 * 1024, 64 * 1024) for m in ("layerwise", "split")}
    for r in rows:
        assert r["error"] is None and r["verify"] == "exact" and r["status"] == "OPTIMAL"
        assert r["arena"] <= r["layerwise_arena"] <= r["tflm_arena"]
        assert r["fits"] == (r["arena"] <= r["budget"])
        assert r["steps"] >= r["ops"] and len(r["sha256"]) == 64
        plan = load_plan(out / r["plan"])
        assert plan.arena_bytes == r["arena"] and len(plan.steps) == r["steps"]
        assert (out / r["plan"]).resolve().parent == (out / "plans").resolve()
        if r["mode"] == "layerwise":
            assert r["splits"] == 0
    mbv1 = {(r["budget"], r["mode"]): r for r in rows if r["model"] == "mbv1_w025_r96_int8"}
    assert not mbv1[(48 * 1024, "layerwise")]["fits"]  # 54 kB layer by layer
    assert mbv1[(48 * 1024, "split")]["fits"] and mbv1[(48 * 1024, "split")]["splits"] >= 1
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == ROW_FIELDS
        csv_rows = list(reader)
    assert sorted(r["key"] for r in csv_rows) == sorted(r["key"] for r in rows)


def test_rerun_skips_finished_points(quick_run) -> None:
    out, _ = quick_run
    before = {p: p.read_bytes() for p in (out / "results.jsonl", out / "results.csv")}
    calls = []
    s = run_sweep(QUICK, out, workers=2, quiet=True, on_row=calls.append)
    assert (s.total, s.skipped, s.computed) == (8, 8, 0) and not calls and not s.rows
    assert {p: p.read_bytes() for p in before} == before  # nothing solved, nothing appended


# -- interruption and resume --------------------------------------------------------------------

def test_interrupted_sweep_resumes(tmp_path: Path, models_dir: Path) -> None:
    out = tmp_path / "out"
    seen: list[dict] = []

    def stop_after_three(row: dict) -> None:
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt  # as Ctrl-C would, in the parent, while points run

    s = run_sweep(QUICK, out, workers=2, quiet=True, on_row=stop_after_three)
    assert s.interrupted and s.computed == 3 and s.remaining == 5
    jl, cs = _lines(out / "results.jsonl"), _lines(out / "results.csv")
    assert len(jl) == 3 and len(cs) == 4  # complete rows only (+ the CSV header)
    assert all(json.loads(line)["key"] for line in jl)
    assert (out / "results.jsonl").read_text().endswith("\n")
    assert not list(out.rglob(".*.tmp"))
    done = {r["key"] for r in seen}

    s2 = run_sweep(QUICK, out, workers=2, quiet=True)
    assert (s2.skipped, s2.computed, s2.failed, s2.interrupted) == (3, 5, 0, False)
    assert not done & {r["key"] for r in s2.rows}  # finished points were not redone
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    assert len(_lines(out / "results.csv")) == 9


def test_half_written_line_is_dropped(tmp_path: Path, models_dir: Path) -> None:
    """A writer killed mid-line (SIGKILL) leaves a partial row: it is dropped, not glued on."""
    sweep = tmp_path / "one.yaml"
    sweep.write_text(f"models: [{models_dir / 'resnet8_int8.onnx'}]\nbudgets: [64k]\n"
                     "modes: [layerwise]\nsolver: {time_limit: 5}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text('{"key": "abc", "model": "x", "err')
    s = run_sweep(sweep, out, workers=1, quiet=True)
    assert s.computed == 1
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 1 and rows[0]["error"] is None
    assert len(_lines(out / "results.jsonl")) == 1


# -- failures are recorded, the others complete ---------------------------------------------

def test_failing_points_are_recorded(tmp_path: Path, models_dir: Path) -> None:
    bad = tmp_path / "models" / "corrupt.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    good = tmp_path / "models" / "resnet8_int8.onnx"
    shutil.copy(models_dir / "resnet8_int8.onnx", good)
    shutil.copy(models_dir / "dscnn_kws_int8.onnx", tmp_path / "models" / "dscnn_kws_int8.onnx")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "models: [models/corrupt.onnx, models/resnet8_int8.onnx]\n"
        "budgets: [64k]\nmodes: [split]\nsolver: {time_limit: 5, workers: 1}\n"
        "points:\n"
        "  - {model: models/corrupt.onnx}\n"
        "  - {model: models/resnet8_int8.onnx}\n"
        "  - {model: models/resnet8_int8.onnx, resolution: 16x24}\n"
        "  - {model: models/dscnn_kws_int8.onnx, resolution: 64}\n"
        "  - {model: models/resnet8_int8.onnx, latency: 20ms, target: cortex-m7}\n"
        "  - {model: models/resnet8_int8.onnx, latency: 2s, target: cortex-m4}\n")
    out = tmp_path / "out"
    s = run_sweep(sweep, out, workers=2, quiet=True)
    assert (s.total, s.computed, s.failed) == (6, 6, 3)
    rows = read_results(out / "results.jsonl")
    by = {(r["model"], r["resolution"], r["target"]): r for r in rows}
    err = by[("corrupt", None, None)]["error"]
    assert "corrupt.onnx" in err and "not an ONNX model" in err
    assert by[("corrupt", None, None)]["arena"] is None
    ok = by[("resnet8_int8", None, None)]
    assert ok["error"] is None and ok["arena"] == 49152  # sweeps plan channel splits
    small = by[("resnet8_int8", "16x24", None)]  # rescaled: smaller tensors, smaller arena
    assert small["error"] is None and small["arena"] < ok["arena"]
    assert (out / small["plan"]).is_file() and list((out / "models").glob("*.onnx"))
    dscnn = by[("dscnn_kws_int8", "64x64", None)]["error"]  # a Gemm sized for 49x10
    assert "cannot rescale to 64x64" in dscnn
    lat = by[("resnet8_int8", None, "cortex-m7")]  # ~107 M instructions cannot fit in 20 ms
    assert lat["latency"] == "20ms" and lat["arena"] is None
    assert "cannot be met" in lat["error"] and "the fastest plan" in lat["error"]
    loose = by[("resnet8_int8", None, "cortex-m4")]
    assert loose["error"] is None and 0 < loose["est_ms"] <= 2000
    assert loose["est_instructions"] > 50_000_000
    # a re-run retries only the failures
    s2 = run_sweep(sweep, out, workers=2, quiet=True)
    assert (s2.skipped, s2.computed, s2.failed) == (3, 3, 3)


# -- broken sweep files ---------------------------------------------------------------------

BROKEN = {
    "unknown key": ("models: [{m}]\nbudgets: [64k]\nmodez: [split]\n", 3, "modez"),
    "wrong type": ("models: [{m}]\nbudgets: [64k]\nsolver:\n  time_limit: fast\n", 4,
                   "solver.time_limit"),
    "wrong type simulate": ("models: [{m}]\nbudgets: [64k]\nsimulate: 3\n", 3, "simulate"),
    "bad budget": ("models: [{m}]\nbudgets:\n  - 64k\n  - lots\n", 4, "budgets[1]"),
    "missing model": ("models:\n  - {m}\n  - nowhere/missing.onnx\nbudgets: [64k]\n", 3,
                      "models[1]"),
    "glob matching nothing": ("models: ['nowhere/*.onnx']\nbudgets: [64k]\n", 1, "models[0]"),
    "empty product": ("models: [{m}]\nbudgets: [64k]\nmodes: []\n", 3, "modes"),
    "empty points": ("points: []\n", 1, "points"),
    "prune": ("models: [{m}]\nbudgets: [64k]\nmodes: [split, prune]\n", 3, "modes[1]"),
    "point unknown key": ("points:\n  - {{model: {m}, budget: 1k, colour: red}}\n", 2,
                          "points[0].colour"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_sweep_files(case: str, tmp_path: Path, models_dir: Path) -> None:
    text, line, fld = BROKEN[case]
    sweep = tmp_path / f"broken_{case.replace(' ', '_')}.yaml"
    sweep.write_text(text.format(m=models_dir / "resnet8_int8.onnx"))
    out = tmp_path / "out"
    with pytest.raises(PexError) as e:
        run_sweep(sweep, out, workers=1, quiet=True)
    msg = str(e.value)
    assert f"{sweep}:{line}:" in msg and fld in msg, msg
    assert "\n" not in msg
    if case == "prune":
        assert "mode 'prune' is not available yet" in msg
    assert not out.exists()  # nothing ran, nothing written


def test_all_errors_in_one_message(tmp_path: Path) -> None:
    sweep = tmp_path / "many.yaml"
    sweep.write_text("models: [a.onnx]\nbudgets: [0]\nmodes: [fast]\nfoo: 1\n")
    with pytest.raises(PexError) as e:
        load_sweep(sweep)
    msg = str(e.value)
    assert msg.startswith("4 errors:")
    for line, fld in ((1, "models[0]"), (2, "budgets[0]"), (3, "modes[0]"), (4, "foo")):
        assert f"{sweep}:{line}: {fld}:" in msg


def test_shipped_sweep_files_are_valid(models_dir: Path, shared_models_dir: Path) -> None:
    assert len(load_sweep(QUICK).points) == 8
    vww = load_sweep(ROOT / "sweeps" / "vww.yaml")
    assert len(vww.points) == 32 and {p.mode for p in vww.points} == {"layerwise", "split"}


# -- names never leave the output folder ----------------------------------------------------

@pytest.mark.parametrize("text", ["../../etc/passwd", "/abs/path", "..", ".", "a/../../b",
                                  "..\\..\\win", "", "x" * 500, "ünï cödé"])
def test_safe_name(text: str) -> None:
    s = safe_name(text)
    assert s and "/" not in s and "\\" not in s and ".." not in s
    assert not s.startswith(".") and len(s) <= 100


def test_point_names_cannot_escape(tmp_path: Path, models_dir: Path) -> None:
    model = tmp_path / "in" / "..weird name; rm -rf.onnx"
    model.parent.mkdir()
    shutil.copy(models_dir / "resnet8_int8.onnx", model)
    sweep = tmp_path / "in" / "s.yaml"
    sweep.write_text("models: ['..weird name; rm -rf.onnx']\nbudgets: [64k]\n"
                     "modes: [layerwise]\nresolutions: [48]\n"
                     "targets: ['../../../escaped', '/tmp/abs_escape', '..', cortex-m4]\n"
                     "solver: {time_limit: 5}\n")
    out = tmp_path / "work" / "out"
    before = _all_files(tmp_path)
    s = run_sweep(sweep, out, workers=1, quiet=True)
    assert s.computed == 4 and s.failed == 3  # targets are profiles: those three do not exist
    rows = read_results(out / "results.jsonl")
    assert all("profile" in r["error"] for r in rows if r["target"] != "cortex-m4")
    new = _all_files(tmp_path) - before
    assert new and all(out.resolve() in p.resolve().parents for p in new), new
    plans = list((out / "plans").iterdir())
    assert len(plans) == 1 and all(not p.name.startswith(".") for p in plans)
    assert not Path("/tmp/abs_escape").exists()


# -- backends -------------------------------------------------------------------------------

def test_ray_not_installed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 models_dir: Path) -> None:
    import pexopt.sweep.backend_ray as br

    monkeypatch.setattr(br, "ray_installed", lambda: False)
    out = tmp_path / "out"
    with pytest.raises(PexError, match=r"ray backend needs Ray.*not installed.*pexopt\[ray\]"):
        run_sweep(QUICK, out, backend="ray", workers=2, quiet=True)
    assert not out.exists()


def test_unknown_backend(tmp_path: Path, models_dir: Path) -> None:
    with pytest.raises(PexError, match="unknown backend 'dask'"):
        run_sweep(QUICK, tmp_path / "out", backend="dask", quiet=True)


def test_ray_backend_matches_local(quick_run, tmp_path: Path) -> None:
    from pexopt.sweep.backend_ray import ray_installed, start_local_ray

    if not ray_installed():
        pytest.skip("ray is not installed (optional extra pexopt[ray])")
    import ray

    local_out, _ = quick_run
    out = tmp_path / "ray_out"
    start_local_ray(2)  # loopback only, no dashboard
    try:
        assert ray._private.worker.global_worker.node.node_ip_address == "127.0.0.1"
        s = run_sweep(QUICK, out, backend="ray", workers=2, quiet=True)
    finally:
        ray.shutdown()
    assert (s.total, s.computed, s.failed) == (8, 8, 0)

    def norm(rows: list[dict]) -> list[dict]:
        return sorted((strip_timing(r) for r in rows), key=lambda r: r["key"])

    assert norm(read_results(out / "results.jsonl")) == \
        norm(read_results(local_out / "results.jsonl"))
    for r in read_results(out / "results.jsonl"):  # the same plans, byte for byte but timing
        a, b = load_plan(out / r["plan"]), load_plan(local_out / r["plan"])
        a.solver.seconds = b.solver.seconds = 0
        assert a == b


def test_codegen_per_point(tmp_path: Path) -> None:
    """`codegen: true` writes each point's generated C next to its plan."""
    from pexopt.sweep.runner import run_sweep

    model = Path(__file__).resolve().parents[1] / "models" / "resnet8_int8.onnx"
    sweep = tmp_path / "cg.yaml"
    sweep.write_text(f"models: [{model}]\nbudgets: [64k]\nmodes: [split]\ncodegen: true\n"
                     "solver: {time_limit: 10, workers: 1}\n")
    s = run_sweep(sweep, tmp_path / "out", workers=1, quiet=True)
    assert s.failed == 0 and s.computed == 1
    row = s.rows[0]
    folder = tmp_path / "out" / row["codegen"]
    assert (folder / "pex_model.c").is_file() and (folder / "pex_kernels.c").is_file()
    assert "PEX_ARENA_BYTES" in (folder / "pex_model.h").read_text()


def test_sweep_modes_rows_and_hybrid(tmp_path: Path, models_dir: Path) -> None:
    """Row bands alone and hybrid are sweep modes; on resnet8 channel splits cannot shrink the
    arena, row bands can, and hybrid is never larger than either."""
    shutil.copy(models_dir / "resnet8_int8.onnx", tmp_path / "resnet8_int8.onnx")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("models: [resnet8_int8.onnx]\nbudgets: [32k]\n"
                     "modes: [layerwise, split, rows, hybrid]\n"
                     "solver: {time_limit: 10, workers: 1}\nsimulate: true\n")
    s = run_sweep(sweep, tmp_path / "out", workers=2, quiet=True)
    assert (s.total, s.failed) == (4, 0)
    by = {r["mode"]: r for r in read_results(tmp_path / "out" / "results.jsonl")}
    assert all(r["verify"] == "exact" for r in by.values())
    assert by["split"]["arena"] == by["layerwise"]["arena"]
    assert by["rows"]["arena"] < by["split"]["arena"]
    assert by["hybrid"]["arena"] <= min(by["rows"]["arena"], by["split"]["arena"])
    assert by["hybrid"]["fits"]
    modes = {s.mode for r in by.values() for s in load_plan(tmp_path / "out" / r["plan"]).steps}
    assert "band" in modes and "halo" in modes
