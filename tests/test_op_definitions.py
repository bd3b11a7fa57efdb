"""Every operator kind has a complete definition (issue #14 item 4): its row in the operator
table, and, when the back ends run it, its frontend constants, simulator kernel and C
renderer; its cost class and CMSIS-NN scratch formula exist."""

from __future__ import annotations

from pexopt.cmsis_scratch import FORMULAS
from pexopt.codegen.emit import SUPPORTED
from pexopt.codegen.render_ops import HANDLERS
from pexopt.frontend.onnx_params import _BUILDERS
from pexopt.latency.features import COST_CLASSES
from pexopt.ops import SPECS, OpKind
from pexopt.simulate.kernels import KERNELS

REFINED_COSTS = {"conv"}  # split into conv1x1 / convkxk by the kernel size (latency.features)


def incomplete(kind: OpKind) -> list[str]:
    """What the definition of `kind` lacks (empty: complete)."""
    spec = SPECS.get(kind)
    if spec is None:
        return ["no row in pexopt.ops.SPECS"]
    gaps = []
    if spec.cost not in COST_CLASSES and spec.cost not in REFINED_COSTS:
        gaps.append(f"cost class '{spec.cost}' unknown to the latency model")
    if spec.cmsis_scratch and spec.cmsis_scratch not in FORMULAS:
        gaps.append(f"CMSIS-NN scratch formula '{spec.cmsis_scratch}' missing")
    tables = {"frontend constants": _BUILDERS, "simulator kernel": KERNELS,
              "C renderer": HANDLERS}
    for what, table in tables.items():
        if spec.runs and kind not in table:
            gaps.append(f"runs, but has no {what}")
        if not spec.runs and kind in table:
            gaps.append(f"marked as not run, yet has a {what}")
    return gaps


def test_every_operator_kind_has_a_complete_definition() -> None:
    gaps = {k.value: g for k in OpKind if (g := incomplete(k))}
    assert gaps == {}
    assert SUPPORTED == {k for k in OpKind if SPECS[k].runs}  # the emitter's own list agrees


def test_an_incomplete_definition_is_reported(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delitem(KERNELS, OpKind.MAXPOOL)
    monkeypatch.delitem(SPECS, OpKind.PAD)
    assert incomplete(OpKind.MAXPOOL) == ["runs, but has no simulator kernel"]
    assert incomplete(OpKind.PAD) == ["no row in pexopt.ops.SPECS"]
    assert incomplete(OpKind.MATMUL) == []  # planned only: refused by simulate and codegen
