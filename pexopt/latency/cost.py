"""Estimated instructions of a plan (or of solver choices) from a target profile.

The estimate is linear in the kernel counts of `latency.features`, and depends only on which
operators run whole, in place or split (and at which slice width), never on the order or the
offsets. So for the CP-SAT model:

    total = invoke_instructions(p, g)
          + sum over ops k run whole:           op_instructions(p, g, k, inplace=k's choice)
          + sum over chosen (segment, width):   segment_instructions(p, g, segment, width)

equals `estimate(p, g, plan).instructions` of the plan those choices build (tested). A row
segment's "width" is its band height: its cost is the sum of its band and halo steps
(`partial.bands.band_schedule`); streaming in place moves no extra bytes, so it costs nothing.
A hybrid segment's cost is the sum of its steps (`partial.hybrid.hybrid_schedule`).
`cost_table` computes every term once, as integers in a chosen unit, for CP-SAT's integer model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pexopt.errors import PexError
from pexopt.graph.ir import Graph
from pexopt.latency.features import Work, invoke_work, step_work
from pexopt.latency.profile import Profile, display_path
from pexopt.partial.bands import band_schedule
from pexopt.partial.candidates import Segment
from pexopt.partial.hybrid import hybrid_schedule
from pexopt.plan.format import Plan, is_kscratch


@dataclass(frozen=True)
class Estimate:
    """A plan's estimated cost: instructions inside pex_invoke and what they mean in time."""

    instructions: float
    cycles: float  # instructions x the profile's assumed cycles per instruction
    ms: float  # cycles at the profile's clock
    by_class: dict[str, float]  # instructions per kernel class


def work_instructions(profile: Profile, works: Iterable[Work]) -> float:
    """Instructions of some kernel work under a profile."""
    return sum(profile.coefficient(w.cls, k) * v for w in works for k, v in w.counts.items())


def step_instructions(profile: Profile, graph: Graph, op_index: int, mode: str,
                      channel_slice: tuple[int, int] | None = None,
                      inplace: bool = False, rows: tuple[int, int] | None = None) -> float:
    """One plan step: op `op_index` in `mode` (whole | slice | accumulate | requantize | band |
    halo) over channels [c0, c1) (`channel_slice`, for slice and accumulate) or rows [r0, r1)
    (`rows`, for band and halo); `inplace` for a depthwise conv written over its input through
    its temporary."""
    return work_instructions(profile, step_work(graph, op_index, mode, channel_slice, inplace,
                                                rows))


def op_instructions(profile: Profile, graph: Graph, k: int, inplace: bool = False) -> float:
    """Op k run whole (one `whole` step)."""
    return step_instructions(profile, graph, k, "whole", None, inplace)


def segment_steps(segment: Segment, width: int
                  ) -> list[tuple[int, str, tuple[int, int] | None]]:
    """(op, mode, slice) of every step a split segment becomes, as `plan.build` emits them."""
    steps: list[tuple[int, str, tuple[int, int] | None]] = []
    last = len(segment.ops) - 1
    for c0, c1 in segment.slices(width):
        for i, k in enumerate(segment.ops):
            mode = "accumulate" if i == last and segment.accumulate else "slice"
            steps.append((k, mode, (c0, c1)))
    if segment.accumulate:
        steps.append((segment.ops[-1], "requantize", None))
    return steps


def row_segment_instructions(profile: Profile, graph: Graph, segment: Segment, height: int
                             ) -> float:
    """All band and halo steps of row segment `segment` at band height `height`."""
    return sum(step_instructions(profile, graph, st.op, st.mode, rows=(st.r0, st.r1))
               for st in band_schedule(graph, segment, height)[0])


def segment_instructions(profile: Profile, graph: Graph, segment: Segment, width: int
                         ) -> float:
    """All steps of `segment` split at slice width `width` (its slices, then the requantize),
    or of a row segment at band height `width`."""
    if segment.dim == "rows":
        return row_segment_instructions(profile, graph, segment, width)
    if segment.dim == "hybrid":
        return sum(step_instructions(profile, graph, st.op, st.mode,
                                     None if st.mode in ("halo", "requantize") else
                                     (st.c0, st.c1), rows=(st.r0, st.r1))
                   for st in hybrid_schedule(graph, segment, width)[0])
    # a step's counts depend on its slice's width only, so price each distinct width once
    per_width = Counter(c1 - c0 for c0, c1 in segment.slices(width))
    last = len(segment.ops) - 1
    total = sum(n * step_instructions(profile, graph, k,
                                      "accumulate" if i == last and segment.accumulate
                                      else "slice", (0, w))
                for w, n in per_width.items() for i, k in enumerate(segment.ops))
    if segment.accumulate:
        total += step_instructions(profile, graph, segment.ops[-1], "requantize")
    return total


