"""Turn a solved schedule into a Plan (the only place that knows both sides)."""

from __future__ import annotations

from pexopt.graph.ir import Graph
from pexopt.plan.format import Buffer, Plan, SolverInfo, Step
from pexopt.solver.cpsat_layout import Schedule, SolverParams, lifetimes


def buffer_name(graph: Graph, tensor_id: int) -> str:
    return graph.tensors[tensor_id].name


def build_plan(graph: Graph, sched: Schedule, params: SolverParams, budget: int | None,
               baselines: dict | None = None) -> Plan:
    """Plan with one step per op in schedule order and one buffer per arena tensor."""
    life = lifetimes(graph, sched.order, sched.inplace)
    pos = {op: i for i, op in enumerate(sched.order)}
    prod = graph.producer()
    buffers = []
    for t, (first, last) in life.items():
        alias = sched.inplace.get(t)
        buffers.append(Buffer(name=buffer_name(graph, t), tensor=graph.tensors[t].name,
                              kind="tensor", offset=sched.offsets[t],
                              size=graph.tensors[t].nbytes,
                              first_step=pos[prod[t]] if t in prod else first, last_step=last,
                              alias_of=buffer_name(graph, alias) if alias is not None else None))
    buffers.sort(key=lambda b: (b.first_step, b.offset, b.name))
    in_arena = set(life)
    steps = []
    for i, k in enumerate(sched.order):
        op = graph.ops[k]
        steps.append(Step(index=i, op=op.name, kind=op.kind.value,
                          reads=[buffer_name(graph, t) for t in dict.fromkeys(op.inputs)
                                 if t in in_arena],
                          writes=[buffer_name(graph, t) for t in op.outputs if t in in_arena]))
    return Plan(model={"path": graph.source_path, "sha256": graph.source_sha256},
                arena_bytes=sched.arena, budget_bytes=budget,
                fits=budget is None or sched.arena <= budget, align=params.align,
                dtype=graph.dtype, input_external=any(graph.tensors[t].external
                                                     for t in graph.inputs),
                steps=steps, buffers=buffers,
                solver=SolverInfo(status=sched.status, bound=sched.bound,
                                  gap=round(sched.gap, 6), seconds=round(sched.seconds, 3),
                                  seed=params.seed, workers=params.workers,
                                  time_limit=params.time_limit),
                baselines=baselines or {})
