"""Run a sweep: every point is an independent task (solve, validate, simulate, write the plan).

Results stream to `<out>/results.jsonl` and `<out>/results.csv` (fixed header), one complete
row per finished point, appended and flushed as it arrives; plans go to `<out>/plans/`.
A point whose key (sha256 of the model's bytes + point and solver settings + pexopt version) is
already in results.jsonl without an error is skipped, so an interrupted sweep resumes where it
stopped. A failing point is recorded with its error and never stops the sweep.

The parts: task.py (a point as a task, its row, keys and names), results.py (the results
files), signals.py (SIGINT and SIGTERM while rows are written), backend_local.py and
backend_ray.py (where the tasks run). The names callers import are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pexopt.errors import PexError
from pexopt.limits import MAX_WORKERS, check_int
from pexopt.sweep.config import Sweep, load_sweep
from pexopt.sweep.results import ResultsWriter, latest_rows, read_results
from pexopt.sweep.signals import Terminated, _sigterm_stops
from pexopt.sweep.task import (
    C_DIR,
    PLANS_DIR,
    RESULTS_CSV,
    RESULTS_JSONL,
    ROW_FIELDS,
    TIMING_FIELDS,
    Task,
    inside,
    make_tasks,
    safe_name,
)

__all__ = [  # what pexopt and the tests import from here
    "ROW_FIELDS", "SweepSummary", "inside", "latest_rows", "read_results", "run_sweep",
    "safe_name", "strip_timing",
]

BACKENDS = ("local", "ray")


@dataclass
class SweepSummary:
    out_dir: Path
    total: int
    skipped: int  # already finished in an earlier run (no solver call)
    computed: int = 0  # finished in this run (including failures)
    failed: int = 0
    interrupted: bool = False
    terminated: bool = False  # interrupted by SIGTERM (exit 143), not Ctrl-C (130)
    rows: list[dict[str, Any]] = field(default_factory=list)  # this run's rows

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.computed


# -- the sweep --------------------------------------------------------------------------------

RowHook = Callable[[dict[str, Any]], None]


def run_sweep(sweep: Sweep | str | Path, out_dir: str | Path, *, backend: str = "local",
              workers: int | None = None, address: str | None = None, quiet: bool = False,
              on_row: RowHook | None = None, console: Any = None) -> SweepSummary:
    """Run every point not finished yet; returns counts and this run's rows.

    `workers`: parallel points (processes, or Ray CPUs); default os.cpu_count(). `address`: an
    existing Ray cluster (ray backend only; default: a local loopback-only instance). `on_row`
    is called in this process after each row is written (a KeyboardInterrupt raised there, or
    Ctrl-C, stops the sweep: pending points are cancelled, running ones stopped, and only
    complete rows stay in the files). Nothing is written if the sweep file is invalid.

    The local backend starts workers with multiprocessing's "spawn": a script calling this must
    guard its entry point with `if __name__ == "__main__":` (the `pexopt` command does).
    """
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    if backend not in BACKENDS:
        raise PexError(f"--backend: unknown backend '{backend}' (backends: {', '.join(BACKENDS)})")
    workers = workers if workers is not None else min(os.cpu_count() or 1, MAX_WORKERS)
    check_int("--workers", workers, 1, MAX_WORKERS)
    if address is not None and backend != "ray":
        raise PexError("--address is only for the ray backend")
    if backend == "ray":
        from pexopt.sweep.backend_ray import INSTALL_HINT, ray_installed

        if not ray_installed():
            raise PexError(f"the ray backend needs Ray, which is not installed: {INSTALL_HINT}")
    out = Path(out_dir)
    _check_outputs(sweep, out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = make_tasks(sweep, out)
    writer = ResultsWriter(out)
    unique = list({t.key: t for t in tasks}.values())  # copies of one model are one point
    todo = [t for t in unique if t.key not in writer.done]
    summary = SweepSummary(out_dir=out, total=len(unique), skipped=len(unique) - len(todo))
    try:
        if todo:
            with _sigterm_stops():
                _run(todo, summary, writer, backend, workers, address, quiet, on_row, console)
    finally:
        writer.close()
    return summary


def _check_outputs(sweep: Sweep, out: Path) -> None:
    """Before any point runs: the results files and sub-folders can be written and none of
    them is an input (the sweep file, a model); `pexopt.outputs`, issue #13 items 7-10."""
    from pexopt.outputs import Outputs

    outs = Outputs(inputs=[sweep.path, *sorted({p.model for p in sweep.points})])
    outs.folder(out, "--out", (RESULTS_JSONL, RESULTS_CSV), manifest=False)
    for sub in (PLANS_DIR, C_DIR, "report"):
        outs.folder(out / sub, "--out", (), manifest=False)
    outs.check()


def _run(todo: list[Task], summary: SweepSummary, writer: ResultsWriter, backend: str,
         workers: int, address: str | None, quiet: bool, on_row: RowHook | None,
         console: Any) -> None:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if backend == "ray":
        from pexopt.sweep.backend_ray import run_ray

        cpus = todo[0].solver.workers  # CP-SAT threads per point
        rows = run_ray(todo, workers, address=address,
                       cpus_per_task=cpus if address is not None else min(cpus, workers))
    else:
        from pexopt.sweep.backend_local import run_local

        rows = run_local(todo, workers)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                   console=console or Console(stderr=True), transient=True, disable=quiet)
    try:
        with bar:
            tid = bar.add_task("sweep", total=len(todo))
            for row in rows:
                writer.write(row)
                summary.rows.append(row)
                summary.computed += 1
                summary.failed += bool(row.get("error"))
                bar.update(tid, advance=1, description=f"sweep ({summary.failed} failed) "
                           f"{row['model']} {row['mode']} {row['budget']:,} B")
                if on_row is not None:
                    on_row(row)
    except KeyboardInterrupt as e:
        summary.interrupted = True
        summary.terminated = isinstance(e, Terminated)
    finally:
        rows.close()  # cancels whatever has not finished (no-op after a complete run)


def strip_timing(row: dict[str, Any]) -> dict[str, Any]:
    """A row without the fields that change from run to run (to compare backends)."""
    return {k: v for k, v in row.items() if k not in TIMING_FIELDS}

