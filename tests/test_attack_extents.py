"""Attack cases of issue #13 item 1 (and a plan field of item 15): plans whose steps leave their
tensors, absurd sizes, a plan dtype the CLI does not deploy. `validate`, `simulate` and `codegen`
refuse each with one line (exit 1: a plan the validator rejects; exit 2: bad input), never an
internal error, a MemoryError or a write; the C emitter refuses out-of-range accesses itself.

Every plan is generated here: a hybrid plan (row bands x channel slices, halo moves, a band
accumulator) of a small inverted-residual block, and a forced channel-split plan (accumulating
slices, an in-place depthwise conv with its temporary) of the bundled DS-CNN."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
from attack import attack
from conftest import MODELS_DIR
from test_rows import _chain_model, manual_schedule
from test_validator import forced_split

from pexopt.codegen.emit import _Emitter
from pexopt.errors import PexError
from pexopt.frontend.onnx_params import load_params
from pexopt.graph.ir import Graph
from pexopt.partial.hybrid import find_hybrid_segments
from pexopt.pipeline import ImportOptions
from pexopt.plan.build import build_plan
from pexopt.plan.format import plan_from_dict
from pexopt.plan.validator import validate

BLOCK = [("conv", 8, 1, 1, 0), ("dw", 3, 1, 1), ("conv", 4, 1, 1, 0)]  # 4 -> 8 -> 8 -> 4 ch
KWS = MODELS_DIR / "dscnn_kws_int8.onnx"


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Graph, dict]:
    """(model, graph, plan dict): the block in bands of 2 rows x slices of 4 channels."""
    pytest.importorskip("onnxruntime.quantization")
    folder = tmp_path_factory.mktemp("hybrid_attack")
    path = _chain_model(folder / "block.onnx", BLOCK, h=9, c=4)
    g = ImportOptions().load(path)
    seg = next(s for s in find_hybrid_segments(g) if s.slice_width == 4 and len(s.ops) == 3)
    plan = build_plan(g, manual_schedule(g, seg, 2))
    assert validate(plan, g) == []
    return path, g, json.loads(plan.to_json())


@pytest.fixture(scope="module")
def kws() -> tuple[Graph, dict]:
    g, plan = forced_split(ImportOptions().load(KWS))
    assert validate(plan, g) == []
    return g, json.loads(plan.to_json())


def _step(d: dict, mode: str, with_slice: bool = True) -> dict:
    """The first step of a mode whose slice is [4, 8] (or any, without `with_slice`)."""
    return next(s for s in d["steps"] if s["mode"] == mode
                and (not with_slice or s["slice"] == [4, 8]))


def _folder(tmp_path: Path, model: Path, d: dict) -> Path:
    """A user folder holding the model and the hostile plan."""
    (tmp_path / "m.onnx").write_bytes(model.read_bytes())
    (tmp_path / "plan.json").write_text(json.dumps(d))
    return tmp_path


def _codes(g: Graph, d: dict) -> set[str]:
    start = time.perf_counter()
    vs = validate(plan_from_dict(d), g)
    assert time.perf_counter() - start < 5  # no rule iterates over an absurd number
    return {v.code for v in vs}


# ------------------------------------------------------------------------- CLI: the case


@pytest.mark.parametrize("hi", [12, 1028])
def test_band_slice_past_the_channels_is_refused_everywhere(hybrid, tmp_path: Path,
                                                            hi: int) -> None:
    """The issue's attack: a slice [4, 8] edited to [4, 12] (or [4, 1028]) on 8 channels:
    the validator accepted it, codegen emitted a global-buffer-overflow."""
    path, _, base = hybrid
    d = copy.deepcopy(base)
    _step(d, "band")["slice"] = [4, hi]
    folder = _folder(tmp_path, path, d)
    for args in (["validate", "plan.json", "m.onnx"], ["simulate", "plan.json", "m.onnx"],
                 ["codegen", "plan.json", "m.onnx", "-o", "out"]):
        line = attack(args, folder, code=1, words=("slice", f"[4, {hi}]", "<= 8"))
        assert "internal error" not in line
    assert not (folder / "out").exists()


def test_simulate_without_inputs_is_refused(hybrid, tmp_path: Path) -> None:
    """`simulate --inputs 0` compared nothing and said bit-exact."""
    path, _, base = hybrid
    folder = _folder(tmp_path, path, base)
    attack(["simulate", "plan.json", "m.onnx", "--inputs", "0"], folder, words="--inputs")
    attack(["simulate", "plan.json", "m.onnx", "--inputs", "-3"], folder, words="--inputs")
    from pexopt.simulate.verify import verify_plan

    graph = ImportOptions().load(path)
    with pytest.raises(ValueError, match="n_inputs"):  # the library refuses it too
        verify_plan(plan_from_dict(base), graph, n_inputs=0)


@pytest.mark.parametrize("rows", [[0, 2**33], [2**33 - 2, 2**33], [0, 2**63 - 1], [-1, 2],
                                  [2, 1], [3, 3]])
def test_absurd_band_rows_are_a_violation_not_a_memory_error(hybrid, tmp_path: Path,
                                                             rows: list[int]) -> None:
    """Rows near 2^33 made validate and codegen die with MemoryError; negative, reversed and
    empty bands are refused too."""
    path, g, base = hybrid
    d = copy.deepcopy(base)
    _step(d, "band")["rows"] = rows
    assert _codes(g, d) == {"rows_range"}
    folder = _folder(tmp_path, path, d)
    attack(["validate", "plan.json", "m.onnx"], folder, code=1, words=("rows", str(rows)))
    attack(["codegen", "plan.json", "m.onnx", "-o", "out"], folder, code=1, words="rows")


@pytest.mark.parametrize("sl", [[-4, 4], [4, 4], [8, 4], [0, 2**33], [6, 9]])
def test_every_kind_of_bad_slice_is_a_violation(hybrid, kws, sl: list[int]) -> None:
    """Negative, empty, reversed, huge and overhanging slices, of a hybrid band step, a
    hybrid accumulate step and a channel accumulate step."""
    _, g, base = hybrid
    for mode in ("band", "accumulate"):
        d = copy.deepcopy(base)
        _step(d, mode)["slice"] = sl
        assert _codes(g, d) == {"slice_range"}, mode
    gk, dk = kws
    d = copy.deepcopy(dk)
    step = _step(d, "accumulate", with_slice=False)
    c = gk.tensors[next(op for op in gk.ops if op.name == step["op"]).inputs[0]].shape[-1]
    step["slice"] = [c - 2, c + 1] if sl == [6, 9] else sl  # overhanging by one channel
    assert "slice_range" in _codes(gk, d)


def test_halo_before_any_band_write_is_a_violation(hybrid) -> None:
    """A halo step that keeps no rows of a band buffer nothing has written yet (was an
    AttributeError inside the validator)."""
    _, g, base = hybrid
    d = copy.deepcopy(base)
    halo = next(k for k, s in enumerate(d["steps"]) if s["mode"] == "halo")
    step = d["steps"].pop(halo)
    step["rows"] = [0, 0]
    d["steps"].insert(0, step)
    for k, s in enumerate(d["steps"]):
        s["index"] = k
    assert "halo" in _codes(g, d)


def test_channel_accumulate_into_a_band_sized_accumulator_is_refused(kws) -> None:
    """A channel-slice accumulate writes every output pixel: a whole-rows accumulator shorter
    than the output (legal only for hybrid bands) would overflow in C."""
    g, base = kws
    d = copy.deepcopy(base)
    acc = next(b for b in d["buffers"] if b["kind"] == "accumulator")
    t = g.tensor(acc["tensor"])
    acc["size"] = t.elements // t.shape[1] * 4  # one output row of int32
    assert "size" in _codes(g, d)


def test_absurd_sizes_are_violations_and_simulate_allocates_nothing(kws, tmp_path: Path) -> None:
    """A 2^40-byte scratch buffer with a matching arena, a 2^20 alignment and a band buffer
    bigger than its tensor: violations, never a MemoryError in the simulator."""
    g, base = kws
    d = copy.deepcopy(base)
    tmp = next(b for b in d["buffers"] if b["kind"] == "scratch")
    tmp["size"] = 2**40
    d["arena_bytes"] = tmp["offset"] + tmp["size"]
    d["budget_bytes"] = None
    assert "size" in _codes(g, d)
    folder = _folder(tmp_path, KWS, d)
    attack(["simulate", "plan.json", "m.onnx"], folder, code=1, words="size")
    d = copy.deepcopy(base)
    far = next(b for b in d["buffers"] if b["kind"] == "tensor" and b["name"] != "input")
    far["offset"] = 2**40
    d["arena_bytes"] = far["offset"] + far["size"]
    assert "arena_bytes" in _codes(g, d)
    (folder / "plan.json").write_text(json.dumps(d))
    attack(["simulate", "plan.json", "m.onnx"], folder, code=1, words="arena")
    d = copy.deepcopy(base)
    d["align"] = 2**20
    assert "alignment" in _codes(g, d)


def test_oversized_band_buffer_is_refused_before_the_row_rules(hybrid) -> None:
    """The row rules allocate one slot per row a band buffer holds: a 2^33-byte band buffer
    is refused first."""
    _, g, base = hybrid
    d = copy.deepcopy(base)
    band = next(b for b in d["buffers"] if b["kind"] == "band")
    band["size"] = 2**33
    d["arena_bytes"] = band["offset"] + band["size"]
    assert _codes(g, d) == {"size"}


def test_plan_dtype_is_named_as_the_plan_field(hybrid, tmp_path: Path) -> None:
    """A plan with "dtype": "int4" named `--dtype` (an option the user never gave)."""
    path, _, base = hybrid
    d = copy.deepcopy(base)
    d["dtype"] = "int4"
    folder = _folder(tmp_path, path, d)
    for cmd in ("validate", "simulate"):
        line = attack([cmd, "plan.json", "m.onnx"], folder, words=("plan.json", "'dtype'",
                                                                     "int4"))
        assert "--dtype" not in line


# ------------------------------------------------------------------------- the emitter's own check


def _emitter(path: Path, g: Graph, d: dict) -> _Emitter:
    """The emitter on a plan that skipped validation (defence in depth)."""
    return _Emitter(plan_from_dict(d), g, load_params(path, g), "dsp", False, path.name,
                    "cortex-m4")


def test_emitter_refuses_accesses_outside_buffers_and_arena(hybrid) -> None:
    path, g, base = hybrid
    cases = []
    d = copy.deepcopy(base)
    _step(d, "band")["slice"] = [4, 12]  # weights, biases and the band buffer overrun
    cases.append((d, "slice"))
    d = copy.deepcopy(base)
    next(b for b in d["buffers"] if b["kind"] == "tile")["size"] -= 1  # a short tile
    cases.append((d, "t1@tile"))
    d = copy.deepcopy(base)
    d["arena_bytes"] -= 4  # the last buffer ends past the arena
    cases.append((d, "arena"))
    d = copy.deepcopy(base)
    acc = next(b for b in d["buffers"] if b["kind"] == "accumulator")
    acc["size"] //= 2  # half a band of int32
    cases.append((d, "@acc"))
    for d, word in cases:
        with pytest.raises(PexError) as e:
            _emitter(path, g, d).run()
        msg = str(e.value)
        assert "\n" not in msg and word in msg and "nothing written" in msg, msg
    _emitter(path, g, base).run()  # the valid plan emits
