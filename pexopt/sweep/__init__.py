"""Sweeps: many independent planning points (models x input sizes x budgets x modes).

`load_sweep(path)` validates a YAML sweep file; `run_sweep(sweep, out_dir)` runs the points not
finished yet (local processes or Ray) and streams results.csv / results.jsonl; see runner.py.
"""

from pexopt.sweep.config import Point, SolverSettings, Sweep, load_sweep
from pexopt.sweep.runner import SweepSummary, run_sweep

__all__ = ["Point", "SolverSettings", "Sweep", "SweepSummary", "load_sweep", "run_sweep"]
