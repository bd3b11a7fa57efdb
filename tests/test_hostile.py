"""Hostile and broken inputs through the CLI: one line on stderr, the right exit code, no
traceback, nothing written. The corpus is tests/hostile/ (built by tests/hostile/make_corpus.py;
regenerated here into a temporary folder to prove the script is deterministic)."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pexopt.cli import app

HOSTILE = Path(__file__).resolve().parent / "hostile"
runner = CliRunner()


def _make_corpus_module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("make_corpus", HOSTILE / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus regenerated into tmp/corpus/ (tmp/x.bin exists: '../x.bin' is refused for
    where it points, not because it is missing)."""
    root = tmp_path_factory.mktemp("hostile")
    _make_corpus_module().write(root / "corpus")
    (root / "x.bin").write_bytes(bytes(16))
    return root / "corpus"


def test_corpus_is_deterministic_and_committed(corpus: Path) -> None:
    again = corpus.parent / "again"
    _make_corpus_module().write(again)
    names = sorted(p.name for p in corpus.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    committed = sorted(p.name for p in HOSTILE.iterdir() if p.suffix in (".onnx", ".json"))
    assert names == committed, "run tests/hostile/make_corpus.py and commit the corpus"
    for n in names:
        data = (corpus / n).read_bytes()
        assert data == (again / n).read_bytes(), n
        assert data == (HOSTILE / n).read_bytes(), f"{n} differs from the committed file"
        assert len(data) <= 8192, n


def refused(res, code: int | tuple[int, ...] = 2, words: str | tuple[str, ...] = ()) -> str:  # noqa: ANN001
    """Exit `code`, exactly one line on stderr (naming the problem), no traceback anywhere."""
    codes = (code,) if isinstance(code, int) else code
    out, err = res.stdout, res.stderr
    assert "Traceback" not in out + err
    assert res.exit_code in codes, (res.exit_code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "internal error" not in lines[0], lines[0]
    for w in (words,) if isinstance(words, str) else words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


# -- models -----------------------------------------------------------------------------------

BAD_MODELS = {  # file -> words the one-line error must contain
    "truncated.onnx": ("truncated.onnx", "not an ONNX model"),
    "random_bytes.onnx": ("random_bytes.onnx", "not an ONNX model"),
    "empty_file.onnx": ("empty_file.onnx", "not an ONNX model"),
    "cycle.onnx": ("cycle.onnx", "cycle"),
    "duplicate_names.onnx": ("duplicate_names.onnx", "'y'", "more than once"),
    "empty_names.onnx": ("empty_names.onnx", "''"),
    "dynamic_dim.onnx": ("dynamic_dim.onnx", "dynamic", "'H'"),
    "zero_dim.onnx": ("zero_dim.onnx", "zero or negative"),
    "negative_dim.onnx": ("negative_dim.onnx", "zero or negative"),
    "huge_input.onnx": ("huge_input.onnx", "1000000000000 elements"),
    "huge_intermediate.onnx": ("huge_intermediate.onnx", "'e'", "1000000000000 elements"),
    "string_dtype.onnx": ("string_dtype.onnx", "STRING"),
    "complex_dtype.onnx": ("complex_dtype.onnx", "COMPLEX64"),
    "external_parent.onnx": ("'../x.bin'", "outside"),
    "external_absolute.onnx": ("'/etc/hostname'", "outside"),
}


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_bad_model_inspect(corpus: Path, name: str) -> None:
    refused(runner.invoke(app, ["inspect", str(corpus / name)]), 2, BAD_MODELS[name])


@pytest.mark.parametrize("dtype", ["int8", "float32"])
@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_bad_model_solve_writes_nothing(corpus: Path, tmp_path: Path, name: str,
                                        dtype: str) -> None:
    plan, c_dir = tmp_path / "new" / "plan.json", tmp_path / "c_out"
    res = runner.invoke(app, ["solve", str(corpus / name), "-o", str(plan), "--emit-c",
                              str(c_dir), "--time-limit", "2", "--workers", "1", "--dtype",
                              dtype, "--verify"])
    refused(res, 2, BAD_MODELS[name])
    assert not plan.exists() and not plan.parent.exists() and not c_dir.exists()
    existing = tmp_path / "existing.json"
    existing.write_text("keep me\n")
    res = runner.invoke(app, ["solve", str(corpus / name), "-o", str(existing), "--quiet"])
    refused(res, 2, BAD_MODELS[name])
    assert existing.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.json"]


def _limit_memory() -> None:  # in the child: 4 GiB of address space, far below 10^12 bytes
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@pytest.mark.parametrize("name", ["huge_input.onnx", "huge_intermediate.onnx", "cycle.onnx"])
def test_real_subprocess(corpus: Path, tmp_path: Path, name: str) -> None:
    """The installed `pexopt` script, memory-limited: refused quickly, before any allocation."""
    exe = shutil.which("pexopt", path=str(Path(sys.executable).parent)) or shutil.which("pexopt")
    assert exe, "the pexopt script is not installed"
    out = tmp_path / "plan.json"
    t0 = time.time()
    p = subprocess.run([exe, "solve", str(corpus / name), "-o", str(out), "--time-limit", "2"],
                       capture_output=True, text=True, timeout=120, preexec_fn=_limit_memory,
                       env={**os.environ, "COLUMNS": "200"})
    elapsed = time.time() - t0
    assert "Traceback" not in p.stdout + p.stderr
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w.lower() in lines[0].lower() for w in BAD_MODELS[name]), \
        p.stderr
    assert not out.exists()
    assert elapsed < 30, elapsed  # mostly interpreter start-up


# -- plans ------------------------------------------------------------------------------------

PLAN_FILES = {
    "plan_not_json.json": "not a JSON plan",
    "plan_binary.json": "not a JSON plan",
    "plan_list.json": "not a plan object",
    "plan_wrong_format.json": "pexopt-plan/99",
    "plan_arena_string.json": "arena_bytes",
    "plan_steps_int.json": "steps",
    "plan_step_not_object.json": "steps[0]",
    "plan_offset_float.json": "offset",
    "plan_solver_bound_string.json": "bound",
    "plan_budget_string.json": "budget_bytes",
    "plan_baselines_list.json": "baselines",
    "plan_slice_int.json": "slice",
}
# plan.format.plan_from_dict type-checks only the fields it reads with _req; these go through
# int()/dict()/list() unchecked and raise ValueError/TypeError -> "internal error", exit 1


def _plan_cases() -> list:
    cases = []
    for name in sorted(PLAN_FILES):
        for cmd in ("validate", "simulate", "codegen"):
            cases.append(pytest.param(name, cmd, id=f"{cmd}-{name}"))
    return cases


def _run_plan_cmd(cmd: str, plan: Path, model: Path, out_dir: Path):  # noqa: ANN202
    args = [cmd, str(plan), str(model)]
    if cmd == "codegen":
        args += ["-o", str(out_dir)]
    elif cmd == "simulate":
        args += ["--inputs", "1"]
    return runner.invoke(app, args)


@pytest.mark.parametrize(("name", "cmd"), _plan_cases())
def test_bad_plan_file(corpus: Path, tmp_path: Path, name: str, cmd: str) -> None:
    out_dir = tmp_path / "c_out"
    res = _run_plan_cmd(cmd, corpus / name, corpus / "good_int8.onnx", out_dir)
    refused(res, 2, (name, PLAN_FILES[name]))
    assert not out_dir.exists()


def _solve(model: Path, plan: Path) -> dict:
    res = runner.invoke(app, ["solve", str(model), "-o", str(plan), "--time-limit", "5",
                              "--workers", "1", "--quiet", "--no-rows"])  # codegen: no bands
    assert res.exit_code == 0, res.stderr
    return json.loads(plan.read_text())


def test_good_plan_is_accepted(corpus: Path, tmp_path: Path) -> None:
    """The control: the same commands accept the model's own plan."""
    plan = tmp_path / "plan.json"
    _solve(corpus / "good_int8.onnx", plan)
    for cmd in ("validate", "simulate", "codegen"):
        res = _run_plan_cmd(cmd, plan, corpus / "good_int8.onnx", tmp_path / "c_out")
        assert res.exit_code == 0, (cmd, res.stdout, res.stderr)
    assert (tmp_path / "c_out" / "pex_model.c").is_file()



@pytest.mark.parametrize("cmd", [
    "validate", "simulate", "codegen"])
def test_plan_of_another_model(corpus: Path, tmp_path: Path, cmd: str) -> None:
    plan = tmp_path / "other_plan.json"
    _solve(corpus / "other_int8.onnx", plan)
    out_dir = tmp_path / "c_out"
    res = _run_plan_cmd(cmd, plan, corpus / "good_int8.onnx", out_dir)
    refused(res, (1, 2), "sha256")
    assert not out_dir.exists()


def _overlapping_plan(corpus: Path, tmp_path: Path) -> Path:
    """The model's own plan, edited by hand so that two live buffers share bytes (arena_bytes
    kept consistent, so the overlap is the only violation)."""
    plan = tmp_path / "plan.json"
    d = _solve(corpus / "good_int8.onnx", plan)
    bufs = sorted(d["buffers"], key=lambda b: b["offset"])
    a, b = bufs[0], bufs[1]
    assert a["first_step"] <= b["last_step"] and b["first_step"] <= a["last_step"]
    b["offset"] = a["offset"] + max(4, a["size"] // 2 // 4 * 4)
    d["arena_bytes"] = max(x["offset"] + x["size"] for x in d["buffers"])
    edited = tmp_path / "overlap.json"
    edited.write_text(json.dumps(d, indent=1))
    return edited


@pytest.mark.parametrize("cmd", ["validate", "simulate", "codegen"])
def test_overlapping_plan_refused(corpus: Path, tmp_path: Path, cmd: str) -> None:
    plan = _overlapping_plan(corpus, tmp_path)
    out_dir = tmp_path / "c_out"
    existing = tmp_path / "c_keep"
    existing.mkdir()
    (existing / "pex_model.c").write_text("old\n")
    res = _run_plan_cmd(cmd, plan, corpus / "good_int8.onnx", out_dir)
    refused(res, (1, 2), "overlap")
    assert not out_dir.exists()
    if cmd == "codegen":
        res = _run_plan_cmd(cmd, plan, corpus / "good_int8.onnx", existing)
        refused(res, (1, 2), "overlap")
        assert (existing / "pex_model.c").read_text() == "old\n"
        assert sorted(p.name for p in existing.iterdir()) == ["pex_model.c"]


@pytest.mark.parametrize("cmd", [
    "validate", "simulate", "codegen"])
def test_overlapping_plan_exit_code_is_readme_1(corpus: Path, tmp_path: Path, cmd: str) -> None:
    plan = _overlapping_plan(corpus, tmp_path)
    res = _run_plan_cmd(cmd, plan, corpus / "good_int8.onnx", tmp_path / "c_out")
    assert res.exit_code == 1, (res.exit_code, res.stderr)
