"""solve_layout against brute force, an independent schedule checker, ablations and bounds.

The brute force and the checker import nothing from `pexopt.solver`: they recompute lifetimes,
in-place legality and packings from the graph alone (semantics in solver/model.py's docstring).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import fields
from pathlib import Path

import pytest

from pexopt.frontend.onnx_import import import_onnx
from pexopt.graph.ir import Graph
from pexopt.graph.synthetic import KB_SIZES, chain, inception, random_dag, topo_orders, unet
from pexopt.ops import SPECS
from pexopt.schedule import Schedule, SolverParams
from pexopt.solver.baselines import reorder_peak
from pexopt.solver.bounds import any_order_bound
from pexopt.solver.cpsat_layout import solve_layout

ALIGN = 4
MODELS = Path(__file__).resolve().parents[1] / "models"

# --------------------------------------------------------------------------- graph facts


def arena_tensors(graph: Graph) -> list[int]:
    return [t.id for t in graph.tensors if not t.external and t.nbytes > 0]


def life(graph: Graph, order: list[int]) -> dict[int, tuple[int, int]]:
    """Arena tensor -> inclusive (first, last) step; inputs from 0, outputs to the last step."""
    pos = {k: p for p, k in enumerate(order)}
    n = len(order)
    first: dict[int, int] = {t: 0 for t in graph.inputs}
    last: dict[int, int] = {}
    for op in graph.ops:
        for t in op.outputs:
            first[t] = pos[op.id]
        for t in op.inputs:
            last[t] = max(last.get(t, -1), pos[op.id])
    for t in graph.outputs:
        last[t] = n - 1
    return {t: (first[t], max(first[t], last.get(t, first[t]))) for t in arena_tensors(graph)}


def legal_inplace(graph: Graph, order: list[int], k: int) -> list[int]:
    """Inputs op k may overwrite in this order: table allows it, one output no larger than the
    input, input read once by k, not a graph output, and every other reader runs before k; a
    depthwise conv (through an H x W temporary) only over an input of its own shape."""
    op = graph.ops[k]
    dw = SPECS[op.kind].inplace_temp
    if not (SPECS[op.kind].inplace or dw) or len(op.outputs) != 1:
        return []
    o = graph.tensors[op.outputs[0]]
    if o.external or o.nbytes == 0:
        return []
    pos = {kk: p for p, kk in enumerate(order)}
    res = []
    for i in dict.fromkeys(op.inputs):
        t = graph.tensors[i]
        if t.external or i in graph.outputs or t.nbytes < o.nbytes or op.inputs.count(i) > 1:
            continue
        if dw and t.shape != o.shape:
            continue
        readers = [c.id for c in graph.ops if i in c.inputs and c.id != k]
        if all(pos[c] < pos[k] for c in readers):
            res.append(i)
    return res


# --------------------------------------------------------------------------- brute force

Rect = tuple[int, int, int]  # (first step, last step, size)


def _conflicts(a: tuple[Rect, ...], b: tuple[Rect, ...]) -> list[tuple[int, int]]:
    """(size in a, size in b) for every time-overlapping pair of rectangles of two items."""
    return [(sa, sb) for (fa, la, sa) in a for (fb, lb, sb) in b if fa <= lb and fb <= la]


def min_packing(items: list[tuple[Rect, ...]], align: int, best: int, floor: int) -> int:
    """Least max(offset + size) over offsets of `items` (each a group of rectangles sharing one
    offset), or `best` if none is below it. Every permutation, each item at the lowest aligned
    offset that fits against the items placed before it (optimal by the classic argument: sort an
    optimal packing by offset; the greedy never puts an item higher). Stops at `floor`."""
    n = len(items)
    height = [max(s for _, _, s in it) for it in items]
    conf = [[_conflicts(items[a], items[b]) for b in range(n)] for a in range(n)]
    off = [-1] * n
    best_box = [best]
    order = sorted(range(n), key=lambda a: -height[a])

    def lowest(a: int) -> int:
        cons = [(off[b], sa, sb) for b in range(n) if off[b] >= 0 for sa, sb in conf[a][b]]
        cands = sorted({0} | {(y + sb + align - 1) // align * align for y, _, sb in cons})
        for x in cands:
            if all(x + sa <= y or x >= y + sb for y, sa, sb in cons):
                return x
        raise AssertionError("unreachable")

    def dfs(placed: int, top: int, prev: int) -> None:
        if placed == n:
            best_box[0] = top
            return
        for a in order:
            if off[a] >= 0:
                continue
            # two adjacent items that never meet commute: explore one of the two orders only
            if prev >= 0 and a < prev and not conf[a][prev]:
                continue
            x = lowest(a)
            t = max(top, x + height[a])
            if t >= best_box[0]:
                continue
            off[a] = x
            dfs(placed + 1, t, a)
            off[a] = -1
            if best_box[0] <= floor:
                return

    dfs(0, 0, -1)
    return best_box[0]


def _root(parent: dict[int, int], t: int) -> int:
    while parent[t] != t:
        t = parent[t]
    return t


def layouts(graph: Graph, inplace: bool) -> dict[tuple, int]:
    """Distinct packing problems over every order and in-place choice -> live-bytes lower bound."""
    res: dict[tuple, int] = {}
    for order in topo_orders(graph):
        lt = life(graph, order)
        pos = {k: p for p, k in enumerate(order)}
        opts = [[None] + (legal_inplace(graph, order, k) if inplace else []) for k in order]
        for choice in itertools.product(*opts):
            rects = {t: (a, b, graph.tensors[t].nbytes) for t, (a, b) in lt.items()}
            parent = {t: t for t in rects}  # union-find of tensors sharing one offset
            for k, i in zip(order, choice):
                if i is None:
                    continue
                o = graph.ops[k].outputs[0]
                a, b, s = rects[o]
                rects[o] = (pos[k] + 1, b, s)  # starts once its input has been consumed
                parent[_root(parent, o)] = _root(parent, i)
            groups: dict[int, list[Rect]] = {}
            for t, r in rects.items():
                if r[0] <= r[1]:
                    groups.setdefault(_root(parent, t), []).append(r)
            items = tuple(sorted(tuple(sorted(g)) for g in groups.values()))
            peak = max(sum(s for a, b, s in rects.values() if a <= p <= b)
                       for p in range(len(order)))
            res[items] = peak
    return res


def brute_force(graph: Graph, inplace: bool, align: int = ALIGN) -> int:
    """The optimal arena over every order, in-place choice and offset."""
    best = 1 << 62
    for items, peak in sorted(layouts(graph, inplace).items(), key=lambda kv: kv[1]):
        if peak >= best:
            break
        best = min_packing(list(items), align, best, peak)
    return best


# --------------------------------------------------------------------------- checker


def check(graph: Graph, s: Schedule, params: SolverParams) -> None:
    """Independent validity check of a schedule; raises AssertionError with the reason."""
    n = len(graph.ops)
    assert sorted(s.order) == list(range(n)), "order is not a permutation of the ops"
    pos = {k: p for p, k in enumerate(s.order)}
    prod = graph.producer()
    for op in graph.ops:
        for t in op.inputs:
            assert t not in prod or pos[prod[t]] < pos[op.id], f"{op.name} before its input"
    bufs = arena_tensors(graph)
    assert set(s.offsets) == set(bufs), "offsets are not exactly the arena tensors"
    for t in bufs:
        assert s.offsets[t] >= 0 and s.offsets[t] % params.align == 0, f"t{t} offset"
    pairs = set()
    if not params.inplace:
        assert not s.inplace, "in-place used while disabled"
    for o, i in s.inplace.items():
        (k,) = [op.id for op in graph.ops if o in op.outputs]
        assert i in legal_inplace(graph, s.order, k), f"illegal in place t{o} over t{i}"
        assert sum(1 for oo in s.inplace if oo in graph.ops[k].outputs) == 1
        assert s.offsets[o] == s.offsets[i], f"in-place t{o} not at t{i}'s offset"
        pairs.add(frozenset((o, i)))
    assert getattr(params, "split", False) or not getattr(s, "splits", None), "split used"
    lt = life(graph, s.order)
    for a, b in itertools.combinations(bufs, 2):
        (fa, la), (fb, lb) = lt[a], lt[b]
        if fa > lb or fb > la:
            continue
        oa, ob = s.offsets[a], s.offsets[b]
        if oa < ob + graph.tensors[b].nbytes and ob < oa + graph.tensors[a].nbytes:
            assert frozenset((a, b)) in pairs, f"t{a} and t{b} overlap in time and address"
            assert max(fa, fb) == min(la, lb), "in-place pair shares more than its step"
    for k, off in s.temps.items():  # an in-place depthwise's temporary, at its step only
        o = graph.ops[k].outputs[0]
        assert o in s.inplace, f"temporary of op {k} without its in-place write"
        size = graph.tensors[o].nbytes // graph.tensors[o].shape[-1]
        for t in bufs:
            fa, la = lt[t]
            if fa <= pos[k] <= la and t != o:
                assert off + size <= s.offsets[t] or s.offsets[t] + graph.tensors[t].nbytes \
                    <= off, f"temporary of op {k} overlaps t{t}"
    ends = [s.offsets[t] + graph.tensors[t].nbytes for t in bufs]
    ends += [off + graph.tensors[graph.ops[k].outputs[0]].nbytes
             // graph.tensors[graph.ops[k].outputs[0]].shape[-1] for k, off in s.temps.items()]
    arena = max(ends, default=0)
    assert s.arena == arena, "arena is not max(offset + size)"
    assert s.bound <= s.arena
    assert (s.status == "OPTIMAL") == (s.bound == s.arena)
    _plan_validator(graph, s, params)


def _plan_validator(graph: Graph, s: Schedule, params: SolverParams) -> None:
    """Also run the project's plan validator when it exists."""
    try:
        from pexopt.plan.validator import validate
    except ImportError:
        return
    from pexopt.plan.build import build_plan

    res = validate(build_plan(graph, s, params, None), graph)
    assert not res, f"plan validator: {res}"


