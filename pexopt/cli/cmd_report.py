"""`pexopt sweep`, `report`, `sweep-report`: sweeps and the figures of plans and sweeps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pexopt.cli import app
from pexopt.cli.common import (
    EXIT_BAD_INPUT,
    Json,
    Quiet,
    Shapes,
    _shapes,
    err,
    friendly,
    out,
)
from pexopt.limits import dumps
from pexopt.plan.format import load_plan


@app.command()
@friendly
def sweep(sweep_file: Path,
          out_dir: Annotated[Path, typer.Option(
              "--out", help="Folder for results.csv/.jsonl, plans/ and report/.")]
          = Path("sweep_out"),
          workers: Annotated[int | None, typer.Option(
              "--workers", help="Points solved in parallel (default: the CPU count).")] = None,
          backend: Annotated[str, typer.Option(
              "--backend", help="local (processes) or ray (pip install 'pexopt[ray]').")]
          = "local",
          address: Annotated[str | None, typer.Option(
              "--address", help="Ray cluster address (default: a private loopback-only local "
              "instance).")] = None,
          report: Annotated[bool, typer.Option(
              "--report/--no-report", help="Write report/ (plots, summary.md) at the end.")]
          = True,
          as_json: Json = False, quiet: Quiet = False) -> None:
    """Plan every point of a sweep file (models x sizes x budgets x modes); resumable."""
    from pexopt.sweep.runner import run_sweep

    s = run_sweep(sweep_file, out_dir, backend=backend, workers=workers, address=address,
                  quiet=quiet or as_json or not err.is_terminal, console=err)
    rep = None
    if report and not s.interrupted and (out_dir / "results.jsonl").is_file():
        from pexopt.report.plots import report_sweep

        rep = report_sweep(out_dir / "results.jsonl", out_dir / "report")
    if as_json:
        print(dumps({"out": str(out_dir), "total": s.total, "skipped": s.skipped,
                          "computed": s.computed, "failed": s.failed,
                          "interrupted": s.interrupted, "remaining": s.remaining,
                          "results": str(out_dir / "results.jsonl"),
                          "report": str(rep["summary"]) if rep else None}))
    elif not quiet:
        out.print(f"{s.total} points: {s.skipped} already done, {s.computed} run now, "
                  f"{s.failed} failed; results in {out_dir / 'results.csv'}"
                  + (f", report in {rep['summary']}" if rep else ""),
                  highlight=False, soft_wrap=True, markup=False)
        for r in [r for r in s.rows if r.get("error") and not s.interrupted][:10]:
            err.print(f"failed: {r['model']} {r['mode']} {r['budget']:,} B: {r['error']}",
                      highlight=False, soft_wrap=True, markup=False)
    if s.interrupted:  # one line: the rows so far are kept, the next run resumes
        err.print(f"{'terminated (SIGTERM)' if s.terminated else 'interrupted'}: "
                  f"{s.remaining} points left; run the same command again to resume",
                  highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(143 if s.terminated else 130)
    if s.failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
@friendly
def report(plan_file: Path,
           model: Annotated[Path | None, typer.Argument(
               help="The plan's model: validate the plan against it and name it.")] = None,
           out_dir: Annotated[Path, typer.Option(
               "--out", help="Folder for the figures and summary.md.")] = Path("report_out"),
           input_shape: Shapes = None) -> None:
    """Figures of a plan (memory per step, arena layout; PNG + SVG) and summary.md."""
    from pexopt.outputs import model_inputs
    from pexopt.pipeline import ImportOptions
    from pexopt.plan.validator import check
    from pexopt.report.plots import report_plan

    plan = load_plan(plan_file)
    graph = None
    if model is not None:
        graph = ImportOptions(dtype=plan.dtype, input_external=plan.input_external,
                              input_shapes=_shapes(input_shape)).load(model)
        check(plan, graph)
    else:  # never draw an impossible plan: check what needs no model (exit 1 like validate)
        from pexopt.plan.validator_alone import check_alone

        check_alone(plan)
    paths = report_plan(plan, graph, out_dir, inputs=[plan_file, *model_inputs(model)])
    out.print(f"written: {', '.join(str(p) for p in paths.values())}", highlight=False,
              soft_wrap=True, markup=False)


@app.command(name="sweep-report")
@friendly
def sweep_report(results: Path,
                 out_dir: Annotated[Path, typer.Option(
                     "--out", help="Folder for the plots and summary.md.")]
                 = Path("sweep_report")) -> None:
    """Plots (arena vs plan steps, per model) and summary.md of a sweep's results.jsonl."""
    from pexopt.report.plots import report_sweep

    paths = report_sweep(results, out_dir, opt="--out")
    out.print(f"written: {', '.join(str(p) for p in paths.values())}", highlight=False,
              soft_wrap=True, markup=False)
