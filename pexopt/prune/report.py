"""What pruning did, per layer: channels, memory, importance, MACs and (with a target profile)
estimated instructions before and after; and the whole plan's estimated latency."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from rich.table import Table

from pexopt.latency.bound import instructions_to_ms
from pexopt.latency.cost import estimate, op_instructions
from pexopt.prune.solve import PruneOutcome, removed_importance


@dataclass
class LayerRow:
    layer: str  # ONNX node name of the (fused) operator
    kind: str
    channels_before: int
    channels_after: int
    bytes_saved: int  # of its output tensor
    importance_removed: float  # normalised L1 of its removed filters (producers only)
    macs_before: int
    macs_after: int
    producer: bool = False  # its own filters were pruned (else it follows its input's channels)
    instructions_before: float | None = None  # estimated, run whole (with a target profile)
    instructions_after: float | None = None


@dataclass
class PruneSummary:
    fits: bool
    budget_bytes: int
    arena_before: int
    arena_after: int | None
    min_arena_bytes: int  # arena when every group is pruned to --min-keep
    macs_before: int
    macs_after: int | None
    importance_removed: float
    importance_total: float
    channels_removed: int
    rows: list[LayerRow]
    # estimated latency of the unpruned and the pruned plan (with a target profile)
    latency_bound_instructions: int | None = None
    latency_bound_ms: float | None = None
    instructions_before: float | None = None
    instructions_after: float | None = None
    ms_before: float | None = None
    ms_after: float | None = None
    # when even --min-keep misses --latency: the fastest estimate there and its arena
    min_instructions: float | None = None
    min_ms: float | None = None

    @property
    def macs_kept(self) -> float | None:
        return None if self.macs_after is None else self.macs_after / max(1, self.macs_before)

    def to_dict(self) -> dict:
        return {**asdict(self), "macs_kept": self.macs_kept}


def summarize(out: PruneOutcome) -> PruneSummary:
    """Compare the original IR with the pruned one, operator by operator (matched by name)."""
    g0 = out.base.graph
    macs0 = sum(o.macs for o in g0.ops)
    removed, total = removed_importance(out)
    lat = _latency(out)
    if out.chosen is None:
        return PruneSummary(False, out.base.plan.budget_bytes or 0, out.base.plan.arena_bytes,
                            None, out.min_arena, macs0, None, 0.0, total, 0, [], **lat)
    g1 = out.chosen.result.graph
    after = {o.name: o for o in g1.ops}
    norms = out.norms
    producers = {p for names in out.groups.producers.values() for p in names}
    rows = []
    for op in g0.ops:
        new = after.get(op.name)
        if new is None:
            continue
        t0, t1 = g0.tensors[op.outputs[0]], g1.tensors[new.outputs[0]]
        c0, c1 = t0.shape[-1], t1.shape[-1]
        if c0 == c1 and op.macs == new.macs:
            continue
        imp, producer = 0.0, op.name in producers and op.name in norms and c1 < c0
        if producer:
            kept = _kept_of(out, op.name)
            imp = float(norms[op.name].sum() - norms[op.name][kept].sum()) if kept is not None \
                else 0.0
        i0 = i1 = None
        if out.profile is not None:
            i0, i1 = (op_instructions(out.profile, g0, op.id),
                      op_instructions(out.profile, g1, new.id))
        rows.append(LayerRow(op.name, op.kind.value, c0, c1, t0.nbytes - t1.nbytes, imp,
                             op.macs, new.macs, producer, i0, i1))
    removed_ch = sum(t.channels - out.chosen.keep[g] for g, t in out.tables.items())
    return PruneSummary(True, out.base.plan.budget_bytes or 0, out.base.plan.arena_bytes,
                        out.chosen.result.plan.arena_bytes, out.min_arena, macs0,
                        sum(o.macs for o in g1.ops), removed, total, removed_ch, rows, **lat)


def _latency(out: PruneOutcome) -> dict[str, float | int | None]:
    """The summary's latency fields (all None without a profile)."""
    p = out.profile
    if p is None:
        return {}

    def ms(x: float | None) -> float | None:
        return None if x is None else instructions_to_ms(x, p)

    before = estimate(p, out.base.graph, out.base.plan).instructions
    after = None if out.chosen is None else estimate(p, out.chosen.result.graph,
                                                     out.chosen.result.plan).instructions
    slow = None if out.too_slow is None else out.too_slow[0]
    return {"latency_bound_instructions": out.latency, "latency_bound_ms": ms(out.latency),
            "instructions_before": before, "instructions_after": after,
            "ms_before": ms(before), "ms_after": ms(after),
            "min_instructions": slow, "min_ms": ms(slow)}


