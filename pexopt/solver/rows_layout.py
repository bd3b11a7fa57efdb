"""Offsets for the choices of a row-band plan (`rows_choices`): a first fit of their rectangles,
then the CP-SAT model with every choice fixed, which closes the first fit's gap."""

from __future__ import annotations

from pexopt.graph.ir import Graph
from pexopt.partial.candidates import Segment
from pexopt.schedule import Schedule, SolverParams
from pexopt.solver.buffers import extent
from pexopt.solver.model import Progress, _Model
from pexopt.solver.rows_choices import Key, _Choices, _Ctx, _Piece


def first_fit_layout(ctx: _Ctx, ch: _Choices) -> Schedule | None:
    """Offsets by first fit of the linked groups of rectangles (in-place pairs, streamed
    pairs with their union box, accumulators with their output) in a few orders; the
    lowest top wins."""
    got = ctx.pieces(ch)
    if got is None:
        return None
    pieces, links = got
    al = ctx.p.align
    # union-find with relative offsets: rel[x] = off[x] - off[root(x)]
    parent: dict[Key, Key] = {p.key: p.key for p in pieces}
    rel: dict[Key, int] = {p.key: 0 for p in pieces}

    def find(x: Key) -> tuple[Key, int]:
        r, d = x, 0
        while parent[r] != r:
            d += rel[r]
            r = parent[r]
        return r, d

    for a, b, d in links:  # off[b] = off[a] + d
        ra, da = find(a)
        rb, db = find(b)
        if ra != rb:
            parent[rb], rel[rb] = ra, da + d - db
    groups: dict[Key, list[tuple[_Piece, int]]] = {}
    for p in pieces:
        r, d = find(p.key)
        groups.setdefault(r, []).append((p, d))
    off = min((_first_fit(sorted(groups.values(), key=key), al) for key in _ORDERS),
              key=lambda o: max((o[p.key] + p.size for p in pieces), default=0))
    sched = Schedule(list(ctx.order), {t: o for (kind, t), o in off.items() if kind == "t"},
                     dict(ch.inplace), 0, 0, "HEURISTIC", 0.0, params=ctx.p,
                     segments=list(ctx.segs.values()), splits=dict(ch.splits),
                     workspace={s: o for (kind, s), o in off.items() if kind == "ws"},
                     temps={k: o for (kind, k), o in off.items() if kind == "tmp"},
                     kscratch={k: o for (kind, k), o in off.items() if kind == "ks"},
                     streams=set(ch.streams))
    sched.arena = extent(ctx.g, sched)
    return sched


Group = list[tuple[_Piece, int]]  # linked rectangles, each with its offset from the first
_ORDERS = (  # first-fit orders tried by `first_fit_layout` (the best wins): size, area, life
    lambda gr: (-max(p.size for p, _ in gr), -sum(p.t1 - p.t0 for p, _ in gr),
                min(p.t0 for p, _ in gr)),
    lambda gr: (-sum(p.size * (p.t1 - p.t0) for p, _ in gr), min(p.t0 for p, _ in gr)),
    lambda gr: (-(max(p.t1 for p, _ in gr) - min(p.t0 for p, _ in gr)),
                -max(p.size for p, _ in gr), min(p.t0 for p, _ in gr)),
)


def _first_fit(groups: list[Group], al: int) -> dict[Key, int]:
    """Each group in turn at the lowest aligned offset where none of its rectangles overlaps
    one placed before (time and address half-open)."""
    placed: list[tuple[int, int, int, int]] = []  # (t0, t1, lo, hi)
    off: dict[Key, int] = {}
    for gr in groups:
        base = max(0, max(-d for _, d in gr))
        bad = sorted((lo - d - p.size, hi - d) for p, d in gr if p.size > 0
                     for t0, t1, lo, hi in placed if t0 < p.t1 and p.t0 < t1)
        x = _up(base, al)
        for lo, hi in bad:  # forbidden bases: lo < x < hi
            if lo < x < hi:
                x = _up(hi, al)
        # one pass over the sorted intervals can miss one reopened by a later jump
        while any(lo < x < hi for lo, hi in bad):
            x = _up(max(hi for lo, hi in bad if lo < x < hi), al)
        for p, d in gr:
            off[p.key] = x + d
            placed.append((p.t0, p.t1, x + d, x + d + p.size))
    return off


def _up(x: int, al: int) -> int:
    return (x + al - 1) // al * al


def fixed_layout(graph: Graph, params: SolverParams, segments: list[Segment], sched: Schedule,
                 lb: int, seconds: float, progress: Progress | None = None) -> Schedule | None:
    """sched's offsets re-solved by the CP-SAT model with every other choice fixed to sched's
    (order, splits, widths, streams, in-place writes), hinted by sched: a small packing model
    that closes the first fit's gap quickly. None if it finds nothing smaller."""
    md = _Model(graph, params, sched.order, segments, lb, sched.arena - params.align)
    m = md.m
    for s in md.segments:
        for w in s.widths:
            m.add(md.width[(s.id, w)] == int(sched.splits.get(s.id) == w))
    for (o, i), b in md.choice.items():
        m.add(b == int(sched.inplace.get(o) == i))
    for (g, h), b in md.streams.choice.items():
        m.add(b == int(g in sched.streams and sched.splits.get(g) == h))
    md.hint(sched)
    _, res, _ = md.solve(seconds, "rows layout", progress)
    return res if res is not None and res.arena < sched.arena else None