# Layer by layer: these tests pin the whole-tensor problem, so partial execution (if the solver
# has that switch) stays off.
LAYERED = {"split": False} if "split" in {f.name for f in fields(SolverParams)} else {}


def solve(graph: Graph, **kw: object) -> Schedule:
    """solve_layout (1 worker, 10 s, align 4, layer by layer unless overridden), then check."""
    params = SolverParams(**{"workers": 1, "time_limit": 10, "align": ALIGN, **LAYERED, **kw})
    s = solve_layout(graph, params)
    check(graph, s, params)
    return s


# --------------------------------------------------------------------------- tests

SMALL = [random_dag(seed, random.Random(1000 + seed).randint(4, 7), branching=0.6,
                    inplace_frac=0.4, name=f"rand{seed}") for seed in range(30)]


def test_min_packing_is_exact() -> None:
    """The brute force's packing search against plain enumeration of offsets (tiny cases)."""
    r = random.Random(5)
    for _ in range(25):
        items = []
        for _ in range(r.randint(2, 4)):
            a = r.randint(0, 3)
            items.append(((a, r.randint(a, 3), r.choice((1, 2, 3, 5))),))
        align = r.choice((1, 2))
        best = 1 << 30
        span = range(0, sum(it[0][2] for it in items) + align, align)
        for offs in itertools.product(span, repeat=len(items)):
            top = max(o + it[0][2] for o, it in zip(offs, items))
            if top < best and all(
                    fa > lb or fb > la or oa + sa <= ob or ob + sb <= oa
                    for (oa, ((fa, la, sa),)), (ob, ((fb, lb, sb),))
                    in itertools.combinations(zip(offs, items), 2)):
                best = top
        assert min_packing(items, align, 1 << 30, 0) == best, items


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "no_inplace"])
def test_brute_force_optimum(inplace: bool) -> None:
    used_inplace = reordered = 0
    for g in SMALL:
        assert len(arena_tensors(g)) <= 9
        opt = brute_force(g, inplace)
        s = solve(g, inplace=inplace)
        assert s.status == "OPTIMAL", g.name
        assert s.arena == opt, g.name
        bound, _ = any_order_bound(g, inplace)
        assert bound <= opt, g.name
        used_inplace += bool(s.inplace)
        reordered += s.order != sorted(s.order)
    if inplace:
        assert used_inplace >= 5  # the generator does exercise in-place
    assert reordered >= 1


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "no_inplace"])
def test_order_search_bound_is_valid(inplace: bool) -> None:
    """The order-search bound never exceeds the true optimum, and its order reaches it."""
    from pexopt.solver.bounds import order_search_bound
    from pexopt.solver.cpsat_layout import all_inplace_candidates

    tight = 0
    for g in SMALL:
        opt = brute_force(g, inplace)
        lo, _ = any_order_bound(g, inplace)
        cands = all_inplace_candidates(g) if inplace else None
        bound, order = order_search_bound(g, lo, opt + 1, cands)
        assert lo <= bound <= opt, g.name
        assert order is not None and sorted(order) == list(range(len(g.ops)))
        tight += bound == opt
    assert tight >= len(SMALL) // 2  # it is a strong bound, not only a valid one


