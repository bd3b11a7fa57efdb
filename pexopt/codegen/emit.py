"""Emit a plan as C: one static arena and `pex_invoke`, straight-line code, one call per step.

Output folder (written atomically, never half-written):
- ``pex_model.h``   public API: ``pex_invoke``, sizes, quantisation and shape macros.
- ``pex_model.c``   the arena and ``pex_invoke`` (CMSIS-NN calls where CMSIS-NN computes exactly
  what the plan's step needs, pexopt's portable kernels elsewhere; ``-DPEX_PORTABLE_KERNELS``
  switches every step to the portable kernels).
- ``pex_weights.c`` / ``pex_weights.h``  const weights, biases, requantisation parameters,
  lookup tables and kernel parameter structs (computed from `pexopt.simulate.params`).
- ``pex_kernels.c`` / ``pex_kernels.h``  copied from ``codegen/runtime``.
- ``README.md``     how to build it into an STM32CubeIDE project.

The generated code does what `pexopt.simulate.arena.run_plan` does, byte for byte: every step
reads and writes the buffers of the plan at their offsets.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pexopt.codegen.names import NameTable, comment
from pexopt.codegen.support_rows import refuse_bands
from pexopt.errors import PexError
from pexopt.graph.ir import Graph, Op, QParams, Tensor
from pexopt.ops import OpKind
from pexopt.plan.format import Buffer, Plan, Step
from pexopt.plan.validator import check
from pexopt.simulate import kernels as K
from pexopt.simulate.params import OpParams, load_params
from pexopt.simulate.reference import stored_int8

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "codegen" / "runtime"
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "codegen" / "templates"
RUNTIME_FILES = ("pex_kernels.h", "pex_kernels.c")

# CMSIS-NN code path of each target (what arm_nn_math_types.h picks from the compiler flags).
TARGETS: dict[str, str] = {
    "cortex-m0": "c", "cortex-m0plus": "c", "cortex-m3": "c", "host": "c",
    "cortex-m4": "dsp", "cortex-m7": "dsp", "cortex-m33": "dsp", "cortex-m35p": "dsp",
    "cortex-m55": "mve", "cortex-m85": "mve",
}
BACKENDS = ("cmsis", "portable")

SUPPORTED: frozenset[OpKind] = frozenset({
    OpKind.CONV, OpKind.GROUPED_CONV, OpKind.DEPTHWISE, OpKind.FULLY_CONNECTED, OpKind.ADD,
    OpKind.MUL, OpKind.CHANNEL_AFFINE, OpKind.CONCAT, OpKind.MAXPOOL, OpKind.AVGPOOL,
    OpKind.GLOBAL_AVGPOOL, OpKind.REDUCE_MEAN, OpKind.RELU, OpKind.CLIP, OpKind.SIGMOID,
    OpKind.HARD_SIGMOID, OpKind.HARD_SWISH, OpKind.SOFTMAX, OpKind.TRANSPOSE, OpKind.PAD,
    OpKind.RESIZE, OpKind.OPAQUE,
})
OPAQUE_SUPPORTED = frozenset({"LogSoftmax"})
LUT_KINDS = frozenset({OpKind.RELU, OpKind.CLIP, OpKind.SIGMOID, OpKind.HARD_SIGMOID,
                       OpKind.HARD_SWISH})


def emit_c(plan: Plan, graph: Graph, model_path: str | Path, out_dir: str | Path,
           target: str = "cortex-m4", backend_default: str = "cmsis") -> list[Path]:
    """Write the C sources of `plan` into `out_dir` (replaced atomically); returns the files.

    The plan is validated against the graph first. Raises PexError (one line, naming the node)
    for anything the emitter cannot compile; nothing is written then.
    """
    if target not in TARGETS:
        raise PexError(f"codegen: unknown target '{target}' (one of {', '.join(TARGETS)})")
    if backend_default not in BACKENDS:
        raise PexError(f"codegen: unknown backend '{backend_default}' (cmsis or portable)")
    check_supported(graph)
    check(plan, graph)  # never emit a plan that is not valid for this model
    refuse_bands(plan)  # row bands: not compiled yet (issue #7)
    params = load_params(model_path, graph)
    em = _Emitter(plan, graph, params, TARGETS[target], backend_default == "cmsis",
                  Path(model_path).name, target)
    files = em.run()
    for name in RUNTIME_FILES:
        src = RUNTIME_DIR / name
        if not src.is_file():
            raise PexError(f"codegen: runtime file {src} is missing")
        files[name] = src.read_text()
    files["README.md"] = em.readme()
    return _write_folder(Path(out_dir), files)


def check_supported(graph: Graph) -> None:
    """PexError naming the first node (or graph port) the emitter cannot compile."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        names = ", ".join(f"'{comment(graph.tensors[t].name)}'" for t in graph.outputs)
        raise PexError(f"codegen: models with exactly one input and one output are supported; "
                       f"'{comment(graph.name)}' has {len(graph.inputs)} input(s) and "
                       f"{len(graph.outputs)} outputs ({names})")
    for op in graph.ops:
        where = f"codegen: node '{comment(op.name)}' ({comment(op.onnx_type)})"
        if op.kind not in SUPPORTED or (op.kind == OpKind.OPAQUE
                                        and op.onnx_type not in OPAQUE_SUPPORTED):
            raise PexError(f"{where}: operator kind '{op.kind.value}' is not supported by the C "
                           "emitter")
        ts = [graph.tensors[t] for t in (*op.inputs, *op.outputs)]
        plain = [t for t in ts if not stored_int8(t)]
        if graph.dtype != "int8" or plain:
            what = f"tensor '{comment(plain[0].name)}' is {plain[0].dtype}" if plain else \
                f"the graph is {graph.dtype}"
            raise PexError(f"{where}: runs in float ({what}); the C emitter supports int8 "
                           "operators only")
    for tid in (*graph.inputs, *graph.outputs):
        t = graph.tensors[tid]
        if not stored_int8(t):
            raise PexError(f"codegen: graph {'input' if tid in graph.inputs else 'output'} "
                           f"'{comment(t.name)}' is {t.dtype} without int8 quantisation; the C "
                           "API is int8 in, int8 out")


