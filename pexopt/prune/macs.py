"""MACs of every operator as a CP-SAT expression of the kept channels: the latency hook.

A producer (dense conv, FC) does `macs x (kept out / out) x (kept in / in)`: one product of two
channel sums (`AddMultiplicationEquality`); an op that follows or ties channels scales with its
output channels; anything else is constant. `cost_bound` turns per-operator cost coefficients
(cycles per MAC) into `sum(coef x MACs) <= bound` for PruneOptions.extra; `--latency` itself
uses the profile's full estimate (pexopt.prune.latency).
"""

from __future__ import annotations

from ortools.sat.python import cp_model

from pexopt.graph.ir import Graph
from pexopt.ops import SPECS, Channels
from pexopt.prune.groups import Groups, Layout
from pexopt.prune.model import ExtraConstraints

COEF_SCALE = 1000  # integer units per unit of a cost coefficient


def _channels(m: cp_model.CpModel, layout: Layout | None, keep: dict[int, cp_model.IntVar],
              name: str) -> tuple[cp_model.IntVar | int, int]:
    """(kept channels as one variable or a constant, original channels) of a value."""
    if layout is None:
        return 1, 1
    if not any(p.group in keep for p in layout.parts):
        return layout.channels, layout.channels
    v = m.new_int_var(0, layout.channels, name)
    m.add(v == sum(keep[p.group] if p.group in keep else p.size for p in layout.parts))
    return v, layout.channels


def op_macs(m: cp_model.CpModel, graph: Graph, groups: Groups,
            keep: dict[int, cp_model.IntVar]) -> dict[str, cp_model.LinearExprT]:
    """Operator name -> its MACs as an expression of the kept channels (original `graph`)."""
    res: dict[str, cp_model.LinearExprT] = {}
    for op in graph.ops:
        if not op.macs or not op.outputs:
            continue
        rule = SPECS[op.kind].prune
        out_l = groups.layouts.get(graph.tensors[op.outputs[0]].name)
        c_out, n_out = _channels(m, out_l, keep, f"cout_{op.id}")
        if rule == Channels.PRODUCE and op.inputs:
            in_l = groups.layouts.get(graph.tensors[op.inputs[0]].name)
            c_in, n_in = _channels(m, in_l, keep, f"cin_{op.id}")
            per = op.macs // max(1, n_out * n_in)
            if isinstance(c_out, int) or isinstance(c_in, int):
                res[op.name] = per * c_out * c_in
            else:
                prod = m.new_int_var(0, n_out * n_in, f"macs_{op.id}")
                m.add_multiplication_equality(prod, [c_out, c_in])
                res[op.name] = per * prod
        elif rule in (Channels.FOLLOW, Channels.TIE, Channels.CONCAT):
            res[op.name] = (op.macs // max(1, n_out)) * c_out
        else:
            res[op.name] = op.macs
    return res


def cost_bound(graph: Graph, groups: Groups, coefs: dict[str, float], bound: float,
               default: float = 1.0) -> ExtraConstraints:
    """A constraint `sum(coef[op] x MACs[op]) <= bound` (coefficients per operator name,
    `default` for the others), for PruneOptions.extra."""

    def add(m: cp_model.CpModel, keep: dict[int, cp_model.IntVar]) -> None:
        macs = op_macs(m, graph, groups, keep)
        m.add(sum(int(round(coefs.get(k, default) * COEF_SCALE)) * e for k, e in macs.items())
              <= int(bound * COEF_SCALE))

    return add
