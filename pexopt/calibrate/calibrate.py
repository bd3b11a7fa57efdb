"""`pexopt calibrate`: measure micro models under QEMU and fit a profile's cost coefficients.

Every micro model (`calibrate.micro`) is quantised, solved (layer by layer, or with one slice
width so its split steps are measured), compiled with the portable kernels and run once under
QEMU; the exact instruction count of pex_invoke is one equation `sum(coefficient x count) =
measured` over the kernel counts of all its steps (`latency.features`). One non-negative least
squares fit over every equation, each weighted by 1/measured so that relative errors count, gives
the coefficients of all classes at once (a model always mixes classes: at least the memcpy of
input and output). The fit error is reported per probed class, over the models built to measure it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pexopt.calibrate.micro import MICRO_MODELS, Micro, probes, write_micro
from pexopt.errors import PexError
from pexopt.latency.cost import work_instructions
from pexopt.latency.features import (
    CLASS_FEATURES,
    COST_CLASSES,
    Work,
    invoke_work,
    step_work,
    unit_key,
)
from pexopt.latency.nnls import nnls
from pexopt.latency.profile import Profile, SolverSettings, load_profile, profile_yaml

MEASURED = ("instructions executed inside pex_invoke (QEMU TCG plugin, exact), portable "
            "kernels, arm-none-eabi-gcc -O2")
CPI_NOTE = ("cycles_per_instruction is an assumption, not measured: QEMU counts instructions, "
            "not cycles")

# Board facts of the shipped targets; `measure_on` is the QEMU core the coefficients come from.
BASES: dict[str, dict] = {
    "cortex-m4": dict(core="cortex-m4", board="STM32F446 (Cortex-M4F, 180 MHz, 128 KB SRAM)",
                      sram_bytes=128 * 1024, clock_hz=180e6, qemu_board="mps2-an386",
                      cycles_per_instruction=1.3, measure_on="cortex-m4",
                      note=CPI_NOTE + "; 1.3 allows for 2-cycle loads and flash wait states "
                      "behind the ART accelerator."),
    "cortex-m7": dict(core="cortex-m7", board="STM32F746 (Cortex-M7, 216 MHz, 320 KB SRAM)",
                      sram_bytes=320 * 1024, clock_hz=216e6, qemu_board="mps2-an500",
                      cycles_per_instruction=0.9, measure_on="cortex-m7",
                      note=CPI_NOTE + "; 0.9 assumes dual issue with caches enabled."),
    "cortex-m55": dict(core="cortex-m55",
                       board="e.g. Alif Ensemble E3 high-performance core or Corstone-300 "
                       "(Cortex-M55, 400 MHz; 512 KB for the arena is an assumption: check "
                       "the part's RAM banks)",
                       sram_bytes=512 * 1024, clock_hz=400e6, qemu_board=None,
                       cycles_per_instruction=0.9, measure_on="cortex-m7",
                       note=CPI_NOTE + ". NOT measured on a Cortex-M55: QEMU has mps3-an547, but "
                       "our harness's link script (4 MB code at 0x0, 4 MB RAM at 0x20000000) "
                       "does not fit its 512 KB ITCM/DTCM, so the instruction counts are the "
                       "Cortex-M7 build's (mps2-an500), scalar Thumb-2 code of the portable "
                       "kernels; Helium (MVE) code would execute far fewer instructions."),
}


@dataclass
class Sample:
    """One micro model: its kernel work and the measured instructions of pex_invoke."""

    name: str
    probes: str  # the class (or "split chains") the model was built to measure
    works: list[Work]
    measured: int
    seconds: float


def _columns() -> list[tuple[str, str]]:
    return [(c, f) for c in COST_CLASSES for f in CLASS_FEATURES[c]]


def measure_micro(m: Micro, folder: Path, core: str) -> Sample:
    """Build, solve and run one micro model under QEMU (core: cortex-m4 or cortex-m7)."""
    from pexopt.pipeline import ImportOptions, solve_model
    from pexopt.schedule import SolverParams
    from pexopt.target.measure import measure_plan

    t0 = time.perf_counter()
    path = write_micro(m, folder)
    params = SolverParams(time_limit=10.0, workers=1, split=m.split is not None,
                          slice_widths=(m.split,) if m.split else None)
    res = solve_model(path, ImportOptions(), params, None)
    meas = measure_plan(res.plan, res.graph, core)
    if not meas.exact:
        raise PexError(f"calibration model {m.name}: the firmware's output differs from the "
                       "simulator's")
    graph = res.graph
    index = {op.name: op.id for op in graph.ops}
    works = [w for s in res.plan.steps
             for w in step_work(graph, index[s.op], s.mode,
                                tuple(s.slice) if s.slice else None,  # type: ignore[arg-type]
                                inplace=bool(s.scratch))]
    return Sample(m.name, probes(m), works + invoke_work(graph), meas.instructions,
                  time.perf_counter() - t0)


def fit(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Coefficients >= 0 minimising the relative error of every sample (unobserved: 0)."""
    cols = _columns()
    a = np.zeros((len(samples), len(cols)))
    for i, s in enumerate(samples):
        for w in s.works:
            for f, v in w.counts.items():
                if (w.cls, f) in cols:
                    a[i, cols.index((w.cls, f))] += v
    y = np.array([s.measured for s in samples], dtype=float)
    a /= y[:, None]  # relative residuals
    norms = np.linalg.norm(a, axis=0)
    seen = norms > 0
    x = np.zeros(len(cols))
    x[seen] = nnls(a[:, seen] / norms[seen], np.ones(len(samples))) / norms[seen]
    costs: dict[str, dict[str, float]] = {c: {} for c in COST_CLASSES}
    for (c, f), v in zip(cols, x):
        costs[c][unit_key(f)] = float(v)
    return costs


