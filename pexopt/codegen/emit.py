"""Emit a plan as C: one static arena and `pex_invoke`, straight-line code, one call per step.

Output folder (only these files, listed in its `.pexopt-manifest`, are replaced, all or none;
nothing else in the folder is touched):
- ``pex_model.h``   public API: ``pex_invoke``, sizes, quantisation and shape macros.
- ``pex_model.c``   the arena and ``pex_invoke`` (CMSIS-NN calls where CMSIS-NN computes exactly
  what the plan's step needs, pexopt's portable kernels elsewhere; ``-DPEX_PORTABLE_KERNELS``
  switches every step to the portable kernels).
- ``pex_weights.c`` / ``pex_weights.h``  const weights, biases, requantisation parameters,
  lookup tables and kernel parameter structs (computed from `pexopt.frontend.onnx_params`).
- ``pex_kernels.c`` / ``pex_kernels.h``  copied from ``codegen/runtime``.
- ``README.md``     how to build it into an STM32CubeIDE project.

The generated code does what `pexopt.simulate.arena.run_plan` does, byte for byte: every step
reads and writes the buffers of the plan at their offsets, and a CMSIS-NN call's kernel scratch
(`ctx.buf`) is the step's `@kscratch` buffer of the plan, inside the arena.

This module drives the emitter (plumbing, steps, operands); `consts` writes const data,
`render_ops` one renderer per operator kind, `render_cmsis` the CMSIS-NN calls, `files` the
file texts (`pexopt.outputs` writes them), `views` strided views and C literals.
"""

from __future__ import annotations

from pathlib import Path

from pexopt.cmsis_scratch import TARGETS
from pexopt.codegen.consts import ConstsMixin, OpConsts
from pexopt.codegen.files import FilesMixin
from pexopt.codegen.names import NameTable, comment
from pexopt.codegen.render_bands import BandsMixin
from pexopt.codegen.render_cmsis import CmsisMixin
from pexopt.codegen.render_hybrid import HybridMixin
from pexopt.codegen.render_ops import HANDLERS, OpsMixin
from pexopt.codegen.views import View, contig, index_view, pad4
from pexopt.errors import PexError
from pexopt.graph.ir import Graph, Op, Tensor
from pexopt.graph.params import OpParams, graph_params
from pexopt.ops import OPAQUE_RUNNABLE, OpKind
from pexopt.outputs import Outputs
from pexopt.plan.format import Buffer, Plan, Step
from pexopt.plan.validator import check
from pexopt.simulate.reference import stored_int8

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "codegen" / "runtime"
RUNTIME_FILES = ("pex_kernels.h", "pex_kernels.c")
BACKENDS = ("cmsis", "portable")
GENERATED = ("pex_model.h", "pex_model.c", "pex_weights.h", "pex_weights.c", *RUNTIME_FILES,
             "README.md")  # the only files codegen writes into its folder (and its manifest)

SUPPORTED: frozenset[OpKind] = frozenset(HANDLERS)  # the kinds a renderer exists for


def emit_c(plan: Plan, graph: Graph, model_path: str | Path, out_dir: str | Path,
           target: str = "cortex-m4", backend_default: str = "cmsis",
           opt: str = "codegen -o") -> list[Path]:
    """Write the C sources of `plan` into `out_dir`; returns the files.

    Everything is rendered in memory first (`render_c`), so anything the emitter cannot compile
    raises PexError (one line, naming the node) with nothing written. Only pexopt's own files
    in `out_dir` are replaced (`pexopt.outputs`: a manifest lists them), all or none.
    """
    outs = Outputs(inputs=[model_path])
    outs.folder(out_dir, opt, GENERATED)
    outs.check()
    files = render_c(plan, graph, model_path, target, backend_default)
    paths = outs.put_folder(out_dir, files)
    outs.commit()
    return paths


def render_c(plan: Plan, graph: Graph, model_path: str | Path, target: str = "cortex-m4",
             backend_default: str = "cmsis") -> dict[str, str]:
    """The generated files (name -> text) of `plan`, in memory; the plan is validated against
    the graph first. Raises PexError for anything the emitter cannot compile."""
    if target not in TARGETS:
        raise PexError(f"codegen: unknown target '{target}' (one of {', '.join(TARGETS)})")
    if backend_default not in BACKENDS:
        raise PexError(f"codegen: unknown backend '{backend_default}' (cmsis or portable)")
    check_supported(graph)
    check(plan, graph)  # never emit a plan that is not valid for this model
    if backend_default == "cmsis":
        check_target(plan, target)
    params = graph_params(graph)
    em = _Emitter(plan, graph, params, TARGETS[target], backend_default == "cmsis",
                  Path(model_path).name, target)
    files = em.run()
    for name in RUNTIME_FILES:
        src = RUNTIME_DIR / name
        if not src.is_file():
            raise PexError(f"codegen: runtime file {src} is missing")
        files[name] = src.read_text()
    files["README.md"] = em.readme()
    return files


