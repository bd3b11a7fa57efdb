"""Measure a plan on an emulated Cortex-M: generated C (portable kernels) under QEMU."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pexopt.errors import PexError
from pexopt.graph.ir import Graph
from pexopt.plan.format import Plan

BOARDS = {"cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500"}


@dataclass(frozen=True)
class Measured:
    """One inference of a plan under QEMU."""

    instructions: int  # executed inside pex_invoke (exact, TCG plugin)
    flash_bytes: int  # .text + .data (code, weights, tables)
    ram_bytes: int  # .data + .bss (the arena included) + the stack high-water mark
    stack_bytes: int
    exact: bool  # the output equals the simulator's, bit for bit


def measure_plan(plan: Plan, graph: Graph, target: str, seed: int = 0) -> Measured:
    """Generate C for `plan`, run it once under QEMU and check it against the simulator."""
    from pexopt.codegen.emit import emit_c
    from pexopt.graph.params import graph_params
    from pexopt.simulate.arena import run_plan
    from pexopt.target.qemu import run_on_qemu

    board = BOARDS.get(target)
    if board is None:
        raise PexError(f"--target: '{target}' is not one of {', '.join(BOARDS)} under QEMU")
    t = graph.tensors[graph.inputs[0]]
    x = np.random.default_rng(seed).integers(-128, 128, t.shape, dtype=np.int8)
    with tempfile.TemporaryDirectory(prefix="pexopt-qemu-") as tmp:
        d = Path(tmp)
        emit_c(plan, graph, graph.source_path, d / "pex_out", target=target,
               backend_default="portable")
        fw, run = run_on_qemu(d / "pex_out", x.tobytes(), board, d / "fw", timeout=900)
    want = next(iter(run_plan(plan, graph, graph_params(graph),
                              {t.name: x}).values()))
    got = np.frombuffer(run.output, dtype=np.int8)
    return Measured(instructions=run.insns, flash_bytes=fw.text + fw.data,
                    ram_bytes=fw.data + fw.bss + run.stack_bytes, stack_bytes=run.stack_bytes,
                    exact=bool(np.array_equal(got, want.reshape(-1))))
