"""Plan steps, band buffers and the summary of a row segment (see `pexopt.partial.bands`).

A band step computes output rows [r0, r1) of one op: it reads band buffers (`<tensor>@band`) of
internal tensors and full tensor buffers otherwise, and writes its output's band buffer or, for
the chain's last op, rows of the full output tensor. A halo step (op = the band tensor's
producer) moves the rows [r0, r1) still needed to the top of the band buffer.
"""

from __future__ import annotations

from pexopt.graph.ir import Graph
from pexopt.partial.bands import band_offsets, band_schedule
from pexopt.partial.candidates import Segment
from pexopt.plan.format import Step


def band_name(tensor: str) -> str:
    return f"{tensor}@band"


def band_steps(graph: Graph, seg: Segment, h: int, in_arena: set[int], first: int
               ) -> list[Step]:
    """The steps of row segment seg at band height h, indexed from `first`."""
    name = {t.id: t.name for t in graph.tensors}
    internal = set(seg.internal)
    steps: list[Step] = []
    for st in band_schedule(graph, seg, h)[0]:
        op = graph.ops[st.op]
        buf = band_name(name[st.tensor]) if st.tensor in internal else name[st.tensor]
        if st.mode == "halo":
            reads: list[str] = []
        else:
            reads = [band_name(name[t]) if t in internal else name[t]
                     for t in dict.fromkeys(op.inputs) if t in internal or t in in_arena]
        steps.append(Step(index=first + len(steps), op=op.name, kind=op.kind.value,
                          reads=reads, writes=[buf] if st.tensor in in_arena else [],
                          slice=None, mode=st.mode, rows=[st.r0, st.r1]))
    return steps


def band_buffers(graph: Graph, seg: Segment, h: int, workspace: int, align: int
                 ) -> list[tuple[str, str, int, int]]:
    """(buffer name, tensor name, offset, size) of the segment's band buffers."""
    return [(band_name(graph.tensors[t].name), graph.tensors[t].name, workspace + off, size)
            for t, off, size in band_offsets(graph, seg, h, align)]


def band_summary(graph: Graph, seg: Segment, h: int, streaming: bool) -> dict:
    """The `splits` entry of a row segment."""
    steps, caps = band_schedule(graph, seg, h)
    whole = sum(graph.tensors[t].nbytes for t in seg.internal)
    ws = sum(size for _, _, size in band_offsets(graph, seg, h))
    return {"ops": [graph.ops[k].name for k in seg.ops],
            "kinds": [graph.ops[k].kind.value for k in seg.ops], "width": h,
            "split": {"dim": "rows", "extent": h, "halo": 0},
            "band_rows": {graph.tensors[t].name: rows for t, rows in caps},
            "slices": len(seg.slices(h)), "channels": seg.channels, "accumulate": False,
            "halo_moves": sum(1 for s in steps if s.mode == "halo"),
            "streaming": streaming, "bytes_saved": whole - ws}
