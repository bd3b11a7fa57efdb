"""Run a sweep: every point is an independent task (solve, validate, simulate, write the plan).

Results stream to `<out>/results.jsonl` and `<out>/results.csv` (fixed header), one complete
row per finished point, appended and flushed as it arrives; plans go to `<out>/plans/`.
A point whose key (sha256 of the model's bytes + point and solver settings + pexopt version) is
already in results.jsonl without an error is skipped, so an interrupted sweep resumes where it
stopped. A failing point is recorded with its error and never stops the sweep.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pexopt import __version__
from pexopt.errors import PexError
from pexopt.frontend.onnx_load import sha256_file
from pexopt.limits import MAX_WORKERS, check_int, dumps
from pexopt.sweep.config import Point, SolverSettings, Sweep, load_sweep, res_text

BACKENDS = ("local", "ray")
ROW_FIELDS = (
    "key", "model", "model_path", "sha256", "resolution", "budget", "mode", "latency", "target",
    "time_limit", "solver_workers", "seed", "simulate", "codegen",
    "arena", "layerwise_arena", "tflm_arena", "fits", "status", "bound", "gap",
    "solve_seconds", "task_seconds", "splits", "steps", "ops", "est_instructions", "est_ms",
    "verify", "plan", "planned_model",
    "error",
    "notes", "pexopt_version",
)
TIMING_FIELDS = ("solve_seconds", "task_seconds")  # the only fields that differ between runs
PLAN_TEXT = "_plan_json"  # a worker's plan, carried in its row to the parent (never stored)
C_FILES = "_c_files"  # likewise the generated C: file name -> text
RESULTS_JSONL, RESULTS_CSV, PLANS_DIR, MODELS_DIR = ("results.jsonl", "results.csv", "plans",
                                                     "models")
C_DIR = "c"


@dataclass(frozen=True)
class Task:
    """Everything a worker needs for one point (picklable, no open files)."""

    key: str
    point: Point
    sha256: str
    solver: SolverSettings
    simulate: bool
    out_dir: str  # absolute
    plan_name: str  # sanitised file stem, unique per key
    codegen: bool = False
    version: str = __version__


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


# -- names and keys ---------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_len: int = 100) -> str:
    """A file name made of [A-Za-z0-9._-] that is never '.', '..' or hidden."""
    s = _UNSAFE.sub("_", text).strip("._-")
    s = re.sub(r"\.{2,}", "_", s)[:max_len].strip("._-")
    return s or "point"


def inside(folder: Path, name: str, suffix: str) -> Path:
    """`folder/<safe name><suffix>`, checked to stay inside `folder`."""
    folder = folder.resolve()
    p = (folder / f"{safe_name(name)}{suffix}").resolve()
    if p.parent != folder:
        raise PexError(f"{name}: an output name must stay inside {folder}")
    return p


def point_key(sha256: str, point: Point, sweep: Sweep, version: str = __version__) -> str:
    """sha256 of the model's bytes + point settings + solver settings + pexopt version."""
    blob = dumps({"model_sha256": sha256, **point.settings(), **sweep.settings(),
                  "pexopt": version}, "sweep point", sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def make_tasks(sweep: Sweep, out_dir: Path) -> list[Task]:
    shas: dict[str, str] = {}
    tasks = []
    for p in sweep.points:
        if p.model not in shas:
            try:
                shas[p.model] = sha256_file(p.model)
            except OSError:  # vanished since validation: the task records the error
                shas[p.model] = "unreadable:" + p.model
        key = point_key(shas[p.model], p, sweep)
        tasks.append(Task(key=key, point=p, sha256=shas[p.model], solver=sweep.solver,
                          simulate=sweep.simulate, codegen=sweep.codegen,
                          out_dir=str(out_dir.resolve()),
                          plan_name=safe_name(p.label(), 80) + "__" + key[:10]))
    return tasks


# -- one point --------------------------------------------------------------------------------

def base_row(task: Task) -> dict[str, Any]:
    p = task.point
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    row.update(key=task.key, model=p.model_name, model_path=p.model, sha256=task.sha256,
               resolution=res_text(p.resolution), budget=p.budget, mode=p.mode,
               latency=p.latency, target=p.target, time_limit=task.solver.time_limit,
               solver_workers=task.solver.workers, seed=task.solver.seed,
               simulate=task.simulate, codegen=task.codegen,
               pexopt_version=task.version)
    return row


def failed_row(task: Task, error: str) -> dict[str, Any]:
    row = base_row(task)
    row["error"] = error
    return row


def run_point(task: Task) -> dict[str, Any]:
    """Solve one point and write its plan; never raises for a bad model or a failed solve."""
    t0 = time.perf_counter()
    row = base_row(task)
    try:
        _solve_point(task, row)
    except PexError as e:
        row["error"] = str(e)
    except MemoryError:
        row["error"] = "out of memory"
    except Exception as e:  # a bug of ours: recorded, the sweep goes on
        row["error"] = f"internal error: {type(e).__name__}: {e}"
    row["task_seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _solve_point(task: Task, row: dict[str, Any]) -> None:
    from pexopt.pipeline import ImportOptions, solve_model
    from pexopt.schedule import SolverParams

    p, out = task.point, Path(task.out_dir)
    path, opts = Path(p.model), ImportOptions()
    if p.resolution is not None:
        from pexopt.sweep.rescale import rescale_model

        dst = inside(out / MODELS_DIR, f"{p.model_name}_{res_text(p.resolution)}__"
                     f"{task.sha256[:10]}", ".onnx")
        path, shapes = rescale_model(path, p.resolution, dst)
        opts = ImportOptions(input_shapes=shapes)
    row["planned_model"] = str(path)  # the rescaled copy when the resolution changes
    profile, core = _profile(p)
    params = SolverParams(time_limit=task.solver.time_limit, workers=task.solver.workers,
                          seed=task.solver.seed, split=p.mode != "layerwise", target=core,
                          rows=p.mode in ("rows", "hybrid"), channels=p.mode != "rows")
    bound = None
    if p.latency is not None:
        from pexopt.latency.bound import parse_latency

        bound = parse_latency(p.latency, profile)
    # validates the plan (raises if invalid); an unmeetable bound is a PexError with the
    # fastest plan within the budget, recorded as the point's error
    res = solve_model(path, opts, params, p.budget, profile=profile, latency=bound)
    plan = res.plan
    if profile is not None:
        from pexopt.latency.cost import estimate, latency_record

        est = estimate(profile, res.graph, plan)
        plan.latency = latency_record(profile, est)
        row.update(est_instructions=round(est.instructions), est_ms=round(est.ms, 3))
    row.update(arena=plan.arena_bytes, tflm_arena=res.tflm,
               layerwise_arena=res.layerwise if res.layerwise is not None else plan.arena_bytes,
               fits=plan.fits, status=plan.solver.status, bound=plan.solver.bound,
               gap=plan.solver.gap, solve_seconds=plan.solver.seconds, splits=len(plan.splits),
               steps=len(plan.steps), ops=len(res.graph.ops))
    if task.simulate:
        from pexopt.simulate.verify import verify_plan

        rep = verify_plan(plan, res.graph)
        if not rep.ok:
            row["verify"] = f"MISMATCH (max error {rep.max_error:.3g})"
            row["error"] = f"simulation: {rep.failure()}; plan not written"
            return
        row["verify"] = "exact" if rep.max_error == 0 else f"ok (max error {rep.max_error:.2g})"
    if task.codegen:  # generate C; the parent writes it next to the plan
        import tempfile

        from pexopt.codegen.emit import emit_c

        with tempfile.TemporaryDirectory(prefix="pexopt-sweep-") as tmp:
            files = emit_c(plan, res.graph, path, Path(tmp) / "pex_out")
            row[C_FILES] = {f.name: f.read_text() for f in files}
    dest = inside(out / PLANS_DIR, task.plan_name, ".json")  # checked here and when written
    row["plan"] = f"{PLANS_DIR}/{dest.name}"
    row[PLAN_TEXT] = plan.to_json()  # written by the parent: workers may be on other machines


def _profile(p: Point):  # noqa: ANN202
    """(profile or None, CMSIS-NN core or None) of a point's target; a latency bound needs a
    profile."""
    from pexopt.latency.profile import resolve_target

    profile, core = (None, None) if p.target is None else resolve_target(p.target)
    if p.latency is not None and profile is None:
        raise PexError(f"latency {p.latency} needs a target profile (targets: [cortex-m4]), "
                       f"not {p.target!r}")
    return profile, core


# -- results files ----------------------------------------------------------------------------

def _repair_tail(path: Path) -> None:
    """Drop a half-written last line (a killed writer); complete rows are kept."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(cut)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Complete rows of a results.jsonl (a half-written last line is ignored)."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or an integer of 4,300+ digits
            continue
        if isinstance(row, dict) and "key" in row:
            rows.append(row)
    return rows


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row per key, in first-seen order (a retried point replaces its failure)."""
    last: dict[str, dict[str, Any]] = {}
    for r in rows:
        last[r["key"]] = r
    return list(last.values())


def _csv_line(row: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in ROW_FIELDS})
    return buf.getvalue()


def _csv_header() -> str:
    return ",".join(ROW_FIELDS) + "\n"


class Terminated(KeyboardInterrupt):
    """SIGTERM during a sweep: stops it like Ctrl-C (pool shut down, complete rows kept)."""


@contextmanager
def _no_sigint() -> Iterator[None]:
    """Defer Ctrl-C and SIGTERM while a row is written, so both files hold the same complete
    rows; a deferred signal is delivered again afterwards, to the handler it would have met."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda n, f: hit.append(n)) for s in sigs}
    try:
        yield
    finally:
        for s in sigs:
            signal.signal(s, old[s])
        if hit:
            signal.raise_signal(hit[0])
            # the restored handler ignored it: still stop the sweep
            raise Terminated if hit[0] == signal.SIGTERM else KeyboardInterrupt


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While points run, SIGTERM raises `Terminated` in the main thread (once), so the process
    pool shuts down in order instead of dying with it (no leaked semaphores, rows kept)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        if not hit:  # later ones: already stopping, let the shutdown finish
            hit.append(signum)
            raise Terminated

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class ResultsWriter:
    """Appends rows to results.jsonl and results.csv; one write + flush per row and file."""

    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.jsonl_path = out_dir / RESULTS_JSONL
        self.csv_path = out_dir / RESULTS_CSV
        _repair_tail(self.jsonl_path)
        _repair_tail(self.csv_path)
        previous = read_results(self.jsonl_path)
        if self.csv_path.is_file() and self.csv_path.stat().st_size > 0:
            with open(self.csv_path) as f:
                head = f.readline()
            if head != _csv_header():
                raise PexError(f"{self.csv_path}: its header is not this version's "
                               f"({', '.join(ROW_FIELDS[:4])}, ...); use another output folder")
            fresh_csv = False
        else:
            fresh_csv = True
        self.jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self.csv = open(self.csv_path, "a", encoding="utf-8", newline="")
        if fresh_csv:  # rebuild from results.jsonl if only the CSV went missing
            self.csv.write(_csv_header() + "".join(_csv_line(r) for r in previous))
            self.csv.flush()
        self.done = {r["key"] for r in previous if not r.get("error")}

    def write(self, row: dict[str, Any]) -> None:
        """The point's plan file first (atomic), then its row in both results files."""
        text = row.pop(PLAN_TEXT, None)
        c_files = row.pop(C_FILES, None)
        if text is not None and row.get("plan"):
            from pexopt.plan.format import write_atomic

            dest = inside(self.out / PLANS_DIR, Path(row["plan"]).stem, ".json")
            write_atomic(dest, text)
            row["plan"] = f"{PLANS_DIR}/{dest.name}"
            if c_files:
                folder = inside(self.out / C_DIR, dest.stem, "")
                for name, body in c_files.items():
                    write_atomic(inside(folder, Path(name).stem, Path(name).suffix), body)
                row["codegen"] = f"{C_DIR}/{folder.name}"
        with _no_sigint():
            self.jsonl.write(dumps(row, f"{RESULTS_JSONL} row") + "\n")
            self.jsonl.flush()
            self.csv.write(_csv_line(row))
            self.csv.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.csv.close()


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

