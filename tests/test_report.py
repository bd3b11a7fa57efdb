"""Reports: figures and summary.md for one plan and for a sweep."""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path

import pytest
from attack import run_case
from conftest import BUNDLED_ALL
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pexopt.graph.ir import Graph
from pexopt.partial.bands import find_row_segments
from pexopt.pipeline import ImportOptions, SolveResult, plan_peak, solve_model
from pexopt.plan.build import build_plan
from pexopt.plan.format import Buffer, Plan, SolverInfo, Step, load_plan
from pexopt.plan.validator import validate
from pexopt.plan.validator_alone import validate_alone
from pexopt.report.labels import NAME_CHARS, OpLabels, buffer_labels, short_name
from pexopt.report.occupancy import occupancy, rectangles
from pexopt.report.plots import live_matrix, pareto_front, report_plan, report_sweep, split_ranges
from pexopt.report.tables import PIPE_WIDTH, fit, inspect_table, peak_line, splits_table
from pexopt.schedule import SolverParams
from pexopt.solver.cpsat_layout import greedy_schedule
from pexopt.solver.rows_greedy import row_plan
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


# -- the timeline counts bytes as the plan lays them out (issue #13 item 17) ------------------

STREAMING = (*(f"{m}_int8" for m in BUNDLED_ALL), "mlperf_vww_96_int8")


@cache
def _row_plan(path: Path) -> tuple[Plan, Graph]:
    """A plan with row bands streaming over their inputs: the constructive row planner of the
    default solve (no CP-SAT search; a short, fixed budget), validated against the model."""
    g = ImportOptions().load(path)
    p = SolverParams(rows=True, target="cortex-m4")
    segs = find_row_segments(g, 0, p.max_segment_len, p.max_heights, single=True)
    start = greedy_schedule(g, list(range(len(g.ops))), p)
    sched = row_plan(g, p, segs, start, seconds=3)
    if sched is None or not sched.streams:  # a slow machine: the bands at the input only
        sched = row_plan(g, p, [s for s in segs if max(s.ops) < 6], start, seconds=30)
    assert sched is not None and sched.streams  # the point: streamed pairs
    plan = build_plan(g, sched)
    assert validate(plan, g) == []
    return plan, g


def _laid_out(plan: Plan) -> list[int]:
    """Independently: per step, the bytes covered by the live buffers' address ranges (a buffer
    overwritten in place at a step no longer counts there)."""
    gone = {(b.alias_of, b.first_step) for b in plan.buffers if b.alias_of}
    res = []
    for s in range(len(plan.steps)):
        total, at = 0, 0
        for lo, hi in sorted((b.offset, b.offset + b.size) for b in plan.buffers
                             if b.first_step <= s <= b.last_step
                             and not (s == b.last_step and (b.name, s) in gone)):
            total += max(0, hi - max(lo, at))
            at = max(at, hi)
        res.append(total)
    return res


def _check_timeline(plan: Plan) -> None:
    """Per step: the stacked bytes are the union of the live buffers, within the arena; no byte
    is held by two buffers, each holds bytes of its own range only; the layout draws exactly
    those bytes."""
    live = live_matrix(plan)
    per_step = [sum(v[s] for v in live.values()) for s in range(len(plan.steps))]
    assert per_step == _laid_out(plan)
    assert max(per_step) <= plan.arena_bytes
    occ = occupancy(plan)
    bufs = {b.name: b for b in plan.buffers}
    for held in occ:
        ivs = sorted(iv for ivs in held.values() for iv in ivs)
        assert all(a[1] <= b[0] for a, b in zip(ivs, ivs[1:]))  # disjoint
        for name, own in held.items():
            b = bufs[name]
            assert all(b.offset <= lo < hi <= b.offset + b.size for lo, hi in own)
    area = sum((x1 - x0) * (hi - lo) for _, x0, x1, lo, hi in rectangles(plan, occ))
    assert area == sum(per_step)


