"""Baselines computed on the same graph in the same run: TFLM's greedy planner and reordering.

TFLM: operators in file order, GreedyMemoryPlanner (largest first, first gap that fits among the
buffers already placed whose lifetimes overlap), sizes and offsets rounded to 16 bytes.
Reordering (Liberis & Lane 2019): exact search over topological orders minimising the peak sum of
live bytes, memoised over the set of executed operators.
"""

from __future__ import annotations

from dataclasses import dataclass

from pexopt.graph.ir import Graph


@dataclass(frozen=True)
class Lifetime:
    """A buffer request: size in bytes, first and last scope using it (both inclusive)."""

    index: int
    size: int
    first: int
    last: int


def _round16(x: int) -> int:
    return (x + 15) // 16 * 16


def tflm_lifetimes(graph: Graph) -> list[Lifetime]:
    """TFLM's buffer requests: inputs at scope 0, op i at scope i+1, outputs to the last scope."""
    n = len(graph.ops)
    first: dict[int, int] = {t: 0 for t in graph.inputs}
    last: dict[int, int] = {t: 0 for t in graph.inputs}
    for op in graph.ops:
        for t in op.outputs:
            first.setdefault(t, op.id + 1)
            last.setdefault(t, op.id + 1)
        for t in op.inputs:
            last[t] = max(last.get(t, 0), op.id + 1)
    for t in graph.outputs:
        last[t] = n
    return [Lifetime(t, _round16(graph.tensors[t].nbytes), first[t], last[t])
            for t in sorted(first) if graph.tensors[t].nbytes > 0
            and not graph.tensors[t].external]


def greedy_by_size(reqs: list[Lifetime], align: int = 16) -> dict[int, int]:
    """TFLM GreedyMemoryPlanner: returns tensor index -> offset.

    Each request is placed at the lowest gap among the placed requests live at the same time,
    visited by offset (ties in placement order), exactly as TFLM's list walk does. Only those
    requests are visited (an index per step, or all placed ones when that is fewer): walking
    every placed request made a 5,000-operator chain take seconds."""
    order = sorted(reqs, key=lambda r: (-r.size, -r.index))
    placed: list[tuple[int, int, Lifetime]] = []  # (offset, placement number, request)
    at_step: dict[int, list[int]] = {}  # step -> placement numbers live there
    offsets: dict[int, int] = {}
    for r in order:
        steps = range(r.first, r.last + 1)
        if len(steps) < len(placed):
            seen = {j for s in steps for j in at_step.get(s, ())}
            near = sorted(placed[j] for j in seen)
        else:
            near = sorted(p for p in placed if not (p[2].last < r.first or r.last < p[2].first))
        cand = 0
        for off, _, p in near:
            if off >= cand + r.size:
                break
            cand = max(cand, (off + p.size + align - 1) // align * align)
        offsets[r.index] = cand
        for s in steps:
            at_step.setdefault(s, []).append(len(placed))
        placed.append((cand, len(placed), r))
    return offsets


def tflm_arena(graph: Graph) -> int:
    """Arena bytes (TFLM's `head`) of the TFLM greedy planner on this graph in file order."""
    reqs = tflm_lifetimes(graph)
    offs = greedy_by_size(reqs)
    return max((offs[r.index] + r.size for r in reqs), default=0)


class _Reorder:
    """The memoised search of `reorder_peak`: the graph's facts as bit masks and byte sizes, and
    per set of executed ops the least peak of the rest and the op that reaches it."""

    def __init__(self, graph: Graph, max_states: int,
                 inplace: dict[int, list[int]] | None) -> None:
        n = len(graph.ops)
        size = [0 if t.external else t.nbytes for t in graph.tensors]
        producer = graph.producer()
        consumers = graph.consumers()
        outputs = set(graph.outputs)
        preds_mask = [0] * n
        for k, ps in enumerate(graph.preds()):
            for p in ps:
                preds_mask[k] |= 1 << p
        cons_mask = {t: sum(1 << c for c in cs) for t, cs in consumers.items()}
        base_live = sum(size[t] for t in graph.inputs)
        self.graph, self.max_states, self.inplace = graph, max_states, inplace
        self.n, self.size, self.producer, self.outputs = n, size, producer, outputs
        self.preds_mask, self.cons_mask, self.base_live = preds_mask, cons_mask, base_live
        self.memo: dict[int, tuple[int, int]] = {}
        self.full = (1 << n) - 1
        self.stack_limit = [0]

    def live_after(self, done: int) -> int:
        size, producer, cons_mask, outputs = self.size, self.producer, self.cons_mask, self.outputs
        total = 0
        for t in range(len(size)):
            made = t not in producer or (done >> producer[t]) & 1
            if not made:
                continue
            pending = cons_mask[t] & ~done
            if pending or t in outputs:
                total += size[t]
        return total

    def step_peak(self, done: int, k: int) -> int:
        graph, size, cons_mask, outputs = self.graph, self.size, self.cons_mask, self.outputs
        inplace = self.inplace
        # while op k runs: everything live before it, plus its outputs
        live = self.live_after(done)
        for t in graph.ops[k].outputs:
            live += size[t]
        # inputs of k that die now are still live during k (counted in live_after(done)),
        # unless the output overwrites one of them in place
        after = done | (1 << k)
        share = [min(size[i], size[graph.ops[k].outputs[0]]) for i in (inplace or {}).get(k, [])
                 if not cons_mask[i] & ~after and i not in outputs]
        return live - max(share, default=0)

    def best(self, done: int) -> int:
        memo, n, preds_mask = self.memo, self.n, self.preds_mask
        if done == self.full:
            return 0
        hit = memo.get(done)
        if hit is not None:
            return hit[0]
        if len(memo) >= self.max_states:
            self.stack_limit[0] = 1
            return 0
        res, choice = None, -1
        for k in range(n):
            if (done >> k) & 1 or preds_mask[k] & ~done:
                continue
            v = max(self.step_peak(done, k), self.best(done | (1 << k)))
            if res is None or v < res:
                res, choice = v, k
        memo[done] = (res if res is not None else 0, choice)
        return memo[done][0]


def reorder_peak(graph: Graph, max_states: int = 200_000,
                 inplace: dict[int, list[int]] | None = None) -> tuple[int, list[int]] | None:
    """Exact minimum over topological orders of the peak sum of live bytes.

    inplace: op -> inputs its output may overwrite when they die there (then the pair counts
    once while the op runs). Returns (peak, order) or None when the search exceeds
    `max_states` memo entries.
    """
    search = _Reorder(graph, max_states, inplace)
    n, base_live = search.n, search.base_live
    memo, full, stack_limit, best = search.memo, search.full, search.stack_limit, search.best

    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 4 * n + 100))
    try:
        peak = max(best(0), base_live)
    finally:
        sys.setrecursionlimit(old)
    if stack_limit[0]:
        return None
    order, done = [], 0
    while done != full:
        k = memo[done][1]
        order.append(k)
        done |= 1 << k
    return peak, order
