"""What a layout puts in the arena and what it costs: the buffers (tensors with arena bytes),
their lifetimes in an order, kernel scratch of whole ops, a split segment's workspace box, a
schedule's extent and estimated cost, and the greedy layer-by-layer layout (the first hint)."""

from __future__ import annotations

from pexopt.cmsis_scratch import kernel_scratch_bytes, segment_scratch_bytes
from pexopt.graph.ir import Graph
from pexopt.partial.candidates import Segment, accumulator_bytes, workspace_bytes
from pexopt.schedule import CostModel, Schedule, SolverParams, temp_bytes
from pexopt.solver.baselines import Lifetime, greedy_by_size


def round_up(x: int, align: int) -> int:
    return (x + align - 1) // align * align


def buffer_tensors(graph: Graph) -> list[int]:
    """Tensors that occupy arena bytes."""
    return [t.id for t in graph.tensors if not t.external and t.nbytes > 0]


def lifetimes(graph: Graph, order: list[int]) -> dict[int, tuple[int, int]]:
    """Tensor id -> (first step, last step), inclusive, for a whole-tensor order."""
    pos = {op: i for i, op in enumerate(order)}
    n = len(order)
    prod = graph.producer()
    cons = graph.consumers()
    outs = set(graph.outputs)
    res: dict[int, tuple[int, int]] = {}
    for t in buffer_tensors(graph):
        start = pos[prod[t]] if t in prod else 0
        ends = [pos[c] for c in cons[t]]
        end = n - 1 if t in outs else max(ends, default=start)
        res[t] = (start, max(start, end))
    return res


def op_scratch(graph: Graph, target: str | None) -> dict[int, int]:
    """Op id -> kernel scratch bytes when it runs whole (ops needing none are left out)."""
    sizes = {op.id: kernel_scratch_bytes(graph, op.id, target) for op in graph.ops}
    return {k: v for k, v in sizes.items() if v > 0}


def seg_workspace(graph: Graph, seg: Segment, width: int, params: SolverParams) -> int:
    """A segment's box: its slice buffers, then its kernel scratch (at the aligned end)."""
    ws = workspace_bytes(graph, seg, width, params.align)
    extra = segment_scratch_bytes(graph, seg, width, params.target)
    return round_up(ws, params.align) + extra if extra else ws


def extent(graph: Graph, sched: Schedule) -> int:
    """max(offset + size) over every buffer of a schedule: tensors, workspaces (with their
    kernel scratch), accumulators, in-place temporaries, kernel scratch of whole ops."""
    ends = [o + graph.tensors[t].nbytes for t, o in sched.offsets.items()]
    by_id = {s.id: s for s in sched.segments}
    for sid, w in sched.splits.items():
        s = by_id[sid]
        ends.append(sched.workspace[sid] + seg_workspace(graph, s, w, sched.params))
        if s.accumulate:
            ends.append(sched.offsets[s.output] + accumulator_bytes(graph.tensors[s.output]))
    ends += [o + temp_bytes(graph, k) for k, o in sched.temps.items()]
    ends += [o + kernel_scratch_bytes(graph, k, sched.params.target)
             for k, o in sched.kscratch.items()]
    return max(ends, default=0)


def schedule_cost(graph: Graph, sched: Schedule, cost: CostModel) -> int:
    """The estimated cost of a schedule: the same sum the CP-SAT model constrains."""
    by_id = {s.id: s for s in sched.segments}
    in_split = {k for sid in sched.splits for k in by_id[sid].ops}
    prod = graph.producer()
    total = sum(cost.op(graph, k) for k in range(len(graph.ops)) if k not in in_split)
    total += sum(cost.segment(graph, by_id[sid], w) for sid, w in sched.splits.items())
    total += sum(cost.inplace(graph, prod[o]) for o in sched.inplace)
    return total


def greedy_schedule(graph: Graph, order: list[int], params: SolverParams) -> Schedule:
    """Greedy-by-size offsets (no in-place, no split) for an order: the first hint."""
    life = lifetimes(graph, order)
    reqs = [Lifetime(t, graph.tensors[t].nbytes, a, b) for t, (a, b) in life.items()]
    kscr = op_scratch(graph, params.target)
    at = {k: i for i, k in enumerate(order)}
    base = len(graph.tensors)  # kernel scratch requests get ids after the tensors'
    reqs += [Lifetime(base + k, sz, at[k], at[k]) for k, sz in kscr.items()]
    offs = greedy_by_size(reqs, params.align)
    ks = {k: offs.pop(base + k) for k in kscr}
    arena = max([offs[t] + graph.tensors[t].nbytes for t in offs]
                + [o + kscr[k] for k, o in ks.items()], default=0)
    return Schedule(order, offs, {}, arena, 0, "GREEDY", 0.0, params=params, kscratch=ks)
