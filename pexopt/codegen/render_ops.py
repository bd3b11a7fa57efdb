"""Emitter mixin: one render method per operator kind (a step -> C lines), and the table
`HANDLERS` from operator kind to its method. CMSIS-NN calls are `render_cmsis`'s."""

from __future__ import annotations

import numpy as np

from pexopt.codegen.consts import OpConsts
from pexopt.codegen.views import View, contig, hexf, pad4
from pexopt.errors import PexError
from pexopt.graph.ir import Op
from pexopt.graph.params import OpParams
from pexopt.ops import OpKind
from pexopt.plan.format import Step, is_kscratch
from pexopt.simulate import kernels as K


class OpsMixin:
    """Per-kind renderers; they call `both` with the CMSIS-NN lines (if any) and the portable
    call of the step."""

    def conv(self, step: Step, op: Op, p: OpParams) -> None:
        where = self.where(op)
        c = self.conv_consts(op, p)
        pn = self.band_struct or c.struct
        n, h, w, cin = pad4(p.in_shapes[0], where)
        _, oh, ow, cout = pad4(p.out_shape, where)
        if step.mode == "accumulate":
            if op.kind != OpKind.CONV or int(p.extra.get("group", 1)) != 1:
                raise PexError(f"{where}: only dense convolutions accumulate")
            c0, c1 = step.slice
            t = self.graph.tensors[op.inputs[0]]
            x, xv, _ = self.slice_operand(op, step.reads[0], t, c0, c1)
            pix = xv.pixel_stride(where)
            acc = self.acc_ptr(step.writes[0], 4 * n * oh * ow * cout)
            self.both(step, None, [f"pex_conv_acc_s8(&{pn}, {x}, {pix}, {c0}, {c1}, {acc}, "
                                   f"{int(c0 == 0)});"], "")
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

    def requantize(self, step: Step, op: Op, p: OpParams, c: OpConsts, pixels: int,
                   channels: int) -> None:
        acc = self.bufs[step.reads[0]]
        out = self.bufs[step.writes[0]]
        if out.offset != acc.offset:
            raise PexError(f"{self.where(op)}: the requantised output must start at its "
                           "accumulator's offset")
        self.inside(out.name, 0, pixels * channels, out.size)  # int8, over the accumulator
        a = self.acc_ptr(acc.name, 4 * pixels * channels)
        self.both(step, None, [f"pex_requantize_s8({a}, {pixels}, {channels}, {c.mult}, "
                               f"{c.shift}, {p.out_zp}, {int(p.act_min)}, {int(p.act_max)});"],
                  "")

    def depthwise(self, step: Step, op: Op, p: OpParams) -> None:
        where = self.where(op)
        c = self.conv_consts(op, p)
        pn = self.band_struct or c.struct
        _, _, _, cin = pad4(p.in_shapes[0], where)
        _, oh, ow, cout = pad4(p.out_shape, where)
        kh, kw = op.attrs.kernel
        temps = [n for n in step.scratch if not is_kscratch(n)]  # not CMSIS-NN's ctx.buf
        if step.mode == "whole" and temps:
            t_in = self.graph.tensors[op.inputs[0]]
            t_out = self.graph.tensors[op.outputs[0]]
            if p.extra.get("ch_mult", 1) != 1 or t_in.shape != t_out.shape \
                    or self.bufs[t_in.name].offset != self.bufs[t_out.name].offset \
                    or c.dw_blocks is not None:
                raise PexError(f"{where}: in-place depthwise needs ch_mult 1 and the output "
                               "over its input")
            scratch = self.bufs[temps[0]]
            if scratch.size < oh * ow * pad4(t_out.shape, where)[0]:
                raise PexError(f"{where}: scratch buffer too small")
            y = self.ptr(t_out.name, 0, t_out.nbytes)
            self.both(step, None, [f"pex_dw_conv_inplace_s8(&{pn}, {y}, "
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
        pn = self.band_struct or c.struct
        rows, k = p.in_shapes[0]
        cout = p.out_shape[1]
        in_last = int(p.extra.get("in_last", k))
        if step.mode == "accumulate":
            c0, c1 = step.slice
            t = self.graph.tensors[op.inputs[0]]
            buf = step.reads[0]
            if t.elements % in_last or k % in_last:
                raise PexError(f"{where}: input does not split into pixels of {in_last}")
            pix, off = (c1 - c0, 0) if self.bufs[buf].kind == "slice" else (in_last, c0)
            reads = max(0, (rows * (k // in_last) - 1) * pix + c1 - c0)  # pex_fc_acc_s8's
            x = self.ptr(buf, off, reads)
            acc = self.acc_ptr(step.writes[0], 4 * rows * cout)
            self.both(step, None, [f"pex_fc_acc_s8(&{pn}, {x}, {pix}, {c0}, {c1}, {acc}, "
                                   f"{int(c0 == 0)});"], "")
            return
        if step.mode == "requantize":
            self.requantize(step, op, p, c, rows, cout)
            return
        x, xv = self.whole_in(op, p, 0)
        if xv.strides != contig(xv.dims):
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
        dense = contig(yv.dims)
        flat = yv.strides == dense and all(v.strides == dense and v.dims == yv.dims
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
                vals = [hexf(v) for v in arr.reshape(-1).tolist()]
                lines = [", ".join(vals[i:i + 6]) for i in range(0, len(vals), 6)]
                self.define("double", nm, len(vals), "    " + ",\n    ".join(lines))
        views = []
        for arr in (a, b):
            dims = pad4(arr.shape, where)
            v = View(0, dims, contig(dims))
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
            f"{c.b} + {bo}, {bv.c()}, {hexf(qi.scale)}, {qi.zero_point}, {hexf(qo.scale)}, "
            f"{qo.zero_point}, {int(p.act_min)}, {int(p.act_max)});"], "")

    def pool(self, step: Step, op: Op, p: OpParams) -> None:
        where = self.where(op)
        c = self.pool_consts(op, p)
        x, xv, y, yv = self.unary_io(step, op, p)
        ch = yv.dims[3]
        in_pix, out_pix = xv.pixel_stride(where), yv.pixel_stride(where)
        fn = "pex_maxpool_s8" if op.kind == OpKind.MAXPOOL else "pex_avgpool_s8"
        pn = self.band_struct or c.struct
        portable = [f"{fn}(&{pn}, {x}, {in_pix}, {y}, {out_pix}, {ch});"]
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
        if step.mode == "slice" and any(pads[3]):
            raise PexError(f"{where}: pads the channel axis, whole tensors only")
        x, xv, y, yv = self.unary_io(step, op, p)
        before = ", ".join(str(b) for b, _ in pads)
        lut = self.rescale_lut(op, p, 0)
        self.both(step, None, [
            f"pex_pad_s8({x}, {xv.c()}, {y}, {yv.c()}, (const int32_t[4]){{{before}}}, "
            f"{mode}, {int(p.extra['value'])}, {lut});"], "")

    def resize(self, step: Step, op: Op, p: OpParams) -> None:
        c = self.oc(op)
        maps = list(p.extra["maps"])
        x, xv, y, yv = self.unary_io(step, op, p)
        if step.mode == "slice":
            maps[-1] = None  # a channel slice maps channels one to one
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
            f"pex_softmax_s8({x}, {y}, {outer}, {n}, {inner}, {hexf(qi.scale)}, "
            f"{qi.zero_point}, {hexf(qo.scale)}, {qo.zero_point}, {int(p.act_min)}, "
            f"{int(p.act_max)}, {log});"], "")


HANDLERS = {
    OpKind.CONV: OpsMixin.conv,
    OpKind.GROUPED_CONV: OpsMixin.conv,
    OpKind.DEPTHWISE: OpsMixin.depthwise,
    OpKind.FULLY_CONNECTED: OpsMixin.fc,
    OpKind.ADD: OpsMixin.add_mul,
    OpKind.MUL: OpsMixin.add_mul,
    OpKind.CHANNEL_AFFINE: OpsMixin.affine,
    OpKind.RELU: OpsMixin.table,
    OpKind.CLIP: OpsMixin.table,
    OpKind.SIGMOID: OpsMixin.table,
    OpKind.HARD_SIGMOID: OpsMixin.table,
    OpKind.HARD_SWISH: OpsMixin.table,
    OpKind.MAXPOOL: OpsMixin.pool,
    OpKind.AVGPOOL: OpsMixin.pool,
    OpKind.GLOBAL_AVGPOOL: OpsMixin.mean,
    OpKind.REDUCE_MEAN: OpsMixin.mean,
    OpKind.CONCAT: OpsMixin.concat,
    OpKind.TRANSPOSE: OpsMixin.transpose,
    OpKind.PAD: OpsMixin.pad,
    OpKind.RESIZE: OpsMixin.resize,
    OpKind.SOFTMAX: OpsMixin.softmax,
    OpKind.OPAQUE: OpsMixin.softmax,
}
