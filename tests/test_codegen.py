"""C code generation: the generated C, compiled with gcc (portable kernels, ASan + UBSan), must
compute exactly what `run_plan` computes, for the split and the layer-by-layer plan of every
model the emitter supports; unsupported models fail cleanly; names from the model are
sanitised; a failed emit writes nothing."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import BUNDLED_ALL, MODELS_DIR, SHARED_MODELS, const, make_onnx, vi
from onnx import helper

from pexopt.codegen import emit_c
from pexopt.codegen.names import C_KEYWORDS, NameTable, comment, sanitize
from pexopt.errors import PexError
from pexopt.frontend.onnx_params import load_params
from pexopt.graph.ir import Graph
from pexopt.pipeline import ImportOptions, solve_model
from pexopt.plan.format import Plan
from pexopt.schedule import SolverParams
from pexopt.simulate.arena import run_plan
from pexopt.simulate.reference import inputs_from_onnx, onnx_index
from pexopt.simulate.verify import random_feeds

GCC = shutil.which("gcc")
CFLAGS = ["-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
          "-fno-sanitize-recover=undefined", "-DPEX_PORTABLE_KERNELS"]
RUNTIME = Path(__file__).resolve().parents[1] / "codegen" / "runtime"
SOLVER = dict(time_limit=2.0, workers=1, target="cortex-m4", rows=False)  # kernel scratch

# Shared models the emitter refuses, and the text its one-line error must name.
UNSUPPORTED = {
    "tinyengine_detection": "3 outputs",  # three graph outputs
    "tinyengine_mnist_lenet300100": "'83' (LogSoftmax)",  # LogSoftmax in float, float output
}
# Outputs computed by a float kernel with libm exp/log (numpy's SIMD exp may differ in the
# last bit): allowed one quantisation step (see README "Checking results").
SOFTMAX_OUTPUT = {"mlperf_ic_resnet8_int8", "mlperf_ic_resnet_large_int8",
                  "mlperf_kws_dscnn_int8", "mlperf_sww_int8", "mlperf_vww_96_int8",
                  "tflm_micro_speech_int8", "tflm_person_detect"}

MAIN_C = r"""
#include <stdio.h>
#include "pex_model.h"

static int8_t in[PEX_INPUT_SIZE], out[PEX_OUTPUT_SIZE];

/* usage: model in0 out0 [in1 out1 ...]; runs every input in the same process */
int main(int argc, char **argv)
{
    int i;
    for (i = 1; i + 1 < argc; i += 2) {
        FILE *f = fopen(argv[i], "rb");
        if (f == NULL || fread(in, 1, sizeof in, f) != sizeof in) {
            return 2;
        }
        fclose(f);
        if (pex_invoke(in, out) != 0) {
            return 3;
        }
        f = fopen(argv[i + 1], "wb");
        if (f == NULL || fwrite(out, 1, sizeof out, f) != sizeof out) {
            return 4;
        }
        fclose(f);
    }
    return 0;
}
"""

needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc not on PATH")


# -- helpers ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kernels_obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pex_kernels.c compiled once (every generated folder holds an identical copy)."""
    if GCC is None:
        pytest.skip("gcc not on PATH")
    d = tmp_path_factory.mktemp("runtime")
    obj = d / "pex_kernels.o"
    _run([GCC, *CFLAGS, "-c", str(RUNTIME / "pex_kernels.c"), "-o", str(obj)])
    return obj


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    assert r.stderr == "", r.stderr  # no compiler warnings, no sanitizer reports
    return r


def _build(folder: Path, kernels_obj: Path) -> Path:
    """Compile a generated folder (+ main.c) into an executable."""
    assert (folder / "pex_kernels.c").read_bytes() == (RUNTIME / "pex_kernels.c").read_bytes()
    (folder / "main.c").write_text(MAIN_C)
    exe = folder / "model"
    _run([GCC, *CFLAGS, "-I", str(folder), "-o", str(exe),
          *(str(folder / f) for f in ("pex_model.c", "pex_weights.c", "main.c")),
          str(kernels_obj), "-lm"])
    return exe


def _invoke(exe: Path, inputs: list[np.ndarray], out_size: int) -> list[np.ndarray]:
    args = []
    for i, x in enumerate(inputs):
        f = exe.parent / f"in{i}.bin"
        f.write_bytes(np.ascontiguousarray(x, dtype=np.int8).tobytes())
        args += [str(f), str(exe.parent / f"out{i}.bin")]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    _run([str(exe), *args], env=env, timeout=120)
    res = []
    for i in range(len(inputs)):
        y = np.frombuffer((exe.parent / f"out{i}.bin").read_bytes(), dtype=np.int8)
        assert y.size == out_size
        res.append(y)
    return res


