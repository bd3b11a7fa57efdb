"""Row geometry of spatially local operators: which input rows a band of output rows needs.

Shared by the band planner, the validator and the simulator. The simulator computes every band
with the whole-tensor kernel on the rows the plan says are present, so a wrong window here shows
up as a mismatch there rather than hiding.
"""

from __future__ import annotations

from pexopt.graph.ir import ConvAttrs, Graph, Op, PoolAttrs
from pexopt.ops import SPECS, Rows

Range = tuple[int, int]


def height(graph: Graph, t: int) -> int:
    """Rows (H of NHWC) of a 4-D tensor."""
    return graph.tensors[t].shape[1]


def row_bytes(graph: Graph, t: int) -> int:
    """Bytes of one full-width row (W x C elements) of a 4-D tensor."""
    tt = graph.tensors[t]
    return tt.nbytes // max(1, tt.shape[1])


def is_nhwc(graph: Graph, t: int) -> bool:
    """A single-image NHWC tensor (row bands are contiguous)."""
    shape = graph.tensors[t].shape
    return len(shape) == 4 and shape[0] == 1


def row_capable(graph: Graph, op: Op) -> bool:
    """The op can compute any band of output rows from a band of each input's rows."""
    mode = SPECS[op.kind].rows
    if mode == Rows.NONE or len(op.outputs) != 1 or not op.sliceable():
        return False
    out = op.outputs[0]
    if not is_nhwc(graph, out) or not all(is_nhwc(graph, i) for i in op.inputs):
        return False
    if mode == Rows.WINDOW:
        return isinstance(op.attrs, (ConvAttrs, PoolAttrs)) and len(op.inputs) == 1
    # pointwise: every input has the output's rows (no broadcast along H)
    return all(height(graph, i) == height(graph, out) for i in op.inputs)


def input_rows(graph: Graph, op: Op, t: int, r0: int, r1: int) -> Range:
    """Rows [lo, hi) of input tensor t that output rows [r0, r1) of op read (clipped to the
    tensor: rows above the top or past the end are padding). Empty band -> (r0, r0)."""
    if r1 <= r0:
        return r0, r0
    h_in = height(graph, t)
    if SPECS[op.kind].rows != Rows.WINDOW:
        return r0, r1
    a = op.attrs
    assert isinstance(a, (ConvAttrs, PoolAttrs))
    k, s, top = a.kernel[0], a.stride[0], a.pads[0]
    d = a.dilation[0] if isinstance(a, ConvAttrs) else 1
    lo = r0 * s - top
    hi = (r1 - 1) * s - top + (k - 1) * d + 1
    lo, hi = max(0, lo), min(h_in, hi)
    return (lo, hi) if lo < hi else (lo, lo)
