"""The `pexopt` command line: inspect, solve, validate, bench; exit codes and error hygiene."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import conv_weights, make_onnx, one_op_model, vi
from conftest import run_cli as run
from onnx import helper

from pexopt.errors import PexError
from pexopt.frontend.onnx_import import import_onnx
from pexopt.pipeline import parse_bytes

FAST = ["--time-limit", "10", "--workers", "1", "--no-rows"]  # pins channel-split plans
# resnet8 on the default --target cortex-m4: TFLM's 49,152 B of tensors plus the 576 B CMSIS-NN
# scratch of a 3x3 conv over 16 channels (2 * 144 * sizeof(int16)), live next to the peak
RESNET8 = 49152 + 576


def assert_bad_input(res, *words: str) -> str:  # noqa: ANN001
    """Exit 2, exactly one line on stderr naming the problem, nothing on stdout, no traceback."""
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert res.stdout == ""
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def resnet8(models_dir: Path) -> Path:
    return models_dir / "resnet8_int8.onnx"


@pytest.fixture(scope="module")
def dscnn(models_dir: Path) -> Path:
    return models_dir / "dscnn_kws_int8.onnx"


@pytest.fixture(scope="module")
def resnet8_plan(resnet8: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    plan = tmp_path_factory.mktemp("plan") / "plan.json"
    res = run("solve", resnet8, "--sram", "64k", "-o", plan, "--quiet", *FAST)
    assert res.exit_code == 0, res.stderr
    return plan


# -- parse_bytes ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    ("131072", 131072), ("128k", 131072), ("128KiB", 131072), ("0.5M", 524288),
    ("128kb", 131072), ("1MiB", 1 << 20), (" 64K ", 65536), ("4096B", 4096)])
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["abc", "-5", "0", "12q", "", "1.5", "0.0001k", "1e6", "k"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(PexError, match="--sram") as info:
        parse_bytes(text)
    assert "\n" not in str(info.value)


# -- inspect --------------------------------------------------------------------------------------

def test_inspect_table(resnet8: Path) -> None:
    res = run("inspect", resnet8)
    assert res.exit_code == 0, res.stderr
    g = import_onnx(resnet8)
    for op in g.ops:
        assert op.name in res.stdout
    peak = "49,152"
    assert "naive peak" in res.stdout and peak in res.stdout
    assert "input 1x32x32x3" in res.stdout


def test_inspect_long_names_are_short_in_tables_whole_in_json(shared_models_dir: Path) -> None:
    """TFLite-converted models have 200-character op names: the table shows short names (issue
    #13 item 16), `--json` the whole ones."""
    from pexopt.report.labels import NAME_CHARS, short_name

    path = shared_models_dir / "mlperf_vww_96_int8.onnx"
    res = run("inspect", path)
    assert res.exit_code == 0, res.stderr
    ops = import_onnx(path).ops
    assert max(len(op.name) for op in ops) > 200
    for op in ops:
        assert short_name(op.name) in res.stdout
        assert op.name not in res.stdout or len(op.name) <= NAME_CHARS
    res = run("inspect", path, "--json")
    assert [o["op"] for o in json.loads(res.stdout)["ops"]] == [op.name for op in ops]


def test_inspect_json(resnet8: Path) -> None:
    res = run("inspect", resnet8, "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    g = import_onnx(resnet8)
    assert [o["op"] for o in data["ops"]] == [op.name for op in g.ops]
    for o, op in zip(data["ops"], g.ops):
        assert o["kind"] == op.kind.value
        assert o["macs"] == op.macs and o["macs"] > 0
        assert [x["bytes"] for x in o["outputs"]] == [g.tensors[t].nbytes for t in op.outputs]
        assert all(x["bytes"] > 0 for x in o["outputs"])
    assert data["naive_peak_bytes"] == 49152
    assert data["dtype"] == "int8"


def test_inspect_input_external_and_float32(resnet8: Path) -> None:
    res = run("inspect", resnet8, "--input-external")
    assert res.exit_code == 0
    assert "external, not counted" in res.stdout
    ext = json.loads(run("inspect", resnet8, "--json", "--input-external").stdout)
    f32 = json.loads(run("inspect", resnet8, "--json", "--dtype", "float32").stdout)
    assert f32["naive_peak_bytes"] == 4 * 49152
    assert ext["naive_peak_bytes"] <= 49152


def test_inspect_opaque_listed(shared_models_dir: Path) -> None:
    res = run("inspect", shared_models_dir / "tinyengine_mnist_lenet300100.onnx")
    assert res.exit_code == 0
    assert "opaque" in res.stdout and "LogSoftmax" in res.stdout


# -- solve ----------------------------------------------------------------------------------------

def test_solve_fits_and_validates(resnet8: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    res = run("solve", resnet8, "--sram", "64k", "-o", plan, *FAST)
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    for word in ("TFLM arena", "layer by layer", "partial execution", "pexopt/TFLM",
                 "lower bound", "gap", "status",
                 "OPTIMAL", "49,152", "49,728", "65,536", "1.012", "0.0%", "peak 49,728 B",
                 "@kscratch (576 B)"):
        assert word in out, word
    assert f"plan written to {plan}" in out
    data = json.loads(plan.read_text())
    assert data["format"] == "pexopt-plan/2"
    assert data["fits"] is True
    assert data["arena_bytes"] == RESNET8 and data["target"] == "cortex-m4"
    assert data["budget_bytes"] == 65536
    assert data["model"]["sha256"] == import_onnx(resnet8).source_sha256
    assert data["baselines"]["tflm_arena_bytes"] == 49152
    assert data["solver"]["seed"] == 0 and data["solver"]["time_limit"] == 10.0
    assert "workers" not in data["solver"]  # reproducible: no thread count in the file
    assert not [p for p in tmp_path.iterdir() if p.name != "plan.json"]  # no temp files left
    res = run("validate", plan, resnet8)
    assert res.exit_code == 0, res.stderr
    assert "valid" in res.stdout


def test_solve_does_not_fit(resnet8: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    res = run("solve", resnet8, "--sram", "16k", "-o", plan, *FAST)
    assert res.exit_code == 3, res.stderr
    assert "smallest arena found is 49,728 B" in res.stderr
    assert "16,384" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    data = json.loads(plan.read_text())
    assert data["fits"] is False and data["arena_bytes"] == RESNET8
    assert data["budget_bytes"] == 16384
    # a plan that does not fit is still a valid plan
    assert run("validate", plan, resnet8).exit_code == 0


def test_solve_without_budget(dscnn: Path) -> None:
    res = run("solve", dscnn, "--json", *FAST)
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["budget_bytes"] is None and data["plan"] is None


def test_solve_json(resnet8: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    res = run("solve", resnet8, "--sram", "64k", "-o", plan, "--json", *FAST)
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["arena_bytes"] == RESNET8 and data["tflm_arena_bytes"] == 49152
    assert data["fits"] is True and data["budget_bytes"] == 65536
    assert data["solver"]["status"] in ("OPTIMAL", "FEASIBLE")
    assert data["solver"]["bound"] <= data["arena_bytes"]
    assert data["plan"] == str(plan)
    assert data["peak"]["live"] == RESNET8


def test_solve_quiet(resnet8: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    res = run("solve", resnet8, "--sram", "64k", "-o", plan, "--quiet", *FAST)
    assert res.exit_code == 0
    assert res.stdout == ""
    assert plan.is_file()


@pytest.mark.parametrize(("sram", "value"), [
    ("131072", 131072), ("128k", 131072), ("128KiB", 131072), ("0.5M", 524288)])
def test_solve_sram_units(dscnn: Path, tmp_path: Path, sram: str, value: int) -> None:
    plan = tmp_path / "plan.json"
    res = run("solve", dscnn, "--sram", sram, "-o", plan, "--quiet", *FAST)
    assert res.exit_code == 0, res.stderr
    assert json.loads(plan.read_text())["budget_bytes"] == value


@pytest.mark.parametrize("sram", ["abc", "-5", "0", "12q"])
def test_solve_sram_rejected(dscnn: Path, tmp_path: Path, sram: str) -> None:
    plan = tmp_path / "plan.json"
    res = run("solve", dscnn, f"--sram={sram}", "-o", plan, *FAST)
    assert_bad_input(res, "--sram", sram)
    assert not plan.exists()


def test_solve_float32_and_external(resnet8: Path, tmp_path: Path) -> None:
    f32 = tmp_path / "f32.json"
    assert run("solve", resnet8, "--dtype", "float32", "--no-split", "-o", f32, "--quiet",
               *FAST).exit_code == 0
    data = json.loads(f32.read_text())
    assert data["dtype"] == "float32" and data["arena_bytes"] == 4 * 49152
    assert run("validate", f32, resnet8).exit_code == 0
    ext = tmp_path / "ext.json"
    assert run("solve", resnet8, "--input-external", "-o", ext, "--quiet", *FAST).exit_code == 0
    data = json.loads(ext.read_text())
    assert data["input_external"] is True and data["arena_bytes"] <= RESNET8
    assert "input" not in {b["tensor"] for b in data["buffers"]}
    assert run("validate", ext, resnet8).exit_code == 0


def test_solve_input_shape_fixes_dynamic_model(tmp_path: Path) -> None:
    model = make_onnx(
        tmp_path / "dyn.onnx",
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1])],
        [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 4, 8, 8])], [conv_weights("w", 4, 3, 3, 3)])
    plan = tmp_path / "plan.json"
    res = run("solve", model, "-o", plan, *FAST)
    assert_bad_input(res, "--input-shape", "x=1x3x8x8")
    assert not plan.exists()
    res = run("solve", model, "--input-shape", "x=1x3x8x8", "-o", plan, "--quiet", *FAST)
    assert res.exit_code == 0, res.stderr
    # input + output + the 3x3 conv's CMSIS-NN scratch on cortex-m4: 2 * roundup4(27) * 2
    assert json.loads(plan.read_text())["arena_bytes"] == 8 * 8 * 3 + 8 * 8 * 4 + 112
    res = run("validate", plan, model, "--input-shape", "x=1x3x8x8")
    assert res.exit_code == 0, res.stderr


# -- bad input: exit 2, one line, no traceback, nothing written -----------------------------------

def _cycle_model(path: Path) -> Path:
    return make_onnx(path, [helper.make_node("Add", ["x", "t2"], ["t1"], name="first"),
                            helper.make_node("Relu", ["t1"], ["t2"], name="second")],
                     [vi("x", [1, 4])], [vi("t2", [1, 4])], check=False)


def _bad_case(case: str, tmp_path: Path, good: Path) -> tuple[list[object], list[str]]:
    """(solve arguments, words the error line must contain) for one kind of bad input."""
    if case == "missing":
        return [tmp_path / "missing.onnx"], ["missing.onnx", "no such file"]
    if case == "random":
        p = tmp_path / "random.onnx"
        p.write_bytes(np.random.default_rng(7).bytes(2048))
        return [p], ["random.onnx", "not an ONNX model"]
    if case == "dynamic":
        return [one_op_model(tmp_path / "dyn.onnx", "Relu", ["N", 3, 8, 8])], ["--input-shape"]
    if case == "cycle":
        return [_cycle_model(tmp_path / "cycle.onnx")], ["cycle"]
    if case == "input-shape":
        return [good, "--input-shape", "input=1x3xax32"], ["--input-shape"]
    if case == "input-shape-no-name":
        return [good, "--input-shape", "1x3x32x32"], ["--input-shape"]
    if case == "input-shape-unknown":
        return [good, "--input-shape", "nope=1x3x32x32"], ["--input-shape", "nope"]
    if case == "dtype":
        return [good, "--dtype", "float64"], ["--dtype", "float64"]
    if case == "workers":
        return [good, "--workers", "0"], ["--workers"]
    if case == "align":
        return [good, "--align", "3"], ["--align"]
    raise AssertionError(case)


BAD_CASES = ["missing", "random", "dynamic", "cycle", "input-shape", "input-shape-no-name",
             "input-shape-unknown", "dtype", "workers", "align"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_solve_bad_input(case: str, tmp_path: Path, resnet8: Path) -> None:
    args, words = _bad_case(case, tmp_path, resnet8)
    plan = tmp_path / "out" / "plan.json"
    res = run("solve", "--sram", "64k", "-o", plan, *FAST, *args)  # the case's flags win
    assert_bad_input(res, *words)
    assert not plan.exists() and not plan.parent.exists()


@pytest.mark.parametrize("case", ["missing", "random", "dynamic", "cycle", "dtype"])
def test_inspect_bad_input(case: str, tmp_path: Path, resnet8: Path) -> None:
    args, words = _bad_case(case, tmp_path, resnet8)
    assert_bad_input(run("inspect", *args), *words)


@pytest.mark.parametrize("case", ["missing", "random", "dynamic", "cycle", "dtype", "sram"])
def test_failed_solve_leaves_existing_output_unchanged(case: str, tmp_path: Path,
                                                       resnet8: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text("previous content\n")
    if case == "sram":
        args: list[object] = [resnet8, "--sram", "12q"]
    else:
        args = [*_bad_case(case, tmp_path, resnet8)[0], "--sram", "64k"]
    res = run("solve", "-o", plan, *FAST, *args)
    assert res.exit_code == 2
    assert plan.read_text() == "previous content\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".plan")) == []


# -- validate -------------------------------------------------------------------------------------

def test_validate_overlap(resnet8: Path, resnet8_plan: Path, tmp_path: Path) -> None:
    data = json.loads(resnet8_plan.read_text())
    bufs = {b["name"]: b for b in data["buffers"]}
    a, b = bufs["stem_relu_out"], bufs["stage1_conv1_relu_out"]
    assert a["first_step"] <= b["last_step"] and b["first_step"] <= a["last_step"]  # both live
    b["offset"] = a["offset"]
    bad = tmp_path / "overlap.json"
    bad.write_text(json.dumps(data))
    res = run("validate", bad, resnet8)
    assert res.exit_code == 1, (res.stdout, res.stderr)
    assert "overlap" in res.stderr
    line = next(x for x in res.stderr.splitlines() if "overlap" in x)
    assert "stem_relu_out" in line and "stage1_conv1_relu_out" in line
    assert "Traceback" not in res.stdout + res.stderr
    data = json.loads(run("validate", bad, resnet8, "--json").stdout)
    assert data["valid"] is False and any(v["code"] == "overlap" for v in data["violations"])


def test_validate_json_valid(resnet8: Path, resnet8_plan: Path) -> None:
    res = run("validate", resnet8_plan, resnet8, "--json")
    assert res.exit_code == 0
    assert json.loads(res.stdout) == {"valid": True, "violations": []}


def test_validate_not_json(resnet8: Path, tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text("this is { not json")
    assert_bad_input(run("validate", bad, resnet8), "plan.json", "JSON")


@pytest.mark.parametrize("content", ["[]", '{"format": "something/9"}',
                                     '{"format": "pexopt-plan/1", "model": {}}'])
def test_validate_malformed_plan(resnet8: Path, tmp_path: Path, content: str) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text(content)
    assert_bad_input(run("validate", bad, resnet8), "plan.json")


def test_validate_missing_files(resnet8: Path, resnet8_plan: Path, tmp_path: Path) -> None:
    assert_bad_input(run("validate", tmp_path / "none.json", resnet8), "none.json")
    assert_bad_input(run("validate", resnet8_plan, tmp_path / "none.onnx"), "none.onnx")


def test_validate_other_model(resnet8_plan: Path, dscnn: Path) -> None:
    res = run("validate", resnet8_plan, dscnn)
    assert res.exit_code != 0
    assert "Traceback" not in res.stdout + res.stderr
    first = res.stderr.strip().splitlines()[0]
    assert "sha256" in first or "hash" in first


def test_validate_same_graph_other_file(resnet8: Path, resnet8_plan: Path,
                                        tmp_path: Path) -> None:
    """Only the file hash differs: still refused, and the message says so."""
    m = onnx.load(str(resnet8))
    m.doc_string = "edited"
    other = tmp_path / "resnet8_edited.onnx"
    onnx.save(m, str(other))
    res = run("validate", resnet8_plan, other)
    assert res.exit_code != 0
    assert "sha256" in res.stderr or "hash" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1  # the same graph: nothing else is wrong


# -- bench ----------------------------------------------------------------------------------------

def test_bench(resnet8: Path, dscnn: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = run("bench", resnet8, dscnn, "--out", out, "--no-rows", *FAST)
    assert res.exit_code == 0, res.stderr
    data = json.loads((out / "bench.json").read_text())
    rows = data["rows"]
    assert [r["model"] for r in rows] == ["resnet8_int8", "dscnn_kws_int8"]
    for r in rows:
        for key in ("model", "tflm", "arena", "ratio", "bound", "status"):
            assert key in r, key
        assert r["bound"] <= r["arena"] and r["arena"] <= r["tflm"]
        assert r["ratio"] == pytest.approx(r["arena"] / r["tflm"])
        assert r["status"] in ("OPTIMAL", "FEASIBLE")
    assert rows[0]["arena"] == 49152 and rows[1]["arena"] == 16000
    md = (out / "bench.md").read_text()
    assert "| resnet8_int8 |" in md and "| dscnn_kws_int8 |" in md
    assert "resnet8_int8" in res.stdout and "dscnn_kws_int8" in res.stdout


def test_bench_json(dscnn: Path, tmp_path: Path) -> None:
    res = run("bench", dscnn, "--out", tmp_path, "--json", *FAST)
    assert res.exit_code == 0
    assert json.loads(res.stdout)["rows"][0]["model"] == "dscnn_kws_int8"


def test_bench_update_readme(dscnn: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nintro\n\n<!-- bench:start -->\nold table\n<!-- bench:end -->\n"
                      "\n## after\ntail\n")
    res = run("bench", dscnn, "--out", tmp_path / "b", "--update-readme", readme, "--quiet",
              *FAST)
    assert res.exit_code == 0, res.stderr
    text = readme.read_text()
    assert "old table" not in text
    assert text.startswith("# title\n\nintro\n\n<!-- bench:start -->\n")
    assert text.endswith("<!-- bench:end -->\n\n## after\ntail\n")
    section = text.split("<!-- bench:start -->")[1].split("<!-- bench:end -->")[0]
    assert "| dscnn_kws_int8 |" in section
    assert section.strip() == (tmp_path / "b" / "bench.md").read_text().strip()
    # running again replaces the section instead of adding one
    run("bench", dscnn, "--out", tmp_path / "b", "--update-readme", readme, "--quiet", *FAST)
    assert readme.read_text().count("<!-- bench:start -->") == 1


def test_bench_readme_without_markers(dscnn: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    res = run("bench", dscnn, "--out", tmp_path / "b", "--update-readme", readme, *FAST)
    assert_bad_input(res, "bench:start")
    assert readme.read_text() == "# no markers\n"


def test_bench_bad_model(dscnn: Path, tmp_path: Path) -> None:
    res = run("bench", dscnn, tmp_path / "missing.onnx", "--out", tmp_path / "b", *FAST)
    assert_bad_input(res, "missing.onnx")
    assert not (tmp_path / "b").exists()


# -- the installed console script -----------------------------------------------------------------

def _console_script() -> str:
    exe = Path(sys.executable).parent / ("pexopt.exe" if os.name == "nt" else "pexopt")
    found = str(exe) if exe.is_file() else shutil.which("pexopt")
    if found is None:
        pytest.fail("the pexopt console script is not installed (pip install -e '.[test]')")
    return found


def test_console_script(resnet8: Path, tmp_path: Path) -> None:
    exe = _console_script()
    plan = tmp_path / "plan.json"
    p = subprocess.run([exe, "solve", str(resnet8), "--sram", "64k", "-o", str(plan), *FAST],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "OPTIMAL" in p.stdout and "49,728" in p.stdout
    assert json.loads(plan.read_text())["arena_bytes"] == RESNET8
    p = subprocess.run([exe, "validate", str(plan), str(resnet8)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([exe, "solve", str(resnet8), "--sram", "16k", "-o", str(plan), *FAST],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 3
    assert "smallest arena found is 49,728 B" in p.stderr
    p = subprocess.run([exe, "solve", str(tmp_path / "missing.onnx"), "-o", "x.json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr and "no such file" in p.stderr
    assert not (tmp_path / "x.json").exists()


def test_doctor_collects_versions_hashes_and_verdicts(resnet8: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert run("solve", resnet8, "-o", plan, "--quiet", *FAST).exit_code == 0
    res = run("doctor", plan, resnet8, "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["valid"] is True and info["violations"] == []
    assert info["model_sha256"] == info["plan_model_sha256"]
    assert info["ortools"] and info["onnx"] and info["pexopt"]
    assert info["simulation"]["ok"] is True
