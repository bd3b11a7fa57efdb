"""`pexopt` command line: inspect, solve, validate, bench."""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text
from typer.core import TyperGroup

from pexopt import __version__
from pexopt import limits as lim
from pexopt.errors import PexError
from pexopt.frontend.onnx_load import parse_shape
from pexopt.limits import check_float, check_int, dumps
from pexopt.plan.format import load_plan
from pexopt.plan.validator import PlanInvalid, validate
from pexopt.schedule import SolverParams

# click's UsageError, from whichever click this typer uses (newer ones vendor it)
_USAGE = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _OneLineUsage(TyperGroup):
    """A usage error (`--workers abc`, an unknown option) is one line on stderr and exit 2,
    like every other bad input; `pexopt` alone still prints the help (typer's own path)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kw: Any) -> Any:
        argv = kw["args"] if "args" in kw else args[0] if args else None
        if not standalone_mode or not list(sys.argv[1:] if argv is None else argv):
            return super().main(*args, standalone_mode=standalone_mode, **kw)
        try:
            rv = super().main(*args, standalone_mode=False, **kw)
        except _USAGE as e:
            msg = " ".join(e.format_message().split())
            err.print(f"[red]error:[/red] {escape(msg)}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            err.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # typer.Exit(n) comes back as n


app = typer.Typer(add_completion=False, no_args_is_help=True, cls=_OneLineUsage,
                  help="Plan the SRAM arena of a neural network for a microcontroller.")
err = Console(stderr=True)
out = Console()

EXIT_FITS, EXIT_INVALID, EXIT_BAD_INPUT, EXIT_NO_FIT = 0, 1, 2, 3
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn expected failures into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except PlanInvalid as e:  # a plan the validator rejects (README: exit 1)
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INVALID) from None
        except PexError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except BrokenPipeError:  # `pexopt ... | head`: the reader left; not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except OSError as e:  # a full disk, a read-only folder: the file system, not a bug
            where = f"{e.filename}: " if e.filename else ""
            err.print(f"[red]error:[/red] {escape(where + (e.strerror or str(e)))}",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            err.print("interrupted; nothing written")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as e:  # a bug: still one line, with what to report
            err.print(f"[red]internal error:[/red] {type(e).__name__}: {escape(str(e))}",
                      highlight=False,
                      soft_wrap=True)
            raise typer.Exit(EXIT_INVALID) from None

    return wrapper  # type: ignore[return-value]


def _print_table(table: Any) -> None:
    """A table (or a Text, wrapped) on stdout, as wide as the terminal, or to a pipe or file
    COLUMNS or 160 columns; a table too wide for that is printed one record per row."""
    from pexopt.report.tables import fit, output_width

    width = output_width(out)
    (out if out.is_terminal else Console(width=width, no_color=out.no_color)).print(
        fit(table, width))


def _shapes(values: list[str] | None) -> dict[str, tuple[int, ...]]:
    res = {}
    for v in values or []:
        if "=" not in v:
            raise PexError(f"--input-shape: '{v}' is not name=1x3x144x144")
        name, dims = v.split("=", 1)
        res[name] = parse_shape(dims)
        if max(res[name]) > lim.MAX_DIM or math.prod(res[name]) > lim.MAX_DIM:
            raise PexError(f"--input-shape: '{v[:60]}' has more than {lim.MAX_DIM:,} elements")
    return res


Dtype = Annotated[str, typer.Option("--dtype", help="Deployment dtype: int8 or float32.")]
External = Annotated[bool, typer.Option("--input-external",
                                        help="The graph input is not in the arena.")]
Shapes = Annotated[list[str] | None, typer.Option(
    "--input-shape", help="Fix a dynamic input: name=1x3x144x144 (repeatable).")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no tables.")]
TimeLimit = Annotated[float, typer.Option("--time-limit", help="Solver seconds.")]
Workers = Annotated[int, typer.Option("--workers", help="CP-SAT worker threads.")]
Seed = Annotated[int, typer.Option("--seed", help="Solver random seed.")]
Align = Annotated[int, typer.Option("--align", help="Offset alignment in bytes.")]
Target = Annotated[str, typer.Option(
    "--target", help="cortex-m4, cortex-m7, cortex-m55 or a profile .yaml naming its core "
    "(sizes CMSIS-NN scratch).")]


def _opts(dtype: str, external: bool, shapes: list[str] | None):  # noqa: ANN202
    from pexopt.pipeline import ImportOptions

    return ImportOptions(dtype=dtype, input_external=external, input_shapes=_shapes(shapes))


def _params(time_limit: float, workers: int, seed: int, align: int, reorder: bool = True,
            inplace: bool = True, split: bool = True, target: str | None = None,
            rows: bool = True, stream: bool = True, hybrid: bool = True) -> SolverParams:
    check_float("--time-limit", time_limit, 0, lim.MAX_TIME_LIMIT, lo_open=True)
    check_int("--workers", workers, 1, lim.MAX_WORKERS)
    check_int("--seed", seed, 0, lim.MAX_SEED)
    if check_int("--align", align, 1, lim.MAX_ALIGN) & (align - 1):
        raise PexError(f"--align: {align} is not a power of two")
    if target is not None:
        from pexopt.cmsis_scratch import TARGETS

        if target not in TARGETS:
            raise PexError(f"--target: unknown target '{target}' (one of {', '.join(TARGETS)})")
    return SolverParams(time_limit=time_limit, workers=workers, seed=seed, align=align,
                        reorder=reorder, inplace=inplace, split=split, target=target,
                        rows=rows, stream=stream, hybrid=hybrid)


@app.command()
@friendly
def inspect(model: Path, dtype: Dtype = "int8", input_external: External = False,
            input_shape: Shapes = None, as_json: Json = False) -> None:
    """Per-operator table: op, kind, output shape, bytes, MACs; the naive peak and where."""
    from pexopt.pipeline import naive_peak
    from pexopt.report.tables import inspect_summary, inspect_table

    graph = _opts(dtype, input_external, input_shape).load(model)
    peak = naive_peak(graph)
    if as_json:
        ops = [{"id": o.id, "op": o.name, "kind": o.kind.value, "onnx_type": o.onnx_type,
                "activation": o.activation.name if o.activation else None,
                "outputs": [{"name": graph.tensors[t].name, "shape": graph.tensors[t].shape,
                             "bytes": graph.tensors[t].nbytes} for t in o.outputs],
                "macs": o.macs, "onnx_nodes": list(o.onnx_nodes)} for o in graph.ops]
        print(dumps({"model": str(model), "dtype": dtype, "input_external": input_external,
                          "ops": ops, "naive_peak_bytes": peak[0],
                          "naive_peak_op": graph.ops[peak[1]].name}, indent=1))
        return
    _print_table(inspect_table(graph, peak))
    for line in inspect_summary(graph, peak):
        _print_table(Text(line))


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


_first_command = True


def _command_start() -> float:
    """When the command started: in a `pexopt` process its first command counts from the
    process start (importing Python libraries takes seconds on a loaded machine), any other
    call (tests, scripts) from now."""
    global _first_command
    first, _first_command = _first_command, False
    if first and Path(sys.argv[0]).name == "pexopt":
        import pexopt

        return pexopt.STARTED
    return time.monotonic()


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


def _target_profile(target: str | None):  # noqa: ANN202
    """(profile or None, codegen core) for --target (cortex-m4 when absent)."""
    from pexopt.latency.profile import resolve_target

    return (None, "cortex-m4") if target is None else resolve_target(target)


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


def _verify_line(r) -> str:  # noqa: ANN001
    parts = [f"simulated on {r.inputs} inputs: "
             + ("bit-exact vs the unsplit reference" if r.max_error == 0 else
                f"max error {r.max_error:.2g} of the output range vs the reference")]
    if r.ort_top1 is not None:
        parts.append(f"onnxruntime top-1 agreement {100 * r.ort_top1:.0f}%")
    if r.ort_mean_steps is not None:
        parts.append(f"mean |diff| {r.ort_mean_steps:.2f} steps")
    if r.ort_max_error is not None:
        parts.append(f"max error {r.ort_max_error:.2g} of the range")
    if r.ort_ok is not None:
        parts.append("within the onnxruntime tolerance" if r.ort_ok else
                     "OUTSIDE the onnxruntime tolerance")
    return "; ".join(parts + r.notes)


@app.command()
@friendly
def simulate(plan_file: Path, model: Path, input_shape: Shapes = None,
             inputs: Annotated[int, typer.Option("--inputs", help="Random inputs to run.")] = 2,
             seed: Seed = 0, as_json: Json = False) -> None:
    """Execute a plan in a byte-exact arena and compare with the unsplit reference."""
    from pexopt.pipeline import ImportOptions
    from pexopt.plan.validator import check
    from pexopt.simulate.verify import verify_plan

    check_int("--inputs", inputs, 1, lim.MAX_SIM_INPUTS)
    check_int("--seed", seed, 0, lim.MAX_SEED)
    plan = load_plan(plan_file)
    graph = ImportOptions(dtype=plan.dtype, input_external=plan.input_external,
                          input_shapes=_shapes(input_shape)).load(model)
    check(plan, graph)  # never execute a plan that is not valid (extents first)
    report = verify_plan(plan, graph, n_inputs=inputs, seed=seed)
    if as_json:
        print(dumps({**asdict(report), "ok": report.ok}))
    else:
        out.print(_verify_line(report), highlight=False, soft_wrap=True)
    if not report.ok:
        err.print(f"MISMATCH: {plan_file} on {model}: {report.failure()}", highlight=False,
                  soft_wrap=True, markup=False)
        raise typer.Exit(EXIT_INVALID)


@app.command(name="validate")
@friendly
def validate_cmd(plan_file: Path, model: Path, input_shape: Shapes = None,
                 as_json: Json = False) -> None:
    """Check a plan against its model, independently of the solver."""
    from pexopt.pipeline import ImportOptions

    plan = load_plan(plan_file)
    graph = ImportOptions(dtype=plan.dtype, input_external=plan.input_external,
                          input_shapes=_shapes(input_shape)).load(model)
    violations = validate(plan, graph)
    wrong_model = [v for v in violations if v.code == "model_hash"]
    if wrong_model:  # everything else follows from that
        violations = wrong_model
    if as_json:
        print(dumps({"valid": not violations,
                          "violations": [asdict(v) for v in violations]}))
    elif violations:
        for v in violations[:50]:
            err.print(f"[red]{v.code}[/red]: {escape(v.message)}", highlight=False, soft_wrap=True)
        if len(violations) > 50:
            err.print(f"... and {len(violations) - 50} more")
    else:
        out.print(f"valid: {len(plan.steps)} steps, {len(plan.buffers)} buffers, arena "
                  f"{plan.arena_bytes:,} B", highlight=False, soft_wrap=True)
    if violations:
        raise typer.Exit(EXIT_INVALID)


@app.command()
@friendly
def bench(models: Annotated[list[Path] | None, typer.Argument()] = None,
          random_dags: Annotated[int, typer.Option(
              "--random-dags", help="Also bench N random branching DAGs.")] = 0,
          dag_ops: Annotated[int, typer.Option("--dag-ops", help="Operators per DAG.")] = 60,
          target: Annotated[str | None, typer.Option(
              "--target", help="Also run both plans' C under QEMU: cortex-m4 or cortex-m7.")]
          = None,
          out_dir: Annotated[Path, typer.Option("--out", help="Folder for bench.json/.md.")] =
          Path("bench_out"),
          update_readme: Annotated[Path | None, typer.Option(
              "--update-readme", help="Replace the bench table in this README.")] = None,
          dtype: Dtype = "int8", input_external: External = False,
          time_limit: TimeLimit = 30.0, workers: Workers = 2, seed: Seed = 0, align: Align = 4,
          no_rows: Annotated[bool, typer.Option(
              "--no-rows", help="No row bands (channel splits only).")] = False,
          no_stream: Annotated[bool, typer.Option(
              "--no-stream", help="Row bands never stream over their input.")] = False,
          as_json: Json = False, quiet: Quiet = False) -> None:
    """Compare pexopt with the TFLM planner and reordering on many models."""
    from rich.progress import Progress

    from pexopt.outputs import Outputs, model_inputs
    from pexopt.pipeline import bench_model, bench_random_dag
    from pexopt.report.tables import (
        bench_markdown,
        bench_table,
        target_markdown,
        target_table,
    )

    opts = _opts(dtype, input_external, None)
    params = _params(time_limit, workers, seed, align, rows=not no_rows, stream=not no_stream)
    check_int("--random-dags", random_dags, 0, lim.MAX_RANDOM_DAGS)
    check_int("--dag-ops", dag_ops, 1, lim.MAX_DAG_OPS)
    models = models or []
    if not models and random_dags <= 0:
        raise PexError("bench: give models and/or --random-dags N")
    # every output checked before the first model is solved
    outs = Outputs(inputs=[i for m in models for i in model_inputs(m)])
    outs.file(out_dir / "bench.json", "--out")
    outs.file(out_dir / "bench.md", "--out")
    outs.file(update_readme, "--update-readme")
    outs.check()
    if update_readme is not None:
        _replace_section(update_readme, "")  # the section exists: refused now, not at the end
    rows = []
    with Progress(console=err, transient=True, disable=quiet or as_json) as bar:
        task = bar.add_task("bench", total=len(models) + max(0, random_dags))
        for m in models:
            bar.update(task, description=f"bench {m.name}")
            rows.append(bench_model(m, opts, params, target))
            bar.advance(task)
        for seed in range(max(0, random_dags)):
            bar.update(task, description=f"bench random DAG {seed}")
            rows.append(bench_random_dag(dag_ops, seed, params))
            bar.advance(task)
    data = {"version": __version__, "workers": workers, "time_limit": time_limit,
            "dtype": dtype, "input_external": input_external,
            "target": target,
            "rows": [{**asdict(r), "ratio": r.ratio, "overhead": r.overhead} for r in rows]}
    md = bench_markdown(rows, workers)
    if target is not None:
        md += "\n" + target_markdown(rows, target)
    outs.put(out_dir / "bench.json", dumps(data, indent=1) + "\n")
    outs.put(out_dir / "bench.md", md)
    if update_readme is not None:
        outs.put(update_readme, _replace_section(update_readme, md))
    outs.commit()  # all three or none (issue #13 item 9)
    if as_json:
        print(dumps(data))
    elif not quiet:
        _print_table(bench_table(rows))
        if target is not None:
            _print_table(target_table(rows, target))
        out.print(f"written: {out_dir / 'bench.json'}, {out_dir / 'bench.md'}", highlight=False,
                  soft_wrap=True)


def _replace_section(readme: Path, md: str) -> str:
    """The README's text with its bench section replaced by `md` (nothing written)."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PexError(f"--update-readme: cannot read '{readme}': "
                       f"{getattr(e, 'strerror', None) or e}") from None
    if start not in text or end not in text or text.index(end) < text.index(start):
        raise PexError(f"{readme}: no '{start}' ... '{end}' section to replace")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{md}{end}{tail}"


