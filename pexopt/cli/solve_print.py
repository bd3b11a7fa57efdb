"""What `pexopt solve` prints once its outputs are written: JSON, or the tables and lines."""

from __future__ import annotations

from dataclasses import asdict

import typer
from rich.text import Text

from pexopt.cli.common import EXIT_NO_FIT, _c_written, _print_table, _verify_line, err, out
from pexopt.cli.solve_job import Solved, SolveJob
from pexopt.limits import dumps


def print_results(job: SolveJob, s: Solved) -> None:
    """What was written, then the result as JSON or (unless --quiet) as tables."""
    if job.emit_c is not None and not job.as_json:
        _c_written(job.emit_c, s.plan)
    if job.pareto is not None and not job.quiet and not job.as_json:
        out.print(f"frontier written to {job.pareto} and {job.pareto.with_suffix('.png')}",
                  highlight=False, soft_wrap=True, markup=False)
    if job.as_json:
        print(dumps(_json(job, s)))
    elif not job.quiet:
        _tables(job, s)


def no_fit(job: SolveJob, s: Solved) -> None:
    """The smallest arena found is over --sram: one line on stderr (with the pruning hint),
    exit 3; the outputs are written (the plan is valid, only too big)."""
    from pexopt.report.tables import peak_line

    err.print(f"does not fit: the smallest arena found is {s.plan.arena_bytes:,} B, "
              f"budget {job.budget:,} B ({peak_line(s.res)})"
              + (f"; {s.hint}" if s.hint else ""), highlight=False, soft_wrap=True,
              markup=False)
    raise typer.Exit(EXIT_NO_FIT)


def _json(job: SolveJob, s: Solved) -> dict:
    res, plan, front = s.res, s.plan, s.front
    return {"model": str(job.model), "arena_bytes": plan.arena_bytes,
            "tflm_arena_bytes": res.tflm, "budget_bytes": job.budget,
            "fits": plan.fits, "solver": asdict(plan.solver),
            "layerwise_arena_bytes": res.layerwise, "splits": plan.splits,
            "peak": asdict(res.peak), "plan": str(job.output) if job.output else None,
            "verify": asdict(s.report) if s.report else s.unverified,
            "prune": s.pruning.to_dict() if s.pruning else None,
            "prune_hint": s.hint, "latency": plan.latency,
            "latency_bound_instructions": job.bound,
            "pareto": None if front is None else [
                {"latency_bound_instructions": r.bound, "arena_bytes": r.arena,
                 "instructions": r.instructions, "ms": r.ms,
                 "splits": r.splits, "status": r.status,
                 "simulated_exact": r.exact} for r in front]}


def _tables(job: SolveJob, s: Solved) -> None:
    from pexopt.report.tables import inplace_line, peak_line, solve_table, splits_table

    res = s.res
    _print_table(solve_table(res))
    st = splits_table(res)
    if st is not None:
        _print_table(st)
    ip = inplace_line(res)
    if ip is not None:
        _print_table(Text(ip))
    _print_table(Text(peak_line(res)))
    if s.plan.latency is not None:
        _print_table(Text(_latency_line(s.plan.latency)))
    if s.report is not None:
        _print_table(Text(_verify_line(s.report)))
    if s.unverified is not None:
        _print_table(Text(s.unverified))
    if s.pruning is not None:
        from pexopt.prune.report import prune_table, summary_line

        _print_table(prune_table(s.pruning))
        out.print(summary_line(s.pruning), highlight=False, soft_wrap=True, markup=False)
        if job.write_pruned is not None:
            out.print(f"pruned model written to {job.write_pruned}", highlight=False,
                      soft_wrap=True, markup=False)
    if job.output is not None:
        out.print(f"plan written to {job.output}", highlight=False, soft_wrap=True,
                  markup=False)


def _latency_line(lat: dict) -> str:
    core = f" ({lat['core']})" if lat['core'] != lat['target'] else ""
    return (f"estimated latency on {lat['target']}{core}: "
            f"{lat['instructions'] / 1e6:,.2f} M instructions inside pex_invoke, "
            f"{lat['cycles'] / 1e6:,.2f} M cycles, {lat['ms']:,.2f} ms at "
            f"{lat['clock_hz'] / 1e6:g} MHz (assuming {lat['cycles_per_instruction']:g} "
            "cycles per instruction; portable kernels)")
