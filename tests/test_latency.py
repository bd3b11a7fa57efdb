"""Target profiles and the latency cost model (no QEMU here: see test_qemu_latency.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import MODELS_DIR, make_onnx, vi
from onnx import helper
from test_cli import FAST, assert_bad_input, run

from pexopt.latency.cost import (
    cost_table,
    estimate,
    invoke_instructions,
    op_instructions,
    plan_instructions,
    segment_instructions,
    step_instructions,
)
from pexopt.latency.features import CLASS_FEATURES, step_work, valid_taps
from pexopt.latency.nnls import nnls
from pexopt.latency.profile import ProfileError, load_profile, shipped_profiles
from pexopt.pipeline import ImportOptions, solve_model
from pexopt.plan.format import load_plan, plan_from_dict
from pexopt.plan.validator import validate
from pexopt.schedule import SolverParams

M4 = load_profile("cortex-m4")


def test_shipped_profiles_load_and_say_how_they_were_made() -> None:
    assert {"cortex-m4", "cortex-m7", "cortex-m55"} <= set(shipped_profiles())
    for name in ("cortex-m4", "cortex-m7", "cortex-m55"):
        p = load_profile(name)
        assert p.name == name and p.core == name
        assert set(p.costs) == set(CLASS_FEATURES)
        assert p.costs["conv1x1"]["per_mac"] > 0
        text = Path(p.path).read_text()
        assert text.startswith(f"# pexopt target profile {name}: produced by `pexopt calibrate "
                               f"--target {name}")
        assert p.fit["all"]["max_rel_error"] < 0.15
    assert load_profile("cortex-m55").qemu_board is None  # not runnable here: said so
    assert "NOT measured on a Cortex-M55" in load_profile("cortex-m55").note


def _edit(tmp_path: Path, change) -> Path:  # noqa: ANN001
    d = yaml.safe_load(Path(M4.path).read_text())
    change(d)
    p = tmp_path / "board.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.parametrize("change, words", [
    (lambda d: d.pop("clock_hz"), ["clock_hz", "missing"]),
    (lambda d: d.update(clock_hz="fast"), ["clock_hz", "number"]),
    (lambda d: d.update(core="cortex-a53"), ["core", "cortex-m4"]),
    (lambda d: d["costs"]["conv1x1"].update(per_flop=1.0), ["costs.conv1x1.per_flop"]),
    (lambda d: d["costs"]["depthwise"].pop("per_mac"), ["costs.depthwise.per_mac"]),
    (lambda d: d["costs"]["pool"].update(per_tap=-1), ["per_tap", ">= 0"]),
    (lambda d: d["solver"].update(slice_widths=[0]), ["solver.slice_widths"]),
    (lambda d: d.update(colour="red"), ["colour", "unknown field"]),
])
def test_bad_profile_is_one_error_naming_file_and_field(tmp_path: Path, change, words) -> None:  # noqa: ANN001
    path = _edit(tmp_path, change)
    with pytest.raises(ProfileError) as e:
        load_profile(str(path))
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_profile_not_yaml_or_unknown_name(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("costs: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(str(bad))
    with pytest.raises(ProfileError, match="neither a shipped profile"):
        load_profile("cortex-m99")


def test_user_profile_path_with_its_own_core(tmp_path: Path) -> None:
    path = _edit(tmp_path, lambda d: d.update(name="my_board", core="cortex-m7",
                                              clock_hz=100e6))
    p = load_profile(str(path))
    assert (p.name, p.core, p.clock_hz) == ("my_board", "cortex-m7", 100e6)


def _conv_graph(tmp_path: Path):  # noqa: ANN202
    from conftest import conv_weights

    path = make_onnx(tmp_path / "c.onnx", [helper.make_node(
        "Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [vi("x", [1, 2, 4, 4])], [vi("y", [1, 3, 4, 4])], [conv_weights("w", 3, 2, 3, 3)])
    return ImportOptions().load(path)


def test_counts_follow_the_portable_kernels(tmp_path: Path) -> None:
    g = _conv_graph(tmp_path)
    # 3x3 taps inside a 4x4 image, padding 1: (2 + 3 + 3 + 2) per axis
    assert valid_taps(g, g.ops[0]) == 100
    (w,) = step_work(g, 0, "whole")
    assert w.cls == "convkxk"
    assert w.counts == {"calls": 1, "pixels": 16, "outputs": 48, "taps": 300, "macs": 600}
    (s,) = step_work(g, 0, "slice", (1, 2))
    assert s.counts["outputs"] == 16 and s.counts["macs"] == 200
    (a,) = step_work(g, 0, "accumulate", (0, 1))
    assert a.cls == "accumulate" and a.counts["macs"] == 300
    assert step_work(g, 0, "requantize")[0].counts == {"calls": 1, "outputs": 48}
    with pytest.raises(ValueError):
        step_work(g, 0, "slice")
    # three slices cost more than the whole op: two more calls, each walking the 16 pixels
    whole = step_instructions(M4, g, 0, "whole")
    parts = sum(step_instructions(M4, g, 0, "slice", (c, c + 1)) for c in range(3))
    c = M4.costs["convkxk"]
    assert parts == pytest.approx(whole + 2 * (c["per_call"] + 16 * c["per_pixel"]))
    assert parts > whole


def test_nnls_recovers_non_negative_coefficients() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (30, 4))
    x = np.array([2.0, 0.0, 5.0, 1.5])
    assert np.allclose(nnls(a, a @ x), x, atol=1e-8)
    b = a @ np.array([1.0, -3.0, 0.0, 0.0])  # the best fit would be negative: clamped
    got = nnls(a, b)
    assert (got >= 0).all() and got[1] == 0


@pytest.fixture(scope="module")
def mbv2_split():  # noqa: ANN201
    path = MODELS_DIR / "mbv2_w035_r96_int8.onnx"
    res = solve_model(path, ImportOptions(), SolverParams(time_limit=20, workers=2), None)
    assert res.plan.splits, "the memory-optimal plan splits"
    return res


def test_estimate_is_the_sum_the_solver_can_use(mbv2_split) -> None:  # noqa: ANN001
    """invoke + whole ops + chosen (segment, width) == the plan's estimate (the CP-SAT form)."""
    g, sched, plan = mbv2_split.graph, mbv2_split.schedule, mbv2_split.plan
    est = estimate(M4, g, plan)
    in_seg = {k for s in sched.segments if s.id in sched.splits for k in s.ops}
    inplace_dw = set(sched.temps)
    total = invoke_instructions(M4, g)
    total += sum(op_instructions(M4, g, k, inplace=k in inplace_dw)
                 for k in range(len(g.ops)) if k not in in_seg)
    total += sum(segment_instructions(M4, g, s, sched.splits[s.id])
                 for s in sched.segments if s.id in sched.splits)
    assert total == pytest.approx(est.instructions, rel=1e-12)
    steps = plan_instructions(M4, g, plan)
    assert len(steps) == len(plan.steps)
    assert sum(steps) + invoke_instructions(M4, g) == pytest.approx(est.instructions)
    assert est.cycles == pytest.approx(est.instructions * M4.cycles_per_instruction)
    assert est.ms == pytest.approx(1000 * est.cycles / M4.clock_hz)
    assert sum(est.by_class.values()) == pytest.approx(est.instructions)
    table = cost_table(M4, g, sched.segments, unit=1000.0)
    total_k = table.invoke + sum(
        table.whole_inplace[k] if k in inplace_dw else table.whole[k]
        for k in range(len(g.ops)) if k not in in_seg)
    total_k += sum(table.segment[(s.id, sched.splits[s.id])]
                   for s in sched.segments if s.id in sched.splits)
    assert total_k * 1000 == pytest.approx(est.instructions, rel=1e-3)
    assert len(table.segment) == sum(len(s.widths) for s in sched.segments)