@app.command()
@friendly
def codegen(plan_file: Path, model: Path,
            output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")]
            = Path("pex_out"),
            target: Target = "cortex-m4",
            backend: Annotated[str, typer.Option(
                "--backend", help="cmsis (CMSIS-NN where it matches, default) or portable.")]
            = "cmsis",
            input_shape: Shapes = None) -> None:
    """Generate C (pex_model.h/.c, weights, kernels, README) from a validated plan."""
    from pexopt.codegen.emit import GENERATED
    from pexopt.outputs import Outputs, model_inputs
    from pexopt.pipeline import ImportOptions

    outs = Outputs(inputs=[plan_file, *model_inputs(model),
                           target if os.path.isfile(target) else None])
    outs.folder(output, "-o", GENERATED)
    outs.check()
    plan = load_plan(plan_file)
    graph = ImportOptions(dtype=plan.dtype, input_external=plan.input_external,
                          input_shapes=_shapes(input_shape)).load(model)
    outs.put_folder(output, _render(plan, graph, model, _target_profile(target)[1], backend))
    outs.commit()
    _c_written(output, plan)


def _render(plan, graph, model: Path, target: str, backend: str) -> dict[str, str]:  # noqa: ANN001
    """The C files in memory (nothing written); the weights come from the graph (a pruned
    graph's are the pruned model's), `model` names the files' origin."""
    from pexopt.codegen.emit import render_c

    if backend not in ("cmsis", "portable"):
        raise PexError(f"--backend: '{backend}' is not cmsis or portable")
    return render_c(plan, graph, model, target=target, backend_default=backend)