def test_brute_force_structured() -> None:
    for g in (inception(2, 2), inception(3, 2, big=40, small=4), unet(2),
              chain([16, 32, 32, 8, 40], relu_after=(1, 2))):
        for inplace in (True, False):
            assert solve(g, inplace=inplace).arena == brute_force(g, inplace), g.name


def test_brute_force_unaligned_sizes() -> None:
    """Sizes that are not multiples of the alignment: offsets still aligned, still optimal."""
    for seed in range(10):
        g = random_dag(seed, 6, branching=0.6, inplace_frac=0.4, sizes=tuple(range(3, 40, 5)))
        for inplace in (True, False):
            s = solve(g, inplace=inplace)
            assert s.arena == brute_force(g, inplace), (seed, inplace)


@pytest.mark.parametrize("seed", [3, 4, 5, 9])  # 12-19 ops where reordering and in place pay
def test_ablations_agree(seed: int) -> None:
    """Every combination of switches reaches the same optimum (minimalloc-style ablation).

    With reorder=False OPTIMAL means optimal for the file order, so the two groups are compared
    separately; in-place stays on.
    """
    g = random_dag(seed, random.Random(seed).randint(12, 20), branching=0.6, sizes=KB_SIZES)
    arenas: dict[bool, set[int]] = {True: set(), False: set()}
    for reorder, cumulative, hint, use_bound in itertools.product((True, False), repeat=4):
        s = solve(g, reorder=reorder, cumulative=cumulative, hint=hint, use_bound=use_bound,
                  workers=2)
        if s.status == "OPTIMAL":
            arenas[reorder].add(s.arena)
        else:
            assert not (cumulative and hint and use_bound), "default switches not OPTIMAL"
    assert len(arenas[True]) == 1 and len(arenas[False]) == 1, arenas
    assert min(arenas[True]) <= min(arenas[False])


