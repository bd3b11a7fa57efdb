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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pexopt.graph.ir import ConvAttrs, Graph, Op, PoolAttrs, Tensor
from pexopt.ops import SPECS

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

MODES: tuple[str, ...] = ("whole", "slice", "accumulate", "requantize")


@dataclass(frozen=True)
class Work:
    """Counts of one kernel family's work inside a step."""

    cls: str
    counts: dict[str, float]


def _nhwc(t: Tensor) -> tuple[int, int, int, int]:
    s = (1, 1, 1, 1) + tuple(t.shape)
    return s[-4], s[-3], s[-2], s[-1]


@lru_cache(maxsize=4096)
def _valid(n_out: int, n_in: int, k: int, stride: int, pad: int, dil: int) -> int:
    """Sum over output positions of the kernel taps that fall inside the input."""
    total = 0
    for o in range(n_out):
        start = o * stride - pad
        total += sum(1 for j in range(k) if 0 <= start + j * dil < n_in)
    return total


def valid_taps(graph: Graph, op: Op) -> int:
    """Kernel-window positions inside the input, summed over every output pixel."""
    n, h, w, _ = _nhwc(graph.tensors[op.inputs[0]])
    _, oh, ow, _ = _nhwc(graph.tensors[op.outputs[0]])
    a = op.attrs
    if isinstance(a, ConvAttrs):
        kh, kw = a.kernel
        dh, dw = a.dilation
    elif isinstance(a, PoolAttrs):
        kh, kw = a.kernel
        dh = dw = 1
    else:
        return n * oh * ow
    return n * _valid(oh, h, kh, a.stride[0], a.pads[0], dh) * \
        _valid(ow, w, kw, a.stride[1], a.pads[1], dw)


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
              channel_slice: tuple[int, int] | None = None, inplace: bool = False
              ) -> list[Work]:
    """The work of one plan step (see the module doc); `inplace`: a depthwise conv run in place
    through its H x W temporary (the plan step has a `scratch` buffer)."""
    if mode not in MODES:
        raise ValueError(f"unknown step mode '{mode}'")
    if mode in ("slice", "accumulate") and channel_slice is None:
        raise ValueError(f"a '{mode}' step needs a channel slice")
    op = graph.ops[op_index]
    t_in = graph.tensors[op.inputs[0]] if op.inputs else None
    t_out = graph.tensors[op.outputs[0]]
    n, oh, ow, oc = _nhwc(t_out)
    out_pix = n * oh * ow
    if mode == "requantize":
        return [Work("requantize", {"calls": 1, "outputs": t_out.elements})]
    cls = op_class(op)
    if mode == "accumulate":
        assert t_in is not None
        ni = _width(0, channel_slice)
        if cls == "fully_connected":
            rows = t_out.elements // max(1, oc)
            per_row = t_in.elements // max(1, rows * _nhwc(t_in)[3])
            return [Work("accumulate", {"calls": 1, "pixels": rows, "outputs": rows * oc,
                                        "taps": rows * oc * per_row,
                                        "macs": rows * oc * per_row * ni})]
        taps = valid_taps(graph, op) * oc
        return [Work("accumulate", {"calls": 1, "pixels": out_pix, "outputs": out_pix * oc,
                                    "taps": taps, "macs": taps * ni})]
    width = _width(oc, channel_slice)
    if cls in ("conv1x1", "convkxk"):
        assert t_in is not None
        a = op.attrs
        groups = a.group if isinstance(a, ConvAttrs) else 1
        cig = _nhwc(t_in)[3] // max(1, groups)
        taps = valid_taps(graph, op) * width
        return [Work(cls, {"calls": 1, "pixels": out_pix, "outputs": out_pix * width,
                           "taps": taps, "macs": taps * cig})]
    if cls == "depthwise":
        taps = valid_taps(graph, op)
        if inplace:  # one kernel call per channel, then the H x W temporary copied back
            return [Work("depthwise", {"calls": width, "pixels": out_pix * width,
                                       "outputs": out_pix * width, "macs": taps * width}),
                    Work("copy", {"calls": 0, "pixels": width, "outputs": out_pix * width})]
        return [Work("depthwise", {"calls": 1, "pixels": out_pix, "outputs": out_pix * width,
                                   "macs": taps * width})]
    if cls == "fully_connected":
        assert t_in is not None
        rows = t_out.elements // max(1, oc)
        k = t_in.elements // max(1, rows)
        return [Work(cls, {"calls": 1, "pixels": rows, "outputs": rows * width,
                           "macs": rows * width * k})]
    if cls == "pool":
        return [Work(cls, {"calls": 1, "pixels": out_pix, "outputs": out_pix * width,
                           "taps": valid_taps(graph, op) * width})]
    if cls == "mean":
        assert t_in is not None
        return [Work(cls, {"calls": 1, "outputs": t_out.elements * width // max(1, oc),
                           "taps": t_in.elements * width // max(1, _nhwc(t_in)[3])})]
    outputs = t_out.elements * width // max(1, oc)
    if cls in ("elementwise", "copy"):
        calls = max(1, len(op.inputs)) if cls == "copy" and len(op.inputs) > 1 else 1
        rows = t_out.elements // max(1, oc)  # the kernels' innermost loop runs over channels
        return [Work(cls, {"calls": calls, "pixels": rows * calls, "outputs": outputs})]
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