def _c_written(output: Path, plan) -> None:  # noqa: ANN001
    from pexopt.codegen.emit import GENERATED

    out.print(f"C written to {output}/ ({len(GENERATED)} files, arena {plan.arena_bytes:,} B); "
              f"see {output}/README.md", highlight=False, soft_wrap=True, markup=False)


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


@app.command()
@friendly
def quantize(model: Path,
             output: Annotated[Path, typer.Option("-o", "--output", help="The int8 QDQ model.")],
             calib: Annotated[str, typer.Option(
                 "--calib", help="Calibration inputs: a .npy file, or random:N for a smoke "
                 "test.")]) -> None:
    """Quantise a float ONNX model to int8 QDQ (onnxruntime static quantisation)."""
    from pexopt.outputs import Outputs, model_inputs
    from pexopt.quantize import quantize_model

    outs = Outputs(inputs=[*model_inputs(model), calib if os.path.isfile(calib) else None])
    outs.file(output, "-o")
    outs.check()  # before onnxruntime's work; quantize_model writes through the same checks
    rep = quantize_model(model, output, calib)
    out.print(f"wrote {rep.path}: {rep.nodes} nodes, {rep.bytes:,} B, calibrated on "
              f"{rep.samples} samples (sha256 {rep.sha256[:16]})", highlight=False,
              markup=False, soft_wrap=True)


