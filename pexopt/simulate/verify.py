"""Prove a plan correct by execution: the arena run must equal the unsplit reference run.

int8 models: bit for bit. float models: within 1e-4 of the output range (the accumulator of a
split conv is float32 where the whole conv sums in float64). onnxruntime on the ONNX file is a
second, external reference; it requantises in float, so for int8 it is reported as top-1
agreement and mean difference in quantisation steps, and beyond the ORT_* tolerances below the
verification fails (`ok` is False, `failure()` says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pexopt.frontend.onnx_index import OnnxIndex
from pexopt.graph.ir import Graph
from pexopt.graph.params import graph_params
from pexopt.plan.format import Plan
from pexopt.simulate.arena import run_plan
from pexopt.simulate.onnxrt import ort_session
from pexopt.simulate.reference import (
    inputs_from_onnx,
    outputs_to_onnx,
    run_reference,
)

FLOAT_TOL = 1e-4
# The comparison with onnxruntime fails the command beyond these (README "What is checked").
# onnxruntime requantises in exact float, CMSIS-NN in double-rounding fixed point: a step here
# and there, which random-weight networks amplify (bundled models: up to 14 steps on average);
# a wrong dtype or zero point is off by 66 steps and more.
ORT_MAX_MEAN_STEPS = 32.0  # int8 plans: mean |difference| over inputs and outputs, in steps
ORT_MIN_TOP1 = 0.5  # class-vector outputs (1, K): top-1 agreement (a tie within a step agrees)
ORT_MAX_REL_ERROR = 1e-3  # float plans of float models: max |difference| / output range


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
    ort_tolerance: dict[str, float] | None = None  # the limits the onnxruntime check applied
    ort_ok: bool | None = None  # within them (None: not compared)

    @property
    def ok(self) -> bool:
        return self.exact and self.ort_ok is not False

    def failure(self) -> str:
        """One line saying why the plan failed (empty when ok)."""
        if not self.exact:
            return (f"the plan's outputs differ from the unsplit reference (max relative "
                    f"error {self.max_error:.3g})")
        if self.ort_ok is False:
            return "the reference disagrees with onnxruntime: " + "; ".join(self.notes)
        return ""


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


def verify_plan(plan: Plan, graph: Graph, n_inputs: int = 2, seed: int = 0,
                onnxruntime: bool = True) -> VerifyReport:
    """Run `plan` in a byte-exact arena on random inputs and compare with the references: the
    unsplit reference run and onnxruntime on the model as imported (`graph.source`: the file is
    not read again)."""
    if n_inputs < 1:  # zero runs compare nothing: never report that as bit-exact
        raise ValueError(f"verify_plan: n_inputs must be at least 1, not {n_inputs}")
    src = graph.source
    params = graph_params(graph)
    ox = src.index()
    feeds = random_feeds(graph, ox, n_inputs, seed)
    exact, worst = True, 0.0
    cmp = _OrtCompare(graph, ox) if onnxruntime else None
    sess = ort_session(src.model_bytes()) if cmp is not None and cmp.comparable else None
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
            cmp.add(ours, theirs)
    rep = VerifyReport(inputs=n_inputs, exact=exact, max_error=worst)
    if cmp is not None:
        cmp.judge(rep, ran=sess is not None)
    return rep


class _OrtCompare:
    """The arena's outputs against onnxruntime's: steps (int8), relative error (float models),
    top-1 of class vectors; judged against the ORT_* tolerances."""

    def __init__(self, graph: Graph, ox: OnnxIndex) -> None:
        self.scales = _output_scales(graph, ox)
        quantised = any(t.qparams is not None for t in graph.tensors)
        # a float32 plan of a QDQ model skips the Q/DQ rounding onnxruntime applies
        self.comparable = graph.dtype == "int8" or not quantised
        self.float_model = not quantised
        self.top1: list[float] = []
        self.steps: list[float] = []
        self.rel: list[float] = []

    def add(self, ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
        for name, y in ours.items():
            t = theirs[name]
            q = self.scales.get(name)
            yd, td = (_real(y, q), _real(t, q)) if q is not None else (
                y.astype(np.float64), t.astype(np.float64))
            if q is not None:  # int8 output: difference in quantisation steps
                self.steps.append(float(np.mean(np.abs(yd - td))) / q.scale)
            elif self.float_model:
                self.rel.append(_rel(y, t))
            if t.ndim == 2 and t.shape[0] == 1 and t.shape[1] > 1:  # a class vector
                tie = q.scale * 1.001 if q is not None else \
                    ORT_MAX_REL_ERROR * float(np.ptp(td))
                k = int(np.argmax(yd))
                self.top1.append(float(k == int(np.argmax(td)) or td.reshape(-1)[k]
                                       >= td.max() - tie))

    def judge(self, rep: VerifyReport, ran: bool) -> None:
        """Fill the report's onnxruntime fields; ort_ok stays None when nothing was compared."""
        rep.ort_top1 = float(np.mean(self.top1)) if self.top1 else None
        rep.ort_mean_steps = float(np.mean(self.steps)) if self.steps else None
        rep.ort_max_error = max(self.rel) if self.rel else None
        if not ran:
            if not self.comparable:
                rep.notes.append("not compared with onnxruntime: a float32 plan of a QDQ "
                                 "model skips the quantisation onnxruntime runs")
            return
        rep.ort_tolerance = {"max_mean_steps": ORT_MAX_MEAN_STEPS, "min_top1": ORT_MIN_TOP1,
                             "max_rel_error": ORT_MAX_REL_ERROR}
        if rep.ort_mean_steps is not None and not rep.ort_mean_steps <= ORT_MAX_MEAN_STEPS:
            rep.notes.append(f"mean |difference| {rep.ort_mean_steps:.3g} steps > "
                             f"{ORT_MAX_MEAN_STEPS:g}")
        if rep.ort_top1 is not None and not rep.ort_top1 >= ORT_MIN_TOP1:
            rep.notes.append(f"top-1 agreement {100 * rep.ort_top1:.0f}% < "
                             f"{100 * ORT_MIN_TOP1:.0f}%")
        if rep.ort_max_error is not None and not rep.ort_max_error <= ORT_MAX_REL_ERROR:
            rep.notes.append(f"max error {rep.ort_max_error:.3g} of the output range > "
                             f"{ORT_MAX_REL_ERROR:g}")
        rep.ort_ok = not rep.notes


def _real(x: np.ndarray, q) -> np.ndarray:  # noqa: ANN001
    """An output in real units (int8 values dequantised with the output's qparams)."""
    if x.dtype != np.int8:
        return x.astype(np.float64)
    return (x.astype(np.float64) - q.zero_point) * q.scale


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
