"""The CP-SAT pruning model: how many channels each group keeps, given a fixed plan structure.

A solved plan (its order, splits and in-place choices) is taken as the structure: at each of its
steps the live buffers must fit under `cap`. A full tensor or an accumulator has
`bytes per channel x channels`, and its channels are a sum of group variables (or constants for
fixed groups), so every step gives one linear constraint (a cumulative peak, no fragmentation:
the caller verifies with a real solve and tightens `cap`). Slice buffers and depthwise
temporaries do not depend on channel counts. Each group's kept count is `AddElement` over its
allowed counts and its removal cost `AddElement` over the exact table; the objective is the total
importance removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ortools.sat.python import cp_model

from pexopt.graph.ir import Graph
from pexopt.plan.format import Buffer, Plan
from pexopt.prune.groups import Groups
from pexopt.prune.importance import CostTable

# Extension point: add constraints over group -> kept-channels variables; `--latency` uses
# pexopt.prune.latency.LatencyModel.bound (the profile's estimate, exact), and
# pexopt.prune.macs.cost_bound builds `sum(coef_op * MACs_op(keep)) <= bound` from per-op costs.
ExtraConstraints = Callable[[cp_model.CpModel, dict[int, cp_model.IntVar]], None]


@dataclass(frozen=True)
class Linear:
    """bytes = const + sum(coef[g] * kept channels of g)."""

    const: float
    coef: dict[int, float]

    def value(self, keep: dict[int, int]) -> float:
        return self.const + sum(c * keep[g] for g, c in self.coef.items())


def live_buffers(plan: Plan) -> list[list[Buffer]]:
    """Per step, the buffers occupying bytes (an in-place pair at its hand-over counted once)."""
    res = []
    for s in plan.steps:
        live = [b for b in plan.buffers if b.first_step <= s.index <= b.last_step]
        handed = {b.alias_of for b in live if b.alias_of and b.first_step == s.index}
        res.append([b for b in live if not (b.name in handed and b.last_step == s.index)])
    return res


def buffer_size(buf: Buffer, graph: Graph, groups: Groups, keep: dict[int, int]) -> Linear:
    """The buffer's bytes as a function of the groups' kept channels.

    `graph` is the model the plan was solved for, pruned to `keep`; a full tensor, accumulator
    or band buffer (rows x W x C) scales with its channels, a slice counts one channel, anything
    else is constant.
    """
    layout = groups.layouts.get(buf.tensor or "")
    try:
        t = graph.tensor(buf.tensor or "")
    except KeyError:
        return Linear(buf.size, {})
    if buf.kind == "slice" and t.shape and t.shape[-1] > 0:
        # a narrower slice is always admissible (width 1): the structure stays valid with the
        # smallest slices, and the real solve widens them where the arena allows
        return Linear(t.nbytes // t.shape[-1], {})
    if buf.kind not in ("tensor", "accumulator", "band") or layout is None:
        return Linear(buf.size, {})
    now = sum(keep.get(p.group, p.size) for p in layout.parts)
    if not t.shape or t.shape[-1] != now or now == 0:
        return Linear(buf.size, {})  # channels not on the last NHWC axis: keep it constant
    per = buf.size / now
    const, coef = 0.0, {}
    for p in layout.parts:
        if p.group in keep and p.group not in groups.fixed:
            coef[p.group] = coef.get(p.group, 0.0) + per
        else:
            const += per * p.size
    return Linear(const, coef)


def step_sizes(plan: Plan, graph: Graph, groups: Groups, keep: dict[int, int]
               ) -> list[list[Linear]]:
    """Per plan step, the linear sizes of its live buffers.

    Buffers sharing bytes while both live (streaming in place: a band-written output over the
    input rows already consumed) occupy their union: the shared bytes of the solved plan are
    subtracted once, so the sum is not twice the image the plan streams over."""
    res = []
    for live in live_buffers(plan):
        sizes = [buffer_size(b, graph, groups, keep) for b in live]
        spans = sorted((b.offset, b.offset + b.size) for b in live)
        shared = sum(max(0, min(e0, e1) - s1) for (_, e0), (s1, e1) in zip(spans, spans[1:]))
        if shared:
            sizes.append(Linear(-shared, {}))
        res.append(sizes)
    return res


def choose_keep(tables: dict[int, CostTable], steps: list[list[Linear]], cap: int,
                workers: int = 2, seed: int = 0, time_limit: float = 5.0,
                extra: ExtraConstraints | None = None) -> dict[int, int] | None:
    """Kept channels per group with the least importance removed such that every step's live
    bytes are <= cap; None if no allowed counts achieve it."""
    m = cp_model.CpModel()
    keep: dict[int, cp_model.IntVar] = {}
    costs = []
    for g, t in sorted(tables.items()):
        idx = m.new_int_var(0, len(t.counts) - 1, f"i{g}")
        k = m.new_int_var(t.counts[0], t.counts[-1], f"k{g}")
        c = m.new_int_var(min(t.cost), max(t.cost), f"c{g}")
        m.add_element(idx, list(t.counts), k)
        m.add_element(idx, list(t.cost), c)
        keep[g], _ = k, costs.append(c)
    for sizes in steps:
        const = sum(s.const for s in sizes)
        coef: dict[int, float] = {}
        for s in sizes:
            for g, v in s.coef.items():
                coef[g] = coef.get(g, 0.0) + v
        if not coef:
            if const > cap:
                return None
            continue
        # bytes are integers per channel in practice; ceil keeps the constraint safe
        m.add(sum(int(-(-v // 1)) * keep[g] for g, v in coef.items() if g in keep)
              <= int(cap - const))
    if extra is not None:
        extra(m, keep)
    m.minimize(sum(costs))
    s = cp_model.CpSolver()
    s.parameters.num_workers = workers
    s.parameters.random_seed = seed
    s.parameters.max_time_in_seconds = time_limit
    if s.solve(m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return {g: int(s.value(k)) for g, k in keep.items()}
