"""Markdown summaries: one plan (`summary.md` next to its figures) and one sweep."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pexopt.graph.ir import Graph
from pexopt.plan.format import Plan

KB = 1024


def fmt_bytes(n: int | None) -> str:
    """'145,152 B (141.8 kB)'; kB = 1024 B, as MCU datasheets count."""
    if n is None:
        return "-"
    return f"{n:,} B ({n / KB:,.1f} kB)"


def fmt_kb(n: Any) -> str:
    return "-" if n is None or n == "" else f"{int(n) / KB:,.1f}"


def md_escape(text: Any) -> str:
    """A table cell: no pipes, no line breaks, no HTML."""
    s = "" if text is None else str(text)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]],
          right: set[int] | set[str] | None = None) -> list[str]:
    """A Markdown table; `right` = column indices or header names to right-align."""
    right = {i for i, h in enumerate(header) if i in (right or set()) or h in (right or set())}
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
    return lines


def plan_summary(plan: Plan, graph: Graph | None, figures: Sequence[tuple[str, str]] = ()
                 ) -> str:
    """Model, arena, baselines, fits, splits table, peak; `figures` = [(title, file name)]."""
    from pexopt.pipeline import plan_peak

    name = graph.name if graph is not None else plan.model.get("path", "model")
    base = plan.baselines or {}
    tflm, flat = base.get("tflm_arena_bytes"), base.get("layerwise_arena_bytes")
    fits = "-" if plan.budget_bytes is None else ("yes" if plan.fits else "**NO**")
    rows = [("arena (this plan)", fmt_bytes(plan.arena_bytes)),
            ("TFLM baseline arena", fmt_bytes(tflm)),
            ("layer by layer (no splits)", fmt_bytes(flat) if flat is not None else
             ("this plan" if not plan.splits else "-")),
            ("pexopt / TFLM", f"{plan.arena_bytes / tflm:.3f}" if tflm else "-"),
            ("budget", fmt_bytes(plan.budget_bytes)), ("fits", fits),
            ("lower bound", fmt_bytes(plan.solver.bound)),
            ("gap", f"{100 * plan.solver.gap:.1f}%"), ("status", plan.solver.status),
            ("solve time", "-" if plan.solver.seconds is None else f"{plan.solver.seconds:.2f} s"),
            ("steps / buffers", f"{len(plan.steps)} / {len(plan.buffers)}"),
            ("activations", f"{plan.dtype}, graph input "
             + ("external (not counted)" if plan.input_external else "in the arena"))]
    lines = [f"# {md_escape(name)}: pexopt plan", "",
             f"Model `{md_escape(plan.model.get('path', ''))}` (sha256 "
             f"`{plan.model.get('sha256', '')[:16]}`)"
             + (f", {len(graph.ops)} operators" if graph is not None else "") + ".", ""]
    lines += table(("", "value"), rows)
    pk = plan_peak(plan)
    lines += ["", "## Peak", "",
              f"Step {pk.step} (`{md_escape(pk.op)}`): {fmt_bytes(pk.live)} live."
              + (" It sets the arena." if pk.live == plan.arena_bytes else
                 f" The arena is {plan.arena_bytes - pk.live:,} B larger (fragmentation or "
                 "alignment)."), ""]
    lines += table(("buffer", "bytes"), [(n, f"{b:,}") for n, b in pk.buffers[:8]], {1})
    if len(pk.buffers) > 8:
        lines.append(f"\n... and {len(pk.buffers) - 8} smaller buffers.")
    lines += ["", "## Split subgraphs (partial execution)", ""]
    if plan.splits:
        lines += table(("operators", "kinds", "channels", "slice width", "slices", "accumulates",
                        "bytes saved"),
                       [(" -> ".join(sp.get("ops", [])), " -> ".join(sp.get("kinds", [])),
                         sp.get("channels", ""), sp.get("width", ""), sp.get("slices", ""),
                         "yes" if sp.get("accumulate") else "no",
                         f"{sp.get('bytes_saved', 0):,}") for sp in plan.splits],
                       {2, 3, 4, 6})
    else:
        lines.append("None: every operator runs whole.")
    if figures:
        lines += ["", "## Figures", ""]
        for title, fname in figures:
            lines += [f"![{md_escape(title)}]({fname})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _cell(v: Any) -> str:
    return "" if v is None else str(v)


def _cell_seconds(v: Any) -> str:
    return "-" if v is None or v == "" else f"{float(v):.2f}"


def sweep_summary(rows: Sequence[dict[str, Any]], source: str,
                  figures: dict[str, str] | None = None) -> str:
    """One table per model (budget, mode, arena, fits, status, seconds, ...)."""
    figures = figures or {}
    failed = [r for r in rows if r.get("error")]
    lines = ["# pexopt sweep", "",
             f"{len(rows)} points from `{md_escape(source)}`: {len(rows) - len(failed)} planned, "
             f"{len(failed)} failed. Arena sizes in kB (1 kB = 1024 B).", ""]
    if any(r.get("latency") for r in rows):
        lines += ["Latency: a hard bound on the target profile's estimate (instructions of the "
                  "portable kernels, ms at an assumed cycles per instruction).", ""]
    for group, grows in group_rows(rows).items():
        lines += [f"## {md_escape(group)}", ""]
        if group in figures:
            lines += [f"![arena vs latency]({figures[group]})", ""]
        extra = [k for k in ("resolution", "target", "latency") if any(r.get(k) for r in grows)]
        header = ["budget (kB)", "mode", *extra, "arena (kB)", "layer by layer (kB)",
                  "TFLM (kB)", "fits", "status", "gap", "seconds", "splits", "steps",
                  "est. ms", "verify", "error"]
        body = []
        for r in sorted(grows, key=lambda r: (int(r.get("budget") or 0), str(r.get("mode")))):
            fits = "" if r.get("fits") is None else ("yes" if r["fits"] else "NO")
            gap = "" if r.get("gap") is None else f"{100 * float(r['gap']):.1f}%"
            body.append([fmt_kb(r.get("budget")), r.get("mode"), *[r.get(k) or "" for k in extra],
                         fmt_kb(r.get("arena")), fmt_kb(r.get("layerwise_arena")),
                         fmt_kb(r.get("tflm_arena")), fits, r.get("status") or "", gap,
                         _cell_seconds(r.get("solve_seconds")), _cell(r.get("splits")),
                         _cell(r.get("steps")), _cell(r.get("est_ms")), r.get("verify") or "",
                         r.get("error") or ""])
        lines += table(header, body, {"budget (kB)", "arena (kB)", "layer by layer (kB)",
                                      "TFLM (kB)", "gap", "seconds", "splits", "steps",
                                      "est. ms"})
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def group_name(row: dict[str, Any]) -> str:
    res = row.get("resolution")
    return f"{row.get('model')} @ {res}" if res else str(row.get("model"))


def group_rows(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_name(r), []).append(r)
    return dict(sorted(groups.items()))