@app.command()
@friendly
def doctor(plan_file: Path, model: Path, input_shape: Shapes = None,
           simulate_too: Annotated[bool, typer.Option(
               "--simulate/--no-simulate", help="Also run the plan in the arena.")] = True,
           as_json: Json = False) -> None:
    """Everything to attach to a report about a plan that failed on a device."""
    import hashlib
    import platform
    from importlib import metadata

    from pexopt.frontend.onnx_load import sha256_file
    from pexopt.pipeline import ImportOptions

    info: dict[str, Any] = {"pexopt": __version__, "python": platform.python_version(),
                            "platform": platform.platform()}
    for pkg in ("ortools", "onnx", "onnxruntime", "numpy"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    info["plan_sha256"] = hashlib.sha256(plan_file.read_bytes()).hexdigest() \
        if plan_file.is_file() else None
    info["model_sha256"] = sha256_file(model) if model.is_file() else None
    plan = load_plan(plan_file)
    info.update(plan_format=plan.format, plan_model_sha256=plan.model.get("sha256"),
                arena_bytes=plan.arena_bytes, steps=len(plan.steps), buffers=len(plan.buffers),
                solver=asdict(plan.solver))
    graph = ImportOptions(dtype=plan.dtype, input_external=plan.input_external,
                          input_shapes=_shapes(input_shape)).load(model)
    violations = validate(plan, graph)
    info["valid"] = not violations
    info["violations"] = [f"{v.code}: {v.message}" for v in violations[:20]]
    if simulate_too and not violations:
        from pexopt.simulate.verify import verify_plan

        rep = verify_plan(plan, graph)
        info["simulation"] = {**asdict(rep), "ok": rep.ok}
    if as_json:
        print(dumps(info, indent=1))
        return
    for k, v in info.items():
        out.print(f"{k}: {v}", highlight=False, soft_wrap=True, markup=False)


@app.command()
@friendly
def calibrate(target: Annotated[str, typer.Option(
                  "--target", help="cortex-m4, cortex-m7, cortex-m55 or a profile .yaml to "
                  "refit.")] = "cortex-m4",
              output: Annotated[Path | None, typer.Option(
                  "-o", "--output", help="Profile to write (default: <target>.yaml here).")]
              = None,
              quick: Annotated[bool, typer.Option(
                  "--quick", help="A subset of the micro models (a rougher fit).")] = False,
              quiet: Quiet = False) -> None:
    """Fit a target profile's kernel costs from micro models run under QEMU (instructions)."""
    from pexopt.calibrate.calibrate import base_profile, write_profile
    from pexopt.calibrate.calibrate import calibrate as run_calibration
    from pexopt.outputs import Outputs
    from pexopt.target.qemu import require_tools

    base_profile(target)  # a bad target or profile file: one line before any work
    dest = output if output is not None else Path(f"{Path(target).stem}.yaml")
    # a profile file is an input like any other: never written over (refit into a new file)
    outs = Outputs(inputs=[Path(target)] if Path(target).is_file() else [])
    outs.file(dest, "-o")
    outs.check()  # before minutes under QEMU
    require_tools()
    log = None if quiet else (lambda line: err.print(line, highlight=False, markup=False))
    prof, samples = run_calibration(target, quick=quick, progress=log)
    cmd = f"pexopt calibrate --target {target}" + (" --quick" if quick else "")
    if output is not None:
        cmd += f" -o {output}"
    write_profile(prof, dest, cmd)
    if not quiet:
        for cls, e in prof.fit.items():
            out.print(f"{cls:16s} {e['samples']:3d} models  max error "
                      f"{100 * e['max_rel_error']:5.1f}%  mean {100 * e['mean_rel_error']:5.1f}%",
                      highlight=False, markup=False)
        out.print(f"profile written to {dest} ({len(samples)} micro models)", highlight=False,
                  soft_wrap=True, markup=False)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:  # pragma: no cover
    sys.exit(app())
