"""Hybrid segments: a chain run band by band AND slice by slice (issue #7, part 4).

A hybrid segment o_1 -> ... -> o_m is both a row chain (`bands`) and a channel chain ending in
an accumulating dense conv (`candidates`), e.g. expand -> depthwise -> project of an inverted
residual block. Per band of output rows: the halo rows of o_1's output are moved as in a row
segment; then for every channel slice [c0, c1) o_1 computes its new rows of that slice into its
band buffer, o_2..o_{m-1} compute the band's rows of the slice into band x slice buffers
("tiles"), and o_m adds the slice's partial sums into an int32 accumulator of one band
(rows x W x C_out); after the last slice a requantize step writes the band's output rows.

o_1's band buffer holds every channel: the rows the next band needs again are kept for all
channels, never recomputed. So only o_1's output may carry halo rows; every later internal
tensor is read row for row by its consumer (`row_identity`) and lives as a tile of one band.
The workspace box holds the band buffer, the tiles and the accumulator (`hybrid_offsets`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pexopt.graph.ir import Graph, Op, per_graph
from pexopt.graph.rows import height, input_rows, is_nhwc, row_bytes, row_capable
from pexopt.partial.bands import admissible_heights, band_schedule
from pexopt.partial.candidates import ACC_BYTES, Segment, admissible_widths, find_segments


@dataclass(frozen=True)
class HybridStep:
    """One step of a hybrid segment: "halo" (o_1's band buffer keeps rows [r0, r1)), "band"
    (op computes rows [r0, r1) of channels [c0, c1) of its output), "accumulate" (the last op
    adds input channels [c0, c1) for output rows [r0, r1)), "requantize" (rows [r0, r1))."""

    mode: str
    op: int
    r0: int
    r1: int
    c0: int = 0
    c1: int = 0


def row_identity(graph: Graph, op: Op, t: int) -> bool:
    """Output rows [r0, r1) of op read exactly rows [r0, r1) of input t."""
    h = height(graph, op.outputs[0])
    return height(graph, t) == h and all(input_rows(graph, op, t, r, r + 1) == (r, r + 1)
                                         for r in range(h))


def find_hybrid_segments(graph: Graph, first_id: int = 0, max_len: int = 6,
                         max_heights: int = 6, max_widths: int = 4,
                         widths: tuple[int, ...] | None = None) -> list[Segment]:
    """One segment per accumulating channel chain that is also a row chain (only o_1's output
    keeps halo rows) and per slice width below its channels; ids start at first_id."""
    segs: list[Segment] = []
    for cs in find_segments(graph, max_len, max_widths, widths):
        if not cs.accumulate or height(graph, cs.output) <= 1:
            continue
        if not all(row_capable(graph, graph.ops[k]) for k in cs.ops):
            continue
        if not all(is_nhwc(graph, t) and graph.tensors[t].nbytes > 0 for t in cs.internal):
            continue
        if not all(row_identity(graph, graph.ops[cs.ops[i + 1]], cs.internal[i])
                   for i in range(1, len(cs.internal))):
            continue
        ws = [w for w in (cs.widths if widths else admissible_widths(cs.channels, max_widths))
              if w < cs.channels]
        hs = admissible_heights(height(graph, cs.output), max_heights)
        for w in ws:
            segs.append(Segment(id=first_id + len(segs), ops=cs.ops,
                                channels=height(graph, cs.output), internal=cs.internal,
                                inputs=cs.inputs, output=cs.output, accumulate=False,
                                widths=hs, dim="hybrid", slice_width=w,
                                slice_channels=cs.channels))
    return segs


def slice_ranges(graph: Graph, seg: Segment) -> list[tuple[int, int]]:
    """The channel slices [c0, c1) of the segment's internal tensors."""
    c, s = seg.slice_channels, max(1, seg.slice_width)
    return [(c0, min(c, c0 + s)) for c0 in range(0, c, s)]


@per_graph
def hybrid_schedule(graph: Graph, seg: Segment, h: int
                    ) -> tuple[tuple[HybridStep, ...], tuple[int, ...]]:
    """(steps, rows held per internal tensor and by the accumulator) at band height h.

    The bands, and the rows each op computes per band, are the row segment's
    (`bands.band_schedule`); each band's op steps are repeated per channel slice.
    """
    bsteps, caps = band_schedule(graph, seg, h)
    x0, last = seg.internal[0], seg.ops[-1]
    sl = slice_ranges(graph, seg)
    steps: list[HybridStep] = []
    rows = {t: 0 for t in seg.internal}
    acc_rows = 0
    pending = []  # this band's band steps, in chain order
    for st in bsteps:
        if st.mode == "halo":
            if st.tensor == x0:  # tiles keep nothing: each band rewrites them from slot 0
                steps.append(HybridStep("halo", st.op, st.r0, st.r1))
            continue
        pending.append(st)
        if st.op != last:
            if st.tensor != x0:
                rows[st.tensor] = max(rows[st.tensor], st.r1 - st.r0)
            continue
        for c0, c1 in sl:
            for b in pending:
                steps.append(HybridStep("accumulate" if b.op == last else "band", b.op, b.r0,
                                        b.r1, c0, c1))
        steps.append(HybridStep("requantize", last, st.r0, st.r1))
        acc_rows = max(acc_rows, st.r1 - st.r0)
        pending = []
    rows[x0] = dict(caps)[x0]
    return tuple(steps), tuple(rows[t] for t in seg.internal) + (acc_rows,)


def _round(x: int, align: int) -> int:
    return (x + align - 1) // align * align


def hybrid_offsets(graph: Graph, seg: Segment, h: int, align: int = 1
                   ) -> list[tuple[str, int, int, int]]:
    """(kind, tensor, offset in the workspace, bytes) of the band buffer ("band"), the tiles
    ("tile") and the accumulator ("accumulator", tensor = the segment output), each aligned."""
    caps = hybrid_schedule(graph, seg, h)[1]
    s = max(1, seg.slice_width)
    res, at = [], 0
    for i, t in enumerate(seg.internal):
        rb = row_bytes(graph, t)
        size = caps[i] * (rb if i == 0 else rb // graph.tensors[t].shape[-1] * s)
        res.append(("band" if i == 0 else "tile", t, at, size))
        at += _round(size, align)
    out = graph.tensors[seg.output]
    at = _round(at, ACC_BYTES)  # int32 loads in the C kernels
    res.append(("accumulator", seg.output, at,
                caps[-1] * (out.elements // out.shape[1]) * ACC_BYTES))
    return res


def hybrid_workspace_bytes(graph: Graph, seg: Segment, h: int, align: int = 1) -> int:
    """The whole workspace of a hybrid segment (live for the whole segment)."""
    _, _, off, size = hybrid_offsets(graph, seg, h, align)[-1]
    return off + size
