"""What one plan step makes its C kernel do, counted in units a cost profile prices.

Each step becomes a few `Work` items: a cost class (the kernel family) and counts of
`calls` (kernel invocations), `pixels` (iterations of the kernel's spatial loop), `outputs`
(output elements, each requantised or stored), `taps` (kernel-window positions visited, each
with its bounds checks and pointer arithmetic) and `macs` (multiply-accumulates actually
executed: taps in the padding are skipped by the portable kernels, so they are not counted).
The counts follow the loops of `codegen/runtime/pex_kernels.c` as the emitter calls them:
slices read and write with a pixel stride inside the kernels (no separate gather/scatter pass),
so a slice costs what its channel range costs plus one more call; the only channel copy is the
write-back of an in-place depthwise conv (class `copy`), and pex_invoke copies the model's input
and output with memcpy (class `memcpy`, counts in bytes).

Row bands (`pexopt.partial.bands`): a "band" step of a window op is one call of the op's own
kernel on the input rows the band reads, with top padding only where the band touches the top
and rows past the end acting as padding, so it does the whole op's work restricted to its output
rows (taps counted over valid rows only) plus one call; a band of a pointwise op is one call on a
view of its rows. A "halo" step is one memmove of the kept rows inside the arena, priced like
pex_invoke's memcpy (class `memcpy`: a call plus bytes). A hybrid step (rows and a channel
slice at once, `pexopt.partial.hybrid`) is the slice step's work over the band's output rows;
a hybrid requantize also copies the band into the output rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pexopt.graph.ir import ConvAttrs, Graph, Op, PoolAttrs, Tensor
from pexopt.graph.rows import row_bytes
from pexopt.ops import SPECS, Rows

FEATURES: tuple[str, ...] = ("calls", "pixels", "outputs", "taps", "macs")

# Cost class -> the counts its coefficients price (a profile has exactly these, as `unit_key`s).
# Counts a class does not list are collinear with listed ones for its kernel.
CLASS_FEATURES: dict[str, tuple[str, ...]] = {
    "conv1x1": ("calls", "pixels", "outputs", "macs"),
    "convkxk": ("calls", "pixels", "outputs", "taps", "macs"),
    "depthwise": ("calls", "pixels", "outputs", "macs"),
    "fully_connected": ("calls", "pixels", "outputs", "macs"),
    "accumulate": ("calls", "pixels", "outputs", "taps", "macs"),
    "requantize": ("calls", "outputs"),
    "elementwise": ("calls", "pixels", "outputs"),
    "pool": ("calls", "pixels", "outputs", "taps"),
    "mean": ("calls", "outputs", "taps"),
    "copy": ("calls", "pixels", "outputs"),
    "memcpy": ("calls", "outputs"),
    "other": ("calls", "outputs"),
}
COST_CLASSES: tuple[str, ...] = tuple(CLASS_FEATURES)


def unit_key(count: str) -> str:
    """The profile key of a count's coefficient: calls -> per_call, macs -> per_mac."""
    return f"per_{count[:-1]}"

MODES: tuple[str, ...] = ("whole", "slice", "accumulate", "requantize", "band", "halo")


@dataclass(frozen=True)
class Work:
    """Counts of one kernel family's work inside a step."""

    cls: str
    counts: dict[str, float]


def _nhwc(t: Tensor) -> tuple[int, int, int, int]:
    s = (1, 1, 1, 1) + tuple(t.shape)
    return s[-4], s[-3], s[-2], s[-1]


@lru_cache(maxsize=16384)
def _valid(o0: int, o1: int, n_in: int, k: int, stride: int, pad: int, dil: int) -> int:
    """Sum over output positions [o0, o1) of the kernel taps that fall inside the input."""
    total = 0
    for o in range(o0, o1):
        start = o * stride - pad
        total += sum(1 for j in range(k) if 0 <= start + j * dil < n_in)
    return total


def valid_taps(graph: Graph, op: Op, rows: tuple[int, int] | None = None) -> int:
    """Kernel-window positions inside the input, summed over every output pixel (of output
    rows [r0, r1) only, with `rows`: a band sees the same padding rows as the whole op)."""
    n, h, w, _ = _nhwc(graph.tensors[op.inputs[0]])
    _, oh, ow, _ = _nhwc(graph.tensors[op.outputs[0]])
    r0, r1 = rows if rows is not None else (0, oh)
    a = op.attrs
    if isinstance(a, ConvAttrs):
        kh, kw = a.kernel
        dh, dw = a.dilation
    elif isinstance(a, PoolAttrs):
        kh, kw = a.kernel
        dh = dw = 1
    else:
        return n * (r1 - r0) * ow
    return n * _valid(r0, r1, h, kh, a.stride[0], a.pads[0], dh) * \
        _valid(0, ow, w, kw, a.stride[1], a.pads[1], dw)


def op_class(op: Op) -> str:
    """The cost class of an operator's whole-step kernel (ops.py column, conv refined)."""
    cls = SPECS[op.kind].cost
    if cls == "conv":
        a = op.attrs
        one = isinstance(a, ConvAttrs) and a.kernel == (1, 1) and a.pads == (0, 0, 0, 0)
        return "conv1x1" if one else "convkxk"
    return cls


def _width(c: int, channel_slice: tuple[int, int] | None) -> int:
    return c if channel_slice is None else channel_slice[1] - channel_slice[0]


