"""Issue #13 items 12-15 (limits): caps on plan files, sweep globs that always end, range-checked
numeric options and profile/sweep fields, strict JSON out and in, and a clean SIGTERM during a
sweep. Every hostile input is generated here; each CLI case asserts exit code, one stderr line
naming the option, file or field, and that nothing in its folder changed."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from attack import Outcome, attack, changed, refused, run_case, snapshot

from pexopt import limits as lim
from pexopt.errors import PexError, PlanError
from pexopt.plan.format import Buffer, Plan, SolverInfo, Step, load_plan
from pexopt.sweep.config import load_sweep
from pexopt.sweep.safe_glob import safe_glob

ROOT = Path(__file__).resolve().parents[1]
M4 = ROOT / "solver_configs" / "cortex-m4.yaml"


@pytest.fixture(scope="module")
def model(models_dir: Path) -> Path:
    return models_dir / "resnet8_int8.onnx"


def _plan(op: str = "conv", gap: float = 0.0) -> Plan:
    """A small plan (not of any model): what load_plan must read back unchanged."""
    return Plan(model={"path": "m.onnx", "sha256": "0" * 64}, arena_bytes=64,
                budget_bytes=1024, fits=True, align=4, dtype="int8", input_external=False,
                steps=[Step(index=0, op=op, kind="conv", reads=["in"], writes=["out"])],
                buffers=[Buffer("in", "in", "tensor", 0, 32, 0, 0),
                         Buffer("out", "out", "tensor", 32, 32, 0, 0)],
                solver=SolverInfo("OPTIMAL", 64, gap, None, 0, None, 5.0))


# -- item 12: plan files are capped before (or while) they are parsed --------------------------

BUF = '{"name":"b","tensor":null,"kind":"tensor","offset":0,"size":4,"first_step":0,"last_step":0}'


def _plan_text(buffers: str, head: str = '"format": "pexopt-plan/2", "steps": []') -> str:
    return "{" + head + ', "buffers": [' + buffers + "]}"


@pytest.mark.parametrize("case, make, words", [
    ("52 MB, 580k buffers", lambda: _plan_text(",".join([BUF] * 580_000)), ["plan.json", "MiB"]),
    ("250k buffers", lambda: _plan_text(",".join(["0"] * 250_000)),
     ["plan.json", "250,000 buffers"]),
    ("4.2M values", lambda: _plan_text(",".join(["0"] * 4_200_000)),
     ["plan.json", "4,000,000 json values"]),
    ("200k-deep nesting", lambda: "[" * 200_000 + "]" * 200_000, ["plan.json", "nested"]),
    ("17 levels", lambda: '{"a":' * 17 + "1" + "}" * 17, ["plan.json", "nested more than 16"]),
    ("100,000-digit integer", lambda: '{"format": "pexopt-plan/2", "arena_bytes": '
     + "9" * 100_000 + "}", ["plan.json", "100,000 digits"]),
    ("20-digit integer", lambda: '{"arena_bytes": -' + "1" * 20 + "}", ["plan.json", "20 digits"]),
    ("NaN", lambda: _plan().to_json().replace('"gap": 0.0', '"gap": NaN'), ["plan.json", "NaN"]),
    ("Infinity", lambda: _plan().to_json().replace('"gap": 0.0', '"gap": -Infinity'),
     ["plan.json", "Infinity"]),
    ("1e999", lambda: _plan().to_json().replace('"time_limit": 5.0', '"time_limit": 1e999'),
     ["plan.json", "out of range"]),
])
def test_plan_caps(case: str, make, words: list[str], tmp_path: Path, model: Path) -> None:  # noqa: ANN001
    (tmp_path / "plan.json").write_text(make())
    t0 = time.perf_counter()
    for cmd in (["validate"], ["simulate", "--inputs", "1"]):
        attack([*cmd, "plan.json", model], tmp_path, words=words)
    assert time.perf_counter() - t0 < 60, case


def test_plan_size_cap_reads_nothing_past_it(tmp_path: Path) -> None:
    """A sparse 3 GiB file is refused at once: at most the cap is ever read."""
    big = tmp_path / "plan.json"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    t0 = time.perf_counter()
    with pytest.raises(PlanError, match="larger than 32 MiB"):
        load_plan(big)
    assert time.perf_counter() - t0 < 10


def test_plan_within_caps_round_trips(tmp_path: Path) -> None:
    """Brackets, commas, quotes and long digit runs inside names are text, not structure."""
    name = 'conv[[[[[[[[[[[[[[[[[[[[,,,,"\\' + "1" * 40
    p = tmp_path / "plan.json"
    p.write_text(_plan(op=name).to_json())
    back = load_plan(p)
    assert back.steps[0].op == name and back.to_json() == p.read_text()


def test_plan_json_never_holds_nan() -> None:
    with pytest.raises(PexError, match="field 'solver.gap' is not a finite number"):
        _plan(gap=math.nan).to_json()
    with pytest.raises(PexError, match=r"field 'x\[1\].y'"):
        lim.dumps({"x": [1, {"y": math.inf}]}, "report")
    assert json.loads(lim.dumps({"a": 1.5}))["a"] == 1.5


# -- item 14: every numeric option is range-checked, one line, exit 2 --------------------------

SOLVE_CASES = [
    (["--workers", "99999999999"], ["--workers", "1..256"]),
    (["--workers", "0"], ["--workers"]),
    (["--workers", "abc"], ["--workers"]),
    (["--seed", "9" * 30], ["--seed"]),
    (["--seed", "-1"], ["--seed"]),
    (["--time-limit", "nan"], ["--time-limit"]),
    (["--time-limit", "inf"], ["--time-limit"]),
    (["--time-limit", "-inf"], ["--time-limit"]),
    (["--time-limit", "1e300"], ["--time-limit"]),
    (["--time-limit", "0"], ["--time-limit"]),
    (["--align", "8192"], ["--align"]),
    (["--align", "12"], ["--align", "power of two"]),
    (["--align", str(1 << 62)], ["--align"]),
    (["--input-shape", "input=1x3x" + "9" * 25 + "x32"], ["--input-shape"]),
    (["--input-shape", "input=1x3x" + "9" * 5000], ["--input-shape"]),
    (["--input-shape", "input=1x3x100000x100000"], ["--input-shape", "elements"]),
    (["--sram", "9" * 400], ["--sram"]),
    (["--sram", "3G"], ["--sram"]),
    (["--sram", "4096M"], ["--sram"]),
    (["--latency", "1e300s"], ["--latency"]),
    (["--latency", "9" * 400 + "ms"], ["--latency"]),
    (["--latency", "1e-30ms"], ["--latency"]),
    (["--pareto", "p.csv", "--pareto-points", "100000"], ["--pareto-points"]),
    (["--prune", "--sram", "64k", "--prune-step", "99999999"], ["--prune-step"]),
    (["--prune", "--sram", "64k", "--min-keep", "nan"], ["--min-keep"]),
    (["--min-keep", "inf"], ["--min-keep"]),  # unused without --prune: still checked
    (["--prune-step", "0"], ["--prune-step"]),
    (["--pareto-points", "1"], ["--pareto-points"]),
]


@pytest.mark.parametrize("args, words", SOLVE_CASES, ids=[" ".join(a)[:40] for a, _ in SOLVE_CASES])
def test_solve_options(args: list[str], words: list[str], tmp_path: Path, model: Path) -> None:
    attack(["solve", model, "-o", "plan.json", *args], tmp_path, words=words)


@pytest.mark.parametrize("args, words", [
    (["inspect", "{model}", "--input-shape", "input=" + "9" * 30], ["--input-shape"]),
    (["bench", "--random-dags", "1", "--dag-ops", "0"], ["--dag-ops"]),
    (["bench", "--random-dags", "1", "--dag-ops", "100000000"], ["--dag-ops"]),
    (["bench", "--random-dags", "99999999999"], ["--random-dags"]),
    (["bench", "--random-dags", "1", "--workers", "99999999999"], ["--workers"]),
    (["bench", "--random-dags", "1", "--time-limit", "nan"], ["--time-limit"]),
    (["bench", "--random-dags", "1", "--seed", str(1 << 40)], ["--seed"]),
    (["simulate", "plan.json", "{model}", "--inputs", "0"], ["--inputs"]),
    (["simulate", "plan.json", "{model}", "--inputs", "99999999999"], ["--inputs"]),
    (["simulate", "plan.json", "{model}", "--seed", "-5"], ["--seed"]),
    (["sweep", "s.yaml", "--workers", "99999999999"], ["--workers"]),
    (["sweep", "s.yaml", "--workers", "0"], ["--workers"]),
])
def test_other_commands_options(args: list[str], words: list[str], tmp_path: Path,
                                model: Path) -> None:
    (tmp_path / "s.yaml").write_text(f"models: [{model}]\nbudgets: [64k]\n")
    attack([str(a).replace("{model}", str(model)) for a in args], tmp_path, words=words)


def _profile(tmp_path: Path, change) -> Path:  # noqa: ANN001
    d = yaml.safe_load(M4.read_text())
    change(d)
    p = tmp_path / "board.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(cycles_per_instruction=1e308), ["cycles_per_instruction"]),
    (lambda d: d.update(cycles_per_instruction=float("nan")), ["cycles_per_instruction"]),
    (lambda d: d.update(clock_hz=1e-300), ["clock_hz"]),
    (lambda d: d.update(clock_hz=float("inf")), ["clock_hz"]),
    (lambda d: d.update(sram_bytes=10 ** 400), ["sram_bytes"]),
    (lambda d: d["costs"]["conv1x1"].update(per_mac=1e308), ["costs.conv1x1", "per_mac"]),
    (lambda d: d["solver"].update(workers=99999999999), ["solver", "workers"]),
    (lambda d: d["solver"].update(time_limit=float("inf")), ["solver", "time_limit"]),
    (lambda d: d["solver"].update(slice_widths=[10 ** 12]), ["solver.slice_widths"]),
    (lambda d: d["solver"].update(slice_widths=list(range(1, 200))), ["solver.slice_widths"]),
])
def test_profile_fields(change, words: list[str], tmp_path: Path, model: Path) -> None:  # noqa: ANN001
    prof = _profile(tmp_path, change)
    attack(["solve", model, "--target", prof.name, "-o", "plan.json"], tmp_path,
           words=["board.yaml", *words])


@pytest.mark.parametrize("body, words", [
    ("budgets: [64k]\nsolver: {time_limit: .inf}", ["solver.time_limit"]),
    ("budgets: [64k]\nsolver: {time_limit: .nan}", ["solver.time_limit"]),
    ("budgets: [64k]\nsolver: {workers: 99999999999}", ["solver.workers"]),
    ("budgets: [64k]\nsolver: {seed: 99999999999999999999}", ["solver.seed"]),
    ("budgets: [64k]\nsolver: {seed: -1}", ["solver.seed"]),
    (f"budgets: [{10 ** 30}]", ["budgets[0]"]),
    ("budgets: ['" + "9" * 400 + "']", ["budgets[0]"]),
    ("budgets: [64k]\nresolutions: [99999999x9]", ["resolutions[0]"]),
    ("budgets: [64k]\nresolutions: [" + "9" * 400 + "]", ["resolutions[0]"]),
    ("budgets: [64k]\nlatency: [.inf]", ["latency[0]"]),
    ("budgets: [64k]\nlatency: ['1e999ms']", ["latency[0]"]),
    ("budgets: [" + ", ".join(str(1000 + i) for i in range(400)) + "]\nresolutions: ["
     + ", ".join(str(8 + i) for i in range(300)) + "]", ["120,000 points"]),
])
def test_sweep_fields(body: str, words: list[str], tmp_path: Path, model: Path) -> None:
    (tmp_path / "s.yaml").write_text(f"models: [{model}]\n{body}\n")
    attack(["sweep", "s.yaml", "--out", "out"], tmp_path, words=["s.yaml", *words])


def test_json_outputs_are_strict(tmp_path: Path, model: Path) -> None:
    o = run_case(["inspect", model, "--json"], tmp_path)
    assert o.code == 0
    json.loads(o.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))


def test_sweep_report_skips_hostile_result_lines(tmp_path: Path) -> None:
    """A results.jsonl is read line by line: a 100,000-digit integer, deep nesting or bytes
    that are not UTF-8 drop that line (it used to be an internal error)."""
    (tmp_path / "results.jsonl").write_bytes(
        b'{"key": ' + b"9" * 100_000 + b"}\n" + b"[" * 100_000 + b"\n\xff\xfe\n")
    o = run_case(["sweep-report", "results.jsonl", "--out", "rep"], tmp_path)
    assert o.code == 0 and "Traceback" not in o.stdout + o.stderr and not o.stderr, o.stderr
    assert (tmp_path / "rep" / "summary.md").is_file()


# -- item 13: sweep globs never follow symlinked folders, and are capped -----------------------

def _tree(root: Path) -> None:
    for rel in ("a.onnx", "sub/b.onnx", "sub/deep/c.onnx", "sub/deep/x.txt", ".hidden/d.onnx",
                "sub/.e.onnx", "other/f.onnx", "sub/deep/er/g.onnx"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


@pytest.mark.parametrize("pattern", ["*.onnx", "**/*.onnx", "sub/**/*.onnx", "*/*.onnx",
                                     "**/deep/*.onnx", "sub/*/c.onnx", "**/*", ".hidden/*",
                                     "sub/.*", "**/.e.onnx", "s?b/**/[bc].onnx", "**"])
def test_safe_glob_matches_glob_without_links(pattern: str, tmp_path: Path) -> None:
    _tree(tmp_path)
    want = sorted(str(Path(f).resolve()) for f in glob.glob(str(tmp_path / pattern),
                                                            recursive=True) if Path(f).is_file())
    assert safe_glob(str(tmp_path / pattern)) == want


def test_symlink_loop_is_not_followed(tmp_path: Path) -> None:
    """`loopdir/**/*.onnx` with a link back up ends at once with the real files only."""
    _tree(tmp_path / "loopdir")
    (tmp_path / "loopdir" / "sub" / "back").symlink_to("..", target_is_directory=True)
    (tmp_path / "loopdir" / "self").symlink_to(".", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "z.onnx").write_bytes(b"")
    (tmp_path / "loopdir" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "loopdir" / "file_link.onnx").symlink_to(tmp_path / "elsewhere" / "z.onnx")
    (tmp_path / "s.yaml").write_text("models: ['loopdir/**/*.onnx']\nbudgets: [64k]\n")
    t0 = time.perf_counter()
    models = {p.model for p in load_sweep(tmp_path / "s.yaml").points}
    assert time.perf_counter() - t0 < 5
    # a symlinked file counts (as the file it names); a symlinked folder is never entered
    assert {Path(m).name for m in models} == {"a.onnx", "b.onnx", "c.onnx", "f.onnx", "g.onnx",
                                              "z.onnx"}
    assert str((tmp_path / "elsewhere" / "z.onnx").resolve()) in models


def test_glob_match_cap(tmp_path: Path) -> None:
    (tmp_path / "zoo").mkdir()
    for i in range(lim.MAX_GLOB_MATCHES + 1):
        (tmp_path / "zoo" / f"m{i}.onnx").write_bytes(b"")
    (tmp_path / "s.yaml").write_text("models: ['zoo/*.onnx']\nbudgets: [64k]\n")
    attack(["sweep", "s.yaml", "--out", "out"], tmp_path,
           words=["s.yaml", "models[0]", "more than 1,000 files"])


def test_glob_of_the_whole_machine_stops(tmp_path: Path) -> None:
    """`/**/*.onnx` stops at MAX_GLOB_ENTRIES visited entries or MAX_GLOB_MATCHES files,
    whichever comes first on this machine, with one line (it ran past 120 s)."""
    (tmp_path / "s.yaml").write_text("models: ['/**/*.onnx']\nbudgets: [64k]\n")
    t0 = time.perf_counter()
    line = attack(["sweep", "s.yaml", "--out", "out"], tmp_path,
                  words=["s.yaml", "models[0]", "'/**/*.onnx'", "narrow it"])
    assert "more than 50,000 folder entries" in line or "more than 1,000 files" in line
    assert time.perf_counter() - t0 < 60


# -- item 15: SIGTERM during a sweep shuts the pool down cleanly --------------------------------

def _pexopt() -> str:
    exe = shutil.which("pexopt", path=str(Path(sys.executable).parent)) or shutil.which("pexopt")
    assert exe
    return exe


@pytest.mark.parametrize("target", ["process", "group"])
def test_sigterm_during_sweep(target: str, tmp_path: Path, model: Path) -> None:
    """Exit 143, one line, no leaked-semaphore warning, the rows written so far kept (and only
    complete ones), no worker left; `group` is a terminal's or a service manager's stop."""
    (tmp_path / "s.yaml").write_text(
        f"models: [{model}]\nbudgets: [64k, 80k, 96k, 112k, 128k, 144k, 160k, 176k]\n"
        "modes: [layerwise]\nsolver: {time_limit: 2, workers: 1}\n")
    before = snapshot(tmp_path)
    proc = subprocess.Popen([_pexopt(), "sweep", "s.yaml", "--out", "out", "--workers", "1",
                             "--no-report"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    jsonl = tmp_path / "out" / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (jsonl.is_file() and jsonl.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    if target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    # EOF on the pipes: every process that shares them (workers, the semaphore tracker that
    # would print the leak warning) has exited
    out, err = proc.communicate(timeout=60)
    line = refused(Outcome(proc.returncode, out, err, changed(before, snapshot(tmp_path))),
                   code=143, words=["terminated", "points left"], outputs=["out"])
    assert "leaked" not in err and "semaphore" not in err
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert rows and all(r["error"] is None and r["arena"] for r in rows)
    assert f"{8 - len(rows)} points left" in line
    assert not list((tmp_path / "out").rglob(".*.tmp"))
    assert _group_gone(proc.pid, 10), "a worker of the sweep survived it"


def _group_gone(pgid: int, seconds: float) -> bool:
    """Whether every process of the group has exited; zombies count as gone (the container's
    init may reap them late). Linux /proc."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        live = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp
                live.append(stat.parent.name)
        if not live:
            return True
        time.sleep(0.1)
    return False
