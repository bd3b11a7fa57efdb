"""CP-SAT encoding of streaming in place for row segments (issue #7, phase 2).

Per row segment g and band height h with a streamable input A (`bands.stream_union`), a boolean
stream[g, h] <= width[g, h] says: the output B is written band by band over rows of A that no
later step reads. Then offset(B) = offset(A) + delta_h (a constant), and the pair's rectangles
are re-cut in time: A's ends when g starts, B's starts after g ends, and one union box
[offset(A) + low, + size) covers g's positions, where A and B may share bytes. A's other readers
run before g (after g its rows are gone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ortools.sat.python import cp_model

from pexopt.deadline import check as check_deadline
from pexopt.graph.ir import Graph
from pexopt.partial.bands import stream_input, stream_union
from pexopt.partial.candidates import Segment
from pexopt.schedule import SolverParams


class ModelVars(Protocol):
    """What streaming reads of the layout model under construction
    (`constraints.LayoutConstraints`, which calls `add_streaming`: a protocol, not an import,
    keeps the modules acyclic)."""

    m: cp_model.CpModel
    g: Graph
    p: SolverParams
    segments: list[Segment]
    cons: dict[int, list[int]]
    pos: dict[int, cp_model.LinearExprT]
    units: dict[int, cp_model.IntVar]
    width: dict[tuple[int, int], cp_model.IntVar]
    top: cp_model.IntVar

    def _before(self, a: cp_model.LinearExprT, b: cp_model.LinearExprT,
                enforce: cp_model.IntVar) -> None: ...


@dataclass
class StreamVars:
    """Streaming choices and what they change in the tensor rectangles."""

    choice: dict[tuple[int, int], cp_model.IntVar] = field(default_factory=dict)  # (g, h)
    end_cut: dict[int, list[tuple[int, cp_model.IntVar]]] = field(default_factory=dict)
    start_cut: dict[int, list[tuple[int, cp_model.IntVar]]] = field(default_factory=dict)
    boxes: list[tuple[object, object, int, cp_model.IntVar]] = field(default_factory=list)

    def shift(self, cuts: dict[int, list[tuple[int, cp_model.IntVar]]],
              t: int) -> cp_model.LinearExprT | int:
        """Steps cut off tensor t's rectangle (0 when it never streams)."""
        return sum(span * b for span, b in cuts.get(t, [])) if t in cuts else 0

    def used(self, solver: cp_model.CpSolver) -> set[int]:
        return {g for (g, _), b in self.choice.items() if solver.boolean_value(b)}


def add_streaming(md: ModelVars) -> StreamVars:
    """Streaming options of every row segment of the layout model md (module docstring)."""
    sv = StreamVars()
    m, g, al = md.m, md.g, md.p.align
    for s in md.segments:
        check_deadline()
        a = stream_input(g, s)
        if a is None or a not in md.units or s.output not in md.units:
            continue
        first = md.pos[s.ops[0]]
        span = len(s.ops)
        others = [c for c in md.cons[a] if c not in s.ops]
        for h in s.widths:
            u = stream_union(g, s, h, al)
            if u is None:
                continue
            delta, low, size = u
            b = m.new_bool_var(f"stream{s.id}_{h}")
            m.add(b <= md.width[(s.id, h)])
            for c in others:
                md._before(md.pos[c], first, b)
            ua, ub = md.units[a], md.units[s.output]
            m.add(ub * al == ua * al + delta).only_enforce_if(b)
            m.add(ua * al + low >= 0).only_enforce_if(b)
            m.add(md.top >= ua * al + low + size).only_enforce_if(b)
            x = m.new_optional_fixed_size_interval_var(first, span, b, f"sx{s.id}_{h}")
            y = m.new_optional_fixed_size_interval_var(ua * al + low, size, b, f"sy{s.id}_{h}")
            sv.boxes.append((x, y, size, b))
            sv.choice[(s.id, h)] = b
            sv.end_cut.setdefault(a, []).append((span, b))
            sv.start_cut.setdefault(s.output, []).append((span, b))
    for cuts in sv.end_cut.values():  # one input streams into at most one output
        if len(cuts) > 1:
            m.add_at_most_one([b for _, b in cuts])
    return sv
