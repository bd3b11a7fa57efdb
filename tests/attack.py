"""The harness of the attack tests (tests/test_attack_*.py, issue #13): run one hostile CLI case
and assert what a user relies on: the exact exit code, exactly one line on stderr that names the
problem, no traceback, no "internal error", and no file outside the declared outputs changed.

Every case generates its inputs in code (into a temporary folder); nothing is read from
tests/hostile/. A case runs in-process (CliRunner, fast) or as a real `pexopt` process
(`subprocess=True`: signals, rlimits, devices, the real stderr)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

Snapshot = dict[str, tuple[str, str]]  # relative path -> (kind, sha256 or link target)


def snapshot(folder: Path) -> Snapshot:
    """Every entry below `folder` (symlinks not followed): its kind and content hash."""
    res: Snapshot = {}
    if not folder.exists():
        return res
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(folder))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                res[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                res[rel] = ("dir", "")
            elif stat.S_ISREG(st.st_mode):
                res[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                res[rel] = ("other", str(stat.S_IFMT(st.st_mode)))
    return res


def changed(before: Snapshot, after: Snapshot) -> set[str]:
    """Paths added, removed or modified between two snapshots."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    changed: set[str]


def _exe() -> str:
    exe = shutil.which("pexopt", path=str(Path(sys.executable).parent)) or shutil.which("pexopt")
    assert exe, "the pexopt script is not installed"
    return exe


def run_case(args: Sequence[object], folder: Path, *, subprocess_: bool = False,
             timeout: float = 120, env: dict[str, str] | None = None,
             preexec_fn=None) -> Outcome:  # noqa: ANN001
    """Run `pexopt ARGS` with `folder` as the working directory; report what changed in it."""
    before = snapshot(folder)
    argv = [str(a) for a in args]
    if subprocess_:
        p = subprocess.run([_exe(), *argv], cwd=folder, capture_output=True, text=True,
                           timeout=timeout, preexec_fn=preexec_fn,
                           env={**os.environ, "COLUMNS": "200", **(env or {})})
        code, out, err = p.returncode, p.stdout, p.stderr
    else:
        from pexopt.cli import app

        old = Path.cwd()
        os.chdir(folder)
        try:
            res = CliRunner().invoke(app, argv, env=env)
        finally:
            os.chdir(old)
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception  # a traceback for a user
        code, out, err = res.exit_code, res.stdout, res.stderr
    return Outcome(code, out, err, changed(before, snapshot(folder)))


def refused(o: Outcome, *, code: int = 2, words: str | Iterable[str] = (),
            outputs: Iterable[str] = ()) -> str:
    """Assert a clean refusal: exit `code`, one stderr line containing every word (case
    insensitive), no traceback, no internal error, nothing changed but `outputs` (relative
    paths; their parents count as outputs too). Returns the line."""
    text = o.stdout + o.stderr
    assert "Traceback" not in text, text
    assert o.code == code, (o.code, o.stdout, o.stderr)
    lines = o.stderr.strip().splitlines()
    assert len(lines) == 1, o.stderr
    assert "internal error" not in lines[0], lines[0]
    for w in (words,) if isinstance(words, str) else words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    allowed = set()
    for out in outputs:
        parts = Path(out).parts
        allowed |= {str(Path(*parts[:i])) for i in range(1, len(parts) + 1)}
    stray = {c for c in o.changed if c not in allowed
             and not any(c.startswith(a + os.sep) for a in outputs)}
    assert not stray, f"files changed outside the declared outputs: {sorted(stray)}"
    return lines[0]


def attack(args: Sequence[object], folder: Path, *, code: int = 2,
           words: str | Iterable[str] = (), outputs: Iterable[str] = (),
           subprocess_: bool = False, **kw) -> str:  # noqa: ANN003
    """run_case + refused: the one-call form of most attack cases."""
    return refused(run_case(args, folder, subprocess_=subprocess_, **kw), code=code,
                   words=words, outputs=outputs)
