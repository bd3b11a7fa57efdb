"""The memory/latency frontier as files: a CSV row per point and a PNG step plot."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from pexopt.outputs import write_files
from pexopt.pipeline import ParetoRow

COLUMNS = ("point", "latency_bound_instructions", "instructions", "ms", "arena_bytes",
           "fits_budget", "splits", "status", "validated", "simulated_exact")


def pareto_csv(rows: Sequence[ParetoRow]) -> str:
    """CSV text, fastest point first; `latency_bound_instructions` is empty for the
    unconstrained (memory-optimal) point."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for i, r in enumerate(rows):
        w.writerow([i, "" if r.bound is None else r.bound, round(r.instructions),
                    f"{r.ms:.3f}", r.arena,
                    "" if r.plan.budget_bytes is None else ("yes" if r.plan.fits else "no"),
                    r.splits, r.status, "yes",
                    "n/a" if r.exact is None else ("yes" if r.exact else "no")])
    return buf.getvalue()


def pareto_png(rows: Sequence[ParetoRow], title: str, profile_name: str) -> bytes:
    """Arena (kB) against estimated latency (ms), as a step line through the points."""
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [r.ms for r in rows]
    ys = [r.arena / 1024 for r in rows]
    ax.step(xs, ys, where="post", color="#4C72B0", linewidth=1.2)
    ax.plot(xs, ys, "o", color="#C44E52")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(f"{r.splits} splits", (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    budget = rows[0].plan.budget_bytes if rows else None
    if budget is not None:
        ax.axhline(budget / 1024, color="#D62728", linestyle="--", linewidth=0.8,
                   label=f"budget {budget / 1024:,.0f} kB")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel(f"estimated latency on {profile_name} (ms)")
    ax.set_ylabel("arena (kB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, linewidth=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_pareto(rows: Sequence[ParetoRow], csv_path: Path, title: str,
                 profile_name: str) -> Path:
    """Write the CSV and, beside it, the PNG (same name, .png); returns the PNG's path."""
    png = csv_path.with_suffix(".png")
    write_files({csv_path: pareto_csv(rows), png: pareto_png(rows, title, profile_name)},
                "--pareto")
    return png


def pareto_table(rows: Sequence[ParetoRow], profile_name: str) -> Table:
    """The frontier for the terminal."""
    t = Table(title=f"memory/latency frontier ({profile_name}; each plan validated and "
                    "simulated)")
    for col in ("latency bound (M instr.)", "estimated (M instr.)", "ms", "arena", "splits",
                "status"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row("-" if r.bound is None else f"{r.bound / 1e6:,.2f}",
                  f"{r.instructions / 1e6:,.2f}", f"{r.ms:,.2f}", f"{r.arena:,}",
                  str(r.splits), r.status)
    return t
