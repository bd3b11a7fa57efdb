"""The golden variants of issue #14: which plans, how they are solved, run and compared.

Shared by tests/golden/regen.py (writes them) and tests/test_golden.py (checks them), so both
solve and run a variant the same way."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pexopt.codegen import emit_c
from pexopt.graph.ir import Graph
from pexopt.graph.params import graph_params
from pexopt.latency.profile import resolve_target
from pexopt.pipeline import ImportOptions, SolveResult, solve_model
from pexopt.plan.format import Plan, plan_from_dict
from pexopt.schedule import SolverParams
from pexopt.simulate.arena import run_plan

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
GOLDEN_JSON = GOLDEN / "golden.json"
SHARED = ROOT.parent / "shared" / "models" / "onnx"
RUNTIME = ROOT / "codegen" / "runtime"

BUNDLED = ("dscnn_kws", "resnet8", "mcunet_mixed", "mbv1_w025_r96", "mbv2_w035_r96",
           "mbv2_w035_r144")
# shared models codegen supports (tinyengine_detection: 3 outputs; lenet: float LogSoftmax)
SHARED_SUPPORTED = (
    "mcunet_in3_320kb_1mb_imagenet", "mlperf_ad_autoencoder_int8", "mlperf_ic_resnet8_int8",
    "mlperf_ic_resnet_large_int8", "mlperf_kws_dscnn_int8", "mlperf_sww_int8",
    "mlperf_vww_96_int8", "tflm_hello_world_int8", "tflm_micro_speech_int8",
    "tflm_person_detect", "tinyengine_mcunetv2_large", "tinyengine_vww",
)
# execution mode -> solver switches (the CLI's --no-split, --no-rows, rows alone, default)
MODES = {
    "layers": dict(split=False, rows=False),
    "channels": dict(split=True, rows=False),
    "rows": dict(split=True, rows=True, channels=False),
    "hybrid": dict(split=True, rows=True, channels=True, hybrid=True),
}
TARGETS = (None, "cortex-m4")
CFLAGS = ["-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-DPEX_PORTABLE_KERNELS"]
MAIN_C = r"""
#include <stdio.h>
#include "pex_model.h"
static int8_t in[PEX_INPUT_SIZE], out[PEX_OUTPUT_SIZE];
int main(int argc, char **argv)
{
    FILE *f;
    if (argc != 3 || (f = fopen(argv[1], "rb")) == NULL || fread(in, 1, sizeof in, f) != sizeof in)
        return 2;
    fclose(f);
    if (pex_invoke(in, out) != 0)
        return 3;
    if ((f = fopen(argv[2], "wb")) == NULL || fwrite(out, 1, sizeof out, f) != sizeof out)
        return 4;
    fclose(f);
    return 0;
}
"""


def golden_models() -> list[str]:
    return [f"{m}_int8" for m in BUNDLED] + list(SHARED_SUPPORTED)


def model_path(model: str) -> Path:
    local = ROOT / "models" / f"{model}.onnx"
    return local if local.is_file() else SHARED / f"{model}.onnx"


def variant_name(model: str, mode: str, target: str | None) -> str:
    return f"{model}/{mode}" + ("-m4" if target == "cortex-m4" else "")


def plan_file(name: str) -> Path:
    return GOLDEN / f"{name}.plan.json.gz"


def golden_json(plan: Plan) -> str:
    """The plan's JSON with the model path cut to its file name (checkouts differ)."""
    d = json.loads(plan.to_json())
    d["model"]["path"] = Path(d["model"]["path"]).name
    return json.dumps(d, indent=1) + "\n"


def read_plan(name: str) -> tuple[str, Plan]:
    """(golden JSON text, Plan) of a variant."""
    text = gzip.decompress(plan_file(name).read_bytes()).decode()
    return text, plan_from_dict(json.loads(text), str(plan_file(name)))


def solve_variant(path: Path, mode: str, target: str | None, time_limit: float) -> SolveResult:
    """The variant's plan, as `solve` would find it with one worker."""
    profile = resolve_target(target)[0] if target is not None else None
    params = SolverParams(time_limit=time_limit, workers=1, target=target, **MODES[mode])
    return solve_model(path, ImportOptions(), params, None, profile=profile)


def fixed_input(graph: Graph) -> np.ndarray:
    """The one input every golden output is computed for (int8, seed 0)."""
    t = graph.tensors[graph.inputs[0]]
    return np.random.default_rng(0).integers(-128, 128, t.shape, dtype=np.int8)


def sim_output(plan: Plan, graph: Graph) -> bytes:
    """The simulator's output bytes for the fixed input."""
    t = graph.tensors[graph.inputs[0]]
    out = run_plan(plan, graph, graph_params(graph), {t.name: fixed_input(graph)})
    return np.ascontiguousarray(next(iter(out.values()))).tobytes()


def host_output(plan: Plan, graph: Graph, path: Path) -> bytes:
    """The generated C (portable kernels), compiled with gcc and run on the fixed input."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not on PATH")
    with tempfile.TemporaryDirectory(prefix="pexopt-golden-") as tmp:
        d = Path(tmp)
        emit_c(plan, graph, path, d / "c", backend_default="portable")
        (d / "c" / "main.c").write_text(MAIN_C)
        exe = d / "model"
        srcs = [str(p) for p in sorted((d / "c").glob("*.c"))]
        subprocess.run([gcc, *CFLAGS, "-I", str(d / "c"), "-o", str(exe), *srcs, "-lm"],
                       check=True, capture_output=True)
        (d / "in.bin").write_bytes(fixed_input(graph).tobytes())
        subprocess.run([str(exe), str(d / "in.bin"), str(d / "out.bin")], check=True,
                       timeout=300)
        return (d / "out.bin").read_bytes()


def qemu_run(plan: Plan, graph: Graph, path: Path) -> tuple[int, bytes]:
    """(instructions inside pex_invoke, output bytes) of the generated C on emulated
    Cortex-M4 (mps2-an386, portable kernels, -O2)."""
    from pexopt.target.qemu import run_on_qemu

    with tempfile.TemporaryDirectory(prefix="pexopt-golden-qemu-") as tmp:
        d = Path(tmp)
        emit_c(plan, graph, path, d / "c", target="cortex-m4", backend_default="portable")
        # 256 KiB of stack: pex_invoke's frame grows with the steps (67 KB for
        # tinyengine_mcunetv2_large's hybrid plan at -O2; issue #15 makes it O(1))
        _, run = run_on_qemu(d / "c", fixed_input(graph).tobytes(), "mps2-an386", d / "fw",
                             timeout=900, stack_size=256 * 1024)
        return run.insns, bytes(run.output)
