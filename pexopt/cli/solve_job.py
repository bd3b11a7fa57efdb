"""What `pexopt solve` runs: its options checked together before any work (`SolveJob`), and
what its steps find (`Solved`), written and printed at the end."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pexopt import limits as lim
from pexopt.cli.common import _opts, _params, _target_profile
from pexopt.errors import PexError
from pexopt.limits import check_int
from pexopt.schedule import SolverParams

if TYPE_CHECKING:
    from pexopt.latency.profile import Profile
    from pexopt.outputs import Outputs
    from pexopt.pipeline import ImportOptions, ParetoRow, SolveResult
    from pexopt.plan.format import Plan
    from pexopt.prune.report import PruneSummary
    from pexopt.prune.solve import PruneOptions
    from pexopt.simulate.verify import VerifyReport


@dataclass
class SolveJob:
    """`solve`'s options, every one checked and every output declared (nothing solved yet)."""

    model: Path
    budget: int | None  # --sram in bytes
    opts: ImportOptions
    params: SolverParams
    profile: Profile | None  # the --target profile (None: a core without a latency model)
    core: str  # the codegen core
    popts: PruneOptions | None  # None: not pruning
    bound: int | None  # --latency in estimated instructions
    outs: Outputs
    output: Path | None
    emit_c: Path | None
    write_pruned: Path | None
    pareto: Path | None
    pareto_points: int
    verify: bool
    quiet: bool
    as_json: bool


@dataclass
class Solved:
    """What the search, pruning and simulation found (the pruned model's plan when pruning)."""

    res: SolveResult
    pruning: PruneSummary | None = None
    hint: str | None = None  # what pruning would do for a plan that does not fit
    pruned: bytes | None = None  # the pruned ONNX model
    report: VerifyReport | None = None  # the simulation
    unverified: str | None = None  # why the plan was not simulated
    front: list[ParetoRow] | None = None  # the --pareto frontier

    @property
    def plan(self) -> Plan:
        return self.res.plan


def parse_options(model: Path, sram: str | None, output: Path | None, dtype: str,
                  input_external: bool, input_shape: list[str] | None,
                  time_limit: float | None, workers: int | None, seed: int, align: int,
                  no_reorder: bool, no_split: bool, no_inplace: bool, rows: bool,
                  no_stream: bool, no_hybrid: bool, verify: bool, emit_c: Path | None,
                  target: str, latency: str | None, pareto: Path | None, pareto_points: int,
                  prune: bool, min_keep: float, prune_step: int, write_pruned: Path | None,
                  as_json: bool, quiet: bool) -> SolveJob:
    """Check `solve`'s options (a bad one: one line, exit 2, before any work) and its outputs."""
    from pexopt.pipeline import parse_bytes

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
    return SolveJob(model, budget, opts, params, profile, core, popts, bound, outs, output,
                    emit_c, write_pruned, pareto, pareto_points, verify, quiet, as_json)


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