def check_target(plan: Plan, target: str) -> None:
    """PexError when the plan's kernel scratch was sized for another CMSIS-NN code path: its
    buffers could be too small (or the arena too big) for `target`; resizing would be a new
    plan, so the user re-solves instead."""
    if plan.target is None or plan.target not in TARGETS:
        return  # no kernel scratch planned: steps needing it run the portable kernels
    if TARGETS[plan.target] != TARGETS[target]:
        raise PexError(f"codegen: the plan's kernel scratch is sized for {plan.target} "
                       f"({TARGETS[plan.target]} code), not {target} ({TARGETS[target]}); "
                       f"re-solve with --target {target}, or emit with --target {plan.target} "
                       "or --backend portable")


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
                                        and op.onnx_type not in OPAQUE_RUNNABLE):
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


RESERVED = {"pex_invoke", "pex_arena", "pex_ctx", "input", "output",
            "pex_view", "pex_conv_t", "pex_fc_t", "pex_pool_t", "pex_ew_t"}


class _Emitter(ConstsMixin, OpsMixin, CmsisMixin, BandsMixin, HybridMixin, FilesMixin):
    """State of one emit: the plan, the graph, the C being built and its counters."""

    def __init__(self, plan: Plan, graph: Graph, params: dict[int, OpParams], arch: str,
                 cmsis: bool, model_file: str, target: str) -> None:
        self.plan, self.graph, self.params = plan, graph, params
        self.arch, self.cmsis, self.target = arch, cmsis, target
        self.model_file = model_file
        self.names = NameTable(RESERVED)
        self.ops = {o.name: o for o in graph.ops}
        self.tensors = {t.name: t for t in graph.tensors}
        self.bufs: dict[str, Buffer] = {b.name: b for b in plan.buffers}
        self.consts: dict[int, OpConsts] = {}
        self.defs: list[str] = []  # pex_weights.c
        self.decls: list[str] = []  # pex_weights.h
        self.body: list[str] = []  # pex_invoke
        self.scratch = 0  # the largest kernel scratch (ctx.buf) a CMSIS-NN call gets
        self.scratch_steps = 0  # CMSIS-NN calls with kernel scratch in the arena
        self.cmsis_steps = 0
        self.portable_steps = 0
        self.kinds_cmsis: set[str] = set()
        self._slices = self._op_slices()
        self.band_bases: dict[str, int] = {}  # band buffer -> the row at its slot 0
        self.band_io: dict[str, object] | None = None  # operands of the band step being emitted
        self.band_struct: str | None = None
        self.hybrid_io: dict | None = None  # sliced band operands of the hybrid step emitted
        self.tile_rows: dict[str, int] = {}  # tile -> the row at its slot 0
        self.at_step: int | str = "-"  # the step being emitted (for error messages)

    # -- plumbing -------------------------------------------------------------------------
    def where(self, op: Op) -> str:
        return f"codegen: node '{comment(op.name)}' ({comment(op.onnx_type)})"

    def _op_slices(self) -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {}
        for s in self.plan.steps:
            if s.slice is not None and s.mode in ("slice", "band"):  # band: hybrid
                sl = (int(s.slice[0]), int(s.slice[1]))
                lst = out.setdefault(s.op, [])
                if sl not in lst:
                    lst.append(sl)
        return out

    def ptr(self, name: str, elem_off: int, nbytes: int) -> str:
        """C pointer to element `elem_off` (int8) of a buffer or of the external input, for
        an access of `nbytes` bytes from there; one that would leave it is refused."""
        t = self.tensors.get(name)
        if t is not None and t.external:
            self.inside(name, elem_off, nbytes, t.nbytes)
            return "input" if elem_off == 0 else f"(input + {elem_off})"
        b = self.bufs.get(name)
        if b is None:
            raise PexError(f"codegen: the plan has no buffer '{comment(name)}'")
        self.inside(name, elem_off, nbytes, b.size)
        return f"(pex_arena + {b.offset + elem_off})"

    def acc_ptr(self, name: str, nbytes: int) -> str:
        """C pointer to an accumulator, for an access of `nbytes` bytes."""
        b = self.bufs[name]
        self.inside(name, 0, nbytes, b.size)
        return f"(void *)(pex_arena + {b.offset})"

    def inside(self, name: str, off: int, nbytes: int, size: int) -> None:
        """Defence in depth (the plan was validated): never emit an access outside its buffer
        (and every buffer lies inside the arena, `check_arena`)."""
        if off < 0 or nbytes < 0 or off + nbytes > size:
            raise PexError(f"codegen: step {self.at_step}: an access to bytes [{off}, "
                           f"{off + nbytes}) of '{comment(name)}' ({size} bytes) would leave it; "
                           "nothing written")

    def check_ranges(self, step: Step, op: Op) -> None:
        """The step's channel slice and rows lie inside its op's tensors (the kernels index
        weights, biases and rows with them)."""
        t = self.graph.tensors[op.inputs[0] if step.mode == "accumulate" else op.outputs[0]]
        top = pad4(t.shape, self.where(op))[3]
        for what, r, hi in (("slice", step.slice, top),
                            ("rows", step.rows, pad4(self.graph.tensors[op.outputs[0]].shape,
                                                     self.where(op))[1])):
            if r is not None and not (len(r) == 2 and 0 <= r[0] <= r[1] <= hi):
                raise PexError(f"codegen: step {step.index}: {what} {r} is not a range inside "
                               f"[0, {hi}] of node '{comment(op.name)}'; nothing written")

    def check_arena(self) -> None:
        """Every buffer lies inside the arena the C declares."""
        for b in self.plan.buffers:
            if b.offset < 0 or b.size < 0 or b.offset + b.size > self.plan.arena_bytes:
                raise PexError(f"codegen: buffer '{comment(b.name)}' [{b.offset}, "
                               f"{b.offset + b.size}) is not inside the arena of "
                               f"{self.plan.arena_bytes} bytes; nothing written")

    def emit(self, line: str = "") -> None:
        self.body.append(("    " + line) if line else "")

    # -- top level ------------------------------------------------------------------------
    def run(self) -> dict[str, str]:
        g = self.graph
        tin = g.tensors[g.inputs[0]]
        tout = g.tensors[g.outputs[0]]
        self.check_arena()
        if not tin.external:
            if tin.name not in self.bufs:
                raise PexError(f"codegen: the plan has no buffer for the input "
                               f"'{comment(tin.name)}'")
            self.emit("/* the input into its arena buffer */")
            self.emit(f"memcpy({self.ptr(tin.name, 0, tin.nbytes)}, input, PEX_INPUT_SIZE);")
        for step in self.plan.steps:
            self.step(step)
        self.emit("/* the output out of the arena */")
        self.at_step = "-"
        self.emit(f"memcpy(output, {self.ptr(tout.name, 0, tout.nbytes)}, PEX_OUTPUT_SIZE);")
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
        self.at_step = step.index
        self.check_ranges(step, op)
        sl = f" [{step.slice[0]}:{step.slice[1]})" if step.slice is not None else ""
        if step.rows is not None:
            sl += f" rows [{step.rows[0]}:{step.rows[1]})"
        self.emit()
        self.emit(f"/* step {step.index}: {op.kind.value} {step.mode}{sl} "
                  f"node {comment(op.name)} ({comment(op.onnx_type)}) */")
        if step.mode == "halo":
            self.halo(step)
            return
        if step.mode == "band" or (step.mode == "accumulate" and step.rows is not None):
            self.band(step, op, p, HANDLERS)
            return
        if step.mode == "requantize" and step.rows is not None:
            self.hybrid_requantize(step, op, p)
            return
        handler = HANDLERS.get(op.kind)
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

    # -- operands -------------------------------------------------------------------------
    def whole_in(self, op: Op, p: OpParams, k: int) -> tuple[str, View]:
        if self.band_io is not None:
            return self.band_io["in"][k]
        t = self.graph.tensors[op.inputs[k]]
        v = index_view(p.in_index[k], p.in_shapes[k], self.where(op))
        return self.ptr(t.name, v.base, v.span()), View(0, v.dims, v.strides)

    def whole_out(self, op: Op, p: OpParams) -> tuple[str, View]:
        if self.band_io is not None:
            return self.band_io["out"]
        t = self.graph.tensors[op.outputs[0]]
        v = index_view(p.out_index, p.out_shape, self.where(op))
        return self.ptr(t.name, v.base, v.span()), View(0, v.dims, v.strides)

    def slice_operand(self, op: Op, buf: str | None, t: Tensor, c0: int, c1: int
                      ) -> tuple[str, View, bool]:
        """(pointer, view, contiguous) of channels [c0, c1) of tensor t: its slice buffer or
        the channel range of the full tensor (IR layout, as run_plan reads it)."""
        if self.hybrid_io is not None:  # a hybrid step: the slice of its band
            return self.hybrid_io[t.name]
        where = self.where(op)
        full = pad4(t.shape, where)
        dims = full[:3] + (c1 - c0,)
        if buf is not None and self.bufs[buf].kind == "slice":
            v = View(0, dims, contig(dims))
            return self.ptr(buf, 0, v.span()), v, True
        name = t.name if buf is None else buf
        v = View(0, dims, contig(full))
        return self.ptr(name, c0, v.span()), v, c1 - c0 == full[3]

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

    def unary_io(self, step: Step, op: Op, p: OpParams) -> tuple[str, View, str, View]:
        """(input, its view, output, its view) of a one-input step run whole or on a slice."""
        if step.mode == "whole":
            x, xv = self.whole_in(op, p, 0)
            y, yv = self.whole_out(op, p)
            return x, xv, y, yv
        if step.mode == "slice":
            (x, xv, _), = self.slice_inputs(step, op, p)
            y, yv, _ = self.slice_output(step, op)
            return x, xv, y, yv
        raise PexError(f"codegen: step {step.index}: unknown mode '{step.mode}'")

    def slice_output(self, step: Step, op: Op) -> tuple[str, View, bool]:
        c0, c1 = step.slice
        t = self.graph.tensors[op.outputs[0]]
        return self.slice_operand(op, step.writes[0], t, c0, c1)

