"""The attack harness itself can fail: it sees changed files, extra lines and wrong codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from attack import Outcome, changed, refused, snapshot


def test_snapshot_sees_every_change(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("b")
    before = snapshot(tmp_path)
    (tmp_path / "a.txt").write_text("A")
    (tmp_path / "d" / "b.txt").unlink()
    (tmp_path / "c.txt").symlink_to("a.txt")
    assert changed(before, snapshot(tmp_path)) == {"a.txt", "d/b.txt", "c.txt"}


def test_refused_fails_on_stray_files_lines_and_codes() -> None:
    ok = Outcome(2, "", "error: x.onnx: bad\n", set())
    assert refused(ok, words=("x.onnx",)) == "error: x.onnx: bad"
    with pytest.raises(AssertionError):
        refused(Outcome(2, "", "error: a\nerror: b\n", set()))
    with pytest.raises(AssertionError):
        refused(Outcome(1, "", "error: a\n", set()))
    with pytest.raises(AssertionError):
        refused(Outcome(2, "", "internal error: KeyError\n", set()))
    with pytest.raises(AssertionError):
        refused(Outcome(2, "", "error: a\n", {"notes.txt"}))
    assert refused(Outcome(2, "", "error: a\n", {"out", "out/x.c"}), outputs=["out"])
