"""A constructive plan for the model with row bands: the CP-SAT hint and a safe fallback.

The full model rarely finds a streaming plan from a hint without rows: switching a row segment
on moves many offsets at once (the streamed pair sits at a fixed distance inside its union box),
which its local search reaches late or, under load, not at all. This module builds such a plan
directly, for a fixed order:

1. from a start schedule (greedy, or a channel-only plan), every option (a segment at a width
   or band height, streaming or not; an in-place write) is switched on in turn, dropping the
   choices it conflicts with (other segments on its ops, in-place writes on its ops, over its
   hidden tensors or over its streamed input);
2. options are ranked by the peak of live bytes (then by the bytes near the peak), the best
   few are laid out by a first fit, and the best layout is kept if it is no larger;
3. when no single option helps, pairs are tried: a used segment replaced by a shorter one plus
   an option on the ops it gave up (one long streaming chain -> two short ones, say);
4. repeat until nothing helps (the rank falls at every step, so this ends).

The rectangles mirror `model._Model` exactly (lifetimes, in-place shifts, workspaces,
accumulators, temporaries, kernel scratch, streaming cuts and union boxes), so the result is a
complete hint; it is also checked by the plan validator before it is returned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import accumulate

from pexopt.deadline import check as check_deadline
from pexopt.graph.ir import Graph
from pexopt.partial.bands import stream_input, stream_union
from pexopt.partial.candidates import Segment, accumulator_bytes
from pexopt.schedule import Schedule, SolverParams, temp_bytes
from pexopt.solver.bounds import all_inplace_candidates, dw_inplace_ok
from pexopt.solver.buffers import buffer_tensors, extent, op_scratch, seg_workspace
from pexopt.solver.model import Progress, _Model

Key = tuple[str, int]  # ("t", tensor) | ("ws", seg) | ("acc", seg) | ("tmp", op) | ("ks", op)
# | ("un", seg): the streaming union box


@dataclass
class _Piece:
    key: Key
    t0: int  # first step
    t1: int  # one past the last step
    size: int


@dataclass
class _Choices:
    """The discrete part of a schedule, for a fixed order."""

    splits: dict[int, int]
    inplace: dict[int, int]
    streams: set[int] = field(default_factory=set)

    def copy(self) -> _Choices:
        return _Choices(dict(self.splits), dict(self.inplace), set(self.streams))


@dataclass
class _Base:
    """A state of the search: its choices, live-bytes differences per step and rectangles."""

    ch: _Choices
    diff: list[int]
    pieces: dict[Key, _Piece]


class _Ctx:
    """What every evaluation needs: the graph facts and the model's segments."""

    def __init__(self, graph: Graph, params: SolverParams, order: list[int],
                 segments: list[Segment]) -> None:
        self.g, self.p, self.order = graph, params, order
        self.n = len(order)
        self.pos = {k: i for i, k in enumerate(order)}
        self.segs = {s.id: s for s in segments
                     if all(self.pos[b] == self.pos[a] + 1 for a, b in zip(s.ops, s.ops[1:]))}
        self.prod, self.cons = graph.producer(), graph.consumers()
        self.outs = set(graph.outputs)
        self.bufs = buffer_tensors(graph)
        self.size = {t: graph.tensors[t].nbytes for t in self.bufs}
        self.kscr = op_scratch(graph, params.target)
        self.ws = {(s.id, w): seg_workspace(graph, s, w, params)
                   for s in self.segs.values() for w in s.widths}
        self.union = {(s.id, h): stream_union(graph, s, h, params.align)
                      for s in self.segs.values() if s.dim == "rows" for h in s.widths}
        self.cands = all_inplace_candidates(graph) if params.inplace else {}
        self.dw = {(graph.ops[k].outputs[0], i) for k, cs in self.cands.items() for i in cs
                   if dw_inplace_ok(graph, k, i)}  # in-place depthwise: a temporary box

    def seg_of(self, ch: _Choices) -> dict[int, Segment]:
        """Op id -> the used segment running it."""
        return {k: self.segs[sid] for sid in ch.splits for k in self.segs[sid].ops}

    def read(self, c: int, t: int, seg_of: dict[int, Segment]) -> int:
        """The step until which op c keeps t live: a used segment reads its full inputs until
        its last op."""
        s = seg_of.get(c)
        if s is not None and t in s.inputs:
            return self.pos[s.ops[-1]]
        return self.pos[c]

    def stream_pair(self, sid: int) -> tuple[int, int] | None:
        """(input, output) a row segment may stream over, both in the arena."""
        s = self.segs[sid]
        a = stream_input(self.g, s)
        if a is None or a not in self.size or s.output not in self.size:
            return None
        return a, s.output

    def valid(self, ch: _Choices) -> bool:
        """The model's constraints on the choices, for this order."""
        seg_of: dict[int, Segment] = {}
        for sid in ch.splits:
            for k in self.segs[sid].ops:
                if k in seg_of:
                    return False
                seg_of[k] = self.segs[sid]
        hidden = {t for sid in ch.splits for t in self.segs[sid].internal}
        for o, i in ch.inplace.items():
            k = self.prod[o]
            if k in seg_of or o in hidden or i in hidden:
                return False
            if any(self.read(c, i, seg_of) >= self.pos[k] for c in self.cons[i] if c != k):
                return False
        streamed: set[int] = set()
        for sid in ch.streams:
            pair = self.stream_pair(sid)
            if sid not in ch.splits or pair is None or self.union[(sid, ch.splits[sid])] is None:
                return False
            a, _ = pair
            s = self.segs[sid]
            if a in streamed or any(self.pos[c] >= self.pos[s.ops[0]] for c in self.cons[a]
                                    if c not in s.ops):
                return False
            streamed.add(a)
        return True

    def pieces(self, ch: _Choices, only: tuple[set[int], set[int], set[int]] | None = None
               ) -> tuple[list[_Piece], list[tuple[Key, Key, int]]] | None:
        """The rectangles' time spans and sizes, and the links off[b] = off[a] + rel (None if
        some span would be negative); `only` = (tensors, ops, segments) keeps the rectangles
        of those."""
        pos, n = self.pos, self.n
        tens, ops, sids = only if only is not None else (None, None, None)
        seg_of = self.seg_of(ch)
        hidden = {t for sid in ch.splits for t in self.segs[sid].internal}
        out_of = {self.segs[sid].output: self.segs[sid] for sid in ch.splits}
        cut_end: dict[int, int] = {}
        cut_start: dict[int, int] = {}
        links: list[tuple[Key, Key, int]] = []
        res: list[_Piece] = []
        for sid in ch.streams:
            s = self.segs[sid]
            a, b = self.stream_pair(sid)  # type: ignore[misc]
            delta, low, size = self.union[(sid, ch.splits[sid])]  # type: ignore[misc]
            cut_end[a] = cut_start[b] = len(s.ops)
            links += [(("t", a), ("t", b), delta), (("t", a), ("un", sid), low)]
            if sids is None or sid in sids:
                res.append(_Piece(("un", sid), pos[s.ops[0]], pos[s.ops[0]] + len(s.ops),
                                  size))
        for t in self.bufs if tens is None else tens:
            if t in hidden or t not in self.size:
                continue
            start = pos[self.prod[t]] if t in self.prod else 0
            s = out_of.get(t)
            if s is not None:
                start = start + 1 if s.accumulate else pos[s.ops[0]]
            reads = [self.read(c, t, seg_of) for c in self.cons[t]]
            end = n if t in self.outs else max(reads, default=start)
            start += (t in ch.inplace) + cut_start.get(t, 0)
            stop = end + 1 - cut_end.get(t, 0)
            if stop < start:
                return None
            res.append(_Piece(("t", t), start, stop, self.size[t]))
        for o, i in ch.inplace.items():
            links.append((("t", i), ("t", o), 0))
        dw = {self.prod[o] for o, i in ch.inplace.items() if (o, i) in self.dw}
        for sid, w in ch.splits.items():
            if sids is not None and sid not in sids:
                continue
            s = self.segs[sid]
            first = pos[s.ops[0]]
            res.append(_Piece(("ws", sid), first, first + len(s.ops), self.ws[(sid, w)]))
            if s.accumulate:
                res.append(_Piece(("acc", sid), first, first + len(s.ops),
                                  accumulator_bytes(self.g.tensors[s.output])))
                links.append((("t", s.output), ("acc", sid), 0))
        for k in dw if ops is None else dw & ops:
            res.append(_Piece(("tmp", k), pos[k], pos[k] + 1, temp_bytes(self.g, k)))
        for k, sz in self.kscr.items():
            if k not in seg_of and k not in dw and (ops is None or k in ops):
                res.append(_Piece(("ks", k), pos[k], pos[k] + 1, sz))
        return res, links

    def base(self, ch: _Choices) -> _Base | None:
        """ch, its live-bytes differences and rectangles (None if a span would be negative)."""
        got = self.pieces(ch)
        if got is None:
            return None
        diff = [0] * (self.n + 2)
        for p in got[0]:
            diff[p.t0] += p.size
            diff[p.t1] -= p.size
        return _Base(ch, diff, {p.key: p for p in got[0]})

    def changed(self, a: _Choices, b: _Choices) -> tuple[set[int], set[int], set[int]]:
        """(tensors, ops, segments) whose rectangles may differ between a and b."""
        sids = {x for x in a.splits.keys() | b.splits.keys()
                if a.splits.get(x) != b.splits.get(x)} | (a.streams ^ b.streams)
        tens: set[int] = set()
        ops: set[int] = set()
        for x in sids:
            s = self.segs[x]
            tens.update(s.inputs, s.internal, (s.output,))
            ops.update(s.ops)
        for o in a.inplace.keys() | b.inplace.keys():
            if a.inplace.get(o) != b.inplace.get(o):
                tens.add(o)
                ops.add(self.prod[o])
        return tens, ops, sids

    def rank(self, base: _Base, new: _Choices) -> tuple[int, int] | None:
        """(peak of live bytes, bytes above 3/4 of that peak summed over the steps) of `new`,
        from base's and the rectangles that changed."""
        only = self.changed(base.ch, new)
        got = self.pieces(new, only)
        if got is None:
            return None
        tens, ops, sids = only
        keys = [("t", t) for t in tens] + [(k, x) for x in sids for k in ("ws", "acc", "un")] \
            + [(k, x) for x in ops for k in ("tmp", "ks")]
        d = list(base.diff)
        for key in keys:
            p = base.pieces.get(key)  # type: ignore[arg-type]
            if p is not None:
                d[p.t0] -= p.size
                d[p.t1] += p.size
        for p in got[0]:
            d[p.t0] += p.size
            d[p.t1] -= p.size
        return _rank(d)

    def layout(self, ch: _Choices) -> Schedule | None:
        """Offsets by first fit of the linked groups of rectangles (in-place pairs, streamed
        pairs with their union box, accumulators with their output) in a few orders; the
        lowest top wins."""
        got = self.pieces(ch)
        if got is None:
            return None
        pieces, links = got
        al = self.p.align
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
        sched = Schedule(list(self.order), {t: o for (kind, t), o in off.items() if kind == "t"},
                         dict(ch.inplace), 0, 0, "HEURISTIC", 0.0, params=self.p,
                         segments=list(self.segs.values()), splits=dict(ch.splits),
                         workspace={s: o for (kind, s), o in off.items() if kind == "ws"},
                         temps={k: o for (kind, k), o in off.items() if kind == "tmp"},
                         kscratch={k: o for (kind, k), o in off.items() if kind == "ks"},
                         streams=set(ch.streams))
        sched.arena = extent(self.g, sched)
        return sched

    def switch_on(self, ch: _Choices, sid: int, w: int, stream: bool) -> _Choices:
        """ch with segment sid at width w (streaming or not), conflicting choices dropped."""
        s = self.segs[sid]
        ops = set(s.ops)
        new = ch.copy()
        for other in list(new.splits):
            if ops & set(self.segs[other].ops):
                del new.splits[other]
                new.streams.discard(other)
        new.splits[sid] = w
        new.streams.discard(sid)
        if stream:
            new.streams.add(sid)
        hidden = {t for x in new.splits for t in self.segs[x].internal}
        seg_of = self.seg_of(new)
        streamed = {self.stream_pair(x)[0] for x in new.streams}  # type: ignore[index]
        new.inplace = {o: i for o, i in new.inplace.items()
                       if self.prod[o] not in seg_of and o not in hidden and i not in hidden
                       and i not in streamed}
        return new


