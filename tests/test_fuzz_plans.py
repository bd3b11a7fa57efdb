"""Plan-mutation fuzz (issue #13): valid channel-split, row-band and hybrid plans of small
models (generated ones and a bundled one) get one number changed at a time, seeded: a bit flip,
+-1, x2, a huge value, a negative one, zero, a small step. The validator must answer (never
raise, hang or run out of memory); every mutated plan it accepts must simulate without error,
bit-exactly, and its generated C (portable kernels, host gcc with ASan and UBSan) must run clean
and equal the simulator. C is compiled only for accepted plans whose C differs from C already
run (object files are cached by content: the weights and main.c rarely change).

`PEXOPT_FUZZ_PLAN_MUTATIONS` mutations in all (default 200; `make fuzz` runs 2,000).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS_DIR
from test_codegen import CFLAGS, GCC, MAIN_C, RUNTIME, _invoke, kernels_obj  # noqa: F401
from test_rows import _chain_model, manual_schedule
from test_validator import forced_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_graphs import Spec, build_model  # noqa: E402

from pexopt.codegen import emit_c  # noqa: E402
from pexopt.errors import PexError  # noqa: E402
from pexopt.frontend.onnx_params import load_params  # noqa: E402
from pexopt.graph.ir import Graph  # noqa: E402
from pexopt.partial.hybrid import find_hybrid_segments  # noqa: E402
from pexopt.pipeline import ImportOptions, solve_model  # noqa: E402
from pexopt.plan.build import build_plan  # noqa: E402
from pexopt.plan.format import Plan, plan_from_dict  # noqa: E402
from pexopt.plan.validator import validate  # noqa: E402
from pexopt.schedule import SolverParams  # noqa: E402
from pexopt.simulate.arena import run_plan  # noqa: E402
from pexopt.simulate.reference import inputs_from_onnx, onnx_index, run_reference  # noqa: E402
from pexopt.simulate.verify import random_feeds  # noqa: E402

MUTATIONS = int(os.environ.get("PEXOPT_FUZZ_PLAN_MUTATIONS", "200"))
HUGE = (2**31, 2**33, 2**33 - 1, 2**63 - 1, 10**12, 1028)
SOLVE = dict(time_limit=3, workers=1)
# a generated int8 model whose split plan has channel slices and an accumulating conv
SPEC = Spec(3, 12, 12, 5, (("conv", 8, 3, 1, 1, "relu"), ("dw", 3, 1, 1, "clip"),
                           ("pw", 16, "relu"), ("pw", 8, ""), ("pool", "max", 2, 2)), head=4)


@dataclass
class Base:
    """One valid plan to mutate, with what is needed to run it."""

    name: str
    path: Path
    graph: Graph
    plan: dict
    x: np.ndarray  # the IR input
    want: np.ndarray  # the unsplit reference output (flattened)
    modes: set[str] = field(default_factory=set)


def _base(name: str, path: Path, graph: Graph, plan: Plan) -> Base:
    assert validate(plan, graph) == [], name
    ox = onnx_index(path)
    ir = inputs_from_onnx(graph, random_feeds(graph, ox, 1, seed=0)[0])
    out = graph.tensors[graph.outputs[0]].name
    want = run_reference(graph, load_params(ox, graph), ir)[out].reshape(-1)
    modes = {s.mode + ("+rows" if s.rows else "") + ("+slice" if s.slice else "")
             for s in plan.steps}
    return Base(name, path, graph, json.loads(plan.to_json()),
                ir[graph.tensors[graph.inputs[0]].name], want, modes)


def _solved(name: str, path: Path, rows: bool) -> Base:
    res = solve_model(path, ImportOptions(), SolverParams(rows=rows, **SOLVE), budget=None)
    return _base(name, path, res.graph, res.plan)


def _hybrid(folder: Path) -> Base:
    path = _chain_model(folder / "block.onnx", [("conv", 24, 1, 1, 0), ("dw", 3, 1, 1),
                                                ("conv", 4, 1, 1, 0)], h=9, c=4)
    g = ImportOptions().load(path)
    seg = next(s for s in find_hybrid_segments(g) if s.slice_width == 4)
    return _base("hybrid", path, g, build_plan(g, manual_schedule(g, seg, 2)))


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> list[Base]:
    pytest.importorskip("onnxruntime.quantization")
    folder = tmp_path_factory.mktemp("plans")
    gen = folder / "gen_int8.onnx"
    onnx.save(build_model(SPEC, int8=True), str(gen))
    kws = MODELS_DIR / "dscnn_kws_int8.onnx"  # accumulating slices, an in-place depthwise
    res = [_solved("gen-channels", gen, rows=False), _solved("gen-rows", gen, rows=True),
           _hybrid(folder), _base("dscnn-forced", kws, *forced_split(ImportOptions().load(kws)))]
    seen = set().union(*(b.modes for b in res))
    assert {"slice+slice", "accumulate+slice", "requantize", "band+rows", "halo+rows",
            "band+rows+slice", "accumulate+rows+slice", "requantize+rows"} <= seen, seen
    return res


# -------------------------------------------------------------------------- mutations


def numbers(d: object, path: tuple = ()) -> Iterator[tuple]:
    """Paths of every integer in a parsed plan (booleans are not numbers here)."""
    if isinstance(d, bool):
        return
    if isinstance(d, int):
        yield path
    elif isinstance(d, dict):
        for k, v in d.items():
            yield from numbers(v, (*path, k))
    elif isinstance(d, list):
        for k, v in enumerate(d):
            yield from numbers(v, (*path, k))


def mutate(rng: random.Random, v: int) -> int:
    """One hostile change of a number."""
    m = rng.randrange(7)
    if m == 0:
        return v ^ (1 << rng.randrange(40))
    if m == 1:
        return v + rng.choice((-1, 1))
    if m == 2:
        return v * 2
    if m == 3:
        return rng.choice(HUGE)
    if m == 4:
        return -v if v else -1
    if m == 5:
        return 0
    return v + rng.choice((-8, -4, 4, 8, 16, 1024))


def mutants(base: Base, n: int, seed: int) -> Iterator[tuple[tuple, int, int, dict]]:
    """n (path, old, new, plan dict) with one number changed; steps and buffers hold most
    numbers, so most mutations hit them."""
    paths = list(numbers(base.plan))
    rng = random.Random(seed)
    for _ in range(n):
        d = copy.deepcopy(base.plan)
        p = rng.choice(paths)
        at = d
        for k in p[:-1]:
            at = at[k]
        old = at[p[-1]]
        at[p[-1]] = new = mutate(rng, old)
        if new != old:
            yield p, old, new, d


# -------------------------------------------------------------------------- C on the host


class HostC:
    """Compile and run generated C folders, reusing object files of identical sources."""

    def __init__(self, folder: Path, kernels: Path) -> None:
        self.folder, self.kernels = folder, kernels
        self.objs: dict[str, Path] = {}
        self.runs = 0

    def obj(self, src: Path, include: Path) -> Path:
        """The object of `src` compiled against the headers in `include`."""
        data = src.read_bytes() + b"".join(sorted(h.read_bytes() for h in include.glob("*.h")))
        key = hashlib.sha256(data).hexdigest()[:16]
        if key not in self.objs:
            o = self.folder / f"{src.stem}-{key}.o"
            _gcc([*CFLAGS, "-I", str(include), "-c", str(src), "-o", str(o)])
            self.objs[key] = o
        return self.objs[key]

    def run(self, c_dir: Path, x: np.ndarray, size: int) -> np.ndarray:
        (c_dir / "main.c").write_text(MAIN_C)
        objs = [self.obj(c_dir / f, c_dir) for f in ("pex_model.c", "pex_weights.c", "main.c")]
        exe = c_dir / "model"
        _gcc([*CFLAGS, "-o", str(exe), *map(str, objs), str(self.kernels), "-lm"])
        self.runs += 1
        return _invoke(exe, [x], size)[0]


def _gcc(args: list[str]) -> None:
    r = subprocess.run([GCC, *args], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def _c_key(c_dir: Path) -> str:
    h = hashlib.sha256()
    for f in ("pex_model.c", "pex_weights.c", "pex_model.h"):
        h.update((c_dir / f).read_bytes())
    return h.hexdigest()


# -------------------------------------------------------------------------- the fuzz


@dataclass
class Tally:
    tried: int = 0
    rejected: int = 0
    accepted: int = 0
    simulated: int = 0
    compiled: int = 0
    c_refused: list = field(default_factory=list)
    slowest: float = 0.0
    accepted_paths: list = field(default_factory=list)


def _check_accepted(base: Base, plan: Plan, host: HostC, seen: dict[str, set], t: Tally,
                    where: str) -> None:
    """An accepted mutant: simulated bit-exactly, and its C (if new) equal to the simulator."""
    sim_key = json.dumps([plan.to_json()])
    if sim_key in seen["plans"]:
        return
    seen["plans"].add(sim_key)
    out = base.graph.tensors[base.graph.outputs[0]].name
    ox = onnx_index(base.path)
    ir = {base.graph.tensors[base.graph.inputs[0]].name: base.x}
    got = run_plan(plan, base.graph, load_params(ox, base.graph), ir, seed=1)[out].reshape(-1)
    assert np.array_equal(got, base.want), f"{where}: simulation differs from the reference"
    t.simulated += 1
    c_dir = host.folder / f"c{len(seen['plans'])}"
    try:
        emit_c(plan, base.graph, base.path, c_dir, backend_default="portable")
    except PexError as e:  # the emitter's own defence: one clean line
        assert "\n" not in str(e), where
        t.c_refused.append(f"{where}: {e}")
        return
    key = _c_key(c_dir)
    if key not in seen["c"]:
        seen["c"].add(key)
        try:
            got_c = host.run(c_dir, base.x, base.want.size)
        except AssertionError as e:
            raise AssertionError(f"{where}: the C fails: {str(e)[:3000]}") from None
        assert np.array_equal(got_c, base.want), f"{where}: C differs from the simulator"
        t.compiled += 1
    shutil.rmtree(c_dir)


def fuzz_base(base: Base, n: int, seed: int, host: HostC, t: Tally) -> None:
    seen: dict[str, set] = {"plans": set(), "c": set()}
    for p, old, new, d in mutants(base, n, seed):
        where = f"{base.name} {'/'.join(map(str, p))}: {old} -> {new}"
        t.tried += 1
        start = time.perf_counter()
        try:
            plan = plan_from_dict(d, "plan.json")
        except PexError:
            t.rejected += 1
            continue
        violations = validate(plan, base.graph)
        t.slowest = max(t.slowest, time.perf_counter() - start)
        if violations:
            t.rejected += 1
            continue
        t.accepted += 1
        t.accepted_paths.append(where)
        _check_accepted(base, plan, host, seen, t, where)


@pytest.mark.skipif(GCC is None, reason="gcc not on PATH")
def test_mutated_plans_are_refused_or_exact_in_the_simulator_and_in_c(
        bases: list[Base], kernels_obj: Path, tmp_path: Path) -> None:  # noqa: F811
    host = HostC(tmp_path, kernels_obj)
    t = Tally()
    per = -(-MUTATIONS // len(bases))
    for k, base in enumerate(bases):
        fuzz_base(base, per, seed=k, host=host, t=t)
    print(f"\nplan mutations: {t.tried} tried, {t.rejected} refused, {t.accepted} accepted, "
          f"{t.simulated} distinct plans simulated, {t.compiled} distinct C programs run, "
          f"{len(t.c_refused)} refused by the emitter; slowest validate {t.slowest:.2f} s")
    for line in t.c_refused:
        print("  emitter refused:", line)
    assert t.tried >= 0.9 * MUTATIONS, t
    assert t.rejected >= t.tried // 2, t  # mostly hostile numbers: most must be refused
    assert t.compiled >= 1, t  # the C side ran for real
    assert t.slowest < 5, t  # no rule iterates over an absurd number