@pytest.mark.parametrize("name", STREAMING)
def test_timeline_counts_streamed_pairs_once(name: str, models_dir: Path,
                                             shared_models_dir: Path) -> None:
    """Every bundled model and mlperf_vww with streamed row bands: no bar above the arena. The
    plan's buffers summed whole exceed it (a streamed pair counted twice: what the timeline
    drew before, e.g. 45 kB over mlperf_vww's 27.5 kB arena)."""
    path = (shared_models_dir if name.startswith("mlperf") else models_dir) / f"{name}.onnx"
    plan, _ = _row_plan(path)
    _check_timeline(plan)
    assert validate_alone(plan) == []
    whole = [sum(b.size for b in plan.buffers if b.first_step <= s <= b.last_step)
             for s in range(len(plan.steps))]
    assert max(whole) > plan.arena_bytes


def _band_plan(delta: int) -> Plan:
    """A hand-made streamed pair: input x (8 rows of 10 B) read band by band while output y
    (8 rows of 10 B, at x's offset + delta) is written two rows per step."""
    x = Buffer("x", "x", "tensor", -min(0, delta), 80, 0, 3)
    y = Buffer("y", "y", "tensor", x.offset + delta, 80, 0, 4)
    steps = [Step(i, "conv", "conv", ["x"], ["y"], mode="band", rows=[2 * i, 2 * i + 2])
             for i in range(4)]
    steps.append(Step(4, "relu", "relu", ["y"], ["z"]))
    z = Buffer("z", "z", "tensor", max(x.offset, y.offset) + 80, 8, 4, 4)
    return Plan(model={"path": "m.onnx", "sha256": ""}, arena_bytes=z.offset + 8,
                budget_bytes=None, fits=True, align=1, dtype="int8", input_external=False,
                steps=steps, buffers=[x, y, z], solver=SolverInfo("OPTIMAL", 0, 0.0, None, 0,
                                                                   None, 1.0))


@pytest.mark.parametrize("delta", [0, -20])
def test_streamed_output_grows_by_rows(delta: int) -> None:
    """The output holds the rows written so far, the input the rest of the pair's union."""
    plan = _band_plan(delta)
    assert validate_alone(plan) == []
    live = live_matrix(plan)
    assert live["y"][:4] == [20, 40, 60, 80]
    assert [live["x"][s] + live["y"][s] for s in range(4)] == [80 - delta] * 4
    assert live["y"][4] == 80 and live["x"][4] == 0
    _check_timeline(plan)
    pk = plan_peak(plan)
    line = peak_line(SolveResult(None, None, plan, 0, pk))  # type: ignore[arg-type]
    if pk.step < 4:  # the pair at the peak: the line says why 80 + 80 B count once
        assert pk.live == 80 - delta and line.endswith("; y streams over x")


# -- tables fit the terminal, labels are short and unique (issue #13 item 16) -----------------

def test_short_names() -> None:
    tf = "model/activation_24/Relu;model/batch_normalization_24/FusedBatchNormV3;model/c/Conv2D"
    assert short_name(tf) == "model/activation_24/Relu"
    assert short_name(tf + "@kscratch") == "model/activation_24/Relu@kscratch"
    assert short_name("functional_1/activation_1/Relu;x") == "activation_1/Relu"
    assert len(short_name("x" * 300)) == NAME_CHARS and short_name("stem_conv") == "stem_conv"
    same = [f"scope/{'a' * 40}/{k}" for k in range(3)]  # equal short forms: made unique
    assert len(set(buffer_labels(same).values())) == 3


def test_op_labels_unique_on_real_models(shared_models_dir: Path) -> None:
    for name in ("mlperf_vww_96_int8", "mcunet_in3_320kb_1mb_imagenet"):
        g = ImportOptions().load(shared_models_dir / f"{name}.onnx")
        label = OpLabels(g)
        labels = [label(o.name) for o in g.ops]
        assert len(set(labels)) == len(labels)
        assert max(map(len, labels)) <= NAME_CHARS + 5
        assert labels[3].startswith("#3 ")


def _render(table: Table, width: int) -> str:
    con = Console(width=1 << 12, file=io.StringIO(), color_system=None)
    with con.capture() as cap:
        con.print(fit(table, width), width=width, crop=False)
    return cap.get()


