"""Plan steps, buffers and the summary of a hybrid segment (see `pexopt.partial.hybrid`).

Steps carry both `rows` and `slice`: a "band" step computes rows [r0, r1) of channels [c0, c1)
of its op's output into o_1's band buffer (`<tensor>@band`, every channel) or a tile
(`<tensor>@tile`, one band x one slice); the "accumulate" step of the last op adds input
channels [c0, c1) for output rows [r0, r1) into the band accumulator (`<output>@acc`, rows at
slot 0); a "requantize" step with rows writes the band's rows of the full output tensor. "halo"
steps move the kept rows of the band buffer as in a row segment.
"""

from __future__ import annotations

from pexopt.graph.ir import Graph
from pexopt.partial.candidates import Segment
from pexopt.partial.hybrid import hybrid_offsets, hybrid_schedule
from pexopt.plan.build_rows import band_name
from pexopt.plan.format import Step


def tile_name(tensor: str) -> str:
    return f"{tensor}@tile"


def _acc_name(tensor: str) -> str:
    return f"{tensor}@acc"


def hybrid_steps(graph: Graph, seg: Segment, h: int, in_arena: set[int], first: int
                 ) -> list[Step]:
    """The steps of hybrid segment seg at band height h, indexed from `first`."""
    name = {t.id: t.name for t in graph.tensors}
    x0, internal = seg.internal[0], set(seg.internal)

    def buf(t: int) -> str:
        return band_name(name[t]) if t == x0 else tile_name(name[t]) if t in internal \
            else name[t]

    steps: list[Step] = []
    for st in hybrid_schedule(graph, seg, h)[0]:
        op = graph.ops[st.op]
        out = op.outputs[0]
        reads = [buf(t) for t in dict.fromkeys(op.inputs) if t in internal or t in in_arena]
        sl: list[int] | None = [st.c0, st.c1]
        if st.mode == "halo":
            reads, writes, sl = [], [band_name(name[x0])], None
        elif st.mode == "band":
            writes = [buf(out)]
        elif st.mode == "accumulate":
            writes = [_acc_name(name[out])]
        else:
            reads, writes, sl = [_acc_name(name[out])], [name[out]], None
        steps.append(Step(index=first + len(steps), op=op.name, kind=op.kind.value,
                          reads=reads, writes=writes, slice=sl, mode=st.mode,
                          rows=[st.r0, st.r1]))
    return steps


def hybrid_buffers(graph: Graph, seg: Segment, h: int, workspace: int, align: int
                   ) -> list[tuple[str, str, str, int, int]]:
    """(buffer name, tensor name, kind, offset, size) of the segment's workspace buffers."""
    res = []
    for kind, t, off, size in hybrid_offsets(graph, seg, h, align):
        tn = graph.tensors[t].name
        bn = {"band": band_name, "tile": tile_name, "accumulator": _acc_name}[kind](tn)
        res.append((bn, tn, kind, workspace + off, size))
    return res


def hybrid_summary(graph: Graph, seg: Segment, h: int, streaming: bool) -> dict:
    """The `splits` entry of a hybrid segment."""
    steps, caps = hybrid_schedule(graph, seg, h)
    whole = sum(graph.tensors[t].nbytes for t in seg.internal)
    offs = hybrid_offsets(graph, seg, h)
    ws = sum(size for *_, size in offs)
    return {"ops": [graph.ops[k].name for k in seg.ops],
            "kinds": [graph.ops[k].kind.value for k in seg.ops], "width": h,
            "split": {"dim": "hybrid", "extent": h, "halo": 0, "slice_width": seg.slice_width},
            "band_rows": {graph.tensors[seg.internal[0]].name: caps[0]},
            "slices": seg.pieces(h),
            "channels": seg.channels, "accumulate": True,
            "halo_moves": sum(1 for s in steps if s.mode == "halo"),
            "accumulator_bytes": offs[-1][3], "streaming": streaming,
            "bytes_saved": whole - ws}
