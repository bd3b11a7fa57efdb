"""Figures (matplotlib, Agg, no pyplot state) for one plan: `report_plan(plan, graph, out_dir)`
writes the memory timeline + arena layout (PNG and SVG) + summary.md. Sizes in kB = 1024 B."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from pexopt.graph.ir import Graph
from pexopt.plan.format import Buffer, Plan
from pexopt.report.figure_io import BUDGET_COLOR, DPI, new_figure, render, write_report
from pexopt.report.labels import short_name
from pexopt.report.markdown import KB, plan_summary
from pexopt.report.occupancy import Occupancy, occupancy, rectangles

KIND_COLORS = {"tensor": "#4C72B0", "slice": "#DD8452", "accumulator": "#C44E52",
               "scratch": "#8C8C8C", "band": "#55A868"}
SPLIT_SHADE = "#F2D16B"
ARENA_COLOR = "#222222"
OTHER_COLOR = "#C8C8C8"
NAMED_COLORS = ("#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2",
                "#393B79", "#BCBD22", "#17BECF")  # tab10 without its grey ("other" is grey)
MAX_NAMED = 10  # buffers shown by name in the timeline; the rest is "other"
MAX_LABELS = 8  # buffers labelled in the layout
PLAN_FILES = ("memory_timeline.png", "memory_timeline.svg", "arena_layout.png",
              "arena_layout.svg", "summary.md")
Rect = tuple[Buffer, int, int, int, int]  # buffer, first step, end step (exclusive), lo, hi


def _short(name: str, n: int = 34) -> str:
    return short_name(name, n)



def live_matrix(plan: Plan, occ: Occupancy | None = None) -> dict[str, list[int]]:
    """Buffer name -> bytes it holds at each step, as laid out: an in-place pair and a band
    output streamed over its input count their shared bytes once (`occupancy`), so a step's
    sum is the union of its live buffers, never more than the arena."""
    occ = occupancy(plan) if occ is None else occ
    res: dict[str, list[int]] = {b.name: [0] * len(occ) for b in plan.buffers}
    for s, held in enumerate(occ):
        for name, ivs in held.items():
            res[name][s] = sum(hi - lo for lo, hi in ivs)
    return res


def split_ranges(plan: Plan) -> list[tuple[int, int]]:
    """Contiguous step ranges [first, last] run slice by slice (split subgraphs)."""
    ranges: list[tuple[int, int]] = []
    for s in plan.steps:
        if s.mode == "whole":
            continue
        if ranges and ranges[-1][1] == s.index - 1:
            ranges[-1] = (ranges[-1][0], s.index)
        else:
            ranges.append((s.index, s.index))
    return ranges


def split_buffers(plan: Plan) -> set[str]:
    """Buffers of split subgraphs: slice buffers, accumulators, outputs written slice by slice."""
    names = {b.name for b in plan.buffers if b.kind in ("slice", "accumulator", "band")}
    for s in plan.steps:
        if s.mode in ("slice", "accumulate", "requantize", "band"):
            names.update(w for w in s.writes)
    return names


def _shade_splits(ax: Any, ranges: Sequence[tuple[int, int]], left: float) -> None:
    for i, (a, b) in enumerate(ranges):
        ax.axvspan(a + left, b + 1 + left, color=SPLIT_SHADE, alpha=0.35, lw=0, zorder=0,
                   label="split subgraph (runs slice by slice or band by band)" if i == 0 else None)


def _hlines(ax: Any, plan: Plan) -> None:
    ax.axhline(plan.arena_bytes / KB, color=ARENA_COLOR, ls=":", lw=1.2,
               label=f"arena {plan.arena_bytes / KB:,.1f} kB")
    if plan.budget_bytes is not None:
        ax.axhline(plan.budget_bytes / KB, color=BUDGET_COLOR, ls="--", lw=1.5,
                   label=f"budget {plan.budget_bytes / KB:,.1f} kB"
                   + ("" if plan.fits else " (does NOT fit)"))


def _model_name(plan: Plan, graph: Graph | None) -> str:
    return graph.name if graph is not None else Path(plan.model.get("path", "model")).stem


def plot_timeline(plan: Plan, graph: Graph | None = None) -> Figure:
    """Live bytes per step, stacked by buffer (the largest by name, the rest as 'other')."""
    live = live_matrix(plan)
    n = len(plan.steps)
    by_size = sorted(plan.buffers, key=lambda b: (-b.size, b.name))
    small = 0.04 * max(1, plan.arena_bytes)
    named = [b for b in by_size if b.size >= small][:MAX_NAMED]
    named_set = {b.name for b in named}
    other = [sum(live[b.name][s] for b in plan.buffers if b.name not in named_set)
             for s in range(n)]
    fig = new_figure(12, 5.2)
    ax = fig.add_subplot()
    x = list(range(n))
    bottom = [0.0] * n
    splits = split_buffers(plan)
    for i, b in enumerate(named):
        h = [v / KB for v in live[b.name]]
        idx = [s for s in x if h[s] > 0]  # no empty bars (they bloat the SVG)
        ax.bar(idx, [h[s] for s in idx], bottom=[bottom[s] for s in idx], width=1.0,
               align="edge", color=NAMED_COLORS[i % len(NAMED_COLORS)], edgecolor="none",
               hatch="///" if b.name in splits else None,
               label=f"{_short(b.name)} ({b.size / KB:,.1f} kB, {b.kind})")
        bottom = [u + v for u, v in zip(bottom, h)]
    if any(other):
        idx = [s for s in x if other[s] > 0]
        ax.bar(idx, [other[s] / KB for s in idx], bottom=[bottom[s] for s in idx], width=1.0,
               align="edge", color=OTHER_COLOR, edgecolor="none",
               label=f"other ({len(plan.buffers) - len(named)} smaller buffers)")
    _shade_splits(ax, split_ranges(plan), 0.0)
    _hlines(ax, plan)
    top = max([plan.arena_bytes, plan.budget_bytes or 0]) / KB
    ax.set_ylim(0, top * 1.08 if top else 1)
    ax.set_xlim(0, max(1, n))
    ax.set_xlabel("plan step (operator, or one slice of a split operator)")
    ax.set_ylabel("live bytes (kB, 1 kB = 1024 B)")
    ax.set_title(f"{_model_name(plan, graph)}: live memory per step "
                 f"(arena {plan.arena_bytes / KB:,.1f} kB, {n} steps, "
                 f"{len(plan.splits)} split subgraph{'s' if len(plan.splits) != 1 else ''})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              title="buffers (hatched: split subgraph)", title_fontsize=8)
    return fig


def plot_layout(plan: Plan, graph: Graph | None = None) -> Figure:
    """Buffers as rectangles: x = steps, y = addresses (kB), as `occupancy` holds them (a
    buffer spans first..last+1 at offset..offset+size unless it shares bytes at some steps:
    a band output streamed over its input grows row by row over it)."""
    n = len(plan.steps)
    fig = new_figure(12, 6)
    ax = fig.add_subplot()
    splits = split_buffers(plan)
    _shade_splits(ax, split_ranges(plan), 0.0)
    rects = rectangles(plan, occupancy(plan))
    _draw_rects(ax, rects, splits)
    _hlines(ax, plan)
    top = max([plan.arena_bytes, plan.budget_bytes or 0]) / KB
    ax.set_xlim(0, max(1, n))
    ax.set_ylim(0, top * 1.08 if top else 1)
    ax.set_xlabel("plan step (a buffer spans its first to last step)")
    ax.set_ylabel("arena offset (kB, 1 kB = 1024 B)")
    ax.set_title(f"{_model_name(plan, graph)}: arena layout ({len(plan.buffers)} buffers, "
                 f"arena {plan.arena_bytes / KB:,.1f} kB)")
    ax.grid(alpha=0.25, zorder=0)
    kinds = sorted({b.kind for b in plan.buffers}, key=lambda k: list(KIND_COLORS).index(k)
                   if k in KIND_COLORS else 99)
    handles = [Patch(facecolor=KIND_COLORS.get(k, "#999999"), label=k) for k in kinds]
    if splits:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///",
                             label="split subgraph buffer"))
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="buffer kind",
              title_fontsize=8)
    _label_buffers(fig, ax, rects)  # after the legend: it changes the axes' size
    return fig


def _light(bufs: Sequence[Buffer]) -> set[str]:
    """Names of buffers to draw light: greedily, none shares time and addresses with another
    light one (a chain of streamed pairs alternates dark, light, dark)."""
    light: set[str] = set()
    for i, b in enumerate(bufs):
        if not any(c.name in light and c.first_step <= b.last_step and b.first_step <=
                   c.last_step and c.offset < b.offset + b.size and b.offset < c.offset + c.size
                   for c in bufs[:i]):
            light.add(b.name)
    return light


def _draw_rects(ax: Any, rects: Sequence[Rect], splits: set[str]) -> None:
    """One patch per buffer drawn as one box; the boxes of buffers that share bytes step by
    step (a band output streamed over its input) as one borderless collection, such buffers
    alternately dark and light in the order they are born (a pair shows where they meet)."""
    boxes: dict[str, int] = {}
    for r in rects:
        boxes[r[0].name] = boxes.get(r[0].name, 0) + 1
    light = _light(sorted({r[0].name: r[0] for r in rects if boxes[r[0].name] > 1}.values(),
                          key=lambda b: (b.first_step, b.offset, b.name)))
    verts, colors = [], []
    for b, x0, x1, lo, hi in rects:
        hl = b.name in splits
        color = KIND_COLORS.get(b.kind, "#999999")
        y0, y1 = lo / KB, hi / KB
        if boxes[b.name] > 1:
            verts.append([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
            colors.append(to_rgba(color, 0.5 if b.name in light else 0.9))
            continue
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=color,
                               alpha=0.85, edgecolor="black" if hl else "white",
                               lw=1.4 if hl else 0.6, hatch="///" if hl else None, zorder=2))
    if verts:
        ax.add_collection(PolyCollection(verts, facecolors=colors, edgecolors="none",
                                         zorder=2))


def _label_buffers(fig: Figure, ax: Any, rects: Sequence[Rect]) -> None:
    """Label the largest buffers (by area) where the text fits inside their rectangle."""
    fig.draw_without_rendering()  # settle the layout: data -> pixel transform
    to_px = ax.transData.transform
    char_w, line_h = 7 * DPI / 72 * 0.62, 7 * DPI / 72 * 1.25  # 7 pt text
    placed: list[tuple[float, float, float, float]] = []
    largest: dict[str, Rect] = {}
    for r in rects:  # a buffer drawn as several boxes is labelled in its largest
        if not r[0].alias_of and (r[0].name not in largest or _area(r) > _area(
                largest[r[0].name])):
            largest[r[0].name] = r
    for b, s0, s1, lo, hi in sorted(largest.values(), key=lambda r: (-_area(r), r[0].name)):
        if len(placed) >= MAX_LABELS:
            break
        (x0, y0), (x1, y1) = to_px((s0, lo / KB)), to_px((s1, hi / KB))
        w, h = x1 - x0, y1 - y0
        size = f"{b.size / KB:,.1f} kB"
        options = []
        n = int((w - 6) // char_w)  # characters that fit across
        if n >= 8 and h - 2 >= 2 * line_h:
            name = _short(b.name, min(n, 30))
            options.append((f"{name}\n{size}", 0, max(len(name), len(size)) * char_w,
                            2 * line_h))
        n = int((h - 6) // char_w) - len(size) - 1  # characters that fit along, turned
        if n >= 8 and w - 2 >= line_h:
            name = _short(b.name, min(n, 30))
            options.append((f"{name} {size}", 90, line_h, (len(name) + 1 + len(size)) * char_w))
        options += [(size, 0, len(size) * char_w, line_h), (size, 90, line_h, len(size) * char_w)]
        for text, rot, tw, th in options:
            if tw <= w - 4 and th <= h - 2:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                box = (cx - tw / 2, cy - th / 2, cx + tw / 2, cy + th / 2)
                if any(box[0] < p[2] and p[0] < box[2] and box[1] < p[3] and p[1] < box[3]
                       for p in placed):
                    break
                placed.append(box)
                ax.annotate(text, ((s0 + s1) / 2, (lo + hi) / 2 / KB), fontsize=7, ha="center",
                            va="center", rotation=rot, zorder=4,
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                  "alpha": 0.75})
                break


def _area(r: Rect) -> int:
    return (r[2] - r[1]) * (r[4] - r[3])


def report_plan(plan: Plan, graph: Graph | None, out_dir: str | Path, *,
                opt: str = "--out", inputs: Sequence[Any] = ()) -> dict[str, Path]:
    """Write memory_timeline.{png,svg}, arena_layout.{png,svg} and summary.md to out_dir
    (only these files, all or none, never over one of `inputs`)."""
    out = Path(out_dir)
    from pexopt.outputs import Outputs

    pre = Outputs(inputs=list(inputs))
    pre.folder(out, opt, PLAN_FILES)
    pre.check()  # before drawing
    files: dict[str, bytes] = {}
    paths: dict[str, Path] = {}
    for stem, fn in (("memory_timeline", plot_timeline), ("arena_layout", plot_layout)):
        files.update(render(fn(plan, graph), stem))
        paths[f"{stem}_png"], paths[f"{stem}_svg"] = out / f"{stem}.png", out / f"{stem}.svg"
    md = plan_summary(plan, graph, [("memory per step", "memory_timeline.png"),
                                    ("arena layout", "arena_layout.png")])
    files["summary.md"] = md.encode()
    paths["summary"] = out / "summary.md"
    write_report(out, files, opt, inputs)
    return paths
