"""The kernel constants of one IR operator, as every frontend delivers them (layouts: the
ONNX frontend's module docstring, pexopt/frontend/onnx_params.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pexopt.errors import ModelError
from pexopt.graph.ir import Graph, QParams
from pexopt.ops import OpKind


@dataclass
class OpParams:
    """Everything a kernel needs for one IR op (see the module docstring for layouts)."""

    op_id: int
    name: str
    kind: OpKind
    int8: bool
    in_shapes: tuple[tuple[int, ...], ...] = ()
    out_shape: tuple[int, ...] = ()
    in_index: tuple[np.ndarray | None, ...] = ()
    out_index: np.ndarray | None = None
    in_qparams: tuple[QParams | None, ...] = ()
    out_qparams: QParams | None = None
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    w_scales: np.ndarray | None = None
    multiplier: np.ndarray | None = None
    shift: np.ndarray | None = None
    act_min: float = -math.inf
    act_max: float = math.inf
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_zp(self) -> int:
        q = self.in_qparams[0] if self.in_qparams else None
        return q.zero_point if q is not None else 0

    @property
    def out_zp(self) -> int:
        return self.out_qparams.zero_point if self.out_qparams is not None else 0


def graph_params(graph: Graph) -> dict[int, OpParams]:
    """Op id -> kernel constants, from what the frontend kept of the model (the file is
    never read again); ModelError for a graph no frontend made or an op the kernels cannot
    run."""
    if graph.source is None:
        raise ModelError(f"{graph.name}: the graph has no kernel constants (it was not "
                         "imported from a model file)")
    return graph.source.params(graph)