def fit_errors(profile: Profile, samples: list[Sample]) -> dict[str, dict]:
    """Per probed class and overall: samples, max and mean |relative error| of pex_invoke."""
    groups: dict[str, list[float]] = {}
    for s in samples:
        err = abs(work_instructions(profile, s.works) - s.measured) / s.measured
        groups.setdefault(s.probes, []).append(err)
        groups.setdefault("all", []).append(err)
    return {c: {"samples": len(e), "max_rel_error": round(max(e), 4),
                "mean_rel_error": round(sum(e) / len(e), 4)}
            for c, e in sorted(groups.items())}


def base_profile(target: str) -> tuple[Profile, str]:
    """The profile to fill (a shipped target's board facts, or a user's YAML) and its core
    to measure on under QEMU."""
    if target in BASES:
        b = dict(BASES[target])
        measure_on = b.pop("measure_on")
        costs = {c: {unit_key(f): 0.0 for f in CLASS_FEATURES[c]} for c in COST_CLASSES}
        return Profile(name=target, costs=costs, solver=SolverSettings(), measured=MEASURED,
                       **b), measure_on
    prof = load_profile(target)
    measure_on = prof.core if prof.core in ("cortex-m4", "cortex-m7") else "cortex-m7"
    return prof, measure_on


def calibrate(target: str, quick: bool = False,
              progress: Callable[[str], None] | None = None) -> tuple[Profile, list[Sample]]:
    """Measure the micro models (the quick subset with `quick`) and fit `target`'s profile."""
    base, core = base_profile(target)
    models = [m for m in MICRO_MODELS if m.quick or not quick]
    samples = []
    with tempfile.TemporaryDirectory(prefix="pexopt-calib-") as tmp:
        for i, m in enumerate(models):
            s = measure_micro(m, Path(tmp), core)
            samples.append(s)
            if progress is not None:
                progress(f"[{i + 1}/{len(models)}] {m.name}: {s.measured:,} instructions "
                         f"({s.seconds:.1f} s)")
    prof = replace(base, costs=fit(samples), measured=MEASURED + f", measured on {core}"
                   + (f" ({base.qemu_board})" if base.qemu_board else ""))
    return replace(prof, fit=fit_errors(prof, samples)), samples


def write_profile(prof: Profile, out: Path, command: str, inputs: tuple | list = ()) -> None:
    """Write the profile YAML atomically with the command that produced it as a comment
    (never over one of `inputs`, only a regular file: `pexopt.outputs`)."""
    from pexopt.outputs import write_files

    header = (f"pexopt target profile {prof.name}: produced by `{command}`\n"
              "Costs: instructions per unit (latency.features); fit: relative error of the "
              "calibration models, grouped by what each model probes.")
    write_files({out: profile_yaml(prof, header)}, "-o", inputs)
