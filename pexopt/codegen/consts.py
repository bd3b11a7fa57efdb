"""Emitter mixin: an op's constants (weights, biases, requantisation, tables, parameter
structs) as const C arrays in pex_weights.c, each emitted once per op."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pexopt.codegen.views import ints, pad4
from pexopt.errors import PexError
from pexopt.graph.ir import Op
from pexopt.graph.params import OpParams
from pexopt.ops import OpKind
from pexopt.simulate import kernels as K


@dataclass
class OpConsts:
    """C names of one op's constants (emitted once per op)."""

    struct: str = ""
    ctype: str = ""  # the C type of `struct`
    weights: str = ""
    bias: str = ""
    mult: str = ""
    shift: str = ""
    luts: dict[int, str] = field(default_factory=dict)
    a: str = ""
    b: str = ""
    maps: dict[int, str] = field(default_factory=dict)
    dw_blocks: list[tuple[int, int]] | None = None



class ConstsMixin:
    """Defines const data; needs `names`, `consts`, `defs`, `decls`, `_slices`, `where`."""

    def define(self, ctype: str, name: str, count: int | None, init: str) -> None:
        dim = f"[{count}]" if count is not None else ""
        self.decls.append(f"extern const {ctype} {name}{dim};")
        self.defs.append(f"const {ctype} {name}{dim} = {{\n{init}\n}};\n")

    def array(self, ctype: str, name: str, values: np.ndarray) -> str:
        v = np.asarray(values).reshape(-1)
        self.define(ctype, name, max(1, v.size), ints(v))
        return name


    def oc(self, op: Op) -> OpConsts:
        c = self.consts.get(op.id)
        if c is None:
            c = self.consts[op.id] = OpConsts()
        return c

    def base_name(self, op: Op, what: str) -> str:
        return self.names.ident(op.name, prefix=f"pex_{what}_", key=op.id)

    def quant_arrays(self, op: Op, p: OpParams, c: OpConsts) -> None:
        c.bias = self.array("int32_t", self.base_name(op, "b"), p.bias.astype(np.int64))
        c.mult = self.array("int32_t", self.base_name(op, "m"), p.multiplier.astype(np.int64))
        c.shift = self.array("int32_t", self.base_name(op, "s"), p.shift.astype(np.int64))

    def conv_consts(self, op: Op, p: OpParams) -> OpConsts:
        c = self.oc(op)
        if c.struct:
            return c
        where = self.where(op)
        a = op.attrs
        n, h, w, cin = pad4(p.in_shapes[0], where)
        _, oh, ow, cout = pad4(p.out_shape, where)
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

    def weight_struct(self, op: Op, c: OpConsts, ctype: str, vals: list[int]) -> None:
        """The const parameter struct of a conv/FC: integers, then its weight arrays."""
        c.struct, c.ctype = self.base_name(op, "p"), ctype
        init = "    " + ", ".join(str(int(v)) for v in vals) + \
            f",\n    {c.weights}, {c.bias}, {c.mult}, {c.shift}"
        self.define(ctype, c.struct, None, init)

    def fc_consts(self, op: Op, p: OpParams) -> OpConsts:
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

    def pool_consts(self, op: Op, p: OpParams) -> OpConsts:
        c = self.oc(op)
        if c.struct:
            return c
        where = self.where(op)
        a = op.attrs
        n, h, w, _ = pad4(p.in_shapes[0], where)
        _, oh, ow, _ = pad4(p.out_shape, where)
        same = bool(p.extra.get("same_q", True))
        m, s = p.extra.get("out", (0, 0))
        vals = [n, h, w, oh, ow, a.kernel[0], a.kernel[1], a.stride[0], a.stride[1],
                a.pads[0], a.pads[1], a.pads[2], a.pads[3],
                int(bool(p.extra.get("count_include_pad", False))), int(same),
                p.in_zp, p.out_zp, m, s, int(p.act_min), int(p.act_max)]
        c.struct = self.base_name(op, "p")
        c.ctype = "pex_pool_t"
        self.define(c.ctype, c.struct, None, "    " + ", ".join(str(int(v)) for v in vals))
        return c

    def ew_consts(self, op: Op, p: OpParams) -> OpConsts:
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
        return self.lut(op, K.rescale(np.arange(-128, 128).astype(np.int8), qi, qo), k)
