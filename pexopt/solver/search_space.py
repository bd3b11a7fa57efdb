"""The options of a solve: the candidate segments `params` allow, and the arena bound valid for
every choice among them."""

from __future__ import annotations

from pexopt.cmsis_scratch import segment_scratch_bytes
from pexopt.graph.ir import Graph
from pexopt.partial.bands import find_row_segments
from pexopt.partial.candidates import Segment, find_segments
from pexopt.partial.hybrid import find_hybrid_segments
from pexopt.schedule import SolverParams
from pexopt.solver.bounds import any_order_bound, split_bound
from pexopt.solver.buffers import op_scratch


def _hybrid(graph: Graph, params: SolverParams, first_id: int) -> list[Segment]:
    """Hybrid segments (rows and channel slices at once) when rows, channels and hybrid are on."""
    if not (params.split and params.rows and params.channels and params.hybrid):
        return []
    return find_hybrid_segments(graph, first_id, params.max_segment_len, params.max_heights,
                                widths=params.slice_widths)


def candidates(graph: Graph, params: SolverParams) -> tuple[list[Segment], list[Segment]]:
    """(channel segments, row and hybrid segments) the options of `params` allow."""
    segments = find_segments(graph, params.max_segment_len, params.max_widths,
                             params.slice_widths) if params.split and params.channels else []
    rows = find_row_segments(graph, len(segments), params.max_segment_len, params.max_heights,
                             single=params.stream) if params.split and params.rows else []
    rows += _hybrid(graph, params, len(segments) + len(rows))
    return segments, rows


def lower_bound(graph: Graph, params: SolverParams, segments: list[Segment]) -> int:
    """The arena bound valid for every order and every option `params` allows among
    `segments` (kernel scratch included: without it the bound stays valid but weak, and a plan
    at the optimum could not be proven optimal)."""
    kscr = op_scratch(graph, params.target)
    if not segments:
        return any_order_bound(graph, params.inplace, kscr)[0]
    seg_scr = {sg.id: min(segment_scratch_bytes(graph, sg, w, params.target)
                          for w in sg.widths) for sg in segments}
    return split_bound(graph, segments, params.inplace, kscr, seg_scr, params.stream)
