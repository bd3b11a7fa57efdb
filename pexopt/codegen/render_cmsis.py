"""Emitter mixin: CMSIS-NN (v7 API) calls, only where CMSIS-NN computes exactly what a step
needs; each returns None when it does not (the step then runs the portable kernel)."""

from __future__ import annotations

import numpy as np

from pexopt.cmsis_scratch import avgpool_scratch, conv_scratch, dw_scratch, fc_scratch
from pexopt.codegen.consts import OpConsts
from pexopt.codegen.views import View, pad4
from pexopt.errors import PexError
from pexopt.graph.ir import Op
from pexopt.graph.params import OpParams
from pexopt.ops import OpKind
from pexopt.plan.format import Step, is_kscratch


class CmsisMixin:
    """CMSIS-NN call lines of a step; needs `arch`, `where`, `bufs`, `scratch`."""

    def cmsis_check(self, step: Step, call: str) -> str:
        return f"if ({call} != ARM_CMSIS_NN_SUCCESS) return -{step.index + 1};"

    def with_scratch(self, step: Step, head: list[str], size: int, getter: str | None,
                     calls: list[str]) -> list[str] | None:
        """A CMSIS-NN call block: `head` (params, dims), the step's `pex_ctx` (its `@kscratch`
        buffer in the arena) with a run-time check of CMSIS-NN's own getter against it, then
        `calls`; None when the plan gives the step no kernel scratch of `size` bytes (a plan
        solved without a target): the step runs the portable kernel."""
        ctx = "{NULL, 0}"
        if size > 0:
            bufs = [self.bufs[n] for n in step.scratch
                    if is_kscratch(n) and n in self.bufs and self.bufs[n].size >= size]
            if not bufs:
                # a band may take another CMSIS-NN code path than its whole op (a 1-row
                # band): the portable kernel runs it; for whole ops the validator and the
                # emitter disagree
                if self.cmsis and self.plan.target is not None and self.band_io is None:
                    raise PexError(f"codegen: step {step.index} needs {size} B of CMSIS-NN "
                                   f"kernel scratch on {self.target}; the plan gives it less")
                return None
            b = bufs[0]
            ctx = f"{{(void *)(pex_arena + {b.offset}), {b.size}}}"
            self.scratch = max(self.scratch, b.size)
            self.scratch_steps += 1
        lines = [*head, f"const cmsis_nn_context pex_ctx = {ctx};"]
        if getter is not None:
            lines.append(f"if ({getter} > pex_ctx.size) return -{step.index + 1};")
        return lines + calls

    def cmsis_conv(self, step: Step, op: Op, p: OpParams, c: OpConsts, x: str, in_pix: int,
                   y: str, out_pix: int, oc0: int, oc1: int) -> list[str] | None:
        where = self.where(op)
        a = op.attrs
        n, h, w, cin = pad4(p.in_shapes[0], where)
        _, oh, ow, cout = pad4(p.out_shape, where)
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
        size = conv_scratch(self.arch, one_by_one, one_by_n, sh, sw, cin, kh, kw, pl, w, ow)
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
        return self.with_scratch(
            step, lines, size, "arm_convolve_wrapper_s8_get_buffer_size(&cp, &id, &fd, &od)",
            [self.cmsis_check(step, (
                f"arm_convolve_wrapper_s8(&pex_ctx, &cp, &qp, &id, {x}, &fd, "
                f"{c.weights} + {oc0 * filt}, &bd, {c.bias} + {oc0}, &od, {y})"))])

    def cmsis_dw(self, step: Step, op: Op, p: OpParams, c: OpConsts, x: str, y: str,
                 c0: int, c1: int, w: str, in_c: int) -> list[str] | None:
        where = self.where(op)
        a = op.attrs
        n, h, wd, _ = pad4(p.in_shapes[0], where)
        _, oh, ow, _ = pad4(p.out_shape, where)
        if n != 1 or a.dilation != (1, 1):
            return None
        kh, kw = a.kernel
        sh, sw = a.stride
        pt, pl = a.pads[0], a.pads[1]
        m = int(p.extra.get("ch_mult", 1))
        nout = c1 - c0
        size = dw_scratch(self.arch, in_c, nout, kh, kw, pt, pl)
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
        return self.with_scratch(
            step, lines, size,
            "arm_depthwise_conv_wrapper_s8_get_buffer_size(&dp, &id, &fd, &od)",
            [self.cmsis_check(step, (
                f"arm_depthwise_conv_wrapper_s8(&pex_ctx, &dp, &qp, &id, {x}, &fd, {w}, &bd, "
                f"{c.bias} + {c0}, &od, {y})"))])

    def cmsis_fc(self, step: Step, op: Op, p: OpParams, c: OpConsts, x: str, y: str,
                 rows: int, k: int, oc0: int, oc1: int) -> list[str] | None:
        mult = p.multiplier[oc0:oc1]
        shift = p.shift[oc0:oc1]
        if np.any(mult != mult[0]) or np.any(shift != shift[0]):
            return None  # per-channel: arm_fully_connected_s8 is per-tensor
        nout = oc1 - oc0
        size = fc_scratch(self.arch, nout)
        lines = [
            f"const cmsis_nn_fc_params fp = {{{-p.in_zp}, 0, {p.out_zp}, "
            f"{{{int(p.act_min)}, {int(p.act_max)}}}}};",
            f"const cmsis_nn_per_tensor_quant_params qp = {{{int(mult[0])}, {int(shift[0])}}};",
            f"const cmsis_nn_dims id = {{{rows}, 1, 1, {k}}};",
            f"const cmsis_nn_dims fd = {{{k}, 1, 1, {nout}}};",
            f"const cmsis_nn_dims bd = {{1, 1, 1, {nout}}};",
            f"const cmsis_nn_dims od = {{{rows}, 1, 1, {nout}}};",
        ]
        return self.with_scratch(step, lines, size,
                                 "arm_fully_connected_s8_get_buffer_size(&fd)", [
            "if (arm_fully_connected_s8_get_buffer_size(&fd) > 0) {  /* MVE: kernel sums */",
            "    " + self.cmsis_check(step, (
                f"arm_vector_sum_s8((int32_t *)pex_ctx.buf, {k}, {nout}, "
                f"{c.weights} + {oc0 * k}, {-p.in_zp}, 0, {c.bias} + {oc0})")),
            "}",
            self.cmsis_check(step, (
                f"arm_fully_connected_s8(&pex_ctx, &fp, &qp, &id, {x}, &fd, {c.weights} + "
                f"{oc0 * k}, &bd, {c.bias} + {oc0}, &od, {y})"))])

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
        fn = "arm_avgpool_s8" if avg else "arm_max_pool_s8"
        return self.with_scratch(
            step, lines, avgpool_scratch(self.arch, ch) if avg else 0,
            f"arm_avgpool_s8_get_buffer_size({ow}, {ch})" if avg else None,
            [self.cmsis_check(step, f"{fn}(&pex_ctx, &pp, &id, {x}, &fd, &od, {y})")])