def invoke_instructions(profile: Profile, graph: Graph) -> float:
    """pex_invoke's own work besides the steps: copying the input in and the output out."""
    return work_instructions(profile, invoke_work(graph))


@dataclass(frozen=True)
class CostTable:
    """Every term of the solver's latency sum, rounded to integers of `unit` instructions.

    invoke: the constant; whole[k]: op k run whole; whole_inplace[k]: op k run whole in place
    through its temporary (depthwise ops only); segment[(segment id, width)]: a split segment.
    """

    unit: float
    invoke: int
    whole: list[int]
    whole_inplace: dict[int, int] = field(default_factory=dict)
    segment: dict[tuple[int, int], int] = field(default_factory=dict)


def cost_table(profile: Profile, graph: Graph, segments: Iterable[Segment],
               unit: float = 1.0) -> CostTable:
    """The terms of `total` (module doc) for every op and every candidate (segment, width)."""
    from pexopt.ops import SPECS

    def r(x: float) -> int:
        return round(x / unit)

    return CostTable(
        unit=unit, invoke=r(invoke_instructions(profile, graph)),
        whole=[r(op_instructions(profile, graph, k)) for k in range(len(graph.ops))],
        whole_inplace={op.id: r(op_instructions(profile, graph, op.id, inplace=True))
                       for op in graph.ops if SPECS[op.kind].inplace_temp},
        segment={(s.id, w): r(segment_instructions(profile, graph, s, w))
                 for s in segments for w in s.widths})


def _plan_works(graph: Graph, plan: Plan) -> list[list[Work]]:
    index = {op.name: op.id for op in graph.ops}
    res = []
    for s in plan.steps:
        k = index.get(s.op)
        if k is None:
            raise PexError(f"plan step {s.index}: operator '{s.op}' is not in the model")
        sl = (s.slice[0], s.slice[1]) if s.slice is not None else None
        rows = (s.rows[0], s.rows[1]) if s.rows is not None else None
        if s.mode in ("band", "halo") and rows is None:
            raise PexError(f"plan step {s.index}: a '{s.mode}' step needs its rows")
        # kernel scratch (CMSIS-NN ctx.buf) is no in-place temporary: only `<op>@temp` is
        inplace = any(not is_kscratch(b) for b in s.scratch)
        res.append(step_work(graph, k, s.mode, sl, inplace=inplace, rows=rows))
    return res


def plan_instructions(profile: Profile, graph: Graph, plan: Plan) -> list[float]:
    """Estimated instructions of every plan step, in step order (pex_invoke's input and
    output copies are not a step: see `invoke_instructions`)."""
    return [work_instructions(profile, w) for w in _plan_works(graph, plan)]


def estimate(profile: Profile, graph: Graph, plan: Plan) -> Estimate:
    """The whole plan: its steps plus pex_invoke's copies, in instructions, cycles and ms."""
    works = [w for ws in _plan_works(graph, plan) for w in ws] + invoke_work(graph)
    by_class: dict[str, float] = {}
    for w in works:
        by_class[w.cls] = by_class.get(w.cls, 0.0) + work_instructions(profile, [w])
    insns = sum(by_class.values())
    cycles = insns * profile.cycles_per_instruction
    return Estimate(instructions=insns, cycles=cycles, ms=1000.0 * cycles / profile.clock_hz,
                    by_class=by_class)


def latency_record(profile: Profile, est: Estimate) -> dict:
    """The plan file's optional `latency` object (README: plan format)."""
    return {"target": profile.name, "core": profile.core, "profile": display_path(profile),
            "profile_sha256": profile.sha256, "instructions": round(est.instructions),
            "cycles": round(est.cycles), "ms": round(est.ms, 3), "clock_hz": profile.clock_hz,
            "cycles_per_instruction": profile.cycles_per_instruction,
            "by_class": {k: round(v) for k, v in sorted(est.by_class.items())}}
