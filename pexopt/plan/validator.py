"""Independent plan checker: recomputes order, lifetimes and layout facts from the IR alone.

It deliberately imports nothing from `pexopt.solver` or `pexopt.plan.build`, so a solver or
plan-builder bug cannot hide itself. Steps and buffer lifetimes are inclusive step indices; for
overlap tests both time and address are half-open intervals (`[first_step, last_step + 1)`,
`[offset, offset + size)`).

`validate` runs the rules in a fixed order (the violations and their order are part of the
contract). The rules live in modules of their own, all built on the shared index and helpers
of `validator_core` and none importing this one: steps, buffers, step I/O and lifetimes
(`validator_buffers`); offsets, aliases, the overlap sweep and the budget (`validator_layout`);
partial execution (`validator_slices`: which channels every step computes, slice buffers and
accumulators; `validator_rows` row bands, `validator_hybrid` band x slice tiles); extents
(`validator_extents`, run first) and kernel scratch (`validator_scratch`).
"""

from __future__ import annotations

from pexopt.graph.ir import Graph
from pexopt.plan import validator_hybrid as vh
from pexopt.plan import validator_rows as vr
from pexopt.plan import validator_slices as vs
from pexopt.plan.format import Plan
from pexopt.plan.validator_buffers import (
    check_buffers,
    check_lifetimes,
    check_step_io,
    check_steps,
)
from pexopt.plan.validator_core import (
    PlanInvalid,
    Violation,
    build_index,
    overlaps,
)
from pexopt.plan.validator_extents import check_extents, check_sizes
from pexopt.plan.validator_layout import (
    check_aliases,
    check_arena_bytes,
    check_fits,
    check_offsets,
    check_overlap,
    find_overlaps,
)
from pexopt.plan.validator_scratch import check_kernel_scratch

__all__ = [  # the entry points, and the shared names callers import from here
    "PlanInvalid", "Violation", "check", "find_overlaps", "overlaps", "validate",
]


def check_model_hash(plan: Plan, graph: Graph) -> list[Violation]:
    """The plan's model sha256 is the graph's source file hash."""
    got = str(plan.model.get("sha256", ""))
    if got != graph.source_sha256:
        return [Violation("model_hash", f"plan is for model sha256 {got[:12] or '-'}…, the graph "
                                        f"'{graph.name}' has {graph.source_sha256[:12] or '-'}…")]
    return []


def validate(plan: Plan, graph: Graph, check_hash: bool = True) -> list[Violation]:
    """Every rule the plan breaks for this graph (empty when the plan is valid)."""
    ix = build_index(plan, graph)
    out: list[Violation] = check_model_hash(plan, graph) if check_hash else []
    extents = check_extents(ix)
    if extents:  # the rules below would index, iterate or allocate with these numbers
        return out + extents
    out += check_steps(ix)
    hybrid = vh.hybrid_ops(ix)
    out += vs.check_execution(ix, skip=vr.row_ops(ix) | hybrid)
    out += vr.check_row_execution(ix, skip=hybrid)
    out += vh.check_hybrid_execution(ix)
    out += vs.check_order(ix)
    out += check_buffers(ix)
    out += check_step_io(ix)
    out += vs.check_dataflow(ix)
    out += vr.check_row_dataflow(ix)
    out += vh.check_hybrid_dataflow(ix)
    out += check_lifetimes(ix)
    out += check_kernel_scratch(ix)
    out += check_offsets(plan)
    out += check_arena_bytes(plan)
    out += check_sizes(ix)
    alias_violations, legal = check_aliases(ix)
    legal |= vr.check_streaming(ix)
    out += alias_violations
    out += check_overlap(plan, legal)
    out += check_fits(plan)
    return out


def check(plan: Plan, graph: Graph, check_hash: bool = True) -> None:
    """Raise PlanInvalid (first violation + count) unless the plan is valid for the graph."""
    violations = validate(plan, graph, check_hash)
    if violations:
        raise PlanInvalid(violations)