def _kept_of(out: PruneOutcome, producer: str) -> np.ndarray | None:
    for g, names in out.groups.producers.items():
        if producer in names and g in out.tables and out.chosen is not None:
            return out.tables[g].kept(out.chosen.keep[g])
    return None


def prune_table(s: PruneSummary) -> Table:
    t = Table(title="pruning: layers that lost channels")
    priced = s.instructions_before is not None
    cols = ["layer", "kind", "channels", "kept", "kept %", "bytes saved", "importance removed",
            "MACs before", "MACs after", "MACs kept %"]
    if priced:
        cols += ["est. instr before", "est. instr after"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for r in s.rows:
        cells = [r.layer, r.kind, f"{r.channels_before}", f"{r.channels_after}",
                 f"{100 * r.channels_after / max(1, r.channels_before):.0f}",
                 f"{r.bytes_saved:,}", f"{r.importance_removed:.3f}" if r.producer else "-",
                 f"{r.macs_before:,}", f"{r.macs_after:,}",
                 f"{100 * r.macs_after / max(1, r.macs_before):.0f}"]
        if priced:
            cells += [_num(r.instructions_before), _num(r.instructions_after)]
        t.add_row(*cells)
    if priced and s.rows:  # the whole plan, pex_invoke's copies and splits included
        t.add_section()
        t.add_row("estimated latency (whole plan)", "", *[""] * 8,
                  _ms(s.instructions_before, s.ms_before), _ms(s.instructions_after, s.ms_after))
    return t


def _num(x: float | None) -> str:
    return "-" if x is None else f"{round(x):,}"


def _ms(instr: float | None, ms: float | None) -> str:
    if instr is None or ms is None:
        return "-"
    return f"{ms:,.2f} ms ({instr / 1e6:,.2f} M instructions)"


def _latency_words(s: PruneSummary) -> str:
    if s.instructions_before is None or s.instructions_after is None:
        return ""
    bound = "" if s.latency_bound_instructions is None else \
        f" (bound {_ms(s.latency_bound_instructions, s.latency_bound_ms)})"
    return (f", estimated latency {_ms(s.instructions_before, s.ms_before)} -> "
            f"{_ms(s.instructions_after, s.ms_after)}{bound}")


def summary_line(s: PruneSummary) -> str:
    if not s.fits and s.min_instructions is not None:
        return (f"even pruning every prunable layer to --min-keep, the fastest plan needs "
                f"{_ms(s.min_instructions, s.min_ms)} (arena {s.min_arena_bytes:,} B) > "
                f"--latency {_ms(s.latency_bound_instructions, s.latency_bound_ms)}")
    if not s.fits:
        lat = "" if s.latency_bound_instructions is None else " within --latency"
        return (f"even pruning every prunable layer to --min-keep, the smallest arena{lat} is "
                f"{s.min_arena_bytes:,} B > budget {s.budget_bytes:,} B")
    kept = 100 * (s.macs_kept or 0.0)
    frac = 100 * s.importance_removed / s.importance_total if s.importance_total else 0.0
    return (f"pruned {s.channels_removed} channels: arena {s.arena_before:,} B -> "
            f"{s.arena_after:,} B (budget {s.budget_bytes:,} B), MACs {s.macs_before:,} -> "
            f"{s.macs_after:,} ({kept:.1f}% kept){_latency_words(s)}, importance removed "
            f"{frac:.2f}% of the total")


def fail_line(s: PruneSummary) -> str:
    """The one error line when no pruning meets the budget (and the latency bound)."""
    slow = s.min_instructions is not None
    return ("does not meet --latency: " if slow else "does not fit: ") + summary_line(s)


def hint_line(s: PruneSummary) -> str:
    """For a solve without --prune that does not fit: the pruning that would make it fit."""
    if not s.fits:
        return (f"pruning cannot reach the budget: every prunable layer at --min-keep still needs "
                f"{s.min_arena_bytes:,} B")
    layers = sum(1 for r in s.rows if r.channels_after < r.channels_before)
    kept = 100 * (s.macs_kept or 0.0)
    return (f"pruning {s.channels_removed} channels ({layers} layers, {kept:.1f}% of MACs kept)"
            f" gives {s.arena_after:,} B: rerun with --prune")
