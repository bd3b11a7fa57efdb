"""One sweep point as a task: what a worker gets (`Task`), runs (`run_point`) and returns (its
row, `ROW_FIELDS`); the file names of the output folder; point keys and names.

The backends (backend_local.py, backend_ray.py) and the runner import from here, never the
other way round.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pexopt import __version__
from pexopt.errors import PexError
from pexopt.frontend.onnx_load import sha256_file
from pexopt.limits import dumps
from pexopt.sweep.config import Point, SolverSettings, Sweep, res_text

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