def _solve(path: Path, split: bool, external: bool = False) -> tuple[Plan, Graph]:
    res = solve_model(path, ImportOptions(input_external=external),
                      SolverParams(split=split, **SOLVER), budget=None)
    return res.plan, res.graph


def _expected(path: Path, plan: Plan, graph: Graph, n: int = 2
              ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(IR inputs, run_plan outputs) for n fixed random inputs."""
    ox = onnx_index(path)
    params = load_params(ox, graph)
    tin = graph.tensors[graph.inputs[0]].name
    tout = graph.tensors[graph.outputs[0]].name
    ins, outs = [], []
    for i, feed in enumerate(random_feeds(graph, ox, n, seed=0)):
        ir = inputs_from_onnx(graph, feed)
        ins.append(ir[tin])
        outs.append(run_plan(plan, graph, params, ir, seed=i)[tout].reshape(-1))
    return ins, outs


def _check_model(path: Path, out: Path, kernels_obj: Path, steps_tol: int = 0) -> dict:
    """Generate, compile and run the split and the layer-by-layer plan; compare bit for bit."""
    built = {}
    for split in (True, False):
        plan, graph = _solve(path, split)
        folder = out / ("split" if split else "layerwise")
        files = emit_c(plan, graph, path, folder)
        assert {f.name for f in files} >= {"pex_model.h", "pex_model.c", "pex_weights.c",
                                           "pex_weights.h", "pex_kernels.c", "pex_kernels.h",
                                           "README.md"}
        header = (folder / "pex_model.h").read_text()
        m = re.search(r"#define PEX_ARENA_BYTES (\d+)", header)
        assert m and int(m.group(1)) == plan.arena_bytes
        built[split] = (plan, graph, folder)
    with ThreadPoolExecutor(2) as pool:  # the two compiles in parallel
        exes = dict(zip(built, pool.map(lambda s: _build(built[s][2], kernels_obj), built)))
    results = {}
    for split, (plan, graph, _) in built.items():
        ins, want = _expected(path, plan, graph)
        got = _invoke(exes[split], ins, graph.tensors[graph.outputs[0]].elements)
        for g, w in zip(got, want):
            diff = np.abs(g.astype(np.int32) - w.astype(np.int32))
            assert diff.max(initial=0) <= steps_tol, (
                f"{path.name} split={split}: {int(np.count_nonzero(diff))} of {w.size} outputs "
                f"differ from run_plan (max {int(diff.max())} steps)")
        results[split] = got
    for a, b in zip(results[True], results[False]):
        assert np.array_equal(a, b), f"{path.name}: split and layer-by-layer outputs differ"
    return results


def _shared(folder: Path, name: str) -> Path:
    path = folder / f"{name}.onnx"
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} missing")
        pytest.skip(f"{path} missing")
    return path


# -- every model --------------------------------------------------------------------------------

@needs_gcc
@pytest.mark.parametrize("name", BUNDLED_ALL)
def test_bundled_model_bit_exact(name: str, models_dir: Path, kernels_obj: Path,
                                 tmp_path: Path) -> None:
    _check_model(models_dir / f"{name}_int8.onnx", tmp_path, kernels_obj)


@needs_gcc
@pytest.mark.parametrize("name", [m for m in SHARED_MODELS if m not in UNSUPPORTED])
def test_shared_model_bit_exact(name: str, shared_models_dir: Path, kernels_obj: Path,
                                tmp_path: Path) -> None:
    path = _shared(shared_models_dir, name)
    _check_model(path, tmp_path, kernels_obj, steps_tol=1 if name in SOFTMAX_OUTPUT else 0)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_model_clean_error(name: str, shared_models_dir: Path,
                                       tmp_path: Path) -> None:
    path = _shared(shared_models_dir, name)
    plan, graph = _solve(path, split=False)
    out = tmp_path / "gen"
    with pytest.raises(PexError) as e:
        emit_c(plan, graph, path, out)
    msg = str(e.value)
    assert UNSUPPORTED[name] in msg and "\n" not in msg
    assert not out.exists() and list(tmp_path.iterdir()) == []


@needs_gcc
def test_external_input(models_dir: Path, kernels_obj: Path, tmp_path: Path) -> None:
    """An external input is read in place from `input` (never copied into the arena)."""
    path = models_dir / "mcunet_mixed_int8.onnx"
    plan, graph = _solve(path, split=True, external=True)
    assert plan.input_external
    emit_c(plan, graph, path, tmp_path / "gen")
    src = (tmp_path / "gen" / "pex_model.c").read_text()
    assert "PEX_INPUT_SIZE);" not in src.split("pex_invoke", 1)[1].split("/* step 0")[0]
    ins, want = _expected(path, plan, graph)
    got = _invoke(_build(tmp_path / "gen", kernels_obj), ins, want[0].size)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


# -- operators no bundled model has ----------------------------------------------------------

def _zoo_model(path: Path, which: str) -> Path:
    """Float models with grouped/dilated conv, depthwise x2, sigmoid, maxpool, concat (mixed
    scales), avgpool counting padding, mul, resize, pad (constant and reflect), GAP, FC,
    softmax; per-channel affine, HardSwish, transpose (a layout copy), SE-style broadcast mul,
    ceil-mode maxpool, ReduceMean. Quantised by models/build_models.py (onnxruntime)."""
    rng = np.random.default_rng(1 if which == "a" else 2)

    def w(name: str, shape: tuple[int, ...], s: float = 0.3) -> onnx.TensorProto:
        return const(name, rng.standard_normal(shape) * s)

    n = helper.make_node
    if which == "a":
        nodes = [
            n("Conv", ["input", "w1", "b1"], ["c1"], name="grouped", group=2, kernel_shape=[3, 3],
              pads=[1, 0, 2, 1]),
            n("Conv", ["c1", "w2", "b2"], ["c2"], name="dilated", kernel_shape=[3, 3],
              dilations=[2, 2], pads=[2, 2, 2, 2]),
            n("Relu", ["c2"], ["r2"], name="relu"),
            n("Conv", ["r2", "w3", "b3"], ["c3"], name="dw_mult2", group=8, kernel_shape=[3, 3],
              pads=[1, 1, 1, 1], strides=[2, 2]),
            n("Sigmoid", ["c3"], ["s3"], name="sigmoid"),
            n("MaxPool", ["c3"], ["m3"], name="maxpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            n("Concat", ["s3", "m3"], ["cat"], name="concat", axis=1),
            n("AveragePool", ["cat"], ["ap"], name="avgpool", kernel_shape=[3, 3], strides=[2, 2],
              pads=[1, 1, 1, 1], count_include_pad=1),
            n("Mul", ["ap", "ap"], ["mm"], name="square"),
            n("Resize", ["mm", "", "sc"], ["rs"], name="resize", mode="nearest"),
            n("Pad", ["rs", "pads"], ["pd"], name="pad", mode="constant"),
            n("GlobalAveragePool", ["pd"], ["gp"], name="gap"),
            n("Flatten", ["gp"], ["fl"], name="flatten"),
            n("Gemm", ["fl", "wf", "bf"], ["fc"], name="fc", transB=1),
            n("Softmax", ["fc"], ["output"], name="softmax", axis=1)]
        inits = [w("w1", (8, 2, 3, 3)), w("b1", (8,)), w("w2", (8, 8, 3, 3)), w("b2", (8,)),
                 w("w3", (16, 1, 3, 3)), w("b3", (16,)), const("sc", [1, 1, 2, 2]),
                 const("pads", [0, 0, 1, 1, 0, 0, 0, 2], np.int64), w("wf", (10, 32)),
                 w("bf", (10,))]
        return make_onnx(path, nodes, [vi("input", [1, 4, 12, 12])], [vi("output", [1, 10])],
                         inits, opset=13)
    nodes = [
        n("Conv", ["input", "w1", "b1"], ["c1"], name="conv", kernel_shape=[3, 3],
          pads=[1, 1, 1, 1]),
        n("Concat", ["c1", "input"], ["cat"], name="concat_mixed", axis=1),
        n("Relu", ["cat"], ["r"], name="relu"),
        n("Mul", ["r", "g"], ["sc"], name="per_channel_scale"),
        n("HardSwish", ["sc"], ["hs"], name="hardswish"),
        n("Transpose", ["hs"], ["tr"], name="swap_hw", perm=[0, 1, 3, 2]),
        n("GlobalAveragePool", ["tr"], ["gp"], name="gap"),
        n("Mul", ["tr", "gp"], ["se"], name="se_mul"),
        n("Add", ["se", "bias_c"], ["ad"], name="per_channel_bias"),
        n("Pad", ["ad", "pads"], ["pr"], name="pad_reflect", mode="reflect"),
        n("MaxPool", ["pr"], ["mp"], name="maxpool_ceil", kernel_shape=[2, 2], strides=[2, 2],
          ceil_mode=1),
        n("ReduceMean", ["mp"], ["rm"], name="mean_h", axes=[2], keepdims=1),
        n("Conv", ["rm", "w2", "b2"], ["output"], name="head", kernel_shape=[1, 1])]
    inits = [w("w1", (8, 4, 3, 3)), w("b1", (8,)), w("g", (1, 12, 1, 1), 1.0),
             w("bias_c", (1, 12, 1, 1), 0.5), const("pads", [0, 0, 1, 2, 0, 0, 2, 1], np.int64),
             w("w2", (6, 12, 1, 1)), w("b2", (6,))]
    return make_onnx(path, nodes, [vi("input", [1, 4, 10, 10])], [vi("output", [1, 6, 1, 7])],
                     inits, opset=14)


def _qdq_unary_model(path: Path) -> Path:
    """A hand-made QDQ chain of stand-alone Relu, Clip, HardSwish, Sigmoid, HardSigmoid (int8
    in and out; onnxruntime's quantiser folds or decomposes these)."""
    n = helper.make_node
    nodes = [n("DequantizeLinear", ["input", "in_s", "in_z"], ["x"], name="in_dq")]
    inits = [const("in_s", 0.05), const("in_z", 3, np.int8), const("lo", 0.5), const("hi", 3.0)]
    x = "x"
    for op, scale, zp, extra in (("Relu", 0.03, -128, {}), ("Clip", 0.02, -100, {}),
                                 ("HardSwish", 0.025, -20, {}), ("Sigmoid", 1 / 256, -128, {}),
                                 ("HardSigmoid", 1 / 200, -90, {"alpha": 0.3, "beta": 0.4})):
        name = op.lower()
        ins = [x, "lo", "hi"] if op == "Clip" else [x]
        nodes.append(n(op, ins, [name], name=name, **extra))
        inits += [const(f"{name}_s", scale), const(f"{name}_z", zp, np.int8)]
        last = op == "HardSigmoid"
        nodes.append(n("QuantizeLinear", [name, f"{name}_s", f"{name}_z"],
                       ["output" if last else f"{name}_q"], name=f"{name}_q"))
        if not last:
            nodes.append(n("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"],
                           [f"{name}_dq"], name=f"{name}_dq"))
            x = f"{name}_dq"
    return make_onnx(path, nodes, [vi("input", [1, 5, 6, 7], onnx.TensorProto.INT8)],
                     [vi("output", [1, 5, 6, 7], onnx.TensorProto.INT8)], inits, opset=14)


def _quantize():  # noqa: ANN202  (build_models.quantize)
    spec = importlib.util.spec_from_file_location("build_models", MODELS_DIR / "build_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.quantize


@needs_gcc
@pytest.mark.parametrize("which", ["a", "b", "c"])
def test_more_operators_bit_exact(which: str, kernels_obj: Path, tmp_path: Path) -> None:
    qp = tmp_path / f"zoo_{which}_int8.onnx"
    if which == "c":
        _qdq_unary_model(qp)
    else:
        pytest.importorskip("onnxruntime.quantization")
        fp = _zoo_model(tmp_path / f"zoo_{which}.onnx", which)
        onnx.save(_quantize()(onnx.load(str(fp))), str(qp))
    graph = ImportOptions().load(qp)
    kinds = {op.kind.value for op in graph.ops}
    want = {"a": {"grouped_conv", "depthwise_conv", "sigmoid", "maxpool", "concat", "avgpool",
                  "mul", "resize", "pad", "global_avgpool", "fully_connected", "softmax"},
            "b": {"concat", "channel_affine", "hard_sigmoid", "transpose", "mul", "pad",
                  "maxpool", "reduce_mean"},
            "c": {"relu", "clip", "hard_swish", "sigmoid", "hard_sigmoid"}}[which]
    assert want <= kinds, want - kinds
    _check_model(qp, tmp_path / "gen", kernels_obj, steps_tol=1 if which == "a" else 0)


# -- names ------------------------------------------------------------------------------------

HOSTILE = ['x*/ system("rm -rf /"); /*', "\n#include <stdio.h>\nint", "int", "for", "_Bool",
           "main", "conv-1", "conv_1", "conv 1", "1conv", "", "__reserved", "??/", "a\\",
           "\u00e9t\u00e9", "*/", "/*", "x" * 200, "x" * 201, "int_", "int_2", "a__b", "a_b"]


def test_sanitizer_gives_unique_valid_identifiers() -> None:
    table = NameTable({"pex_arena"})
    ids = [table.ident(n, prefix="") for n in HOSTILE] + [table.ident("pex_arena")]
    assert len(set(ids)) == len(ids)
    for i in ids:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", i), i
        assert i not in C_KEYWORDS and len(i) <= 63 and "__" not in i
    assert table.ident("conv-1") == ids[HOSTILE.index("conv-1")]  # stable per name
    same = {table.ident("dup", "pex_w_", key=k) for k in range(3)}  # equal names, 3 objects
    assert len(same) == 3 and not same & set(ids)
    for n in HOSTILE:
        assert sanitize(n) not in C_KEYWORDS
        c = comment(n)
        assert "*/" not in c and "/*" not in c and "\n" not in c and "\\" not in c
        assert "??" not in c and '"' not in c


@needs_gcc
def test_hostile_names_never_reach_the_c_verbatim(models_dir: Path, kernels_obj: Path,
                                                  tmp_path: Path) -> None:
    m = onnx.load(str(models_dir / "resnet8_int8.onnx"))
    names = iter(HOSTILE[:10] + ["stage" + "\n" * 3, "*/*/*/"])
    for node in m.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Flatten"):
            node.name = next(names, node.name)
    path = tmp_path / "hostile.onnx"
    onnx.save(m, str(path))
    plan, graph = _solve(path, split=True)
    emit_c(plan, graph, path, tmp_path / "gen")
    for f in (tmp_path / "gen").iterdir():
        text = f.read_text()
        for bad in (*HOSTILE[:2], 'system("', '"rm -rf /"', "x*/", "*/ system", "*/*/",
                    "#include <stdio.h>"):
            assert bad not in text, (f.name, bad)
        for line in text.splitlines():  # every comment opened on a line closes on it
            if f.suffix in (".c", ".h") and "/* step" in line:
                assert line.rstrip().endswith("*/") and line.count("*/") == 1, line
    ins, want = _expected(path, plan, graph)
    got = _invoke(_build(tmp_path / "gen", kernels_obj), ins, want[0].size)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


# -- atomic output ----------------------------------------------------------------------------

def test_failed_emit_writes_nothing(models_dir: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = models_dir / "resnet8_int8.onnx"
    plan, graph = _solve(path, split=False)
    out = tmp_path / "gen"
    emit_c(plan, graph, path, out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    calls = {"n": 0}
    real_fsync = os.fsync

    def flaky_fsync(fd: int) -> None:  # fail in the middle of writing the new folder
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    with pytest.raises(PexError, match="disk full"):  # one line naming the file
        emit_c(plan, graph, path, out)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # old folder intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]  # no temp folders left
    monkeypatch.undo()

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(os, "fsync", flaky_fsync)
    calls["n"] = 0
    with pytest.raises(PexError, match="disk full"):
        emit_c(plan, graph, path, fresh)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]


def test_bad_arguments_write_nothing(models_dir: Path, tmp_path: Path) -> None:
    path = models_dir / "resnet8_int8.onnx"
    plan, graph = _solve(path, split=False)
    for kw in ({"target": "cortex-z9"}, {"backend_default": "tpu"}):
        with pytest.raises(PexError):
            emit_c(plan, graph, path, tmp_path / "gen", **kw)
    assert list(tmp_path.iterdir()) == []


def test_generated_code_shape(models_dir: Path, tmp_path: Path) -> None:
    """One call per step, each after a comment naming the node; the arena section macro."""
    path = models_dir / "mbv2_w035_r96_int8.onnx"
    plan, graph = _solve(path, split=True)
    emit_c(plan, graph, path, tmp_path / "gen")
    src = (tmp_path / "gen" / "pex_model.c").read_text()
    assert src.count("/* step ") == len(plan.steps)
    for s in plan.steps:
        assert f"/* step {s.index}: " in src
    assert '#define PEX_ARENA_SECTION ".bss.pex_arena"' in src
    assert "static int8_t pex_arena[PEX_ARENA_BYTES]" in src
    assert "section(PEX_ARENA_SECTION)" in src
    assert "arm_convolve_wrapper_s8(" in src and "#if PEX_USE_CMSIS_NN" in src
    assert "malloc" not in src
    header = (tmp_path / "gen" / "pex_model.h").read_text()
    for macro in ("PEX_INPUT_SIZE", "PEX_OUTPUT_SIZE", "PEX_INPUT_SCALE", "PEX_INPUT_ZERO_POINT",
                  "PEX_OUTPUT_SCALE", "PEX_OUTPUT_ZERO_POINT", "PEX_INPUT_DIMS", "PEX_INPUT_H",
                  "PEX_ARENA_BYTES"):
        assert f"#define {macro} " in header
    assert "int pex_invoke(const int8_t *input, int8_t *output);" in header
    emit_c(plan, graph, path, tmp_path / "portable", backend_default="portable")
    assert "arm_" not in (tmp_path / "portable" / "pex_model.c").read_text()
