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

The choices, their validity, rectangles and rank are in `rows_choices.py`; the first fit and the
CP-SAT re-packing with every choice fixed (`fixed_layout`) in `rows_layout.py`.
"""

from __future__ import annotations

import time

from pexopt.deadline import check as check_deadline
from pexopt.graph.ir import Graph
from pexopt.partial.candidates import Segment
from pexopt.schedule import Schedule, SolverParams
from pexopt.solver.rows_choices import _Base, _Choices, _Ctx, _rank
from pexopt.solver.rows_layout import first_fit_layout, fixed_layout

__all__ = ["fixed_layout", "row_plan"]  # what the solver and the tests import from here


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
    cur = first_fit_layout(ctx, ch)
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
                sc = first_fit_layout(ctx, new)
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

