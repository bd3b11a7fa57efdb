"""CMSIS-NN kernel scratch (`cmsis_nn_context.buf`) sizes, per target, as the plan needs them.

The formulas are CMSIS-NN's `*_get_buffer_size` functions (v7.0.0 and the development head,
`Source/*/arm_*_get_buffer_sizes_s8.c`) for the code path the compiler picks on each target:
`c` (no DSP: M0/M3, host), `dsp` (`__ARM_FEATURE_DSP`: M4/M7/M33) and `mve` (Helium: M55/M85).
Where armclang and gcc differ, the larger value is used so a plan is safe with either compiler
(1x1 fast conv on DSP: armclang 4 * C_in, gcc 0; MVE depthwise with one input channel).

Solver, validator, simulator and emitter all read this module; it imports only the IR and the
operator table. Which formula an operator kind needs is data in `pexopt.ops.SPECS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pexopt.graph.ir import Graph, Op, per_graph
from pexopt.ops import SPECS

if TYPE_CHECKING:  # only a type: partial/ imports the solver's world, this module must not
    from pexopt.partial.candidates import Segment

# CMSIS-NN code path of each target (what arm_nn_math_types.h picks from the compiler flags).
TARGETS: dict[str, str] = {
    "cortex-m0": "c", "cortex-m0plus": "c", "cortex-m3": "c", "host": "c",
    "cortex-m4": "dsp", "cortex-m7": "dsp", "cortex-m33": "dsp", "cortex-m35p": "dsp",
    "cortex-m55": "mve", "cortex-m85": "mve",
}
CH_IN_BLOCK_MVE = 124  # arm_nnsupportfunctions.h
# Step modes that run pexopt's own kernels or a memmove (no CMSIS-NN call, no ctx.buf).
PORTABLE_MODES = frozenset({"accumulate", "requantize", "halo"})


def arch_of(target: str) -> str:
    """The CMSIS-NN code path (`c`, `dsp`, `mve`) of a target name; ValueError if unknown."""
    try:
        return TARGETS[target]
    except KeyError:
        raise ValueError(f"unknown target '{target}' (one of {', '.join(TARGETS)})") from None


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def conv_generic(arch: str, cin: int, kh: int, kw: int) -> int:
    """arm_convolve_s8_get_buffer_size: C/DSP 2 * roundup4(KH*KW*C_in) int16; MVE
    4 im2col rows of roundup16(KH*KW*C_in) int8."""
    cols = kh * kw * cin
    if arch == "mve":
        return 4 * _round_up(cols, 16)
    return 2 * _round_up(cols, 4) * 2


def conv_scratch(arch: str, one_by_one: bool, one_by_n: bool, sh: int, sw: int, cin: int,
                 kh: int, kw: int, pl: int, w: int, ow: int) -> int:
    """arm_convolve_wrapper_s8_get_buffer_size for the target's code path.

    one_by_one: arm_nn_is_convolve_1x1 (1x1, no padding, dilation 1, not grouped);
    one_by_n: arm_nn_is_convolve_1_x_n (input and filter height 1, (stride_w * C_in) % 4 == 0).
    """
    if one_by_one:
        # 1x1 fast (stride 1) on DSP: armclang 2 * C_in int16, gcc 0 -> the larger
        return 4 * cin if arch == "dsp" and sh == 1 and sw == 1 else 0
    if one_by_n and arch == "mve":  # arm_convolve_1_x_n_s8_get_buffer_size_mve
        total = (ow - 1) * sw + kw - w
        asym = total % 2
        right = max(1, (pl + asym + sw - 1) // sw) if pl + asym else 0
        left = max(1, (pl + sw - 1) // sw) if pl else 0
        if right + max(ow - right - left, 0) + left != ow:
            return conv_generic(arch, cin, kh, kw)
        size_left = pl * cin
        size_right = right * cin if asym else size_left
        return max(kw * cin + size_left, kw * cin - cin + size_right)
    return conv_generic(arch, cin, kh, kw)


def dw_scratch(arch: str, in_c: int, out_c: int, kh: int, kw: int, pt: int, pl: int,
               dilation: tuple[int, int] = (1, 1)) -> int:
    """arm_depthwise_conv_wrapper_s8_get_buffer_size for the target's code path.

    ch_mult 1, dilation 1: 3x3 with pads <= 1 needs 0 (C/DSP), else `_opt`: DSP C_in*KH*KW int16,
    MVE 4 * CH_IN_BLOCK_MVE * KH*KW. MVE with one input channel runs as a conv (gcc threshold:
    more than 1 output channel): its conv scratch plus a transposed filter of C_out*KH*KW.
    """
    if arch == "mve" and in_c == 1 and out_c > 1:
        return conv_generic(arch, 1, kh, kw) + out_c * kh * kw
    if in_c != out_c or dilation != (1, 1):
        return 0
    if arch == "mve":
        return 4 * CH_IN_BLOCK_MVE * kh * kw
    if arch == "dsp" and not (kh == 3 and kw == 3 and pt <= 1 and pl <= 1):
        return in_c * kh * kw * 2
    return 0


def fc_scratch(arch: str, out_c: int) -> int:
    """arm_fully_connected_s8_get_buffer_size: MVE 4 * C_out (kernel sums), else 0."""
    return 4 * out_c if arch == "mve" else 0


def avgpool_scratch(arch: str, ch: int) -> int:
    """arm_avgpool_s8_get_buffer_size: DSP 4 * C (int32 row sums), else 0."""
    return 4 * ch if arch == "dsp" else 0


def _nhwc(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    s = tuple(int(d) for d in shape)
    s = (1,) * max(0, 4 - len(s)) + s[-4:]
    return s[0], s[1], s[2], s[3]


def conv_input(graph: Graph, op: Op) -> tuple[int, int, int]:
    """(H, W, C_in) the conv kernel sees. The IR tensor may be a flat alias (a Reshape before
    the conv): then H and W are those the output size allows (ONNX output-size rule) that
    divide the element count, the largest C_in if several do (more scratch: safe)."""
    t = graph.tensors[op.inputs[0]]
    if len(t.shape) == 4:
        return t.shape[1], t.shape[2], t.shape[3]
    a = op.attrs
    _, oh, ow, _ = _nhwc(graph.tensors[op.outputs[0]].shape)

    def extents(o: int, k: int, s: int, d: int, pads: int) -> range:
        lo = (o - 1) * s + (k - 1) * d + 1 - pads
        return range(max(1, lo), max(1, lo) + s)

    fits = [(h, w, t.elements // (h * w))
            for h in extents(oh, a.kernel[0], a.stride[0], a.dilation[0], a.pads[0] + a.pads[2])
            for w in extents(ow, a.kernel[1], a.stride[1], a.dilation[1], a.pads[1] + a.pads[3])
            if t.elements % (h * w) == 0]
    return max(fits, key=lambda f: f[2], default=(1, 1, t.elements))


def _conv(graph: Graph, op: Op, arch: str, c0: int, c1: int, sliced: bool) -> int:
    a = op.attrs
    h, w, cin = conv_input(graph, op)
    _, _, ow, _ = _nhwc(graph.tensors[op.outputs[0]].shape)
    kh, kw = a.kernel
    sh, sw = a.stride
    dh, dw = a.dilation
    pt, pl = a.pads[0], a.pads[1]
    grouped = a.group != 1
    one_by_one = (pt, pl, kh, kw, dh, dw) == (0, 0, 1, 1, 1, 1) and not grouped
    one_by_n = (h == 1 and dw == 1 and kh == 1 and (sw * cin) % 4 == 0 and not grouped
                and not one_by_one)
    # an output slice computes a filter subset from the whole input: same buffer as whole
    return conv_scratch(arch, one_by_one, one_by_n, sh, sw, cin, kh, kw, pl, w, ow)


def _depthwise(graph: Graph, op: Op, arch: str, c0: int, c1: int, sliced: bool) -> int:
    a = op.attrs
    cin = conv_input(graph, op)[2]
    cout = _nhwc(graph.tensors[op.outputs[0]].shape)[3]
    in_c, out_c = (c1 - c0, c1 - c0) if sliced else (cin, cout)
    return dw_scratch(arch, in_c, out_c, a.kernel[0], a.kernel[1], a.pads[0], a.pads[1],
                      a.dilation)


def _fully_connected(graph: Graph, op: Op, arch: str, c0: int, c1: int, sliced: bool) -> int:
    return fc_scratch(arch, c1 - c0)


def _avgpool(graph: Graph, op: Op, arch: str, c0: int, c1: int, sliced: bool) -> int:
    return avgpool_scratch(arch, c1 - c0)


FORMULAS: dict[str, Callable[[Graph, Op, str, int, int, bool], int]] = {
    "conv": _conv,
    "depthwise": _depthwise,
    "fully_connected": _fully_connected,
    "avgpool": _avgpool,
}


def kernel_scratch_bytes(graph: Graph, op_index: int, target: str | None,
                         slice: tuple[int, int] | list[int] | None = None,
                         mode: str = "whole") -> int:
    """Bytes of ctx.buf the CMSIS-NN call of one step needs on `target` (0: none, or no CMSIS
    call: target None, accumulate/requantize steps, kinds without a formula).

    `slice` is the step's channel range [c0, c1) (output channels); a whole step uses all.
    An upper bound of what the emitter asks for: it may still run the portable kernel.
    """
    if target is None or mode in PORTABLE_MODES or mode == "halo" or graph.dtype != "int8" \
            or (mode == "band" and slice is not None):
        return 0  # float graphs never reach CMSIS-NN (the emitter is int8 only); a halo step
        # is a memmove, no kernel call
    op = graph.ops[op_index]
    formula = SPECS[op.kind].cmsis_scratch
    if not formula or (op.attrs is None and formula in ("conv", "depthwise")):
        return 0
    cout = _nhwc(graph.tensors[op.outputs[0]].shape)[3]
    c0, c1 = (int(slice[0]), int(slice[1])) if slice is not None else (0, cout)
    return FORMULAS[formula](graph, op, arch_of(target), c0, c1, slice is not None)


@per_graph
def segment_scratch_bytes(graph: Graph, seg: Segment, width: int, target: str | None) -> int:
    """The one kernel scratch of a split segment at slice width `width`: the largest need of
    any of its steps (slices of one segment interleave, so one region serves all of them)."""
    if target is None:
        return 0
    if getattr(seg, "dim", "channel") == "hybrid":  # portable kernels only
        return 0
    if getattr(seg, "dim", "channel") == "rows":  # bands call the whole-width kernels
        return max((kernel_scratch_bytes(graph, k, target) for k in seg.ops), default=0)
    last = len(seg.ops) - 1
    return max((kernel_scratch_bytes(graph, k, target, sl,
                                     "accumulate" if i == last and seg.accumulate else "slice")
                for sl in seg.slices(width) for i, k in enumerate(seg.ops)), default=0)
