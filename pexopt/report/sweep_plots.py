"""Figures (matplotlib, Agg, no pyplot state) for a sweep: `report_sweep(results_jsonl,
out_dir)` writes, per model, arena vs estimated latency (or plan steps without a target
profile) (PNG and SVG) + summary.md. Sizes in kB = 1024 B."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pexopt.report.figure_io import BUDGET_COLOR, new_figure, render, write_report
from pexopt.report.markdown import KB, group_rows, sweep_summary

MODE_STYLE = {"layerwise": ("o", "#4C72B0", "layer by layer", 120),  # big under small
              "split": ("s", "#DD8452", "channel splits (Pex)", 80),
              "rows": ("^", "#55A868", "row bands", 55),
              "hybrid": ("D", "#C44E52", "channel splits + row bands", 35)}


def pareto_front(points: Sequence[tuple[float, int]]) -> list[tuple[float, int]]:
    """(latency or steps, arena) points not beaten on both axes, fastest first."""
    front: list[tuple[float, int]] = []
    for s, a in sorted(set(points)):
        if not front or a < front[-1][1]:
            front.append((s, a))
    return front


def _scatter_modes(ax: Any, ok: Sequence[dict[str, Any]],
                   x: Callable[[dict[str, Any]], float]) -> None:
    """One marker per execution mode, each point labelled with its arena once."""
    labelled: set[tuple[int, int]] = set()
    for mode, (marker, color, label, size) in MODE_STYLE.items():
        pts = sorted({(x(r), int(r["arena"])) for r in ok if r.get("mode") == mode})
        if pts:
            ax.scatter([s for s, _ in pts], [a / KB for _, a in pts], marker=marker, s=size,
                       color=color, edgecolor="black", lw=0.6, zorder=3, label=label)
        for s, a in pts:
            if (s, a) not in labelled:
                labelled.add((s, a))
                ax.annotate(f"{a / KB:,.1f} kB", (s, a / KB), xytext=(7, 7),
                            textcoords="offset points", fontsize=8, zorder=4)


def _budget_lines(ax: Any, rows: Sequence[dict[str, Any]],
                  ok: Sequence[dict[str, Any]]) -> list[int]:
    """A dashed line per budget of the sweep, with how many points fit it; the budgets."""
    budgets = sorted({int(r["budget"]) for r in rows if r.get("budget")})
    for b in budgets:
        fits = [r for r in ok if int(r["budget"]) == b]
        n_fit = sum(bool(r.get("fits")) for r in fits)
        ax.axhline(b / KB, color=BUDGET_COLOR, ls="--", lw=1, alpha=0.8,
                   label=f"budget {b / KB:,.0f} kB ({n_fit} of {len(fits)} points fit)")
        ax.annotate(f"budget {b / KB:,.0f} kB", (0.995, b / KB),
                    xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=7,
                    color=BUDGET_COLOR)
    return budgets


def plot_pareto(name: str, rows: Sequence[dict[str, Any]]) -> Figure:
    ok = [r for r in rows if not r.get("error") and r.get("arena") is not None
          and r.get("steps") is not None]
    # the target profile's latency estimate when every point has one, else plan steps
    timed = bool(ok) and all(r.get("est_ms") is not None for r in ok)

    def x(r: dict[str, Any]) -> float:
        return float(r["est_ms"]) if timed else int(r["steps"])

    fig = new_figure(8.5, 5)
    ax = fig.add_subplot()
    _scatter_modes(ax, ok, x)
    front = pareto_front([(x(r), int(r["arena"])) for r in ok])
    if len(front) > 1:
        xs, ys = [s for s, _ in front], [a / KB for _, a in front]
        ax.step(xs, ys, where="post", color="#555555", lw=1, ls="-", zorder=2,
                label="Pareto front")
    budgets = _budget_lines(ax, rows, ok)
    tflm = sorted({int(r["tflm_arena"]) for r in ok if r.get("tflm_arena")})
    if tflm:
        ax.axhline(tflm[0] / KB, color="#2CA02C", ls=":", lw=1.3,
                   label=f"TFLM arena {tflm[0] / KB:,.1f} kB")
    failed = len(rows) - len(ok)
    targets = sorted({str(r.get("target")) for r in ok})
    ax.set_xlabel(f"estimated latency (ms, {', '.join(targets)} profile)" if timed else
                  "plan steps (kernel calls; points without a target profile)")
    ax.set_ylabel("arena (kB, 1 kB = 1024 B)")
    what = "estimated latency" if timed else "plan steps"
    ax.set_title(f"{name}: arena vs {what}" + (f" ({failed} failed points)" if failed
                                                else ""))
    tops = [b / KB for b in budgets] + [int(r["arena"]) / KB for r in ok] + [t / KB for t in tflm]
    ax.set_ylim(0, max(tops) * 1.12 if tops else 1)
    if ok:
        xs = [x(r) for r in ok]
        pad = max(0.05 if timed else 1.0, 0.08 * (max(xs) - min(xs)))
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
    else:
        ax.text(0.5, 0.5, "no successful points", transform=ax.transAxes, ha="center")
    if not timed:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def report_sweep(results_jsonl: str | Path, out_dir: str | Path,
                 opt: str = "--out") -> dict[str, Path]:
    """Per model: pareto_<model>.{png,svg}; and summary.md with a table per model (only these
    files, all or none)."""
    from pexopt.sweep.runner import inside, latest_rows, read_results

    src = Path(results_jsonl)
    if not src.is_file():
        from pexopt.errors import PexError

        raise PexError(f"{src}: no such results file")
    rows = latest_rows(read_results(src))
    out = Path(out_dir)
    from pexopt.outputs import Outputs

    stems = {name: inside(out, f"pareto_{name}", "").name for name in group_rows(rows)}
    pre = Outputs(inputs=[src])
    pre.folder(out, opt, [f"{s}.{e}" for s in stems.values() for e in ("png", "svg")]
               + ["summary.md"])
    pre.check()  # before drawing
    paths: dict[str, Path] = {}
    figures: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for name, grows in group_rows(rows).items():
        stem = stems[name]
        files.update(render(plot_pareto(name, grows), stem))
        paths[f"{stem}_png"], paths[f"{stem}_svg"] = out / f"{stem}.png", out / f"{stem}.svg"
        figures[name] = f"{stem}.png"
    files["summary.md"] = sweep_summary(rows, str(src), figures).encode()
    paths["summary"] = out / "summary.md"
    write_report(out, files, opt, [src])
    return paths
