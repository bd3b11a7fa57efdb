"""In CI (CI=true) a skipped test counts as a failure (conftest hook); elsewhere it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _run_skipping_test(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\ndef test_needs_a_tool():\n    pytest.skip('tool missing')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = str(TESTS)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "conftest", str(tmp_path / "test_skips.py")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def test_skip_fails_in_ci(tmp_path: Path) -> None:
    r = _run_skipping_test(tmp_path, ci=True)
    assert r.returncode == 1, r.stdout
    assert "1 failed" in r.stdout and "tool missing" in r.stdout


def test_skip_is_a_skip_outside_ci(tmp_path: Path) -> None:
    r = _run_skipping_test(tmp_path, ci=False)
    assert r.returncode == 0, r.stdout
    assert "1 skipped" in r.stdout
