"""The whole job as one function per command: import -> solve -> plan -> validate."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pexopt.deadline import current as current_deadline
from pexopt.errors import PexError
from pexopt.frontend.onnx_import import import_onnx
from pexopt.graph.ir import Graph, live_bytes
from pexopt.limits import MAX_BYTES
from pexopt.plan.build import build_plan
from pexopt.plan.format import Buffer, Plan
from pexopt.plan.validator import check
from pexopt.schedule import Schedule, SolverParams
from pexopt.solver.baselines import reorder_peak, tflm_arena
from pexopt.solver.cpsat_layout import (
    OUT_OF_TIME,
    TOO_SLOW,
    Progress,
    schedule_cost,
    solve_fastest,
    solve_layout,
)

if TYPE_CHECKING:
    from pexopt.latency.profile import Profile

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20}


def parse_bytes(text: str, what: str = "--sram") -> int:
    """'131072', '128k', '128KiB', '0.5M' -> bytes (k = 1024, as MCU datasheets count)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise PexError(f"{what}: '{text}' is not a size like 131072, 128k, 128KiB or 0.5M")
    value = float(m.group(1)) * _UNITS[unit]
    if value > MAX_BYTES:  # also inf: a 400-digit size
        raise PexError(f"{what}: '{str(text)[:40]}' is more than {MAX_BYTES:,} bytes")
    if value <= 0 or value != int(value):
        raise PexError(f"{what}: '{text}' must be a positive whole number of bytes")
    return int(value)


@dataclass(frozen=True)
class ImportOptions:
    dtype: str = "int8"
    input_external: bool = False
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def load(self, path: str | Path, fold_pad: bool = True) -> Graph:
        return import_onnx(path, dtype=self.dtype, input_external=self.input_external,
                           fold_pad=fold_pad, input_shapes=self.input_shapes or None)


@dataclass
class Peak:
    """Where the plan's memory peaks: the step, its operator and the buffers live there."""

    step: int
    op: str
    live: int
    buffers: list[tuple[str, int]]


@dataclass
class SolveResult:
    graph: Graph
    schedule: Schedule
    plan: Plan
    tflm: int
    peak: Peak
    layerwise: int | None = None  # arena of the best plan without splits (same run)


def _union_bytes(bufs: list[Buffer]) -> int:
    """Bytes covered by the buffers' address ranges (overlapping ones counted once)."""
    total, at = 0, 0
    for lo, hi in sorted((b.offset, b.offset + b.size) for b in bufs):
        total += max(0, hi - max(lo, at))
        at = max(at, hi)
    return total


def plan_peak(plan: Plan) -> Peak:
    """The step with the most live bytes (alias pairs counted once) and what is live there."""
    best: Peak | None = None
    handed = {(c.alias_of, c.first_step) for c in plan.buffers if c.alias_of}
    live_at: dict[int, list[Buffer]] = {}  # one pass over the buffers: a scan of them all
    lo = min((s.index for s in plan.steps), default=0)  # per step was quadratic
    hi = max((s.index for s in plan.steps), default=-1)
    for b in plan.buffers:
        for i in range(max(lo, b.first_step), min(hi, b.last_step) + 1):
            live_at.setdefault(i, []).append(b)
    for s in plan.steps:
        live = [b for b in live_at.get(s.index, [])
                if not (b.last_step == s.index and (b.name, s.index) in handed)]
        total = _union_bytes(live)  # a band output streamed over its input shares bytes
        if best is None or total > best.live:
            best = Peak(s.index, s.op, total, sorted(((b.name, b.size) for b in live),
                                                      key=lambda x: -x[1]))
    return best or Peak(0, "", 0, [])


class LatencyNotMet(PexError):
    """No schedule meets the latency bound; `fastest` is the quickest one within the budget."""

    def __init__(self, message: str, fastest: Schedule | None) -> None:
        super().__init__(message)
        self.fastest = fastest


