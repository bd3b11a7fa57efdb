"""What can be checked of a plan without its model (`pexopt report plan.json`, issue #13
item 15): the arena facts a figure or a summary would otherwise show for an impossible plan.

Steps are numbered in order and name existing buffers while those live; buffers have a known
kind, a unique name, a step range of the plan and an aligned place inside the arena;
arena_bytes is the highest buffer end; no two buffers share bytes while both live except an
in-place handover (`alias_of`) or a band output streamed over its input; `fits` is arena_bytes
<= budget_bytes. What needs the model (shapes, sizes, which channels and rows every step
computes, whether streamed rows are read before they are overwritten) is `validate`'s.
"""

from __future__ import annotations

from pexopt.plan.format import Buffer, Plan
from pexopt.plan.validator_core import (
    BUFFER_KINDS,
    MODES,
    PlanInvalid,
    Violation,
    desc,
    step_name,
)
from pexopt.plan.validator_layout import (
    check_arena_bytes,
    check_fits,
    check_offsets,
    check_overlap,
)
from pexopt.plan.validator_rows import streaming_pairs


def check_steps_alone(plan: Plan, buffers: dict[str, Buffer]) -> list[Violation]:
    """Index == position, a known mode, every buffer named exists and lives at the step."""
    out: list[Violation] = []
    for i, s in enumerate(plan.steps):
        if s.index != i:
            out.append(Violation("order", f"{step_name(i, s)} has index {s.index}"))
        if s.mode not in MODES:
            out.append(Violation("mode", f"{step_name(i, s)} has unknown mode '{s.mode}'"))
        for verb, names in (("reads", s.reads), ("writes", s.writes),
                            ("uses as scratch", s.scratch)):
            for name in names:
                b = buffers.get(name) if isinstance(name, str) else None
                if b is None:
                    out.append(Violation("io", f"{step_name(i, s)} {verb} '{name}', "
                                               "not a buffer of the plan"))
                elif not b.first_step <= i <= b.last_step:
                    out.append(Violation("not_live", f"{step_name(i, s)} {verb} {desc(b)}, "
                                                     "not live then"))
    return out


def check_buffers_alone(plan: Plan) -> list[Violation]:
    """Unique names, known kinds, step ranges of the plan."""
    out: list[Violation] = []
    n = len(plan.steps)
    seen: set[str] = set()
    for b in plan.buffers:
        if b.name in seen:
            out.append(Violation("buffer", f"buffer name '{b.name}' is used twice"))
        seen.add(b.name)
        if b.kind not in BUFFER_KINDS:
            out.append(Violation("buffer", f"buffer '{b.name}' has unknown kind '{b.kind}'"))
        if not 0 <= b.first_step <= b.last_step < max(n, 1):
            out.append(Violation("lifetime", f"buffer {desc(b)} is not a step range of the "
                                             f"{n}-step plan"))
    return out


def alias_pairs_alone(plan: Plan, buffers: dict[str, Buffer]
                      ) -> tuple[list[Violation], set[tuple[str, str]]]:
    """In-place handovers that hold without the model: the new buffer starts where the old
    one ends, at the same offset, no larger, at a step that reads the old and writes the new.
    (Whether the operator may run in place is `validate`'s.)"""
    out: list[Violation] = []
    ok: set[tuple[str, str]] = set()
    for b in plan.buffers:
        if b.alias_of is None:
            continue
        a = buffers.get(b.alias_of) if isinstance(b.alias_of, str) else None
        s = b.first_step
        step = plan.steps[s] if a is not None and 0 <= s < len(plan.steps) else None
        if a is None or a is b:
            why = f"alias_of '{b.alias_of}' is not another buffer"
        elif (b.offset, s) != (a.offset, a.last_step) or b.size > a.size or step is None:
            why = (f"must start at step {a.last_step}, at offset {a.offset}, no larger than "
                   f"{a.size} B")
        elif a.name not in step.reads or b.name not in step.writes:
            why = f"{step_name(s, step)} does not read '{a.name}' and write '{b.name}'"
        else:
            ok.add((a.name, b.name))
            continue
        out.append(Violation("alias", f"buffer '{b.name}' alias_of '{b.alias_of}': {why}"))
    return out, ok


def validate_alone(plan: Plan) -> list[Violation]:
    """Every rule above the plan breaks (empty: nothing found without the model)."""
    buffers: dict[str, Buffer] = {}
    for b in plan.buffers:
        buffers.setdefault(b.name, b)
    out = check_buffers_alone(plan) + check_steps_alone(plan, buffers)
    out += check_offsets(plan) + check_arena_bytes(plan)
    alias, legal = alias_pairs_alone(plan, buffers)
    out += alias + check_overlap(plan, legal | streaming_pairs(plan)) + check_fits(plan)
    return out


def check_alone(plan: Plan) -> None:
    """Raise PlanInvalid (first violation + count) for a plan broken without its model."""
    violations = validate_alone(plan)
    if violations:
        raise PlanInvalid(violations)
