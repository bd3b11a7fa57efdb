"""Row-band segments: chains of spatially local operators run band by band (issue #7).

A row segment is a `Segment` with dim "rows": o_1 -> ... -> o_m, each internal tensor with one
consumer. Every step computes new rows of one op; the last op writes bands of h rows of the full
output tensor, every internal tensor exists only as a band buffer holding the rows its consumer
still needs. Halo rows (needed by the next band too) are kept, never recomputed: a "halo" step
moves them to the top of the band buffer before the producer appends the next rows, so a band
buffer holds rows [base, base + capacity) at slots 0.. (slot = row - base).

Streaming in place: the chain output may be written over rows of the chain input that no later
step reads; `stream_delta` gives the largest offset(output) - offset(input) that allows it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pexopt.deadline import check as check_deadline
from pexopt.graph.ir import Graph, per_graph
from pexopt.graph.rows import height, input_rows, is_nhwc, row_bytes, row_capable
from pexopt.partial.candidates import Segment, workspace_bytes


@dataclass(frozen=True)
class BandStep:
    """One step of a row segment: `op` computes rows [r0, r1) of `tensor` ("band"), or the
    band buffer of `tensor` keeps rows [r0, r1) moved to its top ("halo", op = producer)."""

    mode: str
    op: int
    tensor: int
    r0: int
    r1: int


def admissible_heights(h_out: int, max_heights: int = 6) -> tuple[int, ...]:
    """Band heights: powers of two and divisors of the output rows below h_out, thinned to at
    most max_heights (always keeping 1)."""
    hs = sorted({1} | {1 << i for i in range(h_out.bit_length()) if (1 << i) < h_out}
                | {d for d in range(1, h_out) if h_out % d == 0})
    if len(hs) <= max_heights:
        return tuple(hs)
    keep = {hs[0], hs[-1]}
    for i in range(1, max_heights - 1):
        keep.add(hs[round(i * (len(hs) - 1) / (max_heights - 1))])
    return tuple(sorted(keep))


def find_row_segments(graph: Graph, first_id: int = 0, max_len: int = 6, max_heights: int = 6,
                      single: bool = False) -> list[Segment]:
    """Every chain of 2..max_len row-capable ops (1..max_len with `single`: a lone op only
    helps by streaming) whose internal tensors have one consumer; ids start at first_id."""
    cons = graph.consumers()
    outs = set(graph.outputs)
    segs: list[Segment] = []

    def internal_ok(t: int) -> bool:
        tt = graph.tensors[t]
        return (len(cons[t]) == 1 and t not in outs and not tt.external and tt.nbytes > 0
                and is_nhwc(graph, t))

    for first in graph.ops:
        check_deadline()
        if not row_capable(graph, first):
            continue
        chain = [first.id]
        while True:
            out = graph.ops[chain[-1]].outputs[0]
            if (len(chain) > 1 or single) and height(graph, out) > 1:
                internal = tuple(graph.ops[k].outputs[0] for k in chain[:-1])
                inside = set(internal)
                inputs = tuple(dict.fromkeys(i for k in chain for i in graph.ops[k].inputs
                                             if i not in inside and not graph.tensors[i].external))
                segs.append(Segment(id=first_id + len(segs), ops=tuple(chain),
                                    channels=height(graph, out), internal=internal,
                                    inputs=inputs, output=out, accumulate=False,
                                    widths=admissible_heights(height(graph, out), max_heights),
                                    dim="rows"))
            if len(chain) >= max_len or not internal_ok(out):
                break
            nxt = graph.ops[cons[out][0]]
            if not row_capable(graph, nxt) or nxt.inputs.count(out) != 1:
                break
            chain.append(nxt.id)
    return segs


@per_graph
def band_schedule(graph: Graph, seg: Segment, h: int
                  ) -> tuple[tuple[BandStep, ...], tuple[tuple[int, int], ...]]:
    """(steps, ((internal tensor, capacity rows), ...)) of a row segment at band height h.

    Backwards over the chain, each band asks of every internal tensor the rows its consumer
    reads for its new rows; the producer computes only rows not computed before (the last band
    also computes the rows nobody reads, so every row of every op is produced exactly once).
    """
    ops = seg.ops
    m = len(ops)
    xs = [graph.ops[k].outputs[0] for k in ops]  # xs[i]: output of ops[i]; xs[-1] = seg.output
    hi = [0] * m  # rows of xs[i] computed so far
    base = [0] * m  # row of xs[i] at slot 0 of its band buffer
    cap = [0] * m
    steps: list[BandStep] = []
    n_out = height(graph, seg.output)
    for r0 in range(0, n_out, h):
        r1 = min(n_out, r0 + h)
        last = r1 == n_out
        new: list[tuple[int, int]] = [(0, 0)] * m
        new[m - 1] = (r0, r1)
        moves: dict[int, int] = {}
        for i in range(m - 2, -1, -1):
            a, b = new[i + 1]
            lo, top = input_rows(graph, graph.ops[ops[i + 1]], xs[i], a, b)
            want = height(graph, xs[i]) if last else max(hi[i], top)
            new[i] = (hi[i], max(hi[i], want))
            if new[i][0] < new[i][1]:
                keep_from = min(lo, hi[i]) if a < b else hi[i]
                if keep_from != base[i]:
                    moves[i] = keep_from
                    base[i] = keep_from
            cap[i] = max(cap[i], new[i][1] - base[i], (top - base[i]) if a < b else 0)
            hi[i] = new[i][1]
        for i in range(m):
            if i in moves:
                steps.append(BandStep("halo", ops[i], xs[i], moves[i], new[i][0]))
            if new[i][0] < new[i][1]:
                steps.append(BandStep("band", ops[i], xs[i], *new[i]))
    return tuple(steps), tuple((xs[i], cap[i]) for i in range(m - 1))


def _round(x: int, align: int) -> int:
    return (x + align - 1) // align * align


def band_offsets(graph: Graph, seg: Segment, h: int, align: int = 1
                 ) -> list[tuple[int, int, int]]:
    """(internal tensor, offset in the workspace, bytes) of every band buffer, each aligned."""
    res, at = [], 0
    for t, rows in band_schedule(graph, seg, h)[1]:
        size = rows * row_bytes(graph, t)
        res.append((t, at, size))
        at += _round(size, align)
    return res


def band_workspace_bytes(graph: Graph, seg: Segment, h: int, align: int = 1) -> int:
    """All band buffers of a row segment (live together for the whole segment)."""
    offs = band_offsets(graph, seg, h, align)
    return offs[-1][1] + offs[-1][2] if offs else 0


def stream_input(graph: Graph, seg: Segment) -> int | None:
    """The chain input the output may stream over (the first op's first input), if any; a
    hybrid segment streams like the row segment of its chain (its output rows of a band are
    written after every slice of that band, which read no later input rows than the band)."""
    if seg.dim not in ("rows", "hybrid"):
        return None
    t = graph.ops[seg.ops[0]].inputs[0]
    tt = graph.tensors[t]
    if tt.external or tt.nbytes == 0 or t in graph.outputs or t not in seg.inputs:
        return None
    return t


@per_graph
def stream_delta(graph: Graph, seg: Segment, h: int) -> int | None:
    """Largest offset(output) - offset(input) at which every band of the output is written
    over input rows that no step from then on reads (None: the segment cannot stream).

    At the step writing output rows [r0, r1): r1 * row(out) <= L * row(in) + delta, L the
    first input row read by that step or any later one.
    """
    a = stream_input(graph, seg)
    if a is None:
        return None
    steps = band_schedule(graph, seg, h)[0]
    ra, rb = row_bytes(graph, a), row_bytes(graph, seg.output)
    reads: list[int] = []  # per step: first row of `a` it reads (height if none)
    for st in steps:
        op = graph.ops[st.op]
        lo = height(graph, a)
        if st.mode == "band" and a in op.inputs:
            r = input_rows(graph, op, a, st.r0, st.r1)
            if r[0] < r[1]:
                lo = r[0]
        reads.append(lo)
    later = height(graph, a)
    delta = graph.tensors[a].nbytes  # past the input's end: no overlap at all
    for i in range(len(steps) - 1, -1, -1):
        later = min(later, reads[i])
        st = steps[i]
        if st.mode == "band" and st.tensor == seg.output:
            delta = min(delta, later * ra - st.r1 * rb)
    return delta


def stream_union(graph: Graph, seg: Segment, h: int, align: int) -> tuple[int, int, int] | None:
    """(delta, low, size) of the one box input and output share while streaming at height h:
    offset(output) = offset(input) + delta, the box is [offset(input) + low, + size).

    Any delta <= stream_delta is safe; the union max(in, delta + out) - min(0, delta) is
    smallest at the largest delta <= 0, so delta = min(0, stream_delta) rounded down to the
    alignment (low = delta)."""
    d = stream_delta(graph, seg, h)
    a = stream_input(graph, seg)
    if d is None or a is None:
        return None
    d = min(0, d) // align * align
    hi = max(graph.tensors[a].nbytes, d + graph.tensors[seg.output].nbytes)
    return d, d, hi - d


def row_macro_bytes(graph: Graph, seg: Segment, stream: bool) -> int:
    """Least bytes live while a row (or hybrid) segment runs (its full inputs, output and
    workspace; with streaming the input and output share their union box), over its heights."""
    # an external tensor (the graph input with --input-external) is not in the arena
    size = {t: 0 if graph.tensors[t].external else graph.tensors[t].nbytes
            for t in (*seg.inputs, seg.output)}
    io = sum(size[t] for t in seg.inputs) + size[seg.output]
    best = None
    for h in seg.widths:
        ws = workspace_bytes(graph, seg, h)
        v = io + ws
        u = stream_union(graph, seg, h, 1) if stream else None
        a = stream_input(graph, seg)
        if u is not None and a is not None:
            v = min(v, io - size[a] - size[seg.output] + u[2] + ws)
        best = v if best is None else min(best, v)
    return best or 0


def worth_trying(graph: Graph, segs: list[Segment], lb: int, frac: float = 1.0) -> list[Segment]:
    """The row segments with an op whose own inputs and outputs exceed frac x lb.

    A search-space cut, not a proof: bands only pay where running the ops whole is large
    against the arena (the lower bound `lb`, computed over every candidate, stays valid; the
    solver never claims OPTIMAL below it). Keeps the CP-SAT model small on big networks.
    """
    def io(k: int) -> int:
        op = graph.ops[k]
        return sum(graph.tensors[t].nbytes for t in dict.fromkeys(op.inputs + op.outputs)
                   if not graph.tensors[t].external)

    return [s for s in segs if max(io(k) for k in s.ops) > frac * lb]