def test_bound_is_tight_on_models() -> None:
    paths = sorted(MODELS.glob("*_int8.onnx"))
    assert paths, f"no models in {MODELS}"
    for p in paths:
        g = import_onnx(p)
        s = solve(g, workers=2)
        assert s.status == "OPTIMAL" and s.bound == s.arena, p.name
        assert any_order_bound(g)[0] <= s.arena, p.name


def test_reordering_helps() -> None:
    for g in (inception(2, 2), inception(3, 3), inception(4, 2, big=4096, small=256, stem=1024),
              unet(2), unet(3, enc=1024, skip=4096)):
        for inplace in (True, False):
            free = solve(g, inplace=inplace)
            fixed = solve(g, inplace=inplace, reorder=False)
            assert free.status == "OPTIMAL", g.name
            assert free.arena < fixed.arena, (g.name, inplace)
            if not inplace:
                peak, _ = reorder_peak(g)
                assert free.arena == peak, g.name  # no fragmentation on these
            if len(g.ops) <= 7:
                assert free.arena == brute_force(g, inplace), g.name


def test_never_worse_than_file_order() -> None:
    """80-op DAGs: the reordered plan is never worse than the file-order-only plan.

    Budgets are deterministic (1 worker, max_deterministic_time per stage, a wall limit that
    never binds), so the reorder run's file-order stage is exactly the reorder=False run; with
    wall-clock limits the comparison would depend on the machine's load.
    """
    for seed in range(5):
        g = random_dag(100 + seed, 80, sizes=KB_SIZES)
        free = solve(g, time_limit=60, deterministic_time=0.5)
        fixed = solve(g, time_limit=60, deterministic_time=0.5, reorder=False)
        assert free.arena <= fixed.arena, seed
        assert free.bound <= free.arena


def test_bound_valid_when_reorder_stage_finds_nothing() -> None:
    """A file-order optimum is no bound for other orders: if the reorder stage runs out of time
    without a solution the result must not claim OPTIMAL (regression)."""
    kw = {"big": 4096, "small": 256, "stem": 1024}
    feasible = solve(inception(8, 3, interleave=False, **kw), reorder=False).arena  # same DAG
    s = solve(inception(8, 3, **kw), deterministic_time=0.01, time_limit=60)
    assert s.bound <= feasible
    assert s.status != "OPTIMAL" or s.arena <= feasible


def test_deterministic() -> None:
    small = random_dag(7, 16, sizes=KB_SIZES)
    big = random_dag(8, 40, sizes=KB_SIZES)
    for g, kw in ((small, {}), (big, {"deterministic_time": 0.5, "time_limit": 60})):
        a = solve(g, seed=3, **kw)
        b = solve(g, seed=3, **kw)
        assert (a.order, a.offsets, a.inplace) == (b.order, b.offsets, b.inplace), g.name