def test_plan_latency_is_optional_and_round_trips(mbv2_split, tmp_path: Path) -> None:  # noqa: ANN001
    from pexopt.latency.cost import latency_record

    plan = mbv2_split.plan
    assert "latency" not in json.loads(plan.to_json())  # unchanged for plans without it
    plan.latency = latency_record(M4, estimate(M4, mbv2_split.graph, plan))
    try:
        d = json.loads(plan.to_json())
        assert d["latency"]["target"] == "cortex-m4" and d["latency"]["instructions"] > 0
        back = plan_from_dict(d)
        assert back.latency == d["latency"]
        assert validate(back, mbv2_split.graph) == []
        d["latency"] = {"instructions": "many"}
        with pytest.raises(Exception, match="instructions"):
            plan_from_dict(d)
    finally:
        plan.latency = None


def test_solve_target_prints_and_records_the_estimate(small_conv_model: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    res = run("solve", small_conv_model, "--target", "cortex-m4", "-o", out, *FAST)
    assert res.exit_code == 0, res.stderr
    assert "estimated latency on cortex-m4" in res.stdout
    lat = load_plan(out).latency
    assert lat is not None and lat["core"] == "cortex-m4" and lat["ms"] > 0
    res = run("solve", small_conv_model, "--json", *FAST)
    assert json.loads(res.stdout)["latency"]["target"] == "cortex-m4"  # the default target
    mine = _edit(tmp_path, lambda d: d.update(name="my_board", core="cortex-m7",
                                              solver={"time_limit": 7, "workers": 1}))
    res = run("solve", small_conv_model, "--target", mine, "--json")
    d = json.loads(res.stdout)
    assert d["latency"]["target"] == "my_board" and d["latency"]["profile"] == str(mine)
    assert (d["solver"]["time_limit"], d["solver"]["workers"]) == (7, 1)  # the profile's
    assert lat["profile"] == "solver_configs/cortex-m4.yaml"


def test_solve_bad_target_is_one_line(small_conv_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    assert_bad_input(run("solve", small_conv_model, "--target", "cortex-m99", "-o", out, *FAST),
                     "cortex-m99")
    bad = _edit(tmp_path, lambda d: d.pop("costs"))
    assert_bad_input(run("solve", small_conv_model, "--target", bad, "-o", out, *FAST),
                     "costs")
    assert not out.exists()


def test_every_operator_kind_has_a_priced_cost_class() -> None:
    from pexopt.ops import SPECS, OpKind

    for kind in OpKind:
        assert SPECS[kind].cost in set(CLASS_FEATURES) | {"conv"}, kind


def test_codegen_target_accepts_a_profile_path(tmp_path: Path) -> None:
    model = MODELS_DIR / "resnet8_int8.onnx"
    plan = tmp_path / "plan.json"
    assert run("solve", model, "-o", plan, "--no-split", *FAST).exit_code == 0
    mine = _edit(tmp_path, lambda d: d.update(name="my_board", core="cortex-m7"))
    res = run("codegen", plan, model, "-o", tmp_path / "c", "--target", mine)
    assert res.exit_code == 0, res.stderr
    assert "cortex-m7" in (tmp_path / "c" / "README.md").read_text()


def test_calibrate_bad_target_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    assert_bad_input(run("calibrate", "--target", "cortex-m99", "-o", out), "cortex-m99")
    bad = _edit(tmp_path, lambda d: d.update(core="risc-v"))
    assert_bad_input(run("calibrate", "--target", bad, "-o", out), "core")
    assert not out.exists()


def test_segment_cost_is_the_sum_of_its_steps(mbv2_split) -> None:  # noqa: ANN001
    from pexopt.latency.cost import segment_steps

    g = mbv2_split.graph
    uneven = 0
    for s in mbv2_split.schedule.segments:
        for w in s.widths:
            uneven += s.channels % w != 0
            steps = sum(step_instructions(M4, g, k, mode, sl)
                        for k, mode, sl in segment_steps(s, w))
            assert segment_instructions(M4, g, s, w) == pytest.approx(steps, rel=1e-12)
    assert uneven > 0  # a last, narrower slice is priced too



def _row_graph(tmp_path: Path, pad: int):  # noqa: ANN202
    """conv 3x3 (padding `pad`, ReLU fused) -> depthwise 3x3 stride 2 (pad 1): a row chain."""
    from conftest import conv_weights

    ah, aw = 13 - 2 + 2 * pad, 9 - 2 + 2 * pad
    path = make_onnx(tmp_path / "rows.onnx", [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv", kernel_shape=[3, 3],
                         pads=[pad] * 4),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="dw", kernel_shape=[3, 3], group=4,
                         strides=[2, 2], pads=[1, 1, 1, 1])],
        [vi("x", [1, 3, 13, 9])], [vi("y", [1, 4, (ah - 1) // 2 + 1, (aw - 1) // 2 + 1])],
        [conv_weights("w1", 4, 3, 3, 3), conv_weights("w2", 4, 1, 3, 3)])
    return ImportOptions().load(path)


@pytest.mark.parametrize("pad", [0, 1])
def test_band_steps_sum_to_the_whole_op(tmp_path: Path, pad: int) -> None:
    """Bands of any height do the whole op's MACs, taps and outputs between them (padding rows
    skipped as in the whole op), one kernel call each; a halo step moves rows x row bytes."""
    from pexopt.graph.rows import height, row_bytes

    g = _row_graph(tmp_path, pad)
    for k, op in enumerate(g.ops):
        (whole,) = step_work(g, k, "whole")
        n_out = height(g, op.outputs[0])
        for h in (1, 2, 5, n_out):
            bands = [(r0, min(n_out, r0 + h)) for r0 in range(0, n_out, h)]
            works = [step_work(g, k, "band", rows=r) for r in bands]
            assert all(len(w) == 1 and w[0].cls == whole.cls for w in works)
            for count, v in whole.counts.items():
                got = sum(w[0].counts[count] for w in works)
                assert got == (len(bands) if count == "calls" else v), (op.name, h, count)
    with pytest.raises(ValueError, match="rows"):
        step_work(g, 0, "band")
    with pytest.raises(ValueError, match="rows"):
        step_work(g, 0, "halo", (0, 2), rows=(0, 1))
    (part,) = step_work(g, 0, "band", (0, 2), rows=(0, 1))  # hybrid: a slice of a band
    assert part.counts["outputs"] * 2 == step_work(g, 0, "band", rows=(0, 1))[0].counts["outputs"]
    (halo,) = step_work(g, 0, "halo", rows=(3, 6))
    assert halo.cls == "memcpy"
    assert halo.counts == {"calls": 1, "outputs": 3 * row_bytes(g, g.ops[0].outputs[0])}


def test_row_segment_cost_is_its_ops_plus_band_calls_and_halo_moves(tmp_path: Path) -> None:
    """A row segment at height h costs its ops run whole, plus one kernel call per extra band
    and one memmove per halo step: the sum of its band_schedule steps."""
    from pexopt.graph.rows import row_bytes
    from pexopt.latency.features import op_class
    from pexopt.partial.bands import band_schedule, find_row_segments

    g = _row_graph(tmp_path, 1)
    (seg,) = find_row_segments(g)
    whole = sum(op_instructions(M4, g, k) for k in seg.ops)
    per_call = {k: M4.coefficient(op_class(g.ops[k]), "calls") for k in seg.ops}
    moved_any = False
    for h in seg.widths:
        steps = band_schedule(g, seg, h)[0]
        total = sum(step_instructions(M4, g, st.op, st.mode, rows=(st.r0, st.r1))
                    for st in steps)
        assert segment_instructions(M4, g, seg, h) == pytest.approx(total, rel=1e-12)
        extra = sum(per_call[st.op] for st in steps if st.mode == "band") - sum(per_call.values())
        moved = [(st.r1 - st.r0) * row_bytes(g, st.tensor) for st in steps if st.mode == "halo"]
        extra += sum(M4.coefficient("memcpy", "calls") + b * M4.coefficient("memcpy", "outputs")
                     for b in moved)
        moved_any |= bool(moved)
        assert total == pytest.approx(whole + extra, rel=1e-9)
    assert moved_any  # heights with halo moves are priced too
