"""The choices of a row-band plan for a fixed order (`rows_greedy`): which segments run at which
width or band height, which stream over their input, which outputs overwrite an input in place;
whether they obey the model's constraints, the rectangles they put in the arena and the rank of
their live bytes.

The rectangles mirror `model._Model` exactly (lifetimes, in-place shifts, workspaces,
accumulators, temporaries, kernel scratch, streaming cuts and union boxes), so a layout of them
(`rows_layout`) is a complete hint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

from pexopt.graph.ir import Graph
from pexopt.partial.bands import stream_input, stream_union
from pexopt.partial.candidates import Segment, accumulator_bytes
from pexopt.schedule import SolverParams, temp_bytes
from pexopt.solver.bounds import all_inplace_candidates, dw_inplace_ok
from pexopt.solver.buffers import buffer_tensors, op_scratch, seg_workspace

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


def _rank(diff: list[int]) -> tuple[int, int]:
    live = list(accumulate(diff))
    peak = max(live)
    top = 3 * peak // 4
    return peak, sum(v - top for v in live if v > top)