def _write_folder(out: Path, files: dict[str, str]) -> list[Path]:
    """Write all files into a temp dir next to `out`, then swap it in with renames."""
    if out.exists() and not out.is_dir():
        raise PexError(f"codegen: {out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    old: Path | None = None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        for name, text in files.items():
            with open(tmp / name, "w", encoding="ascii", newline="\n") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.rename(out, old / "x")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "x").exists() and not out.exists():
            os.rename(old / "x", out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return [out / n for n in files]


# -- views ------------------------------------------------------------------------------------

def _pad4(shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    while len(shape) > 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > 4:
        raise PexError(f"{where}: tensors of rank {len(shape)} are not supported by the C "
                       "emitter")
    return (1,) * (4 - len(shape)) + shape


def _contig(dims: tuple[int, ...]) -> tuple[int, ...]:
    s = [1, 1, 1, 1]
    for k in (2, 1, 0):
        s[k] = s[k + 1] * dims[k + 1]
    return tuple(s)


@dataclass
class View:
    """A strided 4-D view at element offset `base` of some buffer."""

    base: int
    dims: tuple[int, ...]
    strides: tuple[int, ...]

    def c(self) -> str:
        d = ", ".join(str(x) for x in self.dims)
        s = ", ".join(str(x) for x in self.strides)
        return f"&(const pex_view){{{{{d}}}, {{{s}}}}}"

    def broadcast_to(self, out_dims: tuple[int, ...], where: str) -> View:
        st = []
        for d, s, o in zip(self.dims, self.strides, out_dims):
            if d == o:
                st.append(s if d > 1 else 0)
            elif d == 1:
                st.append(0)
            else:
                raise PexError(f"{where}: shapes {self.dims} and {out_dims} do not broadcast")
        return View(self.base, tuple(out_dims), tuple(st))

    def pixel_stride(self, where: str) -> int:
        """The pixel stride of an NHWC view whose rows are pixel-contiguous."""
        n, h, w, c = self.dims
        pix = self.strides[2] if w > 1 else self.strides[1] if h > 1 else \
            self.strides[0] if n > 1 else c
        want = (h * w * pix, w * pix, pix, 1)
        for k in range(4):
            if self.dims[k] > 1 and self.strides[k] != want[k]:
                raise PexError(f"{where}: an input or output layout the C kernels cannot "
                               f"address (dims {self.dims}, strides {self.strides})")
        return pix


def _index_view(idx: np.ndarray | None, shape: tuple[int, ...], where: str) -> View:
    """The view of a kernel operand: contiguous `shape`, or the strided form of `idx`."""
    if idx is None:
        dims = _pad4(shape, where)
        return View(0, dims, _contig(dims))
    dims = _pad4(idx.shape, where)
    a = idx.reshape(dims).astype(np.int64)
    base = int(a.reshape(-1)[0]) if a.size else 0
    strides = []
    for k in range(4):
        if dims[k] > 1:
            unit = [0, 0, 0, 0]
            unit[k] = 1
            strides.append(int(a[tuple(unit)]) - base)
        else:
            strides.append(0)
    grid = np.indices(dims).reshape(4, -1)
    rebuilt = base + sum(grid[k] * strides[k] for k in range(4))
    if not np.array_equal(rebuilt, a.reshape(-1)):
        raise PexError(f"{where}: a layout copy the C emitter cannot express as a strided view")
    return View(base, dims, tuple(strides))


def _hexf(x: float) -> str:
    """An exact C99 double literal."""
    x = float(x)
    if not math.isfinite(x):
        raise PexError(f"codegen: non-finite constant {x}")
    return x.hex() if x != 0.0 else "0.0"


def _ints(values: np.ndarray | list[int], per_line: int = 24) -> str:
    vals = [str(int(v)) for v in np.asarray(values).reshape(-1).tolist()]
    if not vals:
        vals = ["0"]
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    return "    " + ",\n    ".join(lines)


# -- the emitter ------------------------------------------------------------------------------

@dataclass
class _OpConsts:
    """C names of one op's constants (emitted once per op)."""

    struct: str = ""
    weights: str = ""
    bias: str = ""
    mult: str = ""
    shift: str = ""
    luts: dict[int, str] = field(default_factory=dict)
    a: str = ""
    b: str = ""
    maps: dict[int, str] = field(default_factory=dict)
    dw_blocks: list[tuple[int, int]] | None = None


RESERVED = {"pex_invoke", "pex_arena", "pex_cmsis_scratch", "pex_ctx", "input", "output",
            "pex_view", "pex_conv_t", "pex_fc_t", "pex_pool_t", "pex_ew_t"}


class _Emitter:
    def __init__(self, plan: Plan, graph: Graph, params: dict[int, OpParams], arch: str,
                 cmsis: bool, model_file: str, target: str) -> None:
        self.plan, self.graph, self.params = plan, graph, params
        self.arch, self.cmsis, self.target = arch, cmsis, target
        self.model_file = model_file
        self.names = NameTable(RESERVED)
        self.ops = {o.name: o for o in graph.ops}
        self.tensors = {t.name: t for t in graph.tensors}
        self.bufs: dict[str, Buffer] = {b.name: b for b in plan.buffers}
        self.consts: dict[int, _OpConsts] = {}
        self.defs: list[str] = []  # pex_weights.c
        self.decls: list[str] = []  # pex_weights.h
        self.body: list[str] = []  # pex_invoke
        self.scratch = 0  # CMSIS-NN ctx.buf bytes
        self.cmsis_steps = 0
        self.portable_steps = 0
        self.kinds_cmsis: set[str] = set()
        self._slices = self._op_slices()

    # -- plumbing -------------------------------------------------------------------------
    def where(self, op: Op) -> str:
        return f"codegen: node '{comment(op.name)}' ({comment(op.onnx_type)})"

    def _op_slices(self) -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {}
        for s in self.plan.steps:
            if s.slice is not None and s.mode == "slice":
                sl = (int(s.slice[0]), int(s.slice[1]))
                lst = out.setdefault(s.op, [])
                if sl not in lst:
                    lst.append(sl)
        return out

    def define(self, ctype: str, name: str, count: int | None, init: str) -> None:
        dim = f"[{count}]" if count is not None else ""
        self.decls.append(f"extern const {ctype} {name}{dim};")
        self.defs.append(f"const {ctype} {name}{dim} = {{\n{init}\n}};\n")

    def array(self, ctype: str, name: str, values: np.ndarray) -> str:
        v = np.asarray(values).reshape(-1)
        self.define(ctype, name, max(1, v.size), _ints(v))
        return name

    def ptr(self, name: str, elem_off: int = 0) -> str:
        """C pointer to element `elem_off` (int8) of a buffer or of the external input."""
        t = self.tensors.get(name)
        if t is not None and t.external:
            return "input" if elem_off == 0 else f"(input + {elem_off})"
        b = self.bufs.get(name)
        if b is None:
            raise PexError(f"codegen: the plan has no buffer '{comment(name)}'")
        return f"(pex_arena + {b.offset + elem_off})"

    def acc_ptr(self, name: str) -> str:
        b = self.bufs[name]
        return f"(void *)(pex_arena + {b.offset})"

    def emit(self, line: str = "") -> None:
        self.body.append(("    " + line) if line else "")

    # -- top level ------------------------------------------------------------------------
    def run(self) -> dict[str, str]:
        g = self.graph
        tin = g.tensors[g.inputs[0]]
        tout = g.tensors[g.outputs[0]]
        if not tin.external:
            if tin.name not in self.bufs:
                raise PexError(f"codegen: the plan has no buffer for the input "
                               f"'{comment(tin.name)}'")
            self.emit("/* the input into its arena buffer */")
            self.emit(f"memcpy({self.ptr(tin.name)}, input, PEX_INPUT_SIZE);")
        for step in self.plan.steps:
            self.step(step)
        self.emit("/* the output out of the arena */")
        self.emit(f"memcpy(output, {self.ptr(tout.name)}, PEX_OUTPUT_SIZE);")
        self.emit("return 0;")
        return {"pex_model.h": self.header(tin, tout), "pex_model.c": self.source(),
                "pex_weights.h": self.weights_header(), "pex_weights.c": self.weights_source()}

    def step(self, step: Step) -> None:
        op = self.ops.get(step.op)
        if op is None:
            raise PexError(f"codegen: step {step.index} names an unknown node "
                           f"'{comment(step.op)}'")
        p = self.params[op.id]
        if not p.int8:
            raise PexError(f"{self.where(op)}: runs in float; the C emitter supports int8 "
                           "operators only")
        sl = f" [{step.slice[0]}:{step.slice[1]})" if step.slice is not None else ""
        self.emit()
        self.emit(f"/* step {step.index}: {op.kind.value} {step.mode}{sl} "
                  f"node {comment(op.name)} ({comment(op.onnx_type)}) */")
        handler = _HANDLERS.get(op.kind)
        if handler is None:  # pragma: no cover - check_supported ran first
            raise PexError(f"{self.where(op)}: not supported by the C emitter")
        handler(self, step, op, p)

    def both(self, step: Step, cmsis_lines: list[str] | None, portable: list[str],
             kind: str) -> None:
        """Emit a step: the CMSIS-NN call (if any) and the portable call."""
        if cmsis_lines and self.cmsis:
            self.cmsis_steps += 1
            self.kinds_cmsis.add(kind)
            self.body.append("#if PEX_USE_CMSIS_NN")
            self.emit("{")
            for ln in cmsis_lines:
                self.emit("    " + ln)
            self.emit("}")
            self.body.append("#else")
            for ln in portable:
                self.emit(ln)
            self.body.append("#endif")
        else:
            self.portable_steps += 1
            for ln in portable:
                self.emit(ln)

    def cmsis_check(self, step: Step, call: str) -> str:
        return f"if ({call} != ARM_CMSIS_NN_SUCCESS) return -{step.index + 1};"

    def need_scratch(self, step: Step, size: int, getter: str) -> list[str]:
        self.scratch = max(self.scratch, int(size))
        return [f"if ({getter} > PEX_CMSIS_SCRATCH_BYTES) return -{step.index + 1};"]

    # -- operands -------------------------------------------------------------------------
    def whole_in(self, op: Op, p: OpParams, k: int) -> tuple[str, View]:
        t = self.graph.tensors[op.inputs[k]]
        v = _index_view(p.in_index[k], p.in_shapes[k], self.where(op))
        return self.ptr(t.name, v.base), View(0, v.dims, v.strides)

    def whole_out(self, op: Op, p: OpParams) -> tuple[str, View]:
        t = self.graph.tensors[op.outputs[0]]
        v = _index_view(p.out_index, p.out_shape, self.where(op))
        return self.ptr(t.name, v.base), View(0, v.dims, v.strides)

    def slice_operand(self, op: Op, buf: str | None, t: Tensor, c0: int, c1: int
                      ) -> tuple[str, View, bool]:
        """(pointer, view, contiguous) of channels [c0, c1) of tensor t: its slice buffer or
        the channel range of the full tensor (IR layout, as run_plan reads it)."""
        where = self.where(op)
        full = _pad4(t.shape, where)
        dims = full[:3] + (c1 - c0,)
        if buf is not None and self.bufs[buf].kind == "slice":
            return self.ptr(buf), View(0, dims, _contig(dims)), True
        name = t.name if buf is None else buf
        st = _contig(full)
        return self.ptr(name, c0), View(0, dims, st), c1 - c0 == full[3]

    def slice_inputs(self, step: Step, op: Op, p: OpParams) -> list[tuple[str, View, bool]]:
        c0, c1 = step.slice
        by_tensor = {self.bufs[r].tensor: r for r in step.reads}
        res = []
        for k, tid in enumerate(op.inputs):
            t = self.graph.tensors[tid]
            if p.in_index and p.in_index[k] is not None:
                raise PexError(f"{self.where(op)}: input '{comment(t.name)}' is not a plain "
                               "NHWC view; it cannot be sliced")
            buf = by_tensor.get(t.name)
            if buf is None and not t.external:
                raise PexError(f"codegen: step {step.index} does not read "
                               f"'{comment(t.name)}'")
            res.append(self.slice_operand(op, buf, t, c0, c1))
        return res

    def slice_output(self, step: Step, op: Op) -> tuple[str, View, bool]:
        c0, c1 = step.slice
        t = self.graph.tensors[op.outputs[0]]
        return self.slice_operand(op, step.writes[0], t, c0, c1)

    # -- constants ------------------------------------------------------------------------
    def oc(self, op: Op) -> _OpConsts:
        c = self.consts.get(op.id)
        if c is None:
            c = self.consts[op.id] = _OpConsts()
        return c

    def base_name(self, op: Op, what: str) -> str:
        return self.names.ident(op.name, prefix=f"pex_{what}_", key=op.id)

    def quant_arrays(self, op: Op, p: OpParams, c: _OpConsts) -> None:
        c.bias = self.array("int32_t", self.base_name(op, "b"), p.bias.astype(np.int64))
        c.mult = self.array("int32_t", self.base_name(op, "m"), p.multiplier.astype(np.int64))
        c.shift = self.array("int32_t", self.base_name(op, "s"), p.shift.astype(np.int64))

    def conv_consts(self, op: Op, p: OpParams) -> _OpConsts:
        c = self.oc(op)
        if c.struct:
            return c
        where = self.where(op)
        a = op.attrs
        n, h, w, cin = _pad4(p.in_shapes[0], where)
        _, oh, ow, cout = _pad4(p.out_shape, where)
        kh, kw = a.kernel
        sh, sw = a.stride
        dh, dw = a.dilation
        groups = int(p.extra.get("group", 1))
        ch_mult = int(p.extra.get("ch_mult", 1))
        wts = p.weights
        if op.kind == OpKind.DEPTHWISE:
            blocks = self._slices.get(op.name)
            if blocks:  # channel-blocked: each slice's (KH, KW, s) weights are contiguous
                blocks = sorted(blocks)
                if [b[0] for b in blocks] != [0] + [b[1] for b in blocks[:-1]] \
                        or blocks[-1][1] != cout:
                    raise PexError(f"{where}: slices do not partition the channels")
                wts = np.concatenate([p.weights[:, :, c0:c1].reshape(-1) for c0, c1 in blocks])
                c.dw_blocks = blocks
        c.weights = self.array("int8_t", self.base_name(op, "w"), wts.astype(np.int64))
        self.quant_arrays(op, p, c)
        self.weight_struct(op, c, "pex_conv_t",
                           [n, h, w, cin, oh, ow, cout, kh, kw, sh, sw, dh, dw, a.pads[0],
                            a.pads[1], groups, ch_mult, -p.in_zp, p.out_zp, int(p.act_min),
                            int(p.act_max)])
        return c

    def weight_struct(self, op: Op, c: _OpConsts, ctype: str, vals: list[int]) -> None:
        """The const parameter struct of a conv/FC: integers, then its weight arrays."""
        c.struct = self.base_name(op, "p")
        init = "    " + ", ".join(str(int(v)) for v in vals) + \
            f",\n    {c.weights}, {c.bias}, {c.mult}, {c.shift}"
        self.define(ctype, c.struct, None, init)

    def fc_consts(self, op: Op, p: OpParams) -> _OpConsts:
        c = self.oc(op)
        if c.struct:
            return c
        rows, k = p.in_shapes[0]
        cout = p.out_shape[1]
        in_last = int(p.extra.get("in_last", k))
        c.weights = self.array("int8_t", self.base_name(op, "w"), p.weights.astype(np.int64))
        self.quant_arrays(op, p, c)
        self.weight_struct(op, c, "pex_fc_t", [rows, k, cout, in_last, -p.in_zp, p.out_zp,
                                               int(p.act_min), int(p.act_max)])
        return c

    def pool_consts(self, op: Op, p: OpParams) -> _OpConsts:
        c = self.oc(op)
        if c.struct:
            return c
        where = self.where(op)
        a = op.attrs
        n, h, w, _ = _pad4(p.in_shapes[0], where)
        _, oh, ow, _ = _pad4(p.out_shape, where)
        same = bool(p.extra.get("same_q", True))
        m, s = p.extra.get("out", (0, 0))
        vals = [n, h, w, oh, ow, a.kernel[0], a.kernel[1], a.stride[0], a.stride[1],
                a.pads[0], a.pads[1], a.pads[2], a.pads[3],
                int(bool(p.extra.get("count_include_pad", False))), int(same),
                p.in_zp, p.out_zp, m, s, int(p.act_min), int(p.act_max)]
        c.struct = self.base_name(op, "p")
        self.define("pex_pool_t", c.struct, None, "    " + ", ".join(str(int(v)) for v in vals))
        return c

    def ew_consts(self, op: Op, p: OpParams) -> _OpConsts:
        c = self.oc(op)
        if c.struct:
            return c
        e = p.extra
        z1 = p.in_qparams[0].zero_point
        z2 = p.in_qparams[1].zero_point if len(p.in_qparams) > 1 else 0
        m1, s1 = e.get("in1", (0, 0))
        m2, s2 = e.get("in2", (0, 0))
        mo, so = e["out"]
        vals = [-z1, m1, s1, -z2, m2, s2, int(e.get("left_shift", 0)), p.out_zp, mo, so,
                int(p.act_min), int(p.act_max)]
        c.struct = self.base_name(op, "p")
        self.define("pex_ew_t", c.struct, None, "    " + ", ".join(str(int(v)) for v in vals))
        return c

    def lut(self, op: Op, values: np.ndarray, key: int = -1) -> str:
        c = self.oc(op)
        if key in c.luts:
            return c.luts[key]
        v = np.asarray(values).astype(np.int64).reshape(-1)
        assert v.size == 256
        name = self.array("int8_t", self.base_name(op, "lut" if key < 0 else f"lut{key}_"), v)
        c.luts[key] = name
        return name

    def rescale_lut(self, op: Op, p: OpParams, k: int) -> str:
        """NULL, or the table of TFLite's float rescale from input k's to the output's qparams."""
        qi, qo = p.in_qparams[k], p.out_qparams
        if qi == qo:
            return "NULL"
        return self.lut(op, K._rescale(np.arange(-128, 128).astype(np.int8), qi, qo), k)

    # -- kinds ----------------------------------------------------------------------------
    def conv(self, step: Step, op: Op, p: OpParams) -> None:
        where = self.where(op)
        c = self.conv_consts(op, p)
        pn = c.struct
        n, h, w, cin = _pad4(p.in_shapes[0], where)
        _, oh, ow, cout = _pad4(p.out_shape, where)
        if step.mode == "accumulate":
            if op.kind != OpKind.CONV or int(p.extra.get("group", 1)) != 1:
                raise PexError(f"{where}: only dense convolutions accumulate")
            c0, c1 = step.slice
            t = self.graph.tensors[op.inputs[0]]
            x, xv, _ = self.slice_operand(op, step.reads[0], t, c0, c1)
            pix = xv.pixel_stride(where)
            self.both(step, None, [f"pex_conv_acc_s8(&{pn}, {x}, {pix}, {c0}, {c1}, "
                                   f"{self.acc_ptr(step.writes[0])}, {int(c0 == 0)});"], "")
            return
        if step.mode == "requantize":
            self.requantize(step, op, p, c, n * oh * ow, cout)
            return
        x, xv = self.whole_in(op, p, 0)
        in_pix = xv.pixel_stride(where)
        if step.mode == "whole":
            y, yv = self.whole_out(op, p)
            oc0, oc1 = 0, cout
        elif step.mode == "slice":
            oc0, oc1 = step.slice
            y, yv, _ = self.slice_output(step, op)
        else:
            raise PexError(f"codegen: step {step.index}: unknown mode '{step.mode}'")
        out_pix = yv.pixel_stride(where)
        portable = [f"pex_conv_s8(&{pn}, {x}, {in_pix}, {y}, {out_pix}, {oc0}, {oc1});"]
        self.both(step, self.cmsis_conv(step, op, p, c, x, in_pix, y, out_pix, oc0, oc1),
                  portable, "conv")

    def requantize(self, step: Step, op: Op, p: OpParams, c: _OpConsts, pixels: int,
                   channels: int) -> None:
        acc = self.bufs[step.reads[0]]
        out = self.bufs[step.writes[0]]
        if out.offset != acc.offset:
            raise PexError(f"{self.where(op)}: the requantised output must start at its "
                           "accumulator's offset")
        self.both(step, None, [f"pex_requantize_s8({self.acc_ptr(acc.name)}, {pixels}, "
                               f"{channels}, {c.mult}, {c.shift}, {p.out_zp}, "
                               f"{int(p.act_min)}, {int(p.act_max)});"], "")

    def depthwise(self, step: Step, op: Op, p: OpParams) -> None:
        where = self.where(op)
        c = self.conv_consts(op, p)
        pn = c.struct
        _, _, _, cin = _pad4(p.in_shapes[0], where)
        _, oh, ow, cout = _pad4(p.out_shape, where)
        kh, kw = op.attrs.kernel
        if step.mode == "whole" and step.scratch:
            t_in = self.graph.tensors[op.inputs[0]]
            t_out = self.graph.tensors[op.outputs[0]]
            if p.extra.get("ch_mult", 1) != 1 or t_in.shape != t_out.shape \
                    or self.bufs[t_in.name].offset != self.bufs[t_out.name].offset \
                    or c.dw_blocks is not None:
                raise PexError(f"{where}: in-place depthwise needs ch_mult 1 and the output "
                               "over its input")
            scratch = self.bufs[step.scratch[0]]
            if scratch.size < oh * ow * _pad4(t_out.shape, where)[0]:
                raise PexError(f"{where}: scratch buffer too small")
            self.both(step, None, [f"pex_dw_conv_inplace_s8(&{pn}, {self.ptr(t_out.name)}, "
                                   f"(pex_arena + {scratch.offset}));"], "")
            return
        if step.mode == "whole":
            if c.dw_blocks is not None:
                raise PexError(f"{where}: runs both whole and sliced")
            x, xv = self.whole_in(op, p, 0)
            y, yv = self.whole_out(op, p)
            c0, c1, w, wtap = 0, cout, c.weights, cout
            in_c = cin
        elif step.mode == "slice":
            if p.extra.get("ch_mult", 1) != 1:
                raise PexError(f"{where}: channel slices need a channel multiplier of 1")
            c0, c1 = step.slice
            (x, xv, _), = self.slice_inputs(step, op, p)
            y, yv, _ = self.slice_output(step, op)
            w, wtap = f"({c.weights} + {kh * kw * c0})", c1 - c0
            in_c = c1 - c0
        else:
            raise PexError(f"codegen: step {step.index}: unknown mode '{step.mode}'")
        in_pix, out_pix = xv.pixel_stride(where), yv.pixel_stride(where)
        portable = [f"pex_dw_conv_s8(&{pn}, {x}, {in_pix}, {y}, {out_pix}, {c0}, {c1}, {w}, "
                    f"{wtap});"]
        cm = None
        if in_pix == in_c and out_pix == c1 - c0:
            cm = self.cmsis_dw(step, op, p, c, x, y, c0, c1, w, in_c)
        self.both(step, cm, portable, "depthwise")

    def fc(self, step: Step, op: Op, p: OpParams) -> None:
        where = self.where(op)
        c = self.fc_consts(op, p)
        pn = c.struct
        rows, k = p.in_shapes[0]
        cout = p.out_shape[1]
        in_last = int(p.extra.get("in_last", k))
        if step.mode == "accumulate":
            c0, c1 = step.slice
            t = self.graph.tensors[op.inputs[0]]
            buf = step.reads[0]
            if t.elements % in_last or k % in_last:
                raise PexError(f"{where}: input does not split into pixels of {in_last}")
            if self.bufs[buf].kind == "slice":
                x, pix = self.ptr(buf), c1 - c0
            else:
                x, pix = self.ptr(buf, c0), in_last
            self.both(step, None, [f"pex_fc_acc_s8(&{pn}, {x}, {pix}, {c0}, {c1}, "
                                   f"{self.acc_ptr(step.writes[0])}, {int(c0 == 0)});"], "")
            return
        if step.mode == "requantize":
            self.requantize(step, op, p, c, rows, cout)
            return
        x, xv = self.whole_in(op, p, 0)
        if xv.strides != _contig(xv.dims):
            raise PexError(f"{where}: the fully connected input must be contiguous")
        if step.mode == "whole":
            y, yv = self.whole_out(op, p)
            oc0, oc1 = 0, cout
        else:
            oc0, oc1 = step.slice
            y, yv, _ = self.slice_output(step, op)
        if yv.strides[3] not in (1, 0) and yv.dims[3] > 1:
            raise PexError(f"{where}: the fully connected output must be row-contiguous")
        out_row = yv.strides[2] if yv.dims[2] > 1 else oc1 - oc0
        portable = [f"pex_fc_s8(&{pn}, {x}, {y}, {out_row}, {oc0}, {oc1});"]
        cm = None
        if out_row == oc1 - oc0 or rows == 1:
            cm = self.cmsis_fc(step, op, p, c, x, y, rows, k, oc0, oc1)
        self.both(step, cm, portable, "fully_connected")

    def ew_operands(self, step: Step, op: Op, p: OpParams
                    ) -> tuple[list[tuple[str, View]], tuple[str, View], bool]:
        """(inputs broadcast to the output view, output, all contiguous and equal)."""
        if step.mode == "whole":
            ins = [self.whole_in(op, p, k) for k in range(len(op.inputs))]
            y, yv = self.whole_out(op, p)
        elif step.mode == "slice":
            ins = [(x, v) for x, v, _ in self.slice_inputs(step, op, p)]
            y, yv, _ = self.slice_output(step, op)
        else:
            raise PexError(f"codegen: step {step.index}: unknown mode '{step.mode}'")
        where = self.where(op)
        # numpy broadcasting aligns trailing dims; _pad4 left-pads, so the shapes align too
        out_dims = tuple(max(d) for d in zip(yv.dims, *[v.dims for _, v in ins]))
        if out_dims != yv.dims:
            raise PexError(f"{where}: output shape {yv.dims} is not the broadcast shape")
        bins = [(x, v.broadcast_to(yv.dims, where)) for x, v in ins]
        contig = _contig(yv.dims)
        flat = yv.strides == contig and all(v.strides == contig and v.dims == yv.dims
                                            for _, v in ins)
        return bins, (y, yv), flat

    def add_mul(self, step: Step, op: Op, p: OpParams) -> None:
        c = self.ew_consts(op, p)
        ins, (y, yv), flat = self.ew_operands(step, op, p)
        (a, av), (b, bv) = ins
        fn = "pex_add_s8" if op.kind == OpKind.ADD else "pex_mul_s8"
        portable = [f"{fn}(&{c.struct}, {a}, {av.c()}, {b}, {bv.c()}, {y}, {yv.c()});"]
        cm = None
        if flat and op.kind == OpKind.ADD:
            e = p.extra
            n = int(np.prod(yv.dims))
            z1, z2 = p.in_qparams[0].zero_point, p.in_qparams[1].zero_point
            cm = [self.cmsis_check(step, (
                f"arm_elementwise_add_s8({a}, {b}, {-z1}, {e['in1'][0]}, {e['in1'][1]}, "
                f"{-z2}, {e['in2'][0]}, {e['in2'][1]}, {e['left_shift']}, {y}, {p.out_zp}, "
                f"{e['out'][0]}, {e['out'][1]}, {int(p.act_min)}, {int(p.act_max)}, {n})"))]
        self.both(step, cm, portable, "add")

    def table(self, step: Step, op: Op, p: OpParams) -> None:
        """Relu / Clip / Sigmoid / HardSigmoid / HardSwish: the numpy kernel's own table."""
        kern = K.KERNELS[op.kind]
        lut = self.lut(op, kern(op, p, [np.arange(-128, 128).astype(np.int8)]))
        ((x, xv),), (y, yv), _ = self.ew_operands(step, op, p)
        self.both(step, None, [f"pex_copy_s8({x}, {xv.c()}, {y}, {yv.c()}, {lut});"], "")

    def affine(self, step: Step, op: Op, p: OpParams) -> None:
        a, b = np.asarray(p.extra["a"]), np.asarray(p.extra["b"])
        ((x, xv),), (y, yv), _ = self.ew_operands(step, op, p)
        if a.size == 1 and b.size == 1:  # a scalar affine: the numpy kernel's own table
            lut = self.lut(op, K.channel_affine(op, p, [np.arange(-128, 128).astype(np.int8)]))
            self.both(step, None, [f"pex_copy_s8({x}, {xv.c()}, {y}, {yv.c()}, {lut});"], "")
            return
        where = self.where(op)
        c = self.oc(op)
        if not c.a:
            c.a = self.base_name(op, "a")
            c.b = self.base_name(op, "b")
            for nm, arr in ((c.a, a), (c.b, b)):
                vals = [_hexf(v) for v in arr.reshape(-1).tolist()]
                lines = [", ".join(vals[i:i + 6]) for i in range(0, len(vals), 6)]
                self.define("double", nm, len(vals), "    " + ",\n    ".join(lines))
        views = []
        for arr in (a, b):
            dims = _pad4(arr.shape, where)
            v = View(0, dims, _contig(dims))
            off = 0
            if step.mode == "slice" and dims[3] > 1:  # _per_channel slices the last axis
                c0, c1 = step.slice
                off = c0
                v = View(0, dims[:3] + (c1 - c0,), v.strides)
            views.append((off, v.broadcast_to(yv.dims, where)))
        (ao, av), (bo, bv) = views
        qi, qo = p.in_qparams[0], p.out_qparams
        self.both(step, None, [
            f"pex_affine_s8({x}, {xv.c()}, {y}, {yv.c()}, {c.a} + {ao}, {av.c()}, "
            f"{c.b} + {bo}, {bv.c()}, {_hexf(qi.scale)}, {qi.zero_point}, {_hexf(qo.scale)}, "
            f"{qo.zero_point}, {int(p.act_min)}, {int(p.act_max)});"], "")

    def pool(self, step: Step, op: Op, p: OpParams) -> None:
        where = self.where(op)
        c = self.pool_consts(op, p)
        if step.mode == "whole":
            x, xv = self.whole_in(op, p, 0)
            y, yv = self.whole_out(op, p)
        elif step.mode == "slice":
            (x, xv, _), = self.slice_inputs(step, op, p)
            y, yv, _ = self.slice_output(step, op)
        else:
            raise PexError(f"codegen: step {step.index}: unknown mode '{step.mode}'")
        ch = yv.dims[3]
        in_pix, out_pix = xv.pixel_stride(where), yv.pixel_stride(where)
        fn = "pex_maxpool_s8" if op.kind == OpKind.MAXPOOL else "pex_avgpool_s8"
        portable = [f"{fn}(&{c.struct}, {x}, {in_pix}, {y}, {out_pix}, {ch});"]
        cm = None
        if in_pix == ch and out_pix == ch:
            cm = self.cmsis_pool(step, op, p, x, y, xv, yv)
        self.both(step, cm, portable, "pool")

    def mean(self, step: Step, op: Op, p: OpParams) -> None:
        if step.mode == "whole":
            x, xv = self.whole_in(op, p, 0)
            y, yv = self.whole_out(op, p)
            rank = len(p.in_shapes[0])
        elif step.mode == "slice":
            (x, xv, _), = self.slice_inputs(step, op, p)
            y, yv, _ = self.slice_output(step, op)
            rank = len(self.graph.tensors[op.inputs[0]].shape)
        else:
            raise PexError(f"codegen: step {step.index}: unknown mode '{step.mode}'")
        mask = 0
        for a in p.extra["axes"]:
            mask |= 1 << (a + 4 - rank)
        for k in range(4):
            want = 1 if mask >> k & 1 else xv.dims[k]
            if yv.dims[k] != want:
                raise PexError(f"{self.where(op)}: output dims {yv.dims} do not match the "
                               f"mean of {xv.dims}")
        m, s = p.extra["out"]
        self.both(step, None, [
            f"pex_mean_s8({x}, {xv.c()}, {y}, {yv.c()}, {mask}, {p.in_zp}, {p.out_zp}, {m}, "
            f"{s}, {int(p.act_min)}, {int(p.act_max)});"], "")

    def concat(self, step: Step, op: Op, p: OpParams) -> None:
        if step.mode != "whole":
            raise PexError(f"{self.where(op)}: concatenation runs on whole tensors only")
        y, yv = self.whole_out(op, p)
        axis = int(p.extra["axis"]) + 4 - len(p.out_shape)
        at = 0
        lines = []
        for k in range(len(op.inputs)):
            x, xv = self.whole_in(op, p, k)
            dst = View(0, xv.dims, yv.strides)
            lut = self.rescale_lut(op, p, k)
            yk = y if at == 0 else f"({y} + {at * yv.strides[axis]})"
            lines.append(f"pex_copy_s8({x}, {xv.c()}, {yk}, {dst.c()}, {lut});")
            at += xv.dims[axis]
        if at != yv.dims[axis]:
            raise PexError(f"{self.where(op)}: inputs do not fill the output")
        self.both(step, None, lines, "")

    def transpose(self, step: Step, op: Op, p: OpParams) -> None:
        if step.mode != "whole":
            raise PexError(f"{self.where(op)}: transpose runs on whole tensors only")
        x, xv = self.whole_in(op, p, 0)
        y, yv = self.whole_out(op, p)
        perm = tuple(p.extra["perm"])
        r = len(perm)
        perm4 = tuple(range(4 - r)) + tuple(q + 4 - r for q in perm)
        src = View(0, tuple(xv.dims[q] for q in perm4), tuple(xv.strides[q] for q in perm4))
        if src.dims != yv.dims:
            raise PexError(f"{self.where(op)}: transposed dims {src.dims} != {yv.dims}")
        lut = self.rescale_lut(op, p, 0)
        self.both(step, None, [f"pex_copy_s8({x}, {src.c()}, {y}, {yv.c()}, {lut});"], "")

    def pad(self, step: Step, op: Op, p: OpParams) -> None:
        where = self.where(op)
        pads = [tuple(int(v) for v in pr) for pr in p.extra["pads"]]
        pads = [(0, 0)] * (4 - len(pads)) + pads
        mode = {"constant": 0, "reflect": 1, "edge": 2}.get(p.extra["mode"])
        if mode is None:
            raise PexError(f"{where}: Pad mode '{p.extra['mode']}' is not supported")
        if step.mode == "whole":
            x, xv = self.whole_in(op, p, 0)
            y, yv = self.whole_out(op, p)
        elif step.mode == "slice":
            if any(pads[3]):
                raise PexError(f"{where}: pads the channel axis, whole tensors only")
            (x, xv, _), = self.slice_inputs(step, op, p)
            y, yv, _ = self.slice_output(step, op)
        else:
            raise PexError(f"codegen: step {step.index}: unknown mode '{step.mode}'")
        before = ", ".join(str(b) for b, _ in pads)
        lut = self.rescale_lut(op, p, 0)
        self.both(step, None, [
            f"pex_pad_s8({x}, {xv.c()}, {y}, {yv.c()}, (const int32_t[4]){{{before}}}, "
            f"{mode}, {int(p.extra['value'])}, {lut});"], "")

    def resize(self, step: Step, op: Op, p: OpParams) -> None:
        c = self.oc(op)
        maps = list(p.extra["maps"])
        if step.mode == "whole":
            x, xv = self.whole_in(op, p, 0)
            y, yv = self.whole_out(op, p)
        elif step.mode == "slice":
            (x, xv, _), = self.slice_inputs(step, op, p)
            y, yv, _ = self.slice_output(step, op)
            maps[-1] = None
        else:
            raise PexError(f"codegen: step {step.index}: unknown mode '{step.mode}'")
        maps = [None] * (4 - len(maps)) + maps
        names = []
        for k, m in enumerate(maps):
            if m is None or np.array_equal(np.asarray(m), np.arange(len(m))):
                names.append("NULL")
                continue
            if k not in c.maps:
                c.maps[k] = self.array("int32_t", self.base_name(op, f"map{k}_"),
                                       np.asarray(m, dtype=np.int64))
            names.append(c.maps[k])
        lut = self.rescale_lut(op, p, 0)
        self.both(step, None, [
            f"pex_resize_nearest_s8({x}, {xv.c()}, {y}, {yv.c()}, "
            f"(const int32_t *const[4]){{{', '.join(names)}}}, {lut});"], "")

    def softmax(self, step: Step, op: Op, p: OpParams) -> None:
        where = self.where(op)
        if step.mode != "whole":
            raise PexError(f"{where}: softmax runs on whole tensors only")
        if p.in_index[0] is not None or p.out_index is not None:
            raise PexError(f"{where}: softmax over a layout copy is not supported")
        x, _ = self.whole_in(op, p, 0)
        y, _ = self.whole_out(op, p)
        shape = tuple(p.in_shapes[0])
        axis = int(p.extra["axis"])
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        if p.extra.get("flatten"):
            n, inner = int(np.prod(shape[axis:], dtype=np.int64)), 1
        else:
            n, inner = shape[axis], int(np.prod(shape[axis + 1:], dtype=np.int64))
        qi, qo = p.in_qparams[0], p.out_qparams
        log = int(p.extra.get("op_type") == "LogSoftmax")
        self.both(step, None, [
            f"pex_softmax_s8({x}, {y}, {outer}, {n}, {inner}, {_hexf(qi.scale)}, "
            f"{qi.zero_point}, {_hexf(qo.scale)}, {qo.zero_point}, {int(p.act_min)}, "
            f"{int(p.act_max)}, {log});"], "")

    # -- CMSIS-NN calls (only where CMSIS-NN computes exactly what the step needs) --------
    def cmsis_conv(self, step: Step, op: Op, p: OpParams, c: _OpConsts, x: str, in_pix: int,
                   y: str, out_pix: int, oc0: int, oc1: int) -> list[str] | None:
        where = self.where(op)
        a = op.attrs
        n, h, w, cin = _pad4(p.in_shapes[0], where)
        _, oh, ow, cout = _pad4(p.out_shape, where)
        groups = int(p.extra.get("group", 1))
        nout = oc1 - oc0
        if in_pix != cin or out_pix != nout or (groups != 1 and nout != cout):
            return None
        kh, kw = a.kernel
        sh, sw = a.stride
        dh, dw = a.dilation
        pt, pl = a.pads[0], a.pads[1]
        reach_h = (oh - 1) * sh + (kh - 1) * dh + 1 - pt
        reach_w = (ow - 1) * sw + (kw - 1) * dw + 1 - pl
        one_by_one = pt == 0 and pl == 0 and kh == 1 and kw == 1 and dh == 1 and dw == 1 \
            and groups == 1
        if one_by_one and (reach_h > h or reach_w > w):
            return None  # the 1x1 kernels do not pad the bottom/right
        one_by_n = h == 1 and dw == 1 and kh == 1 and (sw * cin) % 4 == 0 and groups == 1 \
            and not one_by_one
        if one_by_n:
            total = (ow - 1) * sw + kw - w
            if pl * 2 + total % 2 != total:
                return None  # arm_convolve_1_x_n_s8 assumes TF SAME padding on MVE
        size = _conv_scratch(self.arch, one_by_one, one_by_n, sh, sw, cin, kh, kw, pl, w, ow)
        filt = kh * kw * (cin // groups)
        lines = [
            f"const cmsis_nn_conv_params cp = {{{-p.in_zp}, {p.out_zp}, {{{sw}, {sh}}}, "
            f"{{{pl}, {pt}}}, {{{dw}, {dh}}}, {{{int(p.act_min)}, {int(p.act_max)}}}}};",
            f"const cmsis_nn_per_channel_quant_params qp = {{(int32_t *)({c.mult} + {oc0}), "
            f"(int32_t *)({c.shift} + {oc0})}};",
            f"const cmsis_nn_dims id = {{{n}, {h}, {w}, {cin}}};",
            f"const cmsis_nn_dims fd = {{{nout}, {kh}, {kw}, {cin // groups}}};",
            f"const cmsis_nn_dims bd = {{1, 1, 1, {nout}}};",
            f"const cmsis_nn_dims od = {{{n}, {oh}, {ow}, {nout}}};",
        ]
        lines += self.need_scratch(step, size,
                                   "arm_convolve_wrapper_s8_get_buffer_size(&cp, &id, &fd, &od)")
        lines.append(self.cmsis_check(step, (
            f"arm_convolve_wrapper_s8(&pex_ctx, &cp, &qp, &id, {x}, &fd, "
            f"{c.weights} + {oc0 * filt}, &bd, {c.bias} + {oc0}, &od, {y})")))
        return lines

    def cmsis_dw(self, step: Step, op: Op, p: OpParams, c: _OpConsts, x: str, y: str,
                 c0: int, c1: int, w: str, in_c: int) -> list[str] | None:
        where = self.where(op)
        a = op.attrs
        n, h, wd, _ = _pad4(p.in_shapes[0], where)
        _, oh, ow, _ = _pad4(p.out_shape, where)
        if n != 1 or a.dilation != (1, 1):
            return None
        kh, kw = a.kernel
        sh, sw = a.stride
        pt, pl = a.pads[0], a.pads[1]
        m = int(p.extra.get("ch_mult", 1))
        nout = c1 - c0
        size = _dw_scratch(self.arch, in_c, nout, kh, kw, pt, pl, m)
        lines = [
            f"const cmsis_nn_dw_conv_params dp = {{{-p.in_zp}, {p.out_zp}, {m}, {{{sw}, {sh}}}, "
            f"{{{pl}, {pt}}}, {{1, 1}}, {{{int(p.act_min)}, {int(p.act_max)}}}}};",
            f"const cmsis_nn_per_channel_quant_params qp = {{(int32_t *)({c.mult} + {c0}), "
            f"(int32_t *)({c.shift} + {c0})}};",
            f"const cmsis_nn_dims id = {{1, {h}, {wd}, {in_c}}};",
            f"const cmsis_nn_dims fd = {{1, {kh}, {kw}, {nout}}};",
            f"const cmsis_nn_dims bd = {{1, 1, 1, {nout}}};",
            f"const cmsis_nn_dims od = {{1, {oh}, {ow}, {nout}}};",
        ]
        lines += self.need_scratch(
            step, size, "arm_depthwise_conv_wrapper_s8_get_buffer_size(&dp, &id, &fd, &od)")
        lines.append(self.cmsis_check(step, (
            f"arm_depthwise_conv_wrapper_s8(&pex_ctx, &dp, &qp, &id, {x}, &fd, {w}, &bd, "
            f"{c.bias} + {c0}, &od, {y})")))
        return lines

    def cmsis_fc(self, step: Step, op: Op, p: OpParams, c: _OpConsts, x: str, y: str,
                 rows: int, k: int, oc0: int, oc1: int) -> list[str] | None:
        mult = p.multiplier[oc0:oc1]
        shift = p.shift[oc0:oc1]
        if np.any(mult != mult[0]) or np.any(shift != shift[0]):
            return None  # per-channel: arm_fully_connected_s8 is per-tensor
        nout = oc1 - oc0
        size = 4 * nout if self.arch == "mve" else 0
        lines = [
            f"const cmsis_nn_fc_params fp = {{{-p.in_zp}, 0, {p.out_zp}, "
            f"{{{int(p.act_min)}, {int(p.act_max)}}}}};",
            f"const cmsis_nn_per_tensor_quant_params qp = {{{int(mult[0])}, {int(shift[0])}}};",
            f"const cmsis_nn_dims id = {{{rows}, 1, 1, {k}}};",
            f"const cmsis_nn_dims fd = {{{k}, 1, 1, {nout}}};",
            f"const cmsis_nn_dims bd = {{1, 1, 1, {nout}}};",
            f"const cmsis_nn_dims od = {{{rows}, 1, 1, {nout}}};",
        ]
        lines += self.need_scratch(step, size, "arm_fully_connected_s8_get_buffer_size(&fd)")
        lines.append("if (arm_fully_connected_s8_get_buffer_size(&fd) > 0) {  /* MVE: kernel "
                     "sums */")
        lines.append("    " + self.cmsis_check(step, (
            f"arm_vector_sum_s8((int32_t *)pex_ctx.buf, {k}, {nout}, "
            f"{c.weights} + {oc0 * k}, {-p.in_zp}, 0, {c.bias} + {oc0})")))
        lines.append("}")
        lines.append(self.cmsis_check(step, (
            f"arm_fully_connected_s8(&pex_ctx, &fp, &qp, &id, {x}, &fd, {c.weights} + "
            f"{oc0 * k}, &bd, {c.bias} + {oc0}, &od, {y})")))
        return lines

    def cmsis_pool(self, step: Step, op: Op, p: OpParams, x: str, y: str, xv: View,
                   yv: View) -> list[str] | None:
        a = op.attrs
        n, h, w, ch = xv.dims
        _, oh, ow, _ = yv.dims
        if n != 1 or not p.extra.get("same_q", True):
            return None
        avg = op.kind == OpKind.AVGPOOL
        if avg and p.extra.get("count_include_pad", False) and any(a.pads):
            return None
        lines = [
            f"const cmsis_nn_pool_params pp = {{{{{a.stride[1]}, {a.stride[0]}}}, "
            f"{{{a.pads[1]}, {a.pads[0]}}}, {{{int(p.act_min)}, {int(p.act_max)}}}}};",
            f"const cmsis_nn_dims id = {{1, {h}, {w}, {ch}}};",
            f"const cmsis_nn_dims fd = {{1, {a.kernel[0]}, {a.kernel[1]}, 1}};",
            f"const cmsis_nn_dims od = {{1, {oh}, {ow}, {ch}}};",
        ]
        if avg:
            lines += self.need_scratch(step, 4 * ch if self.arch == "dsp" else 0,
                                       f"arm_avgpool_s8_get_buffer_size({ow}, {ch})")
            lines.append(self.cmsis_check(step, f"arm_avgpool_s8(&pex_ctx, &pp, &id, {x}, &fd, "
                                                f"&od, {y})"))
        else:
            lines.append(self.cmsis_check(step, f"arm_max_pool_s8(&pex_ctx, &pp, &id, {x}, "
                                                f"&fd, &od, {y})"))
        return lines

    # -- files ----------------------------------------------------------------------------
    def header(self, tin: Tensor, tout: Tensor) -> str:
        qi, qo = tin.qparams, tout.qparams
        lines = [
            "/* pex_model.h - generated by pexopt; do not edit. */",
            f"/* model: {comment(self.model_file)}, sha256 {comment(self.plan.model.get('sha256', ''))} */",  # noqa: E501
            "#ifndef PEX_MODEL_H",
            "#define PEX_MODEL_H",
            "",
            "#include <stdint.h>",
            "",
            "#ifdef __cplusplus",
            'extern "C" {',
            "#endif",
            "",
            "/* Bytes of the one static arena (activations, slices, accumulators, scratch). */",
            f"#define PEX_ARENA_BYTES {max(1, self.plan.arena_bytes)}",
            "",
            "/* Input: int8, quantised as real = scale * (q - zero_point), NHWC when 4-D. */",
            *_io_macros("INPUT", tin, qi),
            "",
            "/* Output: int8 (the quantised values even when the ONNX output is dequantised). */",
            *_io_macros("OUTPUT", tout, qo),
        ]
        lines += [
            "",
            "/* Run the model: input has PEX_INPUT_SIZE bytes, output PEX_OUTPUT_SIZE bytes.",
            "   Returns 0 on success, -(step + 1) if a CMSIS-NN call of that step failed.",
            "   Not reentrant: one static arena. */",
            "int pex_invoke(const int8_t *input, int8_t *output);",
            "",
            "#ifdef __cplusplus",
            "}",
            "#endif",
            "",
            "#endif /* PEX_MODEL_H */",
            "",
        ]
        return "\n".join(lines)

    def source(self) -> str:
        head = [
            "/* pex_model.c - generated by pexopt; do not edit.",
            f"   model: {comment(self.model_file)}",
            f"   plan: {len(self.plan.steps)} steps, {len(self.plan.buffers)} buffers, arena "
            f"{self.plan.arena_bytes} B, input {'external' if self.plan.input_external else 'in the arena'}",  # noqa: E501
            f"   target: {self.target}; CMSIS-NN calls: {self.cmsis_steps} steps, portable "
            f"kernels: {self.portable_steps} steps */",
            "#include <string.h>",
            "",
            '#include "pex_model.h"',
            '#include "pex_kernels.h"',
            '#include "pex_weights.h"',
            "",
        ]
        if self.cmsis and self.cmsis_steps:
            head += [
                "/* Default: CMSIS-NN (v7 API) where it computes exactly what a step needs.",
                "   -DPEX_PORTABLE_KERNELS: pexopt's portable kernels for every step. */",
                "#if defined(PEX_PORTABLE_KERNELS)",
                "#define PEX_USE_CMSIS_NN 0",
                "#else",
                "#define PEX_USE_CMSIS_NN 1",
                '#include "arm_nnfunctions.h"',
                "#endif",
                "",
            ]
        head += [
            "/* Place the arena: -DPEX_ARENA_SECTION='\".my_sram\"' and a matching output",
            "   section in the linker script (see README.md). */",
            "#ifndef PEX_ARENA_SECTION",
            '#define PEX_ARENA_SECTION ".bss.pex_arena"',
            "#endif",
            "",
            "static int8_t pex_arena[PEX_ARENA_BYTES]",
            "    __attribute__((aligned(16), section(PEX_ARENA_SECTION)));",
            "",
        ]
        if self.cmsis and self.cmsis_steps:
            head += [
                "#if PEX_USE_CMSIS_NN",
                "/* CMSIS-NN kernel scratch (ctx.buf), sized for the target "
                f"{self.target}; not part of the plan's arena. */",
                "#ifndef PEX_CMSIS_SCRATCH_BYTES",
                f"#define PEX_CMSIS_SCRATCH_BYTES {self.scratch}",
                "#endif",
            ]
            if self.scratch:
                head += [
                    "static int8_t pex_cmsis_scratch[PEX_CMSIS_SCRATCH_BYTES > 0 ? "
                    "PEX_CMSIS_SCRATCH_BYTES : 1] __attribute__((aligned(16)));",
                    "static const cmsis_nn_context pex_ctx = {pex_cmsis_scratch, "
                    "PEX_CMSIS_SCRATCH_BYTES};",
                ]
            else:
                head += ["static const cmsis_nn_context pex_ctx = {0, 0};"]
            head += ["#endif", ""]
        body = ["int pex_invoke(const int8_t *input, int8_t *output)", "{"]
        if self.cmsis and self.cmsis_steps:
            body += ["#if PEX_USE_CMSIS_NN", "    (void)pex_ctx;", "#endif"]
        body += self.body
        body += ["}", ""]
        return "\n".join(head + body)

    def weights_header(self) -> str:
        return "\n".join([
            "/* pex_weights.h - generated by pexopt; do not edit. Private to pex_model.c. */",
            "#ifndef PEX_WEIGHTS_H",
            "#define PEX_WEIGHTS_H",
            "",
            "#include <stdint.h>",
            "",
            '#include "pex_kernels.h"',
            "",
            *self.decls,
            "",
            "#endif /* PEX_WEIGHTS_H */",
            "",
        ])

    def weights_source(self) -> str:
        return "\n".join([
            "/* pex_weights.c - generated by pexopt; do not edit.",
            "   Weights (int8), biases (int32), requantisation multipliers and shifts (int32),",
            "   lookup tables and kernel parameters, computed from the model by pexopt. */",
            "#include <stddef.h>",
            "",
            '#include "pex_weights.h"',
            "",
            *self.defs,
        ])

    def readme(self) -> str:
        path = TEMPLATE_DIR / "README.md.in"
        if not path.is_file():
            raise PexError(f"codegen: template {path} is missing")
        text = path.read_text()
        subs = {
            "@MODEL@": comment(self.model_file),
            "@TARGET@": self.target,
            "@ARENA@": str(self.plan.arena_bytes),
            "@STEPS@": str(len(self.plan.steps)),
            "@CMSIS_STEPS@": str(self.cmsis_steps),
            "@PORTABLE_STEPS@": str(self.portable_steps),
            "@SCRATCH@": str(self.scratch),
            "@CMSIS_KINDS@": ", ".join(sorted(self.kinds_cmsis)) or "none",
        }
        for k, v in subs.items():
            text = text.replace(k, v)
        return text


def _shape_macros(what: str, shape: tuple[int, ...]) -> list[str]:
    if len(shape) == 4:
        return [f"#define PEX_{what}_{ax} {d}" for ax, d in zip("NHWC", shape)]
    if len(shape) == 2:
        return [f"#define PEX_{what}_N {shape[0]}", f"#define PEX_{what}_C {shape[1]}"]
    return []


def _io_macros(prefix: str, t: Tensor, q: QParams) -> list[str]:
    """Size, quantisation and shape macros of the model input or output."""
    return [f"#define PEX_{prefix}_SIZE {t.elements}",
            f"#define PEX_{prefix}_SCALE {float(q.scale)!r}f",
            f"#define PEX_{prefix}_ZERO_POINT {int(q.zero_point)}",
            f"#define PEX_{prefix}_RANK {len(t.shape)}",
            f"#define PEX_{prefix}_DIMS {{{', '.join(str(d) for d in t.shape)}}}",
            *_shape_macros(prefix, t.shape)]


def _conv_scratch(arch: str, one_by_one: bool, one_by_n: bool, sh: int, sw: int, cin: int,
                  kh: int, kw: int, pl: int, w: int, ow: int) -> int:
    """arm_convolve_wrapper_s8_get_buffer_size (v7) for the target's code path (armclang's
    value where gcc's is smaller)."""
    def generic() -> int:
        cols = kh * kw * cin
        if arch == "mve":
            return 4 * ((cols + 15) // 16) * 16
        return 2 * ((cols + 3) // 4 * 4) * 2
    if one_by_one:
        return 4 * cin if arch == "dsp" and sh == 1 and sw == 1 else 0
    if one_by_n:
        if arch != "mve":
            return generic()
        total = (ow - 1) * sw + kw - w
        asym = total % 2
        right = max(1, (pl + asym + sw - 1) // sw) if pl + asym else 0
        left = max(1, (pl + sw - 1) // sw) if pl else 0
        if right + max(ow - right - left, 0) + left != ow:
            return generic()
        size_left = pl * cin
        size_right = right * cin if asym else size_left
        return max(kw * cin + size_left, kw * cin - cin + size_right)
    return generic()


def _dw_scratch(arch: str, in_c: int, out_c: int, kh: int, kw: int, pt: int, pl: int,
                ch_mult: int) -> int:
    """arm_depthwise_conv_wrapper_s8_get_buffer_size (v7) for the target's code path."""
    size = 0
    if arch == "mve" and in_c == 1 and out_c > 1:
        cols = kh * kw
        return 4 * ((cols + 15) // 16) * 16 + out_c * kh * kw
    if ch_mult == 1:
        if arch != "mve" and kh == 3 and kw == 3 and pt <= 1 and pl <= 1:
            return 0
        if arch == "mve":
            size = 4 * 124 * kw * kh
        elif arch == "dsp":
            size = in_c * kw * kh * 2
    return size


_HANDLERS = {
    OpKind.CONV: _Emitter.conv,
    OpKind.GROUPED_CONV: _Emitter.conv,
    OpKind.DEPTHWISE: _Emitter.depthwise,
    OpKind.FULLY_CONNECTED: _Emitter.fc,
    OpKind.ADD: _Emitter.add_mul,
    OpKind.MUL: _Emitter.add_mul,
    OpKind.CHANNEL_AFFINE: _Emitter.affine,
    OpKind.RELU: _Emitter.table,
    OpKind.CLIP: _Emitter.table,
    OpKind.SIGMOID: _Emitter.table,
    OpKind.HARD_SIGMOID: _Emitter.table,
    OpKind.HARD_SWISH: _Emitter.table,
    OpKind.MAXPOOL: _Emitter.pool,
    OpKind.AVGPOOL: _Emitter.pool,
    OpKind.GLOBAL_AVGPOOL: _Emitter.mean,
    OpKind.REDUCE_MEAN: _Emitter.mean,
    OpKind.CONCAT: _Emitter.concat,
    OpKind.TRANSPOSE: _Emitter.transpose,
    OpKind.PAD: _Emitter.pad,
    OpKind.RESIZE: _Emitter.resize,
    OpKind.SOFTMAX: _Emitter.softmax,
    OpKind.OPAQUE: _Emitter.softmax,
}
