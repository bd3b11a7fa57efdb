"""Validator rule for CMSIS-NN kernel scratch (`ctx.buf`): every step that the emitter may run
through a CMSIS-NN kernel needing scratch on the plan's target lists a live kernel-scratch
buffer at least that big. The size is recomputed from the IR (`pexopt.cmsis_scratch`, CMSIS-NN's
own formulas), never taken from the solver; overlaps and liveness are the generic rules'.
"""

from __future__ import annotations

from pexopt.cmsis_scratch import TARGETS, kernel_scratch_bytes
from pexopt.ops import SPECS
from pexopt.plan.format import is_kscratch
from pexopt.plan.validator_core import PlanIndex, Violation, step_name


def _runs_in_place_temp(ix: PlanIndex, i: int) -> bool:
    """A whole in-place depthwise (pexopt's kernel through its H x W temporary: no ctx.buf)."""
    s, op = ix.plan.steps[i], ix.step_op[i]
    if op is None or s.mode != "whole" or not SPECS[op.kind].inplace_temp or not s.writes:
        return False
    b = ix.buffers.get(s.writes[0])
    return b is not None and b.alias_of is not None


def check_kernel_scratch(ix: PlanIndex) -> list[Violation]:
    """A known target, and per step a live `@kscratch` buffer of >= the CMSIS-NN need."""
    target = ix.plan.target
    if target is None:  # no CMSIS-NN scratch planned: the emitter uses portable kernels there
        return []
    if target not in TARGETS:
        return [Violation("target", f"plan target '{target}' is not one of "
                                    f"{', '.join(TARGETS)}")]
    out: list[Violation] = []
    for i, s in enumerate(ix.plan.steps):
        op = ix.step_op[i]
        if op is None or _runs_in_place_temp(ix, i):
            continue
        sl = ix.slices[i] if s.mode != "whole" else None
        if s.mode in ("slice", "accumulate") and sl is None:
            continue  # a malformed slice is validator_slices' violation
        need = kernel_scratch_bytes(ix.graph, op.id, target, sl, s.mode)
        if need == 0:
            continue
        ok = False
        for name in s.scratch:
            b = ix.buffers.get(name)
            if (b is not None and b.kind == "scratch" and is_kscratch(name)
                    and b.size >= need and b.first_step <= i <= b.last_step):
                ok = True
        if not ok:
            out.append(Violation("kernel_scratch", f"{step_name(i, s)} needs a live kernel "
                                                   f"scratch buffer (<op>@kscratch) of >= {need} "
                                                   f"bytes on {target}"))
    return out
