"""Prove a plan correct by execution: the arena run must equal the unsplit reference run.

int8 models: bit for bit. float models: within 1e-4 of the output range (the accumulator of a
split conv is float32 where the whole conv sums in float64). onnxruntime on the ONNX file is a
second, external reference; it requantises in float, so for int8 it is reported as top-1
agreement and mean difference in quantisation steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pexopt.graph.ir import Graph
from pexopt.plan.format import Plan
from pexopt.simulate.arena import run_plan
from pexopt.simulate.params import OnnxIndex, load_params
from pexopt.simulate.reference import (
    inputs_from_onnx,
    onnx_index,
    outputs_to_onnx,
    run_reference,
)

FLOAT_TOL = 1e-4


@dataclass
class VerifyReport:
    """What the simulation showed, per random input."""

    inputs: int
    exact: bool  # every output equal to the reference (bit for bit, or within FLOAT_TOL)
    max_error: float  # largest |arena - reference| relative to the output range (0 for int8)
    ort_top1: float | None = None  # fraction of inputs with the same top-1 as onnxruntime
    ort_mean_steps: float | None = None  # mean |difference| to onnxruntime in steps (int8)
    ort_max_error: float | None = None  # float models: relative max error to onnxruntime
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exact


def random_feeds(graph: Graph, ox: OnnxIndex, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """n fixed-seed inputs in the ONNX file's own layout and dtype."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        f = {}
        for tid in graph.inputs:
            name = graph.tensors[tid].name
            shape, elem = ox.shapes[name], ox.elem.get(name)
            if elem == 3:  # INT8
                f[name] = rng.integers(-128, 128, shape, dtype=np.int8)
            elif elem == 2:  # UINT8
                f[name] = rng.integers(0, 256, shape, dtype=np.uint8)
            else:
                f[name] = rng.standard_normal(shape).astype(np.float32)
        feeds.append(f)
    return feeds


def _rel(a: np.ndarray, b: np.ndarray, scale: float = 0.0) -> float:
    """Largest difference relative to the output's span, or to `scale` (the magnitude of the
    values it is computed from) when larger: float32 rounding is relative to the terms summed,
    so an output that cancels to near zero must not inflate it."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    span = max(float(np.ptp(b)), float(np.max(np.abs(b))) if b.size else 0.0, scale, 1e-9)
    return float(np.max(np.abs(a - b))) / span if a.size else 0.0


def _input_scale(graph: Graph, ref: dict[str, np.ndarray], name: str) -> float:
    """max |x| over the inputs of the operator that produces tensor `name`."""
    t = graph.tensor(name)
    prod = graph.producer().get(t.id)
    if prod is None:
        return 0.0
    xs = [ref[graph.tensors[i].name] for i in graph.ops[prod].inputs
          if graph.tensors[i].name in ref]
    return max((float(np.max(np.abs(x))) for x in xs if x.size), default=0.0)


def verify_plan(plan: Plan, graph: Graph, model_path: str | Path, n_inputs: int = 2,
                seed: int = 0, onnxruntime: bool = True,
                input_shapes: dict[str, tuple[int, ...]] | None = None) -> VerifyReport:
    """Run `plan` in a byte-exact arena on random inputs and compare with the references
    (`input_shapes` fixes dynamic input dimensions, as at import)."""
    ox = onnx_index(model_path, input_shapes or None)
    params = load_params(ox, graph)
    feeds = random_feeds(graph, ox, n_inputs, seed)
    exact, worst = True, 0.0
    top1, steps, ort_err = [], [], []
    sess = _session(model_path) if onnxruntime else None
    for i, feed in enumerate(feeds):
        ir_in = inputs_from_onnx(graph, feed)
        ref = run_reference(graph, params, ir_in)
        got = run_plan(plan, graph, params, ir_in, seed=seed + i)
        for name, y in got.items():
            r = ref[name]
            if y.dtype == np.int8:
                exact &= bool(np.array_equal(y, r))
            else:
                e = _rel(y, r, _input_scale(graph, ref, name))
                worst = max(worst, e)
                exact &= e <= FLOAT_TOL
        if sess is not None:
            ours = outputs_to_onnx(graph, got, ox, dequantize_outputs=True)
            theirs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
            scales = _output_scales(graph, ox)
            for name, y in ours.items():
                t = theirs[name]
                if t.size > 1:
                    top1.append(float(np.argmax(y) == np.argmax(t)))
                q = scales.get(name)
                if q is not None:  # int8 model: difference in quantisation steps
                    yd = y.astype(np.float64) if y.dtype != np.int8 else (
                        y.astype(np.float64) - q.zero_point) * q.scale
                    td = t.astype(np.float64) if t.dtype != np.int8 else (
                        t.astype(np.float64) - q.zero_point) * q.scale
                    steps.append(float(np.mean(np.abs(yd - td))) / q.scale)
                else:
                    ort_err.append(_rel(y, t))
    return VerifyReport(inputs=n_inputs, exact=exact, max_error=worst,
                        ort_top1=float(np.mean(top1)) if top1 else None,
                        ort_mean_steps=float(np.mean(steps)) if steps else None,
                        ort_max_error=max(ort_err) if ort_err else None)


def _output_scales(graph: Graph, ox: OnnxIndex) -> dict:
    """ONNX output name -> qparams of the IR tensor it views (int8 outputs only)."""
    names = {t.name: t for t in graph.tensors}
    res = {}
    for out in ox.outputs:
        v = out
        while v not in names and ox.producer.get(v) is not None and ox.producer[v].input:
            v = ox.producer[v].input[0]
        t = names.get(v)
        if t is not None and t.qparams is not None and t.dtype == "int8":
            res[out] = t.qparams
    return res


def _session(model_path: str | Path):  # noqa: ANN202
    try:
        import onnxruntime as ort
    except ImportError:  # optional: the arena-vs-reference check does not need it
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
