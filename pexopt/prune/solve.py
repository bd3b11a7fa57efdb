"""`solve --prune`: the least important channels to remove so that the model fits `--sram`
(and, with `--latency`, runs within the latency bound on the target profile).

1. Groups and importance tables of the original model; its normal solve is the first structure.
2. The pruning model (pexopt.prune.model) picks kept counts under the structure's per-step peak;
   with a latency bound, also under `whole(keep) + overhead <= latency cap`
   (pexopt.prune.latency: the layer-by-layer estimate, exact, plus the structure's split and
   in-place overhead).
3. The pruned ONNX is written and solved again by the normal solver (order and splits free,
   under the same latency bound), which builds and validates its plan. If its arena exceeds the
   budget, the cap is lowered by the excess; if no plan meets the latency bound, the latency cap
   is lowered by the excess; the new plan becomes the structure (bounded rounds). The best
   pruning that fits both is kept; pruning every group to --min-keep is the fallback and the
   feasibility test.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from ortools.sat.python import cp_model

from pexopt.errors import PexError
from pexopt.frontend.onnx_load import load_model
from pexopt.latency.cost import estimate, invoke_instructions, op_instructions
from pexopt.latency.profile import Profile
from pexopt.pipeline import ImportOptions, LatencyNotMet, SolveResult, solve_model
from pexopt.prune.groups import Groups, find_groups
from pexopt.prune.importance import (
    CostTable,
    allowed_counts,
    cost_table,
    filter_norms,
    group_importance,
)
from pexopt.prune.latency import LatencyModel
from pexopt.prune.model import ExtraConstraints, choose_keep, step_sizes
from pexopt.prune.onnx_prune import prune_onnx
from pexopt.schedule import SolverParams


@dataclass(frozen=True)
class PruneOptions:
    """--min-keep (fraction of each group's channels), --prune-step, bounded search rounds."""

    min_keep: float = 0.25
    step: int = 4
    rounds: int = 6
    simulate: bool = True  # run the chosen plan in the byte-exact simulator before returning
    extra: ExtraConstraints | None = None  # more constraints over the kept counts
    profile: Profile | None = None  # prices plans (estimated latency in the report)
    latency: int | None = None  # bound on estimated instructions (needs `profile`)


@dataclass
class Candidate:
    keep: dict[int, int]
    result: SolveResult
    model_bytes: bytes
    cost: int


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
    profile: Profile | None = None
    latency: int | None = None  # the bound pruned for (estimated instructions)
    # when even --min-keep misses the latency bound: (fastest estimate, its arena) there
    too_slow: tuple[float, int] | None = None

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
        self.last: Path = self.path  # the model the latest solve was of
        self.lat: LatencyModel | None = None  # set once the unpruned IR is known

    def met(self, res: SolveResult) -> bool:
        """The plan fits the budget and, with a latency bound, meets it."""
        return res.plan.fits and (self.popts.latency is None or self.popts.profile is None
                                  or estimate(self.popts.profile, res.graph, res.plan)
                                  .instructions <= self.popts.latency)

    def constraints(self, struct: SolveResult, cap: float) -> ExtraConstraints | None:
        """PruneOptions.extra and, with a latency bound, the latency cap on this structure."""
        extra = self.popts.extra
        if self.lat is None or self.popts.profile is None:
            return extra
        # the structure's splits and in-place writes cost on top of running every op whole;
        # clamped at zero so that the layer-by-layer plan always meets the cap
        whole = invoke_instructions(self.popts.profile, struct.graph) + sum(
            op_instructions(self.popts.profile, struct.graph, k)
            for k in range(len(struct.graph.ops)))
        over = max(0.0, estimate(self.popts.profile, struct.graph, struct.plan).instructions
                   - whole)
        bound = self.lat.bound(cap, over)
        if extra is None:
            return bound

        def both(m: cp_model.CpModel, keep: dict[int, cp_model.IntVar]) -> None:
            extra(m, keep)
            bound(m, keep)

        return both

    def fastest(self, path: Path, e: LatencyNotMet) -> tuple[float, int]:
        """(estimated instructions, arena) of the fastest plan of a model that missed the bound:
        the solver's fastest within the budget, else every op whole (the greedy layout)."""
        from pexopt.latency.bound import ProfileCost
        from pexopt.solver.cpsat_layout import greedy_schedule, schedule_cost

        assert self.popts.profile is not None
        graph = self.opts_for(path).load(path)
        invoke = invoke_instructions(self.popts.profile, graph)
        if e.fastest is not None:
            return (schedule_cost(graph, e.fastest, ProfileCost(self.popts.profile)) + invoke,
                    e.fastest.arena)
        whole = invoke + sum(op_instructions(self.popts.profile, graph, k)
                             for k in range(len(graph.ops)))
        return whole, greedy_schedule(graph, list(range(len(graph.ops))), self.params).arena

    def opts_for(self, path: Path) -> ImportOptions:
        # a pruned model has the fixed shapes
        return self.opts if path == self.path else replace(self.opts, input_shapes={})

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
        self.last = p
        res = solve_model(p, self.opts_for(p), self.params, self.budget,
                          profile=self.popts.profile, latency=self.popts.latency)
        return Candidate(dict(keep), res, data, self.cost(keep))


def prune_to_budget(path: str | Path, opts: ImportOptions, params: SolverParams, budget: int,
                    popts: PruneOptions = PruneOptions(),
                    base: SolveResult | None = None) -> PruneOutcome:
    """Search the pruning that fits `budget` removing the least importance (see module doc).

    Each solve uses `params` (its time limit is per solve); `base` is the unpruned solve if the
    caller already has it.
    """
    with tempfile.TemporaryDirectory(prefix="pexopt_prune_") as tmp:
        s = _Searcher(path, opts, params, budget, popts, Path(tmp))
        base = base or solve_model(path, opts, params, budget, profile=popts.profile)
        smallest = {g: t.counts[0] for g, t in s.tables.items()}
        out = PruneOutcome(base, s.groups, s.tables, None, base.plan.arena_bytes,
                           norms=filter_norms(s.model), profile=popts.profile,
                           latency=popts.latency)
        unpruned = _unpruned(s, base)
        if unpruned is not None:
            out.chosen = Candidate(s.full, unpruned, Path(path).read_bytes(), 0)
            return out
        if popts.latency is not None and popts.profile is not None:
            s.lat = LatencyModel(popts.profile, base.graph, s.groups, s.tables)
        try:
            at_min = s.solve(smallest)
        except LatencyNotMet as e:  # even maximal pruning is too slow
            out.too_slow = s.fastest(s.last, e)
            out.min_arena = out.too_slow[1]
            return out
        out.min_arena = at_min.result.plan.arena_bytes
        if not s.met(at_min.result):
            return out
        best: Candidate = at_min
        struct, struct_keep, cap, lat_cap = base, s.full, budget, popts.latency
        seen: set[tuple[tuple[int, int], ...]] = {tuple(sorted(smallest.items()))}
        for _ in range(popts.rounds):
            steps = step_sizes(struct.plan, struct.graph, s.groups, struct_keep)
            extra = s.constraints(struct, lat_cap) if lat_cap is not None else popts.extra
            keep = choose_keep(s.tables, steps, cap, params.workers, params.seed,
                               min(5.0, params.time_limit), extra)
            if keep is None and struct is not best.result:
                # this structure cannot reach the caps (e.g. the unpruned plan's, whose row
                # bands or splits differ): prune back up from the structure that fits
                struct, struct_keep, cap, lat_cap = best.result, best.keep, budget, popts.latency
                continue
            if keep is None or s.cost(keep) >= best.cost:
                break  # nothing cheaper than what already fits under this structure and caps
            key = tuple(sorted(keep.items()))
            if key in seen:
                cap -= params.align * 64  # same answer again: ask for a little more room
                continue
            seen.add(key)
            try:
                cand = s.solve(keep)
            except LatencyNotMet as e:  # rare: the structure's overhead was underestimated
                assert lat_cap is not None and popts.latency is not None
                need = s.fastest(s.last, e)[0]
                lat_cap -= max(need - popts.latency, 0.01 * popts.latency)
                out.rounds.append({"cap": cap, "arena": -1, "cost": s.cost(keep),
                                   "fits": False})
                continue
            arena = cand.result.plan.arena_bytes
            ok = s.met(cand.result)
            out.rounds.append({"cap": cap, "arena": arena, "cost": cand.cost, "fits": ok})
            if ok:
                best = cand
                cap, lat_cap = budget, popts.latency  # the new structure may allow less pruning
            else:
                cap -= max(0, arena - budget)
            struct, struct_keep = cand.result, keep
        if popts.simulate:
            _check_simulation(best)
        out.chosen = best
        return out


def _unpruned(s: _Searcher, base: SolveResult) -> SolveResult | None:
    """The unpruned model's plan if it already fits (and meets the latency bound), else None.
    `base` may be a solve without the bound (the smallest arena): then one solve with it."""
    if not base.plan.fits:
        return None
    if s.met(base):
        return base
    try:
        res = solve_model(s.path, s.opts, s.params, s.budget, profile=s.popts.profile,
                          latency=s.popts.latency)
    except LatencyNotMet:
        return None
    return res if s.met(res) else None


def _check_simulation(c: Candidate) -> None:
    """The pruned model's plan must execute bit-exactly like its unsplit reference."""
    from pexopt.simulate.arena import executable
    from pexopt.simulate.verify import verify_plan

    if not executable(c.result.graph):
        return  # a float model planned for int8 activations cannot execute as planned
    if not verify_plan(c.result.plan, c.result.graph, n_inputs=1, onnxruntime=False).ok:
        raise PexError("pruning: the pruned model's plan does not simulate exactly "
                       "(a bug; please report it)")


def removed_importance(out: PruneOutcome) -> tuple[float, float]:
    """(normalised importance removed, total normalised importance of the free groups)."""
    total = sum(t.total for t in out.tables.values())
    if out.chosen is None:
        return 0.0, total
    removed = sum(t.removed[t.counts.index(out.chosen.keep[g])] for g, t in out.tables.items())
    return removed, total
