"""The command line with partial execution: solve (tables, budget, --no-split, --verify),
simulate, bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from pexopt.cli import app
from pexopt.pipeline import ImportOptions
from pexopt.report.labels import OpLabels

runner = CliRunner()
Solved = tuple[Result, Path]
SOLVE = ["--time-limit", "20", "--workers", "2", "--no-rows"]  # channel splits (rows: test_rows)


def run(*args: object) -> Result:
    """Invoke the CLI in-process; an exception other than the exit itself is a test failure."""
    res = runner.invoke(app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert "Traceback" not in res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def mbv2(models_dir: Path) -> Path:
    return models_dir / "mbv2_w035_r144_int8.onnx"


@pytest.fixture(scope="module")
def solved(mbv2: Path, tmp_path_factory: pytest.TempPathFactory) -> Solved:
    """`solve mbv2 --sram 256k -o plan.json`: (result, plan path)."""
    plan = tmp_path_factory.mktemp("split") / "plan.json"
    res = run("solve", mbv2, "--sram", "256k", "-o", plan, *SOLVE)
    return res, plan


def test_solve_split(solved: Solved) -> None:
    res, plan = solved
    assert res.exit_code == 0, res.stderr
    text = res.stdout
    assert "layer by layer" in text and "311,040" in text
    # 145,152 B of tensors + 112 B CMSIS-NN scratch of the stem conv (default cortex-m4)
    assert "partial execution" in text and "145,264" in text
    assert "OPTIMAL" in text
    # the split subgraph table
    for col in ("operators", "slice width", "slices", "bytes saved"):
        assert col in text, col
    d = json.loads(plan.read_text())
    assert d["arena_bytes"] == 145_264
    assert d["splits"]
    label = OpLabels(ImportOptions().load(d["model"]["path"]))  # "#k name" (issue #13 item 16)
    words = set(text.split())
    for sp in d["splits"]:
        assert all(set(label(op).split()) <= words for op in sp["ops"])
        assert f"{sp['bytes_saved']:,}" in text
        assert sp["width"] >= 1 and sp["slices"] >= 1
    # the memory comes from a multi-slice split; one-slice segments (an int32 accumulator, no
    # slicing) are there because the cortex-m4 profile estimates them faster at this arena
    assert any(sp["slices"] >= 2 and sp["bytes_saved"] > 0 for sp in d["splits"])
    sliced = [s for s in d["steps"] if s.get("slice") is not None]
    assert sliced and all(s["mode"] in ("slice", "accumulate") for s in sliced)
    assert {b["kind"] for b in d["buffers"]} >= {"tensor", "slice"}
    assert d["baselines"]["layerwise_arena_bytes"] == 311_040


def test_solve_does_not_fit(mbv2: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    res = run("solve", mbv2, "--sram", "128k", "-o", out, *SOLVE)
    assert res.exit_code == 3, (res.stdout, res.stderr)
    msg = res.stderr
    assert "does not fit" in msg and "145,264" in msg and "131,072" in msg
    # the peak: which step, which buffers
    assert "step 0 '#0 stem_conv'" in msg, msg  # the op's label (issue #13 item 16)
    assert "stem_relu6_out (82,944 B)" in msg and "input (62,208 B)" in msg, msg


def test_solve_no_split(mbv2: Path) -> None:
    res = run("solve", mbv2, "--no-split", *SOLVE)
    assert res.exit_code == 0, res.stderr
    assert "311,040" in res.stdout
    assert "off (--no-split)" in res.stdout
    assert "slice width" not in res.stdout  # no split table
    assert "145,152" not in res.stdout


def test_solve_verify(mbv2: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    res = run("solve", mbv2, "--verify", "-o", out, *SOLVE)
    assert res.exit_code == 0, res.stderr
    assert "bit-exact" in res.stdout
    assert out.is_file()


def test_simulate(solved: Solved, mbv2: Path) -> None:
    _, plan = solved
    res = run("simulate", plan, mbv2)
    assert res.exit_code == 0, res.stderr
    assert "bit-exact" in res.stdout
    res = run("simulate", plan, mbv2, "--json", "--inputs", "1")
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["ok"] and d["exact"] and d["max_error"] == 0


def test_simulate_refuses_overlapping_plan(solved: Solved, mbv2: Path, tmp_path: Path) -> None:
    _, plan = solved
    d = json.loads(plan.read_text())
    bufs = d["buffers"]
    pair = next((a, b) for a in bufs for b in bufs
                if a is not b and a["first_step"] <= b["last_step"]
                and b["first_step"] <= a["last_step"] and a["offset"] != b["offset"]
                and a["alias_of"] is None and b["alias_of"] is None
                and not any(c["alias_of"] in (a["name"], b["name"]) for c in bufs)
                and b["offset"] + a["size"] <= d["arena_bytes"]
                and a["first_step"] != a["last_step"] and b["first_step"] != b["last_step"])
    pair[0]["offset"] = pair[1]["offset"]
    bad = tmp_path / "overlap.json"
    bad.write_text(json.dumps(d))
    res = run("simulate", bad, mbv2)
    assert res.exit_code != 0
    assert "bit-exact" not in res.stdout
    assert "overlap" in res.stderr, res.stderr
    assert pair[0]["name"] in res.stderr or pair[1]["name"] in res.stderr


def test_bench(models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = run("bench", models_dir / "resnet8_int8.onnx", models_dir / "mbv2_w035_r96_int8.onnx",
              "--out", out, "--time-limit", "10", "--quiet")
    assert res.exit_code == 0, res.stderr
    data = json.loads((out / "bench.json").read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert set(rows) == {"resnet8_int8", "mbv2_w035_r96_int8"}
    for r in rows.values():
        assert r["arena"] <= r["channel_arena"] <= r["layerwise"], r
        assert r["arena"] <= r["rows_arena"] <= r["layerwise"], r
    assert rows["mbv2_w035_r96_int8"]["arena"] < rows["mbv2_w035_r96_int8"]["layerwise"]
    assert rows["mbv2_w035_r96_int8"]["splits"] >= 1
    # channel splits cannot shrink resnet8, row bands can
    assert rows["resnet8_int8"]["channel_arena"] == rows["resnet8_int8"]["layerwise"]
    assert rows["resnet8_int8"]["arena"] < rows["resnet8_int8"]["layerwise"]
    assert "| channel split | row bands | hybrid (pexopt) |" in (out / "bench.md").read_text()
    assert (out / "bench.md").is_file()


def test_simulate_refusal_names_the_rule(solved: Solved, mbv2: Path, tmp_path: Path) -> None:
    """The one-line error keeps the violation code ('[overlap] buffers ...'), which must not be
    swallowed as console markup."""
    _, plan = solved
    d = json.loads(plan.read_text())
    by_name = {b["name"]: b for b in d["buffers"]}
    a, b = by_name["block1_project_bn_out"], by_name["block2_expand_relu6_out@slice"]
    assert a["first_step"] <= b["last_step"] and b["first_step"] <= a["last_step"]
    a["offset"] = b["offset"]
    bad = tmp_path / "overlap.json"
    bad.write_text(json.dumps(d))
    res = run("simulate", bad, mbv2)
    assert res.exit_code == 1  # README: a plan the validator rejects
    assert "[overlap]" in res.stderr, res.stderr
