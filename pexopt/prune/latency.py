"""`--prune --latency`: the estimated instructions of a pruned network as a CP-SAT expression.

Under a target profile an operator run whole costs a linear function of its kernel counts
(pexopt.latency.features), and every count is constant, proportional to its output channels
(outputs, taps) or to the product of its input and output channels (the MACs of a dense conv or
an FC). So each operator's cost is exactly bilinear in (kept input channels, kept output
channels):

    instructions(ci, co) = a + b * co + c * ci + d * ci * co

`OpTerm` finds a, b, c, d by pricing the operator at four channel counts with the profile's own
`op_instructions`, and checks the fit at the unpruned and the most pruned counts; an operator
that does not check out (e.g. a grouped conv, whose per-group input rounds) or whose channels
are not on the IR's last axis is priced at its unpruned cost, a safe upper bound since the
profile's coefficients are non-negative. In CP-SAT `ci * co` is one product variable
(`AddMultiplicationEquality`) over the small discrete domains of the kept counts; coefficients
are rounded up, so the constrained sum never underestimates.

The sum prices every operator run whole: the layer-by-layer plan. A plan's splits and in-place
writes add the (clamped non-negative) difference between that plan's estimate and its layer-by-
layer estimate, which the search passes as `overhead` from the structure it prunes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ortools.sat.python import cp_model

from pexopt.graph.ir import Graph, Tensor
from pexopt.latency.cost import invoke_instructions, op_instructions
from pexopt.latency.profile import Profile
from pexopt.prune.groups import Groups, Layout, Part
from pexopt.prune.importance import CostTable
from pexopt.prune.model import ExtraConstraints

SCALE = 16  # CP-SAT integer units per estimated instruction
_TOL = 1e-6  # relative tolerance of the bilinear fit's check (float sums of the profile)


@dataclass(frozen=True)
class OpTerm:
    """One operator's whole-step instructions: a + b*co + c*ci + d*ci*co, where ci/co are the
    kept channels of its input/output parts (None: that side does not change)."""

    name: str
    a: float
    b: float
    c: float
    d: float
    ins: tuple[Part, ...] | None
    outs: tuple[Part, ...] | None

    def value(self, keep: dict[int, int]) -> float:
        ci, co = _count(self.ins, keep), _count(self.outs, keep)
        return self.a + self.b * co + self.c * ci + self.d * ci * co


def _count(parts: tuple[Part, ...] | None, keep: dict[int, int]) -> int:
    return 0 if parts is None else sum(keep.get(p.group, p.size) for p in parts)


def _reshaped(t: Tensor, c: int) -> Tensor:
    per = t.nbytes // max(1, t.shape[-1])
    return replace(t, shape=(*t.shape[:-1], c), nbytes=per * c)


class LatencyModel:
    """The profile's estimate of every operator run whole, plus pex_invoke's copies, as a
    function of the kept channels of the free groups (module doc)."""

    def __init__(self, profile: Profile, graph: Graph, groups: Groups,
                 tables: dict[int, CostTable]) -> None:
        """`graph`: the unpruned IR; `tables`: the free groups' allowed counts."""
        self.profile, self.graph, self.groups = profile, graph, groups
        self.smallest = {g: t.counts[0] for g, t in tables.items()}
        self.invoke = invoke_instructions(profile, graph)  # input and output are never pruned
        self.terms = [self._term(k) for k in range(len(graph.ops))]

    def _side(self, tid: int | None) -> tuple[tuple[Part, ...] | None, bool]:
        """(parts that change, ok): ok False when the value changes but not on the last axis."""
        if tid is None:
            return None, True
        t = self.graph.tensors[tid]
        lay: Layout | None = self.groups.layouts.get(t.name)
        if lay is None or not any(p.group in self.smallest for p in lay.parts):
            return None, True
        return lay.parts, bool(t.shape) and t.shape[-1] == lay.channels

    def _price(self, k: int, ci: int | None, co: int | None) -> float:
        """Op k run whole with its input/output channels set to ci/co (None: unchanged)."""
        op = self.graph.ops[k]
        tensors = list(self.graph.tensors)
        if ci is not None:
            tensors[op.inputs[0]] = _reshaped(tensors[op.inputs[0]], ci)
        if co is not None:
            tensors[op.outputs[0]] = _reshaped(tensors[op.outputs[0]], co)
        return op_instructions(self.profile, replace(self.graph, tensors=tuple(tensors)), k)

    def _term(self, k: int) -> OpTerm:
        op = self.graph.ops[k]
        full = op_instructions(self.profile, self.graph, k)
        ins, ok_in = self._side(op.inputs[0] if op.inputs else None)
        outs, ok_out = self._side(op.outputs[0] if op.outputs else None)
        if op.outputs and op.inputs and op.outputs[0] == op.inputs[0]:
            ok_in = False  # not expected in the IR; price it unpruned rather than guess
        const = OpTerm(op.name, full, 0.0, 0.0, 0.0, None, None)
        if not (ok_in and ok_out) or (ins is None and outs is None):
            return const
        i = None if ins is None else 1
        o = None if outs is None else 1
        f11 = self._price(k, i, o)
        b = self._price(k, i, 2) - f11 if outs else 0.0
        c = self._price(k, 2, o) - f11 if ins else 0.0
        d = self._price(k, 2, 2) - f11 - b - c if ins and outs else 0.0
        b, c, d = (0.0 if abs(x) < _TOL else x for x in (b - d, c - d, d))
        a = f11 - b - c - d
        term = OpTerm(op.name, a, b, c, d, ins, outs)
        # the fit must reproduce the profile at the unpruned and at the most pruned counts
        for keep in ({}, self.smallest):
            ci = None if ins is None else _count(ins, keep)
            co = None if outs is None else _count(outs, keep)
            want = self._price(k, ci, co)
            if abs(term.value(keep) - want) > _TOL * max(1.0, abs(want)):
                return const
        return term

    def whole(self, keep: dict[int, int]) -> float:
        """Estimated instructions of the layer-by-layer plan of the model pruned to `keep`."""
        return self.invoke + sum(t.value(keep) for t in self.terms)

    def bound(self, cap: float, overhead: float = 0.0) -> ExtraConstraints:
        """`whole(keep) + overhead <= cap` over the pruning model's group variables."""
        # the solver rounds each operator's cost to whole instructions: one per op of slack
        room = cap - overhead - self.invoke - len(self.terms)

        def add(m: cp_model.CpModel, keep: dict[int, cp_model.IntVar]) -> None:
            const, expr = 0.0, []
            for n, t in enumerate(self.terms):
                const += t.a
                ci = self._var(m, t.ins, keep, f"lat_ci{n}") if t.c or t.d else None
                co = self._var(m, t.outs, keep, f"lat_co{n}") if t.b or t.d else None
                for coef, v in ((t.b, co), (t.c, ci)):
                    if v is not None and coef:
                        expr.append(math.ceil(coef * SCALE) * v)
                if t.d and ci is not None and co is not None:
                    lo_i, hi_i = _count(t.ins, self.smallest), _count(t.ins, {})
                    lo_o, hi_o = _count(t.outs, self.smallest), _count(t.outs, {})
                    prod = m.new_int_var(lo_i * lo_o, hi_i * hi_o, f"lat_p{n}")
                    m.add_multiplication_equality(prod, [ci, co])
                    expr.append(math.ceil(t.d * SCALE) * prod)
            m.add(sum(expr) <= math.floor((room - const) * SCALE))

        return add

    @staticmethod
    def _var(m: cp_model.CpModel, parts: tuple[Part, ...] | None,
             keep: dict[int, cp_model.IntVar], name: str) -> cp_model.IntVar | None:
        """The kept channels of `parts` as one variable (fixed parts as constants)."""
        if parts is None:
            return None
        hi = sum(p.size for p in parts)
        v = m.new_int_var(0, hi, name)
        m.add(v == sum(keep[p.group] if p.group in keep else p.size for p in parts))
        return v
