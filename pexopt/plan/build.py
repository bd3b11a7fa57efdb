"""Turn a solved schedule into a Plan (the only place that knows both sides).

Unsplit operators become one step each. A split segment becomes, for every channel slice, one
step per operator (in chain order), then, if it accumulates, one `requantize` step. Buffer
lifetimes are derived from the steps themselves; offsets come from the schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from pexopt.cmsis_scratch import kernel_scratch_bytes, segment_scratch_bytes
from pexopt.graph.ir import Graph
from pexopt.partial.candidates import (
    Segment,
    accumulator_bytes,
    slice_bytes,
    slice_offsets,
    workspace_bytes,
)
from pexopt.plan.build_hybrid import hybrid_buffers, hybrid_steps, hybrid_summary
from pexopt.plan.build_rows import band_buffers, band_steps, band_summary
from pexopt.plan.format import Buffer, Plan, SolverInfo, Step, kscratch_name
from pexopt.schedule import Schedule, SolverParams, temp_bytes

# (name, tensor, kind, offset, size, alias_of=None): one buffer of the plan, in build order
AddBuffer = Callable[..., None]


def slice_name(tensor: str) -> str:
    return f"{tensor}@slice"


def acc_name(tensor: str) -> str:
    return f"{tensor}@acc"


def temp_name(op: str) -> str:
    return f"{op}@temp"


def _round(x: int, align: int) -> int:
    return (x + align - 1) // align * align


def _steps(graph: Graph, sched: Schedule, in_arena: set[int], target: str | None
           ) -> list[Step]:
    """The step list: whole ops, and slice-by-slice runs of split segments; a step whose
    CMSIS-NN call needs kernel scratch lists its op's (or its segment's) `@kscratch` buffer."""
    name = {t.id: t.name for t in graph.tensors}
    segs = {s.ops[0]: s for s in sched.segments if s.id in sched.splits}
    skip: set[int] = set()
    steps: list[Step] = []

    def add(op_id: int, mode: str, reads: list[str], writes: list[str],
            sl: list[int] | None, scratch: list[str] | None = None) -> None:
        op = graph.ops[op_id]
        steps.append(Step(index=len(steps), op=op.name, kind=op.kind.value, reads=reads,
                          writes=writes, slice=sl, mode=mode, scratch=scratch or []))

    for k in sched.order:
        if k in skip:
            continue
        seg = segs.get(k)
        if seg is None:
            op = graph.ops[k]
            out = op.outputs[0] if len(op.outputs) == 1 else None
            scratch = [temp_name(op.name)] if out in sched.inplace and k in sched.temps else []
            if k in sched.kscratch:
                scratch.append(kscratch_name(op.name))
            add(k, "whole", [name[t] for t in dict.fromkeys(op.inputs) if t in in_arena],
                [name[t] for t in op.outputs if t in in_arena], None, scratch)
            continue
        skip.update(seg.ops)
        internal = set(seg.internal)
        width = sched.splits[seg.id]
        ks = kscratch_name(graph.ops[seg.ops[0]].name)
        if seg.dim == "hybrid":  # portable kernels on band x slice: no kernel scratch
            steps += hybrid_steps(graph, seg, width, in_arena, len(steps))
            continue
        if seg.dim == "rows":  # band steps call the whole-width kernels: the segment's scratch
            by_name = {graph.ops[k].name: k for k in seg.ops}
            for st in band_steps(graph, seg, width, in_arena, len(steps)):
                if st.mode == "band" and kernel_scratch_bytes(graph, by_name[st.op], target):
                    st.scratch.append(ks)
                steps.append(st)
            continue
        for c0, c1 in seg.slices(width):
            for idx, op_id in enumerate(seg.ops):
                op = graph.ops[op_id]
                reads = [slice_name(name[t]) if t in internal else name[t]
                         for t in dict.fromkeys(op.inputs) if t in internal or t in in_arena]
                last = idx == len(seg.ops) - 1
                if not last:
                    writes = [slice_name(name[op.outputs[0]])]
                elif seg.accumulate:
                    writes = [acc_name(name[seg.output])]
                else:
                    writes = [name[seg.output]]
                mode = "accumulate" if last and seg.accumulate else "slice"
                need = kernel_scratch_bytes(graph, op_id, target, (c0, c1), mode)
                add(op_id, mode, reads, writes, [c0, c1], [ks] if need else None)
        if seg.accumulate:
            add(seg.ops[-1], "requantize", [acc_name(name[seg.output])], [name[seg.output]],
                None)
    return steps


def _lifetimes(steps: list[Step], graph_inputs: set[str], graph_outputs: set[str]
               ) -> dict[str, tuple[int, int]]:
    """Buffer name -> (first step, last step) from the steps: first write to last use."""
    first: dict[str, int] = {b: 0 for b in graph_inputs}
    last: dict[str, int] = {b: 0 for b in graph_inputs}
    for s in steps:
        for b in s.writes + s.scratch:
            first.setdefault(b, s.index)
            last[b] = max(last.get(b, s.index), s.index)
        for b in s.reads:
            first.setdefault(b, s.index)
            last[b] = max(last.get(b, 0), s.index)
    end = len(steps) - 1
    for b in graph_outputs:
        if b in last:
            last[b] = end
    return {b: (first[b], last[b]) for b in first}


def build_plan(graph: Graph, sched: Schedule, params: SolverParams | None = None,
               budget: int | None = None, baselines: dict | None = None) -> Plan:
    """The plan of a schedule; `params` defaults to (and should be) the schedule's own."""
    params = sched.params if params is None else params
    in_arena = {t.id for t in graph.tensors if not t.external and t.nbytes > 0}
    name = {t.id: t.name for t in graph.tensors}
    steps = _steps(graph, sched, in_arena, sched.params.target)
    life = _lifetimes(steps, {name[t] for t in graph.inputs if t in in_arena},
                      {name[t] for t in graph.outputs if t in in_arena})
    buffers: list[Buffer] = []

    def add(bname: str, tensor: str | None, kind: str, offset: int, size: int,
            alias: str | None = None) -> None:
        f, last = life[bname]
        buffers.append(Buffer(name=bname, tensor=tensor, kind=kind, offset=offset, size=size,
                              first_step=f, last_step=last, alias_of=alias))

    _tensor_buffers(graph, sched, name, add)
    for s in sched.segments:
        w = sched.splits.get(s.id)
        if w is not None:
            _segment_buffers(graph, sched, params, s, w, name, add)
    _scratch_buffers(graph, sched, add)
    buffers.sort(key=lambda b: (b.first_step, b.offset, b.name))
    return _plan(graph, sched, params, budget, baselines, steps, buffers)


