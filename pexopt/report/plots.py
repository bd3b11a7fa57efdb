"""Figures (matplotlib, Agg, no pyplot state) for one plan and for a sweep: the names callers
import (`pexopt report`, `sweep-report`, tests), importing matplotlib with them.

`report_plan(plan, graph, out_dir)`: memory timeline + arena layout (PNG and SVG) + summary.md
(`plan_plots.py`). `report_sweep(results_jsonl, out_dir)`: per model, arena vs estimated latency
(or plan steps without a target profile) (PNG and SVG) + summary.md (`sweep_plots.py`). What
both share (a figure, its bytes, the folder written all or none) is in `figure_io.py`. Sizes in
kB = 1024 B.
"""

from __future__ import annotations

from pexopt.report.plan_plots import (
    live_matrix,
    report_plan,
    split_ranges,
)
from pexopt.report.sweep_plots import pareto_front, report_sweep

__all__ = [
    "live_matrix", "pareto_front", "report_plan", "report_sweep", "split_ranges",
]