def step_work(graph: Graph, op_index: int, mode: str,
              channel_slice: tuple[int, int] | None = None, inplace: bool = False,
              rows: tuple[int, int] | None = None) -> list[Work]:
    """The work of one plan step (see the module doc); `inplace`: a depthwise conv run in place
    through its H x W temporary (the plan step has a `scratch` buffer); `rows`: the output rows
    [r0, r1) of a "band" step, or the rows [r0, r1) of the op's output a "halo" step keeps."""
    if mode not in MODES:
        raise ValueError(f"unknown step mode '{mode}'")
    if mode in ("slice", "accumulate") and channel_slice is None:
        raise ValueError(f"a '{mode}' step needs a channel slice")
    if mode in ("band", "halo") and (rows is None or
                                     (mode == "halo" and channel_slice is not None)):
        raise ValueError(f"a '{mode}' step needs its rows (and a halo no channel slice)")
    op = graph.ops[op_index]
    t_in = graph.tensors[op.inputs[0]] if op.inputs else None
    t_out = graph.tensors[op.outputs[0]]
    if mode == "halo":
        assert rows is not None
        moved = (rows[1] - rows[0]) * row_bytes(graph, op.outputs[0])
        return [Work("memcpy", {"calls": 1, "outputs": moved})]
    n, oh, ow, oc = _nhwc(t_out)
    band = rows if mode in ("band", "accumulate", "requantize") else None  # hybrid: rows too
    if band is not None and SPECS[op.kind].rows == Rows.NONE:
        raise ValueError(f"operator '{op.name}' ({op.kind.value}) cannot run in row bands")
    # a band is the whole op over fewer output rows: one call, the same per-pixel loops
    out_pix = n * (band[1] - band[0]) * ow if band is not None else n * oh * ow
    elements = out_pix * oc if band is not None else t_out.elements
    if mode == "requantize":
        if band is not None:  # a hybrid band: requantized in place, then copied to its rows
            return [Work("requantize", {"calls": 1, "outputs": elements}),
                    Work("memcpy", {"calls": 1, "outputs": elements * t_out.nbytes
                                    // max(1, t_out.elements)})]
        return [Work("requantize", {"calls": 1, "outputs": t_out.elements})]
    cls = op_class(op)
    if mode == "accumulate":
        assert t_in is not None
        ni = _width(0, channel_slice)
        if cls == "fully_connected":
            rows_fc = t_out.elements // max(1, oc)
            per_row = t_in.elements // max(1, rows_fc * _nhwc(t_in)[3])
            return [Work("accumulate", {"calls": 1, "pixels": rows_fc,
                                        "outputs": rows_fc * oc,
                                        "taps": rows_fc * oc * per_row,
                                        "macs": rows_fc * oc * per_row * ni})]
        taps = valid_taps(graph, op, band) * oc
        return [Work("accumulate", {"calls": 1, "pixels": out_pix, "outputs": out_pix * oc,
                                    "taps": taps, "macs": taps * ni})]
    width = _width(oc, channel_slice)
    if cls in ("conv1x1", "convkxk"):
        assert t_in is not None
        a = op.attrs
        groups = a.group if isinstance(a, ConvAttrs) else 1
        cig = _nhwc(t_in)[3] // max(1, groups)
        taps = valid_taps(graph, op, band) * width
        return [Work(cls, {"calls": 1, "pixels": out_pix, "outputs": out_pix * width,
                           "taps": taps, "macs": taps * cig})]
    if cls == "depthwise":
        taps = valid_taps(graph, op, band)
        if inplace and band is None:  # one call per channel, then the temporary copied back
            return [Work("depthwise", {"calls": width, "pixels": out_pix * width,
                                       "outputs": out_pix * width, "macs": taps * width}),
                    Work("copy", {"calls": 0, "pixels": width, "outputs": out_pix * width})]
        return [Work("depthwise", {"calls": 1, "pixels": out_pix, "outputs": out_pix * width,
                                   "macs": taps * width})]
    if cls == "fully_connected":
        assert t_in is not None
        rows_fc = t_out.elements // max(1, oc)
        k = t_in.elements // max(1, rows_fc)
        return [Work(cls, {"calls": 1, "pixels": rows_fc, "outputs": rows_fc * width,
                           "macs": rows_fc * width * k})]
    if cls == "pool":
        return [Work(cls, {"calls": 1, "pixels": out_pix, "outputs": out_pix * width,
                           "taps": valid_taps(graph, op, band) * width})]
    if cls == "mean":
        assert t_in is not None
        return [Work(cls, {"calls": 1, "outputs": t_out.elements * width // max(1, oc),
                           "taps": t_in.elements * width // max(1, _nhwc(t_in)[3])})]
    outputs = elements * width // max(1, oc)
    if cls in ("elementwise", "copy"):
        calls = max(1, len(op.inputs)) if cls == "copy" and len(op.inputs) > 1 else 1
        pix = elements // max(1, oc)  # the kernels' innermost loop runs over channels
        return [Work(cls, {"calls": calls, "pixels": pix * calls, "outputs": outputs})]
    return [Work(cls, {"calls": 1, "outputs": outputs})]


def invoke_work(graph: Graph) -> list[Work]:
    """What pex_invoke does besides the steps: memcpy the input in and the output out."""
    counts = {"calls": 0.0, "outputs": 0.0}
    for t in list(graph.inputs) + list(graph.outputs):
        tt = graph.tensors[t]
        if t in graph.inputs and tt.external:
            continue
        counts["calls"] += 1
        counts["outputs"] += tt.nbytes
    return [Work("memcpy", counts)]
