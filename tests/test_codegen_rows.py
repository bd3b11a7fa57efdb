"""Row-band plans (issue #7) as C: bit for bit equal to the byte-exact arena simulation on the
host (gcc, ASan/UBSan, -Werror) and under QEMU, with the instruction overhead measured against
the layer-by-layer plan in the same run."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_codegen import _build, _expected, _invoke, kernels_obj  # noqa: F401  (fixture)

from pexopt.codegen import emit_c
from pexopt.errors import PexError
from pexopt.pipeline import ImportOptions, solve_model
from pexopt.plan.format import Plan
from pexopt.schedule import SolverParams
from pexopt.target.measure import measure_plan

ROWS = SolverParams(time_limit=20, workers=2, rows=True, target="cortex-m4")


def _bands(plan: Plan) -> tuple[int, int]:
    return (sum(s.mode == "band" for s in plan.steps), sum(s.mode == "halo" for s in plan.steps))


def _host_exact(path: Path, out: Path, kernels_obj: Path, external: bool = False,  # noqa: F811
                ) -> Plan:
    res = solve_model(path, ImportOptions(input_external=external), ROWS, budget=None)
    plan, graph = res.plan, res.graph
    emit_c(plan, graph, path, out)
    header = (out / "pex_model.h").read_text()
    m = re.search(r"#define PEX_ARENA_BYTES (\d+)", header)
    assert m and int(m.group(1)) == plan.arena_bytes
    ins, want = _expected(path, plan, graph)
    got = _invoke(_build(out, kernels_obj), ins, want[0].size)
    for g, w in zip(got, want):
        assert np.array_equal(g, w), f"{path.name}: {int((g != w).sum())} outputs differ"
    return plan


@pytest.mark.parametrize("name,external", [
    ("mbv2_w035_r144_int8", False), ("mbv2_w035_r96_int8", True), ("resnet8_int8", False),
    ("mcunet_mixed_int8", False), ("mbv1_w025_r96_int8", False), ("dscnn_kws_int8", False)])
def test_band_plan_bit_exact_on_host(name: str, external: bool, models_dir: Path,
                                     kernels_obj: Path, tmp_path: Path) -> None:  # noqa: F811
    plan = _host_exact(models_dir / f"{name}.onnx", tmp_path / "c", kernels_obj, external)
    bands, halos = _bands(plan)
    assert bands > 0 and halos > 0, "the plan must exercise band and halo steps"
    src = (tmp_path / "c" / "pex_model.c").read_text()
    assert " rows [" in src  # band steps say their rows
    if name.startswith("mbv2"):
        assert "memmove(" in src  # halo rows moved to the top of their band buffer


@pytest.mark.parametrize("name", ["tinyengine_vww", "mcunet_in3_320kb_1mb_imagenet"])
def test_band_plan_bit_exact_on_shared_models(name: str, shared_models_dir: Path,
                                              kernels_obj: Path,  # noqa: F811
                                              tmp_path: Path) -> None:
    plan = _host_exact(shared_models_dir / f"{name}.onnx", tmp_path / "c", kernels_obj)
    assert _bands(plan)[0] > 0


def test_band_rows_outside_the_band_buffer_are_refused(models_dir: Path,
                                                        tmp_path: Path) -> None:
    """A plan whose band buffer does not hold the rows a step reads never becomes C: the
    validator refuses it before the emitter runs (nothing written)."""
    path = models_dir / "resnet8_int8.onnx"
    res = solve_model(path, ImportOptions(), replace(ROWS, target=None), budget=None)
    plan = res.plan
    k = next(i for i, s in enumerate(plan.steps) if s.mode == "halo")
    steps = list(plan.steps)
    steps[k] = replace(steps[k], rows=[steps[k].rows[0] + 1, steps[k].rows[1]])
    with pytest.raises(PexError) as e:
        emit_c(replace(plan, steps=steps), res.graph, path, tmp_path / "c")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "c").exists()


def test_mbv2_r144_rows_on_cortex_m4(models_dir: Path, qemu_tools: None) -> None:
    """Issue #7's figures: input counted <= 70,000 B, `--input-external` <= 40,000 B, both
    bit-exact under QEMU with their instruction overhead over layer by layer <= 15%."""
    path = models_dir / "mbv2_w035_r144_int8.onnx"
    flat = solve_model(path, ImportOptions(), replace(ROWS, split=False, rows=False), None)
    base = measure_plan(flat.plan, flat.graph, "cortex-m4")
    assert base.exact
    for external, limit in ((False, 70_000), (True, 40_000)):
        res = solve_model(path, ImportOptions(input_external=external),
                          replace(ROWS, time_limit=60), None)
        assert res.plan.arena_bytes <= limit
        m = measure_plan(res.plan, res.graph, "cortex-m4")
        assert m.exact
        overhead = m.instructions / base.instructions - 1
        print(f"\nmbv2 r144 rows external={external}: {res.plan.arena_bytes} B, "
              f"{m.instructions} vs {base.instructions} instructions ({overhead:+.2%})")
        assert overhead <= 0.15