@pytest.mark.parametrize("width", [40, 60, 100, 160])
def test_fit_never_cuts_a_number(width: int) -> None:
    """Wide numeric columns: the table fits the width (as records when it must) and every
    number is printed whole (rich's own squeeze would print '1,234,…')."""
    t = Table(title="numbers")
    cols = [f"column {k}" for k in range(9)]
    for c in cols:
        t.add_column(c, justify="right")
    rows = [[f"{(k + 1) * 1_234_567 * (r + 1):,}" for k in range(9)] for r in range(3)]
    for r in rows:
        t.add_row(*r)
    text = _render(t, width)
    assert max(len(line) for line in text.splitlines()) <= width
    for r in rows:
        for cell in r:
            assert cell in text
    assert "…" not in text


def _lines_fit(text: str, width: int) -> None:
    wide = [line for line in text.splitlines() if len(line) > width]
    assert not wide, wide[:2]


def test_solve_tables_fit_100_columns(shared_models_dir: Path, tmp_path: Path) -> None:
    """mlperf_vww (node names of 200-300 characters): under COLUMNS=100 no line of `solve` is
    wider than 100 characters and no full name shows (operators as labels); `--json` keeps the
    full names; the plan's timeline stays within its arena."""
    model = shared_models_dir / "mlperf_vww_96_int8.onnx"
    g = ImportOptions().load(model)
    label = OpLabels(g)
    fast = ("--sram", "64k", "--time-limit", "5", "--workers", "1", "--no-verify")
    o = run_case(["solve", model, *fast, "-o", "plan.json"], tmp_path, env={"COLUMNS": "100"})
    assert o.code == 0, o.stderr
    _lines_fit(o.stdout, 100)
    assert not [op.name for op in g.ops if len(op.name) > 100 and op.name in o.stdout]
    plan = load_plan(tmp_path / "plan.json")
    words = set(o.stdout.split())
    for sp in plan.splits:  # (splits at this time limit on a busy machine: not always)
        assert all(set(label(op).split()) <= words for op in sp["ops"])
    assert f"'{label(plan_peak(plan).op)}'" in " ".join(o.stdout.split())
    assert "plan written to plan.json" in o.stdout
    _check_timeline(plan)
    o = run_case(["solve", model, *fast, "--json"], tmp_path)
    assert o.code == 0, o.stderr
    data = json.loads(o.stdout)
    names = {op.name for op in g.ops}
    assert data["peak"]["op"] in names and len(data["peak"]["op"]) > 100
    assert all(op in names for sp in data["splits"] for op in sp["ops"])


def test_splits_table_and_peak_line_fit(shared_models_dir: Path) -> None:
    """The splits table and peak line of a streaming mlperf_vww plan at 100 columns: every
    split operator as its label ('#k name'), unique, no full name, no line over 100."""
    plan, g = _row_plan(shared_models_dir / "mlperf_vww_96_int8.onnx")
    res = SolveResult(g, None, plan, 0, plan_peak(plan))  # type: ignore[arg-type]
    label = OpLabels(g)
    table = splits_table(res)
    assert table is not None
    text = _render(table, 100) + _render(Text(peak_line(res)), 100)
    _lines_fit(text, 100)
    ops = [op for sp in plan.splits for op in sp["ops"]]
    assert len({label(op) for op in ops}) == len(set(ops)) > 1
    for op in ops:
        assert set(label(op).split()) <= set(text.split()) and op not in text


def test_tables_to_a_pipe_are_bounded(shared_models_dir: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """To a pipe without COLUMNS the tables are at most PIPE_WIDTH wide; with COLUMNS at most
    that; inspect's op column shows short names."""
    from pexopt.cli import _print_table
    from pexopt.pipeline import naive_peak

    g = ImportOptions().load(shared_models_dir / "mlperf_vww_96_int8.onnx")
    monkeypatch.delenv("COLUMNS", raising=False)
    _print_table(inspect_table(g, naive_peak(g)))
    text = capsys.readouterr().out
    _lines_fit(text, PIPE_WIDTH)
    assert "model/activation_3/Relu" in text and g.ops[3].name not in text
    monkeypatch.setenv("COLUMNS", "72")
    _print_table(inspect_table(g, naive_peak(g)))
    _lines_fit(capsys.readouterr().out, 72)
