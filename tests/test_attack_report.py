"""Attack cases of `pexopt report` without a model (issue #13 item 15): an impossible plan is
refused with one line, exit 1 (like `validate`), or exit 2 when it is malformed, and no figure
or summary is written. Every plan is generated here."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from attack import attack, run_case

Plan = dict[str, Any]


def small_plan() -> Plan:
    """A valid 2-step plan: x -> conv -> y -> relu -> z, z reusing x's bytes once x is dead."""
    def buf(name: str, offset: int, first: int, last: int) -> dict[str, Any]:
        return {"name": name, "tensor": name, "kind": "tensor", "offset": offset, "size": 64,
                "first_step": first, "last_step": last, "alias_of": None}

    return {"format": "pexopt-plan/2", "model": {"path": "m.onnx", "sha256": "0" * 64},
            "arena_bytes": 128, "budget_bytes": 256, "fits": True, "align": 4,
            "dtype": "int8", "input_external": False,
            "steps": [{"index": 0, "op": "conv0", "kind": "conv", "reads": ["x"],
                       "writes": ["y"], "slice": None, "mode": "whole", "scratch": []},
                      {"index": 1, "op": "relu1", "kind": "relu", "reads": ["y"],
                       "writes": ["z"], "slice": None, "mode": "whole", "scratch": []}],
            "buffers": [buf("x", 0, 0, 0), buf("y", 64, 0, 1), buf("z", 0, 1, 1)],
            "solver": {"status": "OPTIMAL", "bound": 128, "gap": 0.0, "seed": 0,
                       "time_limit": 1.0}}


def _set(path: str, value: Any) -> Callable[[Plan], None]:
    """A mutation: plan[a][b]... = value, path 'a.b.c' (list indices as numbers)."""
    def edit(p: Plan) -> None:
        *head, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        d: Any = p
        for k in head:
            d = d[k]
        d[last] = value
    return edit


def _both(*edits: Callable[[Plan], None]) -> Callable[[Plan], None]:
    def edit(p: Plan) -> None:
        for e in edits:
            e(p)
    return edit


def _edited(plan: Plan, path: str, value: Any) -> Plan:
    _set(path, value)(plan)
    return plan


def _dup(p: Plan) -> None:
    p["buffers"].append(copy.deepcopy(p["buffers"][0]))


# (case, mutation, words of the one stderr line): each plan is impossible, exit 1
IMPOSSIBLE = [
    ("overlap", _set("buffers.2.offset", 64), ("plan invalid", "overlap", "'y'", "'z'")),
    ("outside the arena", _set("buffers.1.offset", 100), ("outside the arena", "'y'")),
    ("negative offset", _set("buffers.0.offset", -64), ("outside the arena", "'x'")),
    ("fits over budget", _set("budget_bytes", 100), ("fits is true", "budget 100")),
    ("arena larger than its buffers", _set("arena_bytes", 4096), ("arena_bytes is 4096",)),
    ("arena smaller than its buffers", _set("arena_bytes", 96), ("outside the arena",)),
    ("unknown buffer", _set("steps.1.reads", ["w"]), ("step 1", "'w'", "not a buffer")),
    ("dead buffer read", _set("steps.1.reads", ["x"]), ("step 1", "'x'", "not live")),
    ("write before birth", _set("steps.0.writes", ["y", "z"]), ("step 0", "'z'", "not live")),
    ("index", _set("steps.1.index", 7), ("step 1", "index 7")),
    ("lifetime past the plan", _set("buffers.2.last_step", 5), ("'z'", "step range")),
    ("lifetime reversed", _set("buffers.1.first_step", 2), ("'y'", "step range")),
    ("duplicate name", _dup, ("'x'", "used twice")),
    ("unknown kind", _set("buffers.0.kind", "heap"), ("'x'", "unknown kind")),
    ("unknown mode", _set("steps.0.mode", "teleport"), ("step 0", "unknown mode")),
    ("alias of nothing", _set("buffers.2.alias_of", "nope"), ("'z'", "alias_of 'nope'")),
    ("alias at another step", _set("buffers.2.alias_of", "y"), ("'z'", "alias_of 'y'")),
    ("misaligned", _both(_set("buffers.1.offset", 66), _set("arena_bytes", 130)),
     ("'y'", "multiple of 4")),
]


@pytest.mark.parametrize("case,mutate,words", IMPOSSIBLE, ids=[c[0] for c in IMPOSSIBLE])
def test_report_refuses_an_impossible_plan(tmp_path: Path, case: str,
                                           mutate: Callable[[Plan], None],
                                           words: tuple[str, ...]) -> None:
    plan = small_plan()
    mutate(plan)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    attack(["report", "plan.json"], tmp_path, code=1, words=words)
    assert not (tmp_path / "report_out").exists()


@pytest.mark.parametrize("text,words", [
    ("{", ("plan.json", "not a JSON plan")),
    (json.dumps({**small_plan(), "steps": 5}), ("steps", "wrong type")),
    (json.dumps(_edited(small_plan(), "buffers.0.offset", "0")), ("buffers[0]", "offset")),
    (json.dumps(_edited(small_plan(), "steps.0.slice", [0, 1, 2])), ("steps[0]", "slice")),
], ids=["not json", "steps not a list", "offset a string", "slice of three"])
def test_report_refuses_a_malformed_plan(tmp_path: Path, text: str,
                                         words: tuple[str, ...]) -> None:
    (tmp_path / "plan.json").write_text(text)
    attack(["report", "plan.json"], tmp_path, code=2, words=words)


def test_report_draws_a_possible_plan(tmp_path: Path) -> None:
    """The control: the unmutated plan is drawn (exit 0), into report_out/ only."""
    (tmp_path / "plan.json").write_text(json.dumps(small_plan()))
    o = run_case(["report", "plan.json"], tmp_path)
    assert o.code == 0, o.stderr
    assert o.changed and all(c.startswith("report_out") for c in o.changed)
    md = (tmp_path / "report_out" / "summary.md").read_text()
    assert "| fits | yes |" in md and "128 B" in md
