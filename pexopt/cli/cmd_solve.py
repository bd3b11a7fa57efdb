"""`pexopt solve`: the smallest arena of a model, a validated and simulated plan."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.live import Live
from rich.text import Text

from pexopt.cli import app
from pexopt.cli.common import (
    EXIT_INVALID,
    EXIT_NO_FIT,
    Align,
    Dtype,
    External,
    Json,
    Quiet,
    Seed,
    Shapes,
    _command_start,
    _print_table,
    _render,
    err,
    friendly,
)
from pexopt.cli.solve_job import Solved, SolveJob, parse_options
from pexopt.cli.solve_print import no_fit, print_results
from pexopt.errors import PexError
from pexopt.limits import dumps
from pexopt.schedule import SolverParams

if TYPE_CHECKING:
    from pexopt.deadline import Deadline
    from pexopt.pipeline import SolveResult


class _LiveLine:
    """A live status line with the best arena so far and the proven bound."""

    def __init__(self, enabled: bool) -> None:
        self.live = Live(Text(""), console=err, transient=True, refresh_per_second=8) \
            if enabled else None

    def __enter__(self) -> _LiveLine:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *a: object) -> None:
        if self.live:
            self.live.__exit__(*a)

    def __call__(self, stage: str, arena: int, bound: int, seconds: float) -> None:
        if self.live:
            self.live.update(Text(f"solving ({stage}) {seconds:5.1f}s  best arena {arena:,} B"
                                  f"  bound {bound:,} B"))


@app.command()
@friendly
def solve(model: Path,
          sram: Annotated[str | None, typer.Option(
              "--sram", help="SRAM budget: 131072, 128k, 128KiB, 0.5M.")] = None,
          output: Annotated[Path | None, typer.Option("-o", "--output",
                                                      help="Write the plan here.")] = None,
          dtype: Dtype = "int8", input_external: External = False, input_shape: Shapes = None,
          time_limit: Annotated[float | None, typer.Option(
              "--time-limit", help="Seconds for the whole command: import, search, validation "
              "and simulation (default: the --target profile's, or 30).")]
          = None,
          workers: Annotated[int | None, typer.Option(
              "--workers", help="CP-SAT worker threads (default: the profile's, or 2).")] = None,
          seed: Seed = 0, align: Align = 4,
          no_reorder: Annotated[bool, typer.Option("--no-reorder",
                                                   help="Keep the file's order.")] = False,
          no_split: Annotated[bool, typer.Option(
              "--no-split", help="Layer by layer: no partial execution.")] = False,
          no_inplace: Annotated[bool, typer.Option("--no-inplace",
                                                   help="Never write in place.")] = False,
          rows: Annotated[bool, typer.Option(
              "--rows/--no-rows", help="Also run chains of spatially local operators band by "
              "band (row bands: halos kept, streaming in place); --no-rows: channel splits "
              "only.")] = True,
          no_stream: Annotated[bool, typer.Option(
              "--no-stream", help="Row bands never stream over their input.")] = False,
          no_hybrid: Annotated[bool, typer.Option(
              "--no-hybrid", help="No chain runs in row bands and channel slices at "
              "once (hybrid segments).")] = False,
          verify: Annotated[bool, typer.Option(
              "--verify/--no-verify",
              help="Simulate the plan in a byte-exact arena before writing it (default: on; "
                   "a plan that is not bit-exact is never written).")] = True,
          emit_c: Annotated[Path | None, typer.Option(
              "--emit-c", help="Also generate C into this folder.")] = None,
          target: Annotated[str, typer.Option(
              "--target", help="A target profile (cortex-m4, cortex-m7, cortex-m55 or a "
              "profile .yaml): sizes CMSIS-NN kernel scratch into the arena, estimates latency "
              "into the plan and picks the codegen core.")] = "cortex-m4",
          latency: Annotated[str | None, typer.Option(
              "--latency", help="Latency bound on the --target profile: a time (150ms, 0.2s) "
              "or cycles (30M, 500k).")] = None,
          pareto: Annotated[Path | None, typer.Option(
              "--pareto", help="Also sweep the latency bound and write the memory/latency "
              "frontier here (CSV, and a PNG beside it).")] = None,
          pareto_points: Annotated[int, typer.Option(
              "--pareto-points", help="Latency bounds the --pareto sweep solves for.")] = 6,
          prune: Annotated[bool, typer.Option(
              "--prune", help="Remove the least important channels until --sram fits (and "
              "--latency is met).")]
          = False,
          min_keep: Annotated[float, typer.Option(
              "--min-keep", help="With --prune: keep at least this fraction of each layer.")]
          = 0.25,
          prune_step: Annotated[int, typer.Option(
              "--prune-step", help="With --prune: channel counts in steps of this.")] = 4,
          write_pruned: Annotated[Path | None, typer.Option(
              "--write-pruned", help="With --prune: write the pruned ONNX model here.")] = None,
          as_json: Json = False, quiet: Quiet = False) -> None:
    """Find the smallest arena (order, splits, offsets) and write a validated plan."""
    started = _command_start()  # --time-limit: one deadline for the whole command
    from pexopt.deadline import Deadline

    job = parse_options(model, sram, output, dtype, input_external, input_shape, time_limit,
                        workers, seed, align, no_reorder, no_split, no_inplace, rows, no_stream,
                        no_hybrid, verify, emit_c, target, latency, pareto, pareto_points, prune,
                        min_keep, prune_step, write_pruned, as_json, quiet)
    deadline = Deadline(job.params.time_limit, started)
    s = _prune_or_hint(job, _search(job, deadline))
    _estimate_latency(job, s)
    _verify(job, s)
    _put_c(job, s)
    if job.pareto is not None:
        s.front = _pareto(job.model, job.opts, job.params, job.profile, job.budget, job.pareto,
                          job.pareto_points, job.quiet or job.as_json, job.outs)
    _put_files(job, s)
    job.outs.commit()  # every output or none (issue #13 item 9)
    for note in deadline.notes:  # the deadline cut the search short: say so, once (after
        err.print(note, highlight=False, soft_wrap=True, markup=False)  # a failure: not at all)
    print_results(job, s)
    if not s.plan.fits:
        no_fit(job, s)


def _search(job: SolveJob, deadline: Deadline) -> SolveResult:
    """The smallest arena within the deadline, a live line on a terminal; the first Ctrl-C
    ends the search with the best plan so far (validated and simulated like any other)."""
    from pexopt.deadline import active
    from pexopt.pipeline import LatencyNotMet, solve_model
    from pexopt.solver.interrupt import keep_best_on_sigint

    with _LiveLine(not job.quiet and not job.as_json and err.is_terminal) as live, \
            keep_best_on_sigint() as stop, active(deadline):
        try:
            # pruning starts from the unpruned smallest arena; its search applies the bound
            res = solve_model(job.model, job.opts, job.params, job.budget, progress=live,
                              profile=job.profile,
                              latency=None if job.popts is not None else job.bound)
        except LatencyNotMet as e:
            err.print(f"error: {e}", highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(EXIT_NO_FIT) from None
    if stop.hit:  # the first Ctrl-C: this plan is validated and simulated like any other
        if job.popts is not None or job.pareto is not None:
            raise KeyboardInterrupt
        if not job.quiet:
            err.print("interrupted (Ctrl-C): finishing with the best plan found so far; "
                      "Ctrl-C again to abort without writing anything")
    return res


def _prune_or_hint(job: SolveJob, res: SolveResult) -> Solved:
    """With --prune the plan becomes the pruned model's plan (exit 3 when no pruning fits);
    without, a plan that does not fit gets a hint of what pruning would do."""
    if job.popts is None:
        return Solved(res, hint=None if res.plan.fits else
                      _prune_hint(job.model, job.opts, job.params, job.budget or 0, res))
    from pexopt.prune.report import fail_line, summarize
    from pexopt.prune.solve import prune_to_budget

    outcome = prune_to_budget(job.model, job.opts, job.params, job.budget or 0,
                              replace(job.popts, profile=job.profile, latency=job.bound),
                              base=res)
    pruning = summarize(outcome)
    if outcome.chosen is None:
        _prune_fail(pruning, job.as_json, fail_line(pruning))
    res = outcome.chosen.result
    res.plan.model["path"] = str(job.write_pruned) if job.write_pruned else res.plan.model["path"]
    return Solved(res, pruning=pruning, pruned=outcome.chosen.model_bytes)


def _estimate_latency(job: SolveJob, s: Solved) -> None:
    """The plan's estimated latency on the --target profile (none without a profile)."""
    if job.profile is not None:
        from pexopt.latency.cost import estimate, latency_record

        s.plan.latency = latency_record(job.profile, estimate(job.profile, s.res.graph, s.plan))