def _tensor_buffers(graph: Graph, sched: Schedule, name: dict[int, str], add: AddBuffer
                    ) -> None:
    """One buffer per placed tensor; an accumulating segment's output and an in-place
    output alias the buffer whose bytes they reuse."""
    split_out = {s.output: s for s in sched.segments if s.id in sched.splits}
    for t, off in sched.offsets.items():
        seg = split_out.get(t)
        if seg is not None and seg.accumulate:
            alias = acc_name(name[t])
        elif t in sched.inplace:
            alias = name[sched.inplace[t]]
        else:
            alias = None
        add(name[t], name[t], "tensor", off, graph.tensors[t].nbytes, alias)


def _segment_buffers(graph: Graph, sched: Schedule, params: SolverParams, s: Segment, w: int,
                     name: dict[int, str], add: AddBuffer) -> None:
    """The buffers of a used segment in its workspace: tiles, bands or slices, its
    accumulator and its kernel scratch."""
    if s.dim == "hybrid":
        for bname, tname, kind, off, size in hybrid_buffers(graph, s, w, sched.workspace[s.id],
                                                            params.align):
            add(bname, tname, kind, off, size)
    elif s.dim == "rows":
        for bname, tname, off, size in band_buffers(graph, s, w, sched.workspace[s.id],
                                                    params.align):
            add(bname, tname, "band", off, size)
    else:
        for t, off in zip(s.internal, slice_offsets(graph, s, w, params.align)):
            add(slice_name(name[t]), name[t], "slice", sched.workspace[s.id] + off,
                slice_bytes(graph.tensors[t], w))
    if s.accumulate and s.dim != "rows":
        add(acc_name(name[s.output]), name[s.output], "accumulator", sched.offsets[s.output],
            accumulator_bytes(graph.tensors[s.output]))
    ks = segment_scratch_bytes(graph, s, w, sched.params.target)
    if ks:  # at the end of the segment's workspace box (see solver.buffers.seg_workspace)
        add(kscratch_name(graph.ops[s.ops[0]].name), None, "scratch",
            sched.workspace[s.id] + _round(workspace_bytes(graph, s, w, params.align),
                                           params.align), ks)


def _scratch_buffers(graph: Graph, sched: Schedule, add: AddBuffer) -> None:
    """In-place depthwise temporaries and whole ops' CMSIS-NN kernel scratch."""
    for k, off in sched.temps.items():
        add(temp_name(graph.ops[k].name), None, "scratch", off, temp_bytes(graph, k))
    for k, off in sched.kscratch.items():
        add(kscratch_name(graph.ops[k].name), None, "scratch", off,
            kernel_scratch_bytes(graph, k, sched.params.target))


def _plan(graph: Graph, sched: Schedule, params: SolverParams, budget: int | None,
          baselines: dict | None, steps: list[Step], buffers: list[Buffer]) -> Plan:
    arena = max((b.offset + b.size for b in buffers), default=0)
    return Plan(model={"path": graph.source_path, "sha256": graph.source_sha256},
                arena_bytes=arena, budget_bytes=budget,
                fits=budget is None or arena <= budget, align=params.align,
                dtype=graph.dtype, input_external=any(graph.tensors[t].external
                                                     for t in graph.inputs),
                steps=steps, buffers=buffers,
                solver=SolverInfo(status=sched.status, bound=sched.bound,
                                  gap=round(sched.gap, 6), seconds=round(sched.seconds, 3),
                                  seed=params.seed, workers=params.workers,
                                  time_limit=params.time_limit),
                baselines=baselines or {}, splits=_split_summary(graph, sched),
                target=sched.params.target)


def _split_summary(graph: Graph, sched: Schedule) -> list[dict]:
    """One entry per split segment: operators, width, slices, bytes saved versus whole."""
    out = []
    for s in sched.segments:
        w = sched.splits.get(s.id)
        if w is None:
            continue
        if s.dim == "rows":
            out.append(band_summary(graph, s, w, s.id in sched.streams))
            continue
        if s.dim == "hybrid":
            out.append(hybrid_summary(graph, s, w, s.id in sched.streams))
            continue
        whole = sum(graph.tensors[t].nbytes for t in s.internal)
        extra = accumulator_bytes(graph.tensors[s.output]) - graph.tensors[s.output].nbytes \
            if s.accumulate else 0
        ws = sum(slice_bytes(graph.tensors[t], w) for t in s.internal)
        out.append({"ops": [graph.ops[k].name for k in s.ops],
                    "kinds": [graph.ops[k].kind.value for k in s.ops], "width": w,
                    "split": asdict(s.spec(w)),
                    "slices": len(s.slices(w)), "channels": s.channels,
                    "accumulate": s.accumulate, "bytes_saved": whole - ws - extra})
    return out