def with_latency(graph: Graph, params: SolverParams, profile: Profile,
                 latency: int | None) -> SolverParams:
    """Solver settings that know the profile's costs and, if given, bound the estimated
    instructions of pex_invoke (the constant input/output copies are taken off the bound)."""
    from pexopt.latency.bound import ProfileCost
    from pexopt.latency.cost import invoke_instructions

    bound = None if latency is None else latency - round(invoke_instructions(profile, graph))
    return replace(params, cost=ProfileCost(profile), latency=bound)


def solve_model(path: str | Path, opts: ImportOptions, params: SolverParams,
                budget: int | None, progress: Progress | None = None,
                profile: Profile | None = None, latency: int | None = None) -> SolveResult:
    """Import, compute the TFLM baseline, solve, build and validate the plan (under a latency
    bound in estimated instructions, with a profile)."""
    graph = opts.load(path)
    tflm = tflm_arena(_unfolded(path, opts, graph))
    if profile is not None:  # costs break ties between equal arenas, even without a bound
        params = with_latency(graph, params, profile, latency)
    return solve_graph(graph, tflm, params, budget, progress, profile)


def _unfolded(path: str | Path, opts: ImportOptions, graph: Graph) -> Graph:
    """The graph as TFLM sees it (Pads not folded into convs): imported again only when the
    model has a Pad (a second import of a 5,000-operator model took seconds)."""
    nodes = graph.source.model.graph.node
    return opts.load(path, fold_pad=False) if any(n.op_type == "Pad" for n in nodes) else graph


def solve_graph(graph: Graph, tflm: int, params: SolverParams, budget: int | None,
                progress: Progress | None = None, profile: Profile | None = None,
                flat: Schedule | None = None) -> SolveResult:
    """Solve an imported graph (layer by layer first when splitting, as the start point;
    `flat`: that layer-by-layer schedule, already solved).

    Under a current `Deadline` (the command's --time-limit) the solver gets what is left of it
    minus the time building, validating and simulating the plan will take (`post_solve`)."""
    t0 = time.time()
    layerwise = None if flat is None else flat.arena
    asked = params
    dl = current_deadline()
    if dl is not None:
        # the search keeps at least half of what is left: a plan too costly to simulate in
        # time still gets a search, the command then ends past the deadline by the excess
        solve_s = dl.left() - min(post_solve_seconds(graph), 0.5 * dl.left())
        dl.stop = time.monotonic() + max(0.0, solve_s)
        params = replace(params, time_limit=max(0.05, min(params.time_limit, solve_s)))
    try:
        if params.split and flat is None:  # the layer-by-layer optimum, for the table
            share = min(5.0, params.time_limit / 4)
            flat = solve_layout(graph, replace(params, split=False, time_limit=share,
                                               latency=None))
            layerwise = flat.arena
            params = replace(params, time_limit=max(0.05, params.time_limit - flat.seconds))
        sched = solve_layout(graph, params, progress, start=flat)
    finally:
        if dl is not None:
            dl.stop = None  # what follows (plan, validation, simulation) always completes
    if dl is not None and sched.stages and sched.stages[0].startswith(OUT_OF_TIME):
        dl.note(f"--time-limit: {len(graph.ops):,} operators left no time to search; the plan "
                f"is the best found before the deadline ({sched.arena:,} B, {sched.status})")
    if sched.status == TOO_SLOW:
        raise _latency_not_met(graph, params, budget, profile, flat)
    sched.seconds = time.time() - t0
    baselines = {"tflm_arena_bytes": tflm}
    if layerwise is not None:
        baselines["layerwise_arena_bytes"] = layerwise
    plan = build_plan(graph, sched, asked, budget, baselines=baselines)
    check(plan, graph)
    return SolveResult(graph, sched, plan, tflm, plan_peak(plan), layerwise)


POST_SOLVE_PER_OP = 0.001  # seconds per operator: build the plan and validate it
SIMULATE_PER_OP = 0.004  # seconds per operator: simulate it (2 inputs and onnxruntime)
SIMULATE_PER_MAC = 0.1e-6  # seconds per multiply-accumulate of the model: simulate it


