"""Row-band plans are not compiled yet (issue #7): refuse them rather than emit wrong C."""

from __future__ import annotations

from pexopt.errors import PexError
from pexopt.plan.format import Plan


def refuse_bands(plan: Plan) -> None:
    """PexError (one line) if the plan has row-band steps or band buffers."""
    for s in plan.steps:
        if s.mode in ("band", "halo") or s.rows is not None:
            raise PexError(f"codegen: step {s.index} ('{s.op}') runs in row bands, which the C "
                           "emitter does not support yet; solve with --no-rows")
    for b in plan.buffers:
        if b.kind == "band":
            raise PexError(f"codegen: buffer '{b.name}' is a band buffer, which the C emitter "
                           "does not support yet; solve with --no-rows")
