"""Ctrl-C during `pexopt solve` (issue #8): the first stops the search and the best plan so far is
validated, simulated and written; a second aborts and writes nothing. A real process and real
signals: CP-SAT runs in C++, where only the worker-thread design lets the handler act at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PEXOPT = str(Path(sys.executable).with_name("pexopt"))


def _start(model: Path, out: Path, *extra: str) -> subprocess.Popen:
    # a long limit on a model whose search runs for tens of seconds: only Ctrl-C ends it early
    return subprocess.Popen([PEXOPT, "solve", str(model), "--time-limit", "300", "--workers",
                             "2", "-o", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def big_model(shared_models_dir: Path) -> Path:
    return shared_models_dir / "tinyengine_mcunetv2_large.onnx"


def test_first_ctrl_c_writes_the_best_plan_so_far(big_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    p = _start(big_model, out, "--no-verify")
    time.sleep(8)  # past the import and into the search
    p.send_signal(signal.SIGINT)
    t0 = time.time()
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert time.time() - t0 < 15, "the search must stop at the first Ctrl-C"
    assert "interrupted (Ctrl-C)" in stderr and "Traceback" not in stderr
    plan = json.loads(out.read_text())
    assert plan["solver"]["time_limit"] == 300.0
    check = subprocess.run([PEXOPT, "validate", str(out), str(big_model)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_second_ctrl_c_aborts_without_writing(big_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    p = _start(big_model, out)  # --verify (default): simulating takes a while after the stop
    time.sleep(8)
    p.send_signal(signal.SIGINT)
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "nothing written" in stderr and "Traceback" not in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