def _verify(job: SolveJob, s: Solved) -> None:
    """Simulate the plan (--verify); a mismatch stops before anything is written."""
    from pexopt.simulate.arena import executable

    verify = job.verify
    if verify and not executable(s.res.graph):
        verify = False
        s.unverified = ("not simulated: a float model planned with int8 activations computes "
                        "values its buffers are not sized for; `pexopt quantize` it to "
                        "simulate and generate C")
    if verify:  # a pruned graph carries the pruned model's own constants
        s.report = _simulate(s.plan, s.res.graph, job.model)


def _put_c(job: SolveJob, s: Solved) -> None:
    """--emit-c: the C, rendered in memory into the outputs."""
    if job.emit_c is not None:  # a pruned plan's weights are those of the pruned model
        job.outs.put_folder(job.emit_c, _render(s.plan, s.res.graph,
                                                job.write_pruned if s.pruned else job.model,
                                                job.core, "cmsis"))


def _put_files(job: SolveJob, s: Solved) -> None:
    """The pruned model and the plan, in memory into the outputs."""
    if s.pruned is not None and job.write_pruned is not None:
        job.outs.put(job.write_pruned, s.pruned)
    if job.output is not None:
        job.outs.put(job.output, s.plan.to_json())


def _prune_fail(summary, as_json: bool, line: str) -> None:  # noqa: ANN001
    """Even maximal pruning does not fit (or is too slow): one line (or JSON), exit 3, nothing
    written."""
    if as_json:
        print(dumps({"fits": False, "prune": summary.to_dict()}))
    err.print(line, highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(EXIT_NO_FIT)


def _prune_hint(model: Path, opts, params: SolverParams, budget: int, res) -> str:  # noqa: ANN001
    """What pruning (default --min-keep and step) would do for a plan that does not fit."""
    from pexopt.prune.report import hint_line, summarize
    from pexopt.prune.solve import PruneOptions, prune_to_budget

    try:  # a suggestion only: `--prune` re-runs the search and simulates what it returns
        return hint_line(summarize(prune_to_budget(model, opts, params, budget,
                                                   PruneOptions(simulate=False), base=res)))
    except PexError as e:  # the model cannot be pruned this way: say so, still exit 3
        return f"no pruning suggestion ({e})"


def _pareto(model: Path, opts, params, profile, budget, csv_path: Path, points: int,  # noqa: ANN001, ANN202
            quiet: bool, outs):
    """Sweep the latency bound, print the frontier and put it (CSV + PNG) into `outs`."""
    from rich.progress import Progress

    from pexopt.pipeline import pareto_model
    from pexopt.report.pareto import pareto_csv, pareto_png, pareto_table

    with Progress(console=err, transient=True, disable=quiet) as bar:
        task = bar.add_task("pareto sweep", total=points)
        rows = pareto_model(model, opts, params, profile, budget, points,
                            on_point=lambda _r: bar.advance(task))
    outs.put(csv_path, pareto_csv(rows))
    outs.put(csv_path.with_suffix(".png"), pareto_png(
        rows, f"{model.name}: smallest arena per latency bound", profile.name))
    if not quiet:
        _print_table(pareto_table(rows, profile.name))
    return rows


def _simulate(plan, graph, model: Path):  # noqa: ANN001, ANN202
    """Simulate (`model` names the model in the message); a mismatch is a bug of ours, so it
    stops before anything is written."""
    from pexopt.simulate.verify import verify_plan

    report = verify_plan(plan, graph)
    if not report.ok:  # exit 1 like a plan validate rejects: this plan is not trustworthy
        err.print(f"error: {model}: simulation: {report.failure()}; nothing written",
                  highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(EXIT_INVALID)
    return report
