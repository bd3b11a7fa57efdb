"""Execute a plan inside one byte array of exactly `arena_bytes`, every buffer at its offset.

The arena starts as pseudo-random bytes and every buffer's bytes are scribbled over when it
dies (where no live buffer owns them), so a plan that reads memory it does not own, or whose
buffers overlap while live, produces wrong outputs instead of lucky right ones. Kernel scratch
(`<op>@kscratch`, CMSIS-NN's ctx.buf) is scribbled before and after every step that lists it:
CMSIS-NN may write anything there, so a scratch overlapping a live buffer shows as a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pexopt.errors import PexError
from pexopt.fixedpoint import dequantize, quantize_real
from pexopt.graph.ir import DTYPE_BYTES, Graph, Op, Tensor
from pexopt.graph.params import OpParams
from pexopt.ops import SPECS, Split
from pexopt.plan.format import Buffer, Plan, Step, is_kscratch
from pexopt.simulate import bands, hybrid
from pexopt.simulate.kernels import KERNELS, conv_accumulate, requantize
from pexopt.simulate.reference import kernel_input, store_output, stored_int8


class SimulationError(PexError):
    """The plan cannot be executed (not a wrong result: that is a mismatch)."""


def element_dtype(t: Tensor) -> np.dtype:
    return np.dtype(np.int8) if stored_int8(t) else np.dtype(np.float32)


def executable(graph: Graph) -> bool:
    """Whether plans of this graph can run here: not for a float model planned with int8
    activations (its buffers are sized for values it does not compute)."""
    return all(element_dtype(t).itemsize <= DTYPE_BYTES[graph.dtype] for t in graph.tensors)


@dataclass
class _Ctx:
    plan: Plan
    graph: Graph
    params: dict[int, OpParams]
    mem: np.ndarray
    bufs: dict[str, Buffer]
    ops: dict[str, Op]
    tensors: dict[str, Tensor]
    rng: np.random.Generator
    external: dict[str, np.ndarray]


def _view(ctx: _Ctx, b: Buffer, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    need = count * dtype.itemsize
    if need > b.size:
        raise SimulationError(f"buffer '{b.name}' has {b.size} B, the step needs {need} B")
    if b.offset < 0 or b.offset + need > ctx.mem.size:
        raise SimulationError(f"buffer '{b.name}' lies outside the arena")
    raw = ctx.mem[b.offset:b.offset + need]
    return raw.view(dtype).reshape(shape)


def _tensor_view(ctx: _Ctx, name: str) -> np.ndarray:
    if name in ctx.external:
        return ctx.external[name]
    b = ctx.bufs[name]
    t = ctx.tensors[b.tensor]
    return _view(ctx, b, element_dtype(t), t.shape)


def _slice_view(ctx: _Ctx, name: str, width: int) -> np.ndarray:
    b = ctx.bufs[name]
    t = ctx.tensors[b.tensor]
    return _view(ctx, b, element_dtype(t), t.shape[:-1] + (width,))


def _acc_view(ctx: _Ctx, name: str, p: OpParams) -> np.ndarray:
    b = ctx.bufs[name]
    t = ctx.tensors[b.tensor]
    return _view(ctx, b, np.dtype(np.int32) if p.int8 else np.dtype(np.float32), t.shape)


def _to_kernel(t: Tensor, p: OpParams, k: int, x: np.ndarray) -> np.ndarray:
    """A channel slice of input k as the kernel wants it (dtype; NHWC slices only)."""
    if p.in_index and p.in_index[k] is not None:
        raise SimulationError(f"op '{p.name}': input '{t.name}' is not a plain NHWC view; "
                              "it cannot be sliced")
    x = np.array(x)  # a copy: the arena may change under an in-place write
    if p.int8:
        return x
    if x.dtype == np.int8:
        return dequantize(x, t.qparams.scale, t.qparams.zero_point).astype(np.float32)
    return x.astype(np.float32, copy=False)


def _from_kernel(t: Tensor, p: OpParams, y: np.ndarray) -> np.ndarray:
    if stored_int8(t) and y.dtype != np.int8:
        return quantize_real(y, t.qparams.scale, t.qparams.zero_point)
    if not stored_int8(t) and y.dtype == np.int8:
        return dequantize(y, p.out_qparams.scale, p.out_qparams.zero_point).astype(np.float32)
    return y.astype(element_dtype(t), copy=False)


def _whole(ctx: _Ctx, step: Step, op: Op, p: OpParams) -> None:
    ins = [ctx.graph.tensors[i] for i in op.inputs]
    xs = [np.array(kernel_input(t, p, k, _tensor_view(ctx, t.name)))
          for k, t in enumerate(ins)]
    out = ctx.graph.tensors[op.outputs[0]]
    temps = [n for n in step.scratch if not is_kscratch(n)]
    if temps:  # in-place depthwise: channel by channel through an H x W temporary
        dst = _tensor_view(ctx, out.name)
        for c in range(out.shape[-1]):
            sl = slice(c, c + 1)
            y = KERNELS[op.kind](op, p, [_to_kernel(ins[0], p, 0,
                                                    _tensor_view(ctx, ins[0].name)[..., sl])],
                                 sl, None)
            tmp = _view(ctx, ctx.bufs[temps[0]], element_dtype(out),
                        out.shape[:-1] + (1,))
            tmp[...] = _from_kernel(out, p, y).reshape(tmp.shape)
            dst[..., sl] = tmp
        return
    y = KERNELS[op.kind](op, p, xs, None, None)
    _tensor_view(ctx, out.name)[...] = store_output(out, p, y)


def _read_slice(ctx: _Ctx, name: str, c0: int, c1: int) -> np.ndarray:
    b = ctx.bufs[name]
    if b.kind == "slice":
        return _slice_view(ctx, name, c1 - c0)
    return _tensor_view(ctx, name)[..., c0:c1]


def _sliced(ctx: _Ctx, step: Step, op: Op, p: OpParams) -> None:
    c0, c1 = step.slice
    sl = slice(c0, c1)
    out = ctx.graph.tensors[op.outputs[0]]
    first_dense = SPECS[op.kind].split == Split.OUTPUT_SLICE
    if first_dense:  # a filter subset from the whole input
        xs = [np.array(kernel_input(ctx.graph.tensors[i], p, k,
                                    _tensor_view(ctx, ctx.graph.tensors[i].name)))
              for k, i in enumerate(op.inputs)]
    else:
        by_tensor = {ctx.bufs[r].tensor: r for r in step.reads}
        xs = [_to_kernel(ctx.graph.tensors[i], p, k,
                         _read_slice(ctx, by_tensor[ctx.graph.tensors[i].name], c0, c1))
              for k, i in enumerate(op.inputs)]
    y = KERNELS[op.kind](op, p, xs, sl, None)
    w = step.writes[0]
    dst = _slice_view(ctx, w, c1 - c0) if ctx.bufs[w].kind == "slice" else \
        _tensor_view(ctx, w)[..., sl]
    dst[...] = _from_kernel(out, p, y).reshape(dst.shape)


def _accumulate(ctx: _Ctx, step: Step, op: Op, p: OpParams) -> None:
    c0, c1 = step.slice
    t_in = ctx.graph.tensors[op.inputs[0]]
    x = _to_kernel(t_in, p, 0, _read_slice(ctx, step.reads[0], c0, c1))
    if p.extra.get("in_last") is None and x.ndim != 4 and op.kind.value == "conv":
        raise SimulationError(f"op '{op.name}': cannot accumulate a non-NHWC input")
    acc = _acc_view(ctx, step.writes[0], p)
    first = c0 == 0
    new = conv_accumulate(op, p, x, slice(c0, c1), None if first else np.array(acc))
    acc[...] = new.reshape(acc.shape).astype(acc.dtype)


def _requantize(ctx: _Ctx, step: Step, op: Op, p: OpParams) -> None:
    acc = np.array(_acc_view(ctx, step.reads[0], p))
    out = ctx.graph.tensors[op.outputs[0]]
    y = requantize(op, p, acc.astype(np.int64) if p.int8 else acc.astype(np.float64))
    _tensor_view(ctx, step.writes[0])[...] = _from_kernel(out, p, y).reshape(out.shape)


def _scribble(ctx: _Ctx, step: int, dying: list[Buffer], live_next: list[Buffer]) -> None:
    """Overwrite the bytes of buffers that died at `step`, except bytes a live buffer owns."""
    for b in dying:
        lo, hi = b.offset, b.offset + b.size
        keep = sorted((max(lo, x.offset), min(hi, x.offset + x.size)) for x in live_next
                      if x.offset < hi and lo < x.offset + x.size)
        at = lo
        for a, z in keep + [(hi, hi)]:
            if a > at:
                ctx.mem[at:a] = ctx.rng.integers(0, 256, a - at, dtype=np.uint8)
            at = max(at, z)


def _scribble_kscratch(ctx: _Ctx, step: Step) -> None:
    """Random bytes over the kernel scratch of a step (what a CMSIS-NN kernel may leave)."""
    for name in step.scratch:
        b = ctx.bufs.get(name)
        if is_kscratch(name) and b is not None:
            if b.offset < 0 or b.offset + b.size > ctx.mem.size:
                raise SimulationError(f"buffer '{b.name}' lies outside the arena")
            ctx.mem[b.offset:b.offset + b.size] = ctx.rng.integers(0, 256, b.size,
                                                                   dtype=np.uint8)


def _check_sizes(ctx: _Ctx) -> None:
    """Every tensor buffer holds its tensor in the dtype the kernels compute it in."""
    for b in ctx.plan.buffers:
        if b.kind != "tensor":
            continue
        t = ctx.tensors[b.tensor]
        need = t.elements * element_dtype(t).itemsize
        if b.size < need:
            raise SimulationError(
                f"tensor '{t.name}' is computed in {element_dtype(t).name} ({need} B) but the "
                f"plan sizes it {b.size} B; solve a float model with --dtype float32 or "
                "quantize it first")


def run_plan(plan: Plan, graph: Graph, params: dict[int, OpParams],
             inputs: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Execute every step in the arena; returns the graph outputs by IR tensor name."""
    rng = np.random.default_rng(seed)
    mem = rng.integers(0, 256, plan.arena_bytes, dtype=np.uint8)
    ctx = _Ctx(plan, graph, params, mem, {b.name: b for b in plan.buffers},
               {o.name: o for o in graph.ops}, {t.name: t for t in graph.tensors}, rng, {})
    _load_inputs(ctx, inputs)
    _check_sizes(ctx)
    born, dies, live_at = _lifetimes(plan, graph)
    protect = bands.streamed_over(plan)  # an output streamed over its input keeps its bytes
    band_base: dict[str, int] = {}  # band buffer -> row at its slot 0
    tiles: dict[str, tuple[int, int]] = {}  # tile -> (first row, rows) it holds
    for step in plan.steps:
        for b in born.get(step.index, []):  # fresh garbage: a handover overlap must show
            _scribble(ctx, step.index, [b], protect.get(b.name, []))
        op = ctx.ops.get(step.op)
        if op is None:
            raise SimulationError(f"step {step.index}: unknown op '{step.op}'")
        _scribble_kscratch(ctx, step)  # before: inputs overlapping it get corrupted
        _execute(ctx, tiles, band_base, step, op, params[op.id])
        _scribble_kscratch(ctx, step)  # after: an output overlapping it gets corrupted
        if step.index + 1 < len(plan.steps):
            _scribble(ctx, step.index, dies.get(step.index, []), live_at.get(step.index + 1, []))
    return {graph.tensors[t].name: np.array(_tensor_view(ctx, graph.tensors[t].name))
            for t in graph.outputs}