def post_solve_seconds(graph: Graph) -> float:
    """What the work after the solver takes, set aside from the deadline (measured on a
    loaded 2-core machine: a 5,000-operator chain builds and validates in ~4 s, a
    1,000-operator one simulates in ~4.5 s, mcunet_in3 (82 M MACs) in ~8-12 s)."""
    from pexopt.simulate.arena import executable

    if not executable(graph):
        return 0.2 + POST_SOLVE_PER_OP * len(graph.ops)
    macs = sum(op.macs for op in graph.ops)
    return 0.2 + (POST_SOLVE_PER_OP + SIMULATE_PER_OP) * len(graph.ops) + SIMULATE_PER_MAC * macs


def _latency_not_met(graph: Graph, params: SolverParams, budget: int | None,
                     profile: Profile | None, hint: Schedule | None) -> LatencyNotMet:
    """The error for an unmeetable bound, with the fastest plan found within the budget."""
    from pexopt.latency.bound import instructions_to_ms
    from pexopt.latency.cost import invoke_instructions

    assert params.cost is not None and params.latency is not None
    fastest = solve_fastest(graph, params, budget, hint=hint)
    extra = round(invoke_instructions(profile, graph)) if profile is not None else 0

    def say(instr: int) -> str:
        ms = f" ({instructions_to_ms(instr, profile):.2f} ms)" if profile is not None else ""
        return f"{instr / 1e6:,.2f} M instructions{ms}"

    within = f"within {budget:,} B" if budget is not None else "at any arena"
    if fastest is None:
        return LatencyNotMet(f"--latency: no plan {within} was found that meets "
                             f"{say(params.latency + extra)}", None)
    need = schedule_cost(graph, fastest, params.cost) + extra
    return LatencyNotMet(f"--latency: {say(params.latency + extra)} cannot be met; the fastest "
                         f"plan {within} needs {say(need)} (arena {fastest.arena:,} B)", fastest)


@dataclass
class ParetoRow:
    """One point of the memory/latency frontier: its plan, validated and simulated."""

    bound: int | None  # the latency bound it was solved under (estimated instructions)
    arena: int
    instructions: float
    ms: float
    splits: int
    status: str
    plan: Plan
    exact: bool | None  # simulated bit-exactly (None: a float model planned as int8)


def pareto_model(path: str | Path, opts: ImportOptions, params: SolverParams,
                 profile: Profile, budget: int | None, points: int = 6,
                 on_point: Callable[[ParetoRow], None] | None = None) -> list[ParetoRow]:
    """The memory/latency frontier of a model (pexopt.solver.pareto), each point's plan built,
    validated and executed in the byte-exact arena against the unsplit reference."""
    from pexopt.latency.cost import estimate, invoke_instructions
    from pexopt.simulate.arena import executable
    from pexopt.simulate.verify import verify_plan
    from pexopt.solver.pareto import pareto_front

    graph = opts.load(path)
    tflm = tflm_arena(opts.load(path, fold_pad=False))
    costed = with_latency(graph, params, profile, None)
    invoke = round(invoke_instructions(profile, graph))
    rows = []
    for p in pareto_front(graph, costed, points):
        plan = build_plan(graph, p.schedule, replace(params, latency=p.bound), budget,
                          baselines={"tflm_arena_bytes": tflm})
        check(plan, graph)
        est = estimate(profile, graph, plan)
        exact = None
        if executable(graph):
            rep = verify_plan(plan, graph, n_inputs=1)
            exact = rep.ok
            if not exact:
                raise PexError(f"pareto: the plan at {plan.arena_bytes:,} B fails its "
                               f"simulation: {rep.failure()}")
        row = ParetoRow(None if p.bound is None else p.bound + invoke, plan.arena_bytes,
                        est.instructions, est.ms, len(plan.splits), p.status, plan, exact)
        rows.append(row)
        if on_point is not None:
            on_point(row)
    return rows


