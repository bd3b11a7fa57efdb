"""The layout solver's entry points, one CP-SAT model for operator order, splits, in-place
choices and arena offsets; the names callers import are re-exported from their homes:

- `buffers.py`: what occupies the arena (buffers, lifetimes, kernel scratch, workspaces), a
  schedule's extent and cost, the greedy layout (`greedy_schedule`);
- `search_space.py`: the candidate segments (`candidates`) and the bound (`lower_bound`);
- `constraints.py`: the model's constraint families, one method each; `model.py`: the model
  `_Model` (the encoding is in its docstring), its hint, objective, solve and extraction;
- `stages.py`: `solve_layout`, the staged search; `substages.py` its sub-solves (row plans,
  the check beyond the cut, the canonical and simplest plans);
- here: `solve_fastest`, the least estimated cost under an arena limit.

The modules import each other in that order (no cycles).
"""

from __future__ import annotations

from dataclasses import replace

from pexopt.graph.ir import Graph
from pexopt.partial.bands import find_row_segments, worth_trying
from pexopt.partial.candidates import find_segments
from pexopt.schedule import Schedule, SolverParams
from pexopt.solver.bounds import all_inplace_candidates, dw_inplace_ok, split_bound
from pexopt.solver.buffers import (
    greedy_schedule,
    op_scratch,
    schedule_cost,
)
from pexopt.solver.model import Progress, _Model
from pexopt.solver.search_space import _hybrid, candidates, lower_bound
from pexopt.solver.stages import OUT_OF_TIME, TOO_SLOW, solve_layout

__all__ = [  # what pexopt and the tests import from here
    "OUT_OF_TIME", "TOO_SLOW", "Progress", "all_inplace_candidates", "candidates",
    "dw_inplace_ok", "greedy_schedule", "lower_bound", "op_scratch", "schedule_cost",
    "solve_fastest", "solve_layout",
]


def solve_fastest(graph: Graph, params: SolverParams, arena_limit: int | None,
                  hint: Schedule | None = None) -> Schedule | None:
    """The schedule of least estimated cost whose arena is at most `arena_limit` (None when no
    schedule was found in the time limit), ignoring `params.latency`."""
    assert params.cost is not None, "solve_fastest needs a cost model"
    free = replace(params, latency=None)
    segments = find_segments(graph, params.max_segment_len, params.max_widths,
                             params.slice_widths) if params.split and params.channels else []
    if params.split and params.rows:  # bands may be what fits the arena limit
        rows = find_row_segments(graph, len(segments), params.max_segment_len,
                                 params.max_heights, single=params.stream)
        rows += _hybrid(graph, params, len(segments) + len(rows))
        segments += worth_trying(graph, rows, split_bound(graph, segments + rows,
                                                          stream=params.stream))
    file_order = list(range(len(graph.ops)))
    model = _Model(graph, free, None if params.reorder else file_order, segments, 0, arena_limit)
    if params.hint:
        model.hint(hint if hint is not None else greedy_schedule(graph, file_order, free))
    name, sched, _ = model.solve(params.time_limit, "fastest", None, objective="latency")
    if sched is None:
        return None
    sched.status = name
    sched.params = params
    return sched
