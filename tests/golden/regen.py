"""Write the golden plans and outputs that the redesign (issue #14) must keep.

For every bundled int8 model and every shared model codegen supports, four execution modes
(layer by layer, channel splits, row bands, hybrid) without and with `--target cortex-m4`
(CMSIS-NN scratch in the arena, latency tie-break): the plan (`<model>/<variant>.plan.json.gz`)
and, in `golden.json`, its solver status, arena, the output bytes for one fixed input (the
simulator's, which the generated C on the host and under QEMU must equal) and the QEMU
Cortex-M4 instruction count of the `-m4` variants. tests/test_golden.py checks them; `make
golden` checks all of them.

    python tests/golden/regen.py [--only NAME ...] [--jobs 2] [--time-limit 20] [--no-qemu]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # conftest, golden_lib

from golden_lib import (  # noqa: E402
    GOLDEN_JSON,
    MODES,
    TARGETS,
    ImportOptions,
    golden_json,
    golden_models,
    host_output,
    model_path,
    plan_file,
    qemu_run,
    read_plan,
    sim_output,
    solve_variant,
    variant_name,
)


def one(model: str, mode: str, target: str | None, time_limit: float, qemu: bool,
        solve: bool) -> tuple[str, dict]:
    """Solve one variant and write its plan (or, without `solve`, read the plan written
    before), and return its golden record."""
    path = model_path(model)
    name = variant_name(model, mode, target)
    if solve:
        plan = solve_variant(path, mode, target, time_limit).plan
        f = plan_file(name)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(gzip.compress(golden_json(plan).encode(), mtime=0))
    plan = read_plan(name)[1]
    graph = ImportOptions().load(path)
    out = sim_output(plan, graph)
    if host_output(plan, graph, path) != out:
        raise SystemExit(f"{name}: the host C's output differs from the simulator's")
    rec = {"status": plan.solver.status, "arena_bytes": plan.arena_bytes, "output": out.hex()}
    if qemu and target is not None:
        insns, qout = qemu_run(plan, graph, path)
        if qout != out:
            raise SystemExit(f"{name}: the QEMU run's output differs from the simulator's")
        rec["qemu_instructions"] = insns
    print(f"{name}: {rec['status']} {rec['arena_bytes']:,} B"
          + (f", {rec['qemu_instructions']:,} instructions" if "qemu_instructions" in rec
             else ""), flush=True)
    return name, rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="model names (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--records-only", action="store_true",
                    help="keep the plans; compute the records from them")
    a = ap.parse_args()
    models = a.only or golden_models()
    old = json.loads(GOLDEN_JSON.read_text()) if GOLDEN_JSON.is_file() else {}
    jobs = [(m, mode, t) for m in models for mode in MODES for t in TARGETS]
    with ProcessPoolExecutor(a.jobs) as pool:
        futs = [pool.submit(one, m, mode, t, a.time_limit, not a.no_qemu, not a.records_only)
                for m, mode, t in jobs]
        for fut in futs:
            name, rec = fut.result()
            old[name] = rec
    GOLDEN_JSON.write_text(json.dumps(dict(sorted(old.items())), indent=1) + "\n")


if __name__ == "__main__":
    main()