Group = list[tuple[_Piece, int]]  # linked rectangles, each with its offset from the first
_ORDERS = (  # first-fit orders tried by `layout` (the best wins): by size, by area, by life
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


def _rank(diff: list[int]) -> tuple[int, int]:
    live = list(accumulate(diff))
    peak = max(live)
    top = 3 * peak // 4
    return peak, sum(v - top for v in live if v > top)


def _up(x: int, al: int) -> int:
    return (x + al - 1) // al * al


Option = tuple[str, int, int, bool]  # ("seg", segment, width or band height, streaming)
# | ("inpl", output, input it overwrites, False)


def _apply(ctx: _Ctx, ch: _Choices, o: Option) -> _Choices | None:
    """ch with the option switched on (None if it changes nothing)."""
    kind, x, y, st = o
    if kind == "inpl":
        if ch.inplace.get(x) == y:
            return None
        new = ch.copy()
        new.inplace[x] = y
        return new
    if ch.splits.get(x) == y and (x in ch.streams) == st:
        return None
    return ctx.switch_on(ch, x, y, st)


def _ops(ctx: _Ctx, o: Option) -> set[int]:
    return {ctx.prod[o[1]]} if o[0] == "inpl" else set(ctx.segs[o[1]].ops)


Ranked = list[tuple[tuple[int, int], Option, _Choices]]


def _improving(ctx: _Ctx, base: _Base, rank: tuple[int, int], options: list[Option]
               ) -> Ranked:
    """Every single switch that lowers the rank, best first."""
    res, ch = [], base.ch
    for o in options:
        check_deadline()
        new = _apply(ctx, ch, o)
        if new is None or not ctx.valid(new):
            continue
        r = ctx.rank(base, new)
        if r is not None and r < rank:
            res.append((r, o, new))
    res.sort(key=lambda x: x[:2])
    return res


def _pairs(ctx: _Ctx, base: _Base, rank: tuple[int, int], options: list[Option]) -> Ranked:
    """When no single switch helps: replace a used segment by a shorter one plus a switch
    over the ops it gave up (e.g. one long streaming chain by two short ones), each first
    switch at its best width and streaming choice; best first."""
    ch = base.ch
    used_ops = {k for sid in ch.splits for k in ctx.segs[sid].ops}
    firsts: dict[int, tuple[tuple[int, int], _Choices]] = {}
    for o in options:
        check_deadline()
        sid = o[1]
        if o[0] != "seg" or sid in ch.splits or not used_ops & _ops(ctx, o):
            continue
        new = _apply(ctx, ch, o)
        r = ctx.rank(base, new) if new is not None and ctx.valid(new) else None
        if r is not None and (sid not in firsts or r < firsts[sid][0]):
            firsts[sid] = (r, new)  # type: ignore[assignment]
    res: Ranked = []
    for sid, (_, s1) in sorted(firsts.items()):
        b1 = ctx.base(s1)
        if b1 is None:
            continue
        gone = {k for x in ch.splits if x not in s1.splits for k in ctx.segs[x].ops}
        gone -= set(ctx.segs[sid].ops)
        over = [o for o in options if gone & _ops(ctx, o)]
        res += [x for x in _improving(ctx, b1, rank, over) if sid in x[2].splits]
    res.sort(key=lambda x: x[:2])
    return res


def row_plan(graph: Graph, params: SolverParams, segments: list[Segment], start: Schedule,
             seconds: float = 5.0, tries: int = 3) -> Schedule | None:
    """A valid plan in start's order built greedily from start's choices (see the module
    docstring); None when it does not beat start, or if the plan broke a rule of the validator
    (never expected: the solve then goes on without it; tests check these plans directly).
    Deterministic: the `seconds` cap (a guard for huge graphs) is the only clock, checked
    between rounds."""
    from pexopt.plan.build import build_plan
    from pexopt.plan.validator import validate

    t0 = time.time()
    ctx = _Ctx(graph, params, start.order, segments)
    ch = _Choices({s: w for s, w in start.splits.items() if s in ctx.segs},
                  dict(start.inplace) if params.inplace else {},
                  {s for s in start.streams if s in ctx.segs} if params.stream else set())
    if not ctx.valid(ch):
        ch = _Choices({}, {})
    cur = ctx.layout(ch)
    base = ctx.base(ch)
    if cur is None or base is None:
        return None
    rank = _rank(base.diff)
    best = cur if cur.arena < start.arena else None
    options: list[Option] = [
        ("seg", sid, w, st) for sid, s in ctx.segs.items() for w in s.widths
        for st in ((False, True) if params.stream and ctx.stream_pair(sid) is not None
                   and ctx.union.get((sid, w)) is not None else (False,))]
    options += [("inpl", graph.ops[k].outputs[0], i, False) for k, cands in ctx.cands.items()
                for i in cands if graph.ops[k].outputs[0] in ctx.size]
    while time.time() - t0 < seconds:
        check_deadline()
        step = None
        for moves in (_improving, _pairs):  # pairs only when no single switch helps
            for r, _, new in moves(ctx, base, rank, options)[:tries]:
                sc = ctx.layout(new)
                if sc is not None and sc.arena <= cur.arena and (
                        step is None or (sc.arena, r) < (step[0].arena, step[1])):
                    step = (sc, r, new)
            if step is not None:
                break
        if step is None:
            break
        cur, rank, ch = step
        base = ctx.base(ch)  # type: ignore[assignment]
        assert base is not None and _rank(base.diff) == rank
        if cur.arena < (best or start).arena:
            best = cur
    if best is None:
        return None
    if validate(build_plan(graph, best), graph, check_hash=False):
        return None
    return best


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
