"""`pexopt solve`: the smallest arena of a model, a validated and simulated plan."""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.text import Text

from pexopt import limits as lim
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
    _c_written,
    _command_start,
    _opts,
    _params,
    _print_table,
    _render,
    _target_profile,
    _verify_line,
    err,
    friendly,
    out,
)
from pexopt.errors import PexError
from pexopt.limits import check_int, dumps
from pexopt.schedule import SolverParams


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
    from pexopt.deadline import Deadline, active
    from pexopt.pipeline import LatencyNotMet, parse_bytes, solve_model
    from pexopt.report.tables import inplace_line, peak_line, solve_table, splits_table

    budget = parse_bytes(sram) if sram is not None else None
    opts = _opts(dtype, input_external, input_shape)
    if prune and pareto is not None:
        raise PexError("--prune with --pareto: the frontier is of one model; prune with "
                       "--write-pruned first, then run --pareto on the pruned model")
    profile, core = _target_profile(target)
    defaults = profile.solver if profile is not None else SolverParams()
    params = _params(defaults.time_limit if time_limit is None else time_limit,
                     defaults.workers if workers is None else workers, seed, align,
                     not no_reorder, not no_inplace, not no_split, core, rows, not no_stream,
                     not no_hybrid)
    if profile is not None and profile.solver.slice_widths is not None:
        params = replace(params, slice_widths=profile.solver.slice_widths)
    popts = _prune_opts(prune, budget, min_keep, prune_step, write_pruned,
                        output or emit_c)
    bound = _latency_bound(latency, pareto, pareto_points, profile, target)
    outs = _solve_outputs(model, target, output, emit_c, write_pruned, pareto)
    from pexopt.solver.interrupt import keep_best_on_sigint

    deadline = Deadline(params.time_limit, started)
    with _LiveLine(not quiet and not as_json and err.is_terminal) as live, \
            keep_best_on_sigint() as stop, active(deadline):
        try:
            # pruning starts from the unpruned smallest arena; its search applies the bound
            res = solve_model(model, opts, params, budget, progress=live, profile=profile,
                              latency=None if popts is not None else bound)
        except LatencyNotMet as e:
            err.print(f"error: {e}", highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(EXIT_NO_FIT) from None
    if stop.hit:  # the first Ctrl-C: this plan is validated and simulated like any other
        if popts is not None or pareto is not None:
            raise KeyboardInterrupt
        if not quiet:
            err.print("interrupted (Ctrl-C): finishing with the best plan found so far; "
                      "Ctrl-C again to abort without writing anything")
    pruning, hint = None, None
    if popts is not None:  # the plan becomes the pruned model's plan
        from pexopt.prune.report import fail_line, summarize
        from pexopt.prune.solve import prune_to_budget

        outcome = prune_to_budget(model, opts, params, budget or 0,
                                  replace(popts, profile=profile, latency=bound), base=res)
        pruning = summarize(outcome)
        if outcome.chosen is None:
            _prune_fail(pruning, as_json, fail_line(pruning))
        res = outcome.chosen.result
        res.plan.model["path"] = str(write_pruned) if write_pruned else res.plan.model["path"]
    elif not res.plan.fits:
        hint = _prune_hint(model, opts, params, budget or 0, res)
    plan = res.plan
    if profile is not None:
        from pexopt.latency.cost import estimate, latency_record

        plan.latency = latency_record(profile, estimate(profile, res.graph, plan))
    report = None
    from pexopt.simulate.arena import executable

    unverified = None
    if verify and not executable(res.graph):
        verify = False
        unverified = ("not simulated: a float model planned with int8 activations computes "
                      "values its buffers are not sized for; `pexopt quantize` it to simulate "
                      "and generate C")
    if verify:  # a pruned graph carries the pruned model's own constants
        report = _simulate(plan, res.graph, model)
    pruned = outcome.chosen.model_bytes if pruning is not None else None
    if emit_c is not None:  # a pruned plan's weights are those of the pruned model
        outs.put_folder(emit_c, _render(plan, res.graph, write_pruned if pruned else model,
                                        core, "cmsis"))
    front = None
    if pareto is not None:
        front = _pareto(model, opts, params, profile, budget, pareto, pareto_points,
                        quiet or as_json, outs)
    if pruned is not None and write_pruned is not None:
        outs.put(write_pruned, pruned)
    if output is not None:
        outs.put(output, plan.to_json())
    outs.commit()  # every output or none (issue #13 item 9)
    for note in deadline.notes:  # the deadline cut the search short: say so, once (after
        err.print(note, highlight=False, soft_wrap=True, markup=False)  # a failure: not at all)
    if emit_c is not None and not as_json:
        _c_written(emit_c, plan)
    if pareto is not None and not quiet and not as_json:
        out.print(f"frontier written to {pareto} and {pareto.with_suffix('.png')}",
                  highlight=False, soft_wrap=True, markup=False)
    if as_json:
        print(dumps({"model": str(model), "arena_bytes": plan.arena_bytes,
                          "tflm_arena_bytes": res.tflm, "budget_bytes": budget,
                          "fits": plan.fits, "solver": asdict(plan.solver),
                          "layerwise_arena_bytes": res.layerwise, "splits": plan.splits,
                          "peak": asdict(res.peak), "plan": str(output) if output else None,
                          "verify": asdict(report) if report else unverified,
                          "prune": pruning.to_dict() if pruning else None,
                          "prune_hint": hint, "latency": plan.latency,
                          "latency_bound_instructions": bound,
                          "pareto": None if front is None else [
                              {"latency_bound_instructions": r.bound, "arena_bytes": r.arena,
                               "instructions": r.instructions, "ms": r.ms,
                               "splits": r.splits, "status": r.status,
                               "simulated_exact": r.exact} for r in front]}))
    elif not quiet:
        _print_table(solve_table(res))
        st = splits_table(res)
        if st is not None:
            _print_table(st)
        ip = inplace_line(res)
        if ip is not None:
            _print_table(Text(ip))
        _print_table(Text(peak_line(res)))
        if plan.latency is not None:
            _print_table(Text(_latency_line(plan.latency)))
        if report is not None:
            _print_table(Text(_verify_line(report)))
        if unverified is not None:
            _print_table(Text(unverified))
        if pruning is not None:
            from pexopt.prune.report import prune_table, summary_line

            _print_table(prune_table(pruning))
            out.print(summary_line(pruning), highlight=False, soft_wrap=True, markup=False)
            if write_pruned is not None:
                out.print(f"pruned model written to {write_pruned}", highlight=False,
                          soft_wrap=True, markup=False)
        if output is not None:
            out.print(f"plan written to {output}", highlight=False, soft_wrap=True, markup=False)
    if not plan.fits:
        err.print(f"does not fit: the smallest arena found is {plan.arena_bytes:,} B, "
                  f"budget {budget:,} B ({peak_line(res)})"
                  + (f"; {hint}" if hint else ""), highlight=False, soft_wrap=True,
                  markup=False)
        raise typer.Exit(EXIT_NO_FIT)


def _solve_outputs(model: Path, target: str, output: Path | None, emit_c: Path | None,
                   write_pruned: Path | None, pareto: Path | None):  # noqa: ANN202
    """Declare and check every output of `solve` before any work (issue #13 items 7-10)."""
    from pexopt.outputs import Outputs, model_inputs

    outs = Outputs(inputs=[*model_inputs(model), target if os.path.isfile(target) else None])
    outs.file(output, "-o")
    outs.file(write_pruned, "--write-pruned")
    if emit_c is not None:  # the emitter is imported only when asked for
        from pexopt.codegen.emit import GENERATED

        outs.folder(emit_c, "--emit-c", GENERATED)
    if pareto is not None:
        outs.file(pareto, "--pareto")
        outs.file(pareto.with_suffix(".png"), "--pareto")
    outs.check()
    return outs


def _prune_opts(prune: bool, budget: int | None, min_keep: float, step: int,
                write_pruned: Path | None, writes: Path | None):  # noqa: ANN202
    """Check the --prune options together; None when not pruning."""
    from pexopt.prune.solve import PruneOptions

    if not 0 < min_keep <= 1:  # checked with or without --prune: no value passes unseen
        raise PexError(f"--min-keep: {min_keep} is not a fraction in (0, 1]")
    check_int("--prune-step", step, 1, lim.MAX_PRUNE_STEP)
    if not prune:
        if write_pruned is not None:
            raise PexError("--write-pruned needs --prune")
        return None
    if budget is None:
        raise PexError("--prune needs --sram (the budget to prune for)")
    if writes is not None and write_pruned is None:
        raise PexError("--prune with -o or --emit-c needs --write-pruned (the plan is for the "
                       "pruned model)")
    return PruneOptions(min_keep=min_keep, step=step)


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


def _latency_bound(latency: str | None, pareto: Path | None, points: int, profile,  # noqa: ANN001
                   target: str) -> int | None:
    """--latency in estimated instructions (None without one); --pareto's options checked."""
    from pexopt.latency.bound import parse_latency

    if (latency is not None or pareto is not None) and profile is None:
        raise PexError(f"--latency/--pareto need a target profile with costs; '{target}' has "
                       "none (use cortex-m4, cortex-m7, cortex-m55 or a profile .yaml)")
    check_int("--pareto-points", points, 2, lim.MAX_PARETO_POINTS)
    if pareto is not None and pareto.suffix.lower() != ".csv":
        raise PexError(f"--pareto: '{pareto}' must name a .csv file (the PNG goes beside it)")
    return None if latency is None else parse_latency(latency, profile)


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


def _latency_line(lat: dict) -> str:
    core = f" ({lat['core']})" if lat['core'] != lat['target'] else ""
    return (f"estimated latency on {lat['target']}{core}: "
            f"{lat['instructions'] / 1e6:,.2f} M instructions inside pex_invoke, "
            f"{lat['cycles'] / 1e6:,.2f} M cycles, {lat['ms']:,.2f} ms at "
            f"{lat['clock_hz'] / 1e6:g} MHz (assuming {lat['cycles_per_instruction']:g} "
            "cycles per instruction; portable kernels)")


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