@dataclass
class BenchRow:
    model: str
    ops: int
    tflm: int
    reorder_bound: int | None
    layerwise: int | None
    arena: int
    splits: int
    bound: int
    gap: float
    status: str
    seconds: float
    input_counted: bool
    peak: str = ""  # the operator at the plan's peak and its largest live buffers
    insns_layerwise: int | None = None  # instructions per inference under QEMU (--target)
    insns_split: int | None = None
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    exact_on_target: bool | None = None
    target_note: str = ""  # why the target measurement is missing
    channel_arena: int | None = None  # channel splits only (no row bands), when rows are on
    rows_arena: int | None = None  # row bands only (no channel splits), when rows are on

    @property
    def overhead(self) -> float | None:
        """Extra instructions of the partial-execution plan over layer by layer."""
        if not self.insns_layerwise or self.insns_split is None:
            return None
        return self.insns_split / self.insns_layerwise - 1

    @property
    def ratio(self) -> float:
        return self.arena / self.tflm if self.tflm else 1.0


def bench_model(path: str | Path, opts: ImportOptions, params: SolverParams,
                target: str | None = None) -> BenchRow:
    """One row of `pexopt bench`: baselines and pexopt on the same graph in the same run;
    with a target, the generated C of the layer-by-layer and the final plan also runs under
    QEMU (instructions, flash, RAM)."""
    graph = opts.load(path)  # imported once for every variant solved below
    tflm = tflm_arena(opts.load(path, fold_pad=False))

    # the layer-by-layer column (and the ratios against it) is its own solve with the whole
    # time limit, and the start of every split solve (none ends above it)
    flat = solve_graph(graph, tflm, replace(params, split=False), None)

    def solve(p: SolverParams) -> SolveResult:
        return solve_graph(graph, tflm, p, None, flat=replace(flat.schedule))

    res = solve(params) if params.split else flat
    row = _row(Path(path).stem, res, not opts.input_external)
    if params.split and params.rows:  # channel splits alone (Pex), row bands alone (MCUNetV2)
        row = replace(row, channel_arena=solve(replace(params, rows=False)).plan.arena_bytes,
                      rows_arena=solve(replace(params, channels=False)).plan.arena_bytes)
    if target is not None:
        from pexopt.target.measure import measure_plan

        try:
            a = measure_plan(flat.plan, flat.graph, target)
            b = measure_plan(res.plan, res.graph, target)
        except PexError as e:  # e.g. an operator codegen does not support: say so, go on
            return replace(row, target_note=str(e))
        row = replace(row, insns_layerwise=a.instructions, insns_split=b.instructions,
                      flash_bytes=b.flash_bytes, ram_bytes=b.ram_bytes,
                      exact_on_target=a.exact and b.exact)
    return row


def bench_random_dag(n_ops: int, seed: int, params: SolverParams) -> BenchRow:
    """A random branching DAG (sizes in KB) where reordering matters; TFLM = file order."""
    from pexopt.graph.synthetic import KB_SIZES, random_dag

    graph = random_dag(seed, n_ops, sizes=KB_SIZES)
    flat = replace(params, split=False)  # the claim here is about reordering, layer by layer
    return _row(f"random_dag_{n_ops}ops_seed{seed}", solve_graph(graph, tflm_arena(graph),
                                                                 flat, None), True)


def _row(name: str, res: SolveResult, input_counted: bool) -> BenchRow:
    reo = reorder_peak(res.graph)
    return BenchRow(model=name, ops=len(res.graph.ops), tflm=res.tflm,
                    reorder_bound=reo[0] if reo else None,
                    layerwise=res.layerwise if res.layerwise is not None else res.plan.arena_bytes,
                    arena=res.plan.arena_bytes, splits=len(res.plan.splits),
                    bound=res.schedule.bound, gap=res.schedule.gap, status=res.schedule.status,
                    seconds=res.schedule.seconds, input_counted=input_counted,
                    peak=_peak_words(res.peak))


def _peak_words(pk: Peak, width: int = 40) -> str:
    op = pk.op if len(pk.op) <= width else pk.op[:width - 3] + "..."
    sizes = " + ".join(f"{b:,}" for _, b in pk.buffers[:3])
    more = " + ..." if len(pk.buffers) > 3 else ""
    return f"{op} ({sizes}{more})"


def naive_peak(graph: Graph) -> tuple[int, int]:
    """(bytes, op id) of the file-order peak sum of live bytes (what `inspect` reports)."""
    lb = live_bytes(graph, range(len(graph.ops)))
    k = max(range(len(lb)), key=lambda i: lb[i]) if lb else 0
    return (lb[k] if lb else 0), k