def _load_inputs(ctx: _Ctx, inputs: dict[str, np.ndarray]) -> None:
    """The graph inputs into their buffers (an external one stays in the caller's memory)."""
    for tid in ctx.graph.inputs:
        t = ctx.graph.tensors[tid]
        if t.name not in inputs:
            raise SimulationError(f"missing input '{t.name}'")
        x = np.asarray(inputs[t.name]).reshape(t.shape).astype(element_dtype(t))
        if t.external:  # read in place from the caller's memory, never written
            x.setflags(write=False)
            ctx.external[t.name] = x
        elif t.name in ctx.bufs:
            _tensor_view(ctx, t.name)[...] = x


def _lifetimes(plan: Plan, graph: Graph) -> tuple[dict[int, list[Buffer]],
                                                  dict[int, list[Buffer]],
                                                  dict[int, list[Buffer]]]:
    """(step -> buffers born there, step -> buffers dying there, step -> buffers live there
    where one died the step before)."""
    dies: dict[int, list[Buffer]] = {}
    born: dict[int, list[Buffer]] = {}
    inputs_in_arena = {graph.tensors[t].name for t in graph.inputs}
    for b in plan.buffers:
        dies.setdefault(b.last_step, []).append(b)
        if b.alias_of is None and b.name not in inputs_in_arena:
            born.setdefault(b.first_step, []).append(b)
    live_at: dict[int, list[Buffer]] = {}
    for b in plan.buffers:  # (one pass: a scan of every buffer per step was quadratic)
        for s in range(max(b.first_step, 1), min(b.last_step, len(plan.steps) - 1) + 1):
            if s - 1 in dies:
                live_at.setdefault(s, []).append(b)
    return born, dies, live_at


def _execute(ctx: _Ctx, tiles: dict[str, tuple[int, int]], band_base: dict[str, int],
             step: Step, op: Op, p: OpParams) -> None:
    """Run one step by its mode (a hybrid step has rows and a channel slice at once)."""
    both = step.rows is not None and step.mode in ("band", "accumulate", "requantize") \
        and (step.slice is not None or step.mode == "requantize")
    if both:
        if step.mode == "band":
            hybrid.hybrid_band(ctx, tiles, band_base, step, op, p)
        elif step.mode == "accumulate":
            hybrid.hybrid_accumulate(ctx, tiles, band_base, step, op, p)
        else:
            hybrid.hybrid_requantize(ctx, step, op, p)
    elif step.mode == "whole":
        _whole(ctx, step, op, p)
    elif step.mode == "slice":
        _sliced(ctx, step, op, p)
    elif step.mode == "accumulate":
        _accumulate(ctx, step, op, p)
    elif step.mode == "requantize":
        _requantize(ctx, step, op, p)
    elif step.mode == "band":
        bands.band_step(ctx, band_base, step, op, p)
    elif step.mode == "halo":
        bands.halo_step(ctx, band_base, step)
    else:
        raise SimulationError(f"step {step.index}: unknown mode '{step.mode}'")
