"""Channel importance and the exact cost table the pruning model sees.

Importance of a filter: its L1 norm (of the dequantised weight, so a QDQ model and its float
original rank channels alike). Each producer's norms are divided by their mean so layers of
different scale are comparable; a tied group (residual Adds) sums its producers' normalised norms.
Channels go lowest importance first, so keeping c of C channels costs the sum of the C - c
smallest importances: a convex piecewise-linear table, given to CP-SAT point by point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from pexopt.prune.consts import Consts
from pexopt.prune.groups import Groups, node_name, weight_axes

COST_SCALE = 1_000_000  # integer cost units per unit of normalised importance (CP-SAT is integer)


def filter_norms(model: onnx.ModelProto, consts: Consts | None = None) -> dict[str, np.ndarray]:
    """PRODUCE node name -> per-output-channel L1 norm of its weight, normalised by its mean."""
    consts = consts or Consts(model)
    res: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if len(node.input) < 2 or not consts.is_const(node.input[1]):
            continue
        try:
            out_ax, _ = weight_axes(node)
        except KeyError:
            continue
        w = np.abs(consts.value(node.input[1]))
        norms = w.sum(axis=tuple(k for k in range(w.ndim) if k != out_ax))
        mean = float(norms.mean()) if norms.size else 0.0
        res[node_name(node)] = norms / mean if mean > 0 else np.zeros_like(norms)
    return res


def group_importance(model: onnx.ModelProto, groups: Groups) -> dict[int, np.ndarray]:
    """Free group -> per-channel importance (sum over the group's producers)."""
    norms = filter_norms(model)
    res: dict[int, np.ndarray] = {}
    for g in groups.free():
        res[g] = np.sum([norms[p] for p in groups.producers[g]], axis=0).astype(np.float64)
    return res


def allowed_counts(channels: int, min_keep: float, step: int) -> tuple[int, ...]:
    """Channel counts a group may keep: multiples of `step` from ceil(min_keep * C) rounded up
    to a step, and C itself (never more channels than the original, never zero)."""
    lo = max(step, math.ceil(math.ceil(min_keep * channels - 1e-9) / step) * step)
    counts = [c for c in range(lo, channels, step)]
    return (*counts, channels)


@dataclass(frozen=True)
class CostTable:
    """Keeping `counts[i]` channels removes importance `removed[i]` (exact floats) or
    `cost[i]` integer units; `order` lists the channels, least important first."""

    group: int
    channels: int
    counts: tuple[int, ...]
    removed: tuple[float, ...]
    cost: tuple[int, ...]
    order: tuple[int, ...]
    total: float = 0.0  # importance of all the group's channels

    def kept(self, count: int) -> np.ndarray:
        """Indices of the channels kept when keeping `count` (sorted ascending)."""
        return np.sort(np.array(self.order[self.channels - count:], dtype=np.int64))


def cost_table(group: int, importance: np.ndarray, counts: tuple[int, ...]) -> CostTable:
    """The removal cost of each allowed count; ties broken by channel index (deterministic)."""
    order = tuple(int(i) for i in np.lexsort((np.arange(importance.size), importance)))
    asc = importance[list(order)]
    prefix = np.concatenate([[0.0], np.cumsum(asc)])
    removed = tuple(float(prefix[importance.size - c]) for c in counts)
    cost = tuple(int(round(r * COST_SCALE)) for r in removed)
    return CostTable(group, int(importance.size), counts, removed, cost, order,
                     float(importance.sum()))
