"""`solve --prune`: the least important channels to remove so that the model fits `--sram`.

1. Groups and importance tables of the original model; its normal solve is the first structure.
2. The pruning model (pexopt.prune.model) picks kept counts under the structure's per-step peak.
3. The pruned ONNX is written and solved again by the normal solver (order and splits free),
   which builds and validates its plan. If its arena exceeds the budget, the cap is lowered by
   the excess; the new plan becomes the structure either way (bounded rounds). The best pruning
   that fits is kept; pruning every group to --min-keep is the fallback and the feasibility test.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from pexopt.errors import PexError
from pexopt.graph.onnx_load import load_model
from pexopt.pipeline import ImportOptions, SolveResult, solve_model
from pexopt.prune.groups import Groups, find_groups
from pexopt.prune.importance import (
    CostTable,
    allowed_counts,
    cost_table,
    filter_norms,
    group_importance,
)
from pexopt.prune.model import ExtraConstraints, choose_keep, step_sizes
from pexopt.prune.onnx_prune import prune_onnx
from pexopt.solver.cpsat_layout import SolverParams


@dataclass(frozen=True)
class PruneOptions:
    """--min-keep (fraction of each group's channels), --prune-step, bounded search rounds."""

    min_keep: float = 0.25
    step: int = 4
    rounds: int = 6
    simulate: bool = True  # run the chosen plan in the byte-exact simulator before returning
    extra: ExtraConstraints | None = None  # e.g. a latency bound over the kept counts


@dataclass
class Candidate:
    keep: dict[int, int]
    result: SolveResult
    model_bytes: bytes
    cost: int
    path: Path | None = None  # where its model was solved from (temporary for a pruned one)


@dataclass
class PruneOutcome:
    """What the search found. `chosen` is None when even --min-keep pruning does not fit."""

    base: SolveResult
    groups: Groups
    tables: dict[int, CostTable]
    chosen: Candidate | None
    min_arena: int  # the arena at maximal pruning (the unpruned arena if that already fits)
    rounds: list[dict[str, int | bool]] = field(default_factory=list)
    norms: dict[str, np.ndarray] = field(default_factory=dict)  # producer -> filter importance

    @property
    def fits(self) -> bool:
        return self.chosen is not None


class _Searcher:
    def __init__(self, path: str | Path, opts: ImportOptions, params: SolverParams,
                 budget: int, popts: PruneOptions, tmp: Path) -> None:
        self.path, self.opts, self.params, self.budget, self.popts = (
            Path(path), opts, params, budget, popts)
        self.tmp = tmp
        self.model = load_model(path, opts.input_shapes or None)
        self.groups = find_groups(self.model)
        imp = group_importance(self.model, self.groups)
        self.tables = {g: cost_table(g, imp[g], allowed_counts(self.groups.size[g],
                                                                popts.min_keep, popts.step))
                       for g in self.groups.free()}
        self.full = {g: t.channels for g, t in self.tables.items()}
        self.solves = 0

    def cost(self, keep: dict[int, int]) -> int:
        return sum(t.cost[t.counts.index(keep[g])] for g, t in self.tables.items())

    def model_for(self, keep: dict[int, int]) -> onnx.ModelProto:
        idx = {g: self.tables[g].kept(k) for g, k in keep.items() if k < self.full[g]}
        return prune_onnx(self.model, self.groups, idx)

    def solve(self, keep: dict[int, int]) -> Candidate:
        data = self.model_for(keep).SerializeToString()
        self.solves += 1
        p = self.tmp / str(self.solves) / f"{self.path.stem}_pruned.onnx"
        p.parent.mkdir()
        p.write_bytes(data)
        opts = replace(self.opts, input_shapes={})  # the pruned model has the fixed shapes
        res = solve_model(p, opts, self.params, self.budget)
        return Candidate(dict(keep), res, data, self.cost(keep), p)


def prune_to_budget(path: str | Path, opts: ImportOptions, params: SolverParams, budget: int,
                    popts: PruneOptions = PruneOptions(),
                    base: SolveResult | None = None) -> PruneOutcome:
    """Search the pruning that fits `budget` removing the least importance (see module doc).

    Each solve uses `params` (its time limit is per solve); `base` is the unpruned solve if the
    caller already has it.
    """
    with tempfile.TemporaryDirectory(prefix="pexopt_prune_") as tmp:
        s = _Searcher(path, opts, params, budget, popts, Path(tmp))
        base = base or solve_model(path, opts, params, budget)
        smallest = {g: t.counts[0] for g, t in s.tables.items()}
        if base.plan.fits:
            data = Path(path).read_bytes()
            return PruneOutcome(base, s.groups, s.tables, Candidate(s.full, base, data, 0),
                                base.plan.arena_bytes, norms=filter_norms(s.model))
        at_min = s.solve(smallest)
        out = PruneOutcome(base, s.groups, s.tables, None, at_min.result.plan.arena_bytes,
                           norms=filter_norms(s.model))
        if not at_min.result.plan.fits:
            return out
        best: Candidate = at_min
        struct, struct_keep, cap = base, s.full, budget
        seen: set[tuple[tuple[int, int], ...]] = {tuple(sorted(smallest.items()))}
        for _ in range(popts.rounds):
            steps = step_sizes(struct.plan, struct.graph, s.groups, struct_keep)
            keep = choose_keep(s.tables, steps, cap, params.workers, params.seed,
                               min(5.0, params.time_limit), popts.extra)
            if keep is None or s.cost(keep) >= best.cost:
                break  # nothing cheaper than what already fits under this structure and cap
            key = tuple(sorted(keep.items()))
            if key in seen:
                cap -= params.align * 64  # same answer again: ask for a little more room
                continue
            seen.add(key)
            cand = s.solve(keep)
            arena = cand.result.plan.arena_bytes
            out.rounds.append({"cap": cap, "arena": arena, "cost": cand.cost,
                               "fits": cand.result.plan.fits})
            if cand.result.plan.fits:
                best = cand
                cap = budget  # the new structure may allow less pruning
            else:
                cap -= arena - budget
            struct, struct_keep = cand.result, keep
        if popts.simulate:
            _check_simulation(best)
        out.chosen = best
        return out


def _check_simulation(c: Candidate) -> None:
    """The pruned model's plan must execute bit-exactly like its unsplit reference."""
    from pexopt.simulate.arena import executable
    from pexopt.simulate.verify import verify_plan

    if not executable(c.result.graph):
        return  # a float model planned for int8 activations cannot execute as planned
    if c.path is not None and not verify_plan(c.result.plan, c.result.graph, c.path,
                                              n_inputs=1, onnxruntime=False).ok:
        raise PexError("pruning: the pruned model's plan does not simulate exactly "
                       "(a bug; please report it)")


def removed_importance(out: PruneOutcome) -> tuple[float, float]:
    """(normalised importance removed, total normalised importance of the free groups)."""
    total = sum(t.total for t in out.tables.values())
    if out.chosen is None:
        return 0.0, total
    removed = sum(t.removed[t.counts.index(out.chosen.keep[g])] for g, t in out.tables.items())
    return removed, total
