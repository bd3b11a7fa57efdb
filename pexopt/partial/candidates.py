"""Which operators can run on channel slices, and the split subgraphs (segments) they form.

A segment is a chain o_1 -> ... -> o_m whose internal tensors have one consumer each and exist
only as slice buffers. o_1 produces an output slice (dense conv/FC: a filter subset) or maps an
input slice to the same output slice; middle operators map slice to slice; o_m either writes its
slice into the full output tensor or, as a dense conv/FC, accumulates partial sums over input
slices into an int32 accumulator that is requantised after the last slice.
"""

from __future__ import annotations

from dataclasses import dataclass

from pexopt.deadline import check as check_deadline
from pexopt.graph.ir import Graph, Op, Tensor, per_graph
from pexopt.ops import SPECS, OpKind, Split

ACC_BYTES = 4  # int32 (or float32) accumulator element


@dataclass(frozen=True)
class SplitSpec:
    """How a segment is cut: along which dimension, how wide each piece, and the halo.

    Channel splits have no halo; a row-band split would be dim="rows" with halo rows.
    """

    dim: str
    extent: int
    halo: int = 0


@dataclass(frozen=True)
class Segment:
    """A candidate split subgraph: ops in chain order and the tensors it touches."""

    id: int
    ops: tuple[int, ...]
    channels: int
    internal: tuple[int, ...]  # tensors that exist only as slices when the segment is split
    inputs: tuple[int, ...]  # full tensors read by some op of the segment (every slice)
    output: int  # tensor written slice by slice, or through the accumulator
    accumulate: bool
    widths: tuple[int, ...]
    dim: str = "channel"  # "rows": a row-band segment (pexopt.partial.bands); `channels` then
    # counts output rows and `widths` are band heights. "hybrid": bands and channel slices at
    # once (pexopt.partial.hybrid): as "rows", plus `slice_width`; its band accumulator lives in
    # the workspace, so `accumulate` stays False
    slice_width: int = 0  # channels per slice of a hybrid segment
    slice_channels: int = 0  # channels of a hybrid segment's internal tensors (all sliced)

    def spec(self, width: int) -> SplitSpec:
        return SplitSpec(dim=self.dim, extent=width, halo=0)

    def slices(self, width: int) -> list[tuple[int, int]]:
        """Channel (or row) ranges [c0, c1) of the slices (bands) for one width (height)."""
        return [(c, min(self.channels, c + width)) for c in range(0, self.channels, width)]

    def pieces(self, width: int) -> int:
        """How many pieces the split runs: slices, bands, or bands x channel slices."""
        per_band = -(-self.slice_channels // self.slice_width) if self.dim == "hybrid" else 1
        return len(self.slices(width)) * per_band


def channels(t: Tensor) -> int:
    return t.shape[-1] if t.shape else 1


def slice_bytes(t: Tensor, width: int) -> int:
    """Bytes of a slice buffer holding `width` channels of tensor t."""
    per_channel = t.nbytes // max(1, channels(t))
    return per_channel * width


def accumulator_bytes(t: Tensor) -> int:
    return t.elements * ACC_BYTES


def _round(x: int, align: int) -> int:
    return (x + align - 1) // align * align


def slice_offsets(graph: Graph, seg: Segment, width: int, align: int = 1) -> list[int]:
    """Offsets of the segment's slice buffers inside its workspace, each aligned."""
    offs, at = [], 0
    for t in seg.internal:
        offs.append(at)
        at += _round(slice_bytes(graph.tensors[t], width), align)
    return offs


@per_graph
def workspace_bytes(graph: Graph, seg: Segment, width: int, align: int = 1) -> int:
    """All slice buffers of a segment (live together for the whole segment), each aligned."""
    if seg.dim == "rows":  # band buffers: rows needed plus halo rows kept
        from pexopt.partial.bands import band_workspace_bytes
        return band_workspace_bytes(graph, seg, width, align)
    if seg.dim == "hybrid":  # band buffer, band x slice tiles, band accumulator
        from pexopt.partial.hybrid import hybrid_workspace_bytes
        return hybrid_workspace_bytes(graph, seg, width, align)
    if not seg.internal:
        return 0
    last = seg.internal[-1]
    return slice_offsets(graph, seg, width, align)[-1] + slice_bytes(graph.tensors[last], width)


def _same_slice_ok(graph: Graph, op: Op) -> bool:
    """Maps channel slice c..c+s of every input to the same slice of its one output."""
    if SPECS[op.kind].split != Split.SAME_SLICE or len(op.outputs) != 1 or not op.sliceable():
        return False
    out = graph.tensors[op.outputs[0]]
    if len(out.shape) < 2:
        return False
    c = channels(out)
    return all(channels(graph.tensors[i]) == c and len(graph.tensors[i].shape) == len(out.shape)
               for i in op.inputs)


def _output_slice_ok(graph: Graph, op: Op) -> bool:
    """Computes any subset of its output channels from the whole input (dense conv / FC)."""
    if SPECS[op.kind].split != Split.OUTPUT_SLICE or len(op.outputs) != 1 or len(op.inputs) != 1:
        return False
    return len(graph.tensors[op.outputs[0]].shape) >= 2


def _accumulate_ok(graph: Graph, op: Op, t: int) -> bool:
    """Consumes input-channel slices of tensor t into an accumulator (dense conv / FC)."""
    if (not SPECS[op.kind].accumulate or op.inputs != (t,) or len(op.outputs) != 1
            or not op.sliceable()):
        return False
    x = graph.tensors[t]
    if op.kind == OpKind.FULLY_CONNECTED and x.elements != channels(x):
        return False  # a flattened H x W x C input is not sliced along its reduced axis
    return True


def admissible_widths(c: int, max_widths: int = 8, multiple: int = 4) -> tuple[int, ...]:
    """1, the divisors of c and the multiples of `multiple`, thinned to at most max_widths."""
    ws = sorted({1, c} | {d for d in range(1, c + 1) if c % d == 0}
                | set(range(multiple, c, multiple)))
    if len(ws) <= max_widths:
        return tuple(ws)
    keep = {ws[0], ws[-1]}
    for i in range(1, max_widths - 1):
        keep.add(ws[round(i * (len(ws) - 1) / (max_widths - 1))])
    return tuple(sorted(keep))


def find_segments(graph: Graph, max_len: int = 6, max_widths: int = 8,
                  widths: tuple[int, ...] | None = None) -> list[Segment]:
    """Enumerate every candidate segment of 2..max_len operators."""
    cons = graph.consumers()
    outs = set(graph.outputs)
    segs: list[Segment] = []

    def chain_tensor_ok(t: int) -> bool:
        tt = graph.tensors[t]
        return len(cons[t]) == 1 and t not in outs and not tt.external and len(tt.shape) >= 2

    for first in graph.ops:
        check_deadline()
        if not (_output_slice_ok(graph, first) or _same_slice_ok(graph, first)):
            continue
        chain = [first.id]
        c = channels(graph.tensors[first.outputs[0]])
        while len(chain) < max_len:
            t = graph.ops[chain[-1]].outputs[0]
            if not chain_tensor_ok(t):
                break
            nxt = graph.ops[cons[t][0]]
            internal = tuple(graph.ops[k].outputs[0] for k in chain)
            if _accumulate_ok(graph, nxt, t):
                segs.append(_segment(graph, len(segs), chain + [nxt.id], internal, c, True,
                                     max_widths, widths))
            if not _same_slice_ok(graph, nxt) or nxt.inputs.count(t) != 1:
                break
            chain.append(nxt.id)
            segs.append(_segment(graph, len(segs), chain, internal, c, False, max_widths,
                                 widths))
    return segs


def _segment(graph: Graph, sid: int, chain: list[int], internal: tuple[int, ...], c: int,
             accumulate: bool, max_widths: int, widths: tuple[int, ...] | None) -> Segment:
    inside = set(internal)
    inputs = tuple(dict.fromkeys(i for k in chain for i in graph.ops[k].inputs
                                 if i not in inside and not graph.tensors[i].external))
    ws = tuple(w for w in widths if w <= c) if widths else admissible_widths(c, max_widths)
    return Segment(id=sid, ops=tuple(chain), channels=c, internal=internal, inputs=inputs,
                   output=graph.ops[chain[-1]].outputs[0], accumulate=accumulate,
                   widths=ws or (1,))
