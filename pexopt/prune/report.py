"""What pruning did, per layer: channels, memory, importance and MACs before and after."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from rich.table import Table

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
    if out.chosen is None:
        return PruneSummary(False, out.base.plan.budget_bytes or 0, out.base.plan.arena_bytes,
                            None, out.min_arena, macs0, None, 0.0, total, 0, [])
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
        rows.append(LayerRow(op.name, op.kind.value, c0, c1, t0.nbytes - t1.nbytes, imp,
                             op.macs, new.macs, producer))
    removed_ch = sum(t.channels - out.chosen.keep[g] for g, t in out.tables.items())
    return PruneSummary(True, out.base.plan.budget_bytes or 0, out.base.plan.arena_bytes,
                        out.chosen.result.plan.arena_bytes, out.min_arena, macs0,
                        sum(o.macs for o in g1.ops), removed, total, removed_ch, rows)


def _kept_of(out: PruneOutcome, producer: str) -> np.ndarray | None:
    for g, names in out.groups.producers.items():
        if producer in names and g in out.tables and out.chosen is not None:
            return out.tables[g].kept(out.chosen.keep[g])
    return None


def prune_table(s: PruneSummary) -> Table:
    t = Table(title="pruning: layers that lost channels")
    for col in ("layer", "kind", "channels", "kept", "kept %", "bytes saved",
                "importance removed", "MACs before", "MACs after", "MACs kept %"):
        t.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for r in s.rows:
        t.add_row(r.layer, r.kind, f"{r.channels_before}", f"{r.channels_after}",
                  f"{100 * r.channels_after / max(1, r.channels_before):.0f}",
                  f"{r.bytes_saved:,}", f"{r.importance_removed:.3f}" if r.producer else "-",
                  f"{r.macs_before:,}", f"{r.macs_after:,}",
                  f"{100 * r.macs_after / max(1, r.macs_before):.0f}")
    return t


def summary_line(s: PruneSummary) -> str:
    if not s.fits:
        return (f"even pruning every prunable layer to --min-keep, the smallest arena is "
                f"{s.min_arena_bytes:,} B > budget {s.budget_bytes:,} B")
    kept = 100 * (s.macs_kept or 0.0)
    frac = 100 * s.importance_removed / s.importance_total if s.importance_total else 0.0
    return (f"pruned {s.channels_removed} channels: arena {s.arena_before:,} B -> "
            f"{s.arena_after:,} B (budget {s.budget_bytes:,} B), MACs {s.macs_before:,} -> "
            f"{s.macs_after:,} ({kept:.1f}% kept), importance removed {frac:.2f}% of the total")


def hint_line(s: PruneSummary) -> str:
    """For a solve without --prune that does not fit: the pruning that would make it fit."""
    if not s.fits:
        return (f"pruning cannot reach the budget: every prunable layer at --min-keep still needs "
                f"{s.min_arena_bytes:,} B")
    layers = sum(1 for r in s.rows if r.channels_after < r.channels_before)
    kept = 100 * (s.macs_kept or 0.0)
    return (f"pruning {s.channels_removed} channels ({layers} layers, {kept:.1f}% of MACs kept)"
            f" gives {s.arena_after:,} B: rerun with --prune")
