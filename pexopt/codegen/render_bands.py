"""Emitter mixin: row-band steps (issue #7) as C.

A band step computes output rows [r0, r1) of one op with the same kernel (CMSIS-NN or portable)
as the whole op, on a smaller geometry: the input starts at the first row the band reads
(`graph.rows.input_rows`), in_h is the number of rows it reads, out_h = r1 - r0, and the top
padding is kept only where the band touches the top. Rows past the input's end then fall
outside in_h, where every kernel pads, so no kernel needs to know about bands. NHWC rows are
contiguous, so a band of a full tensor or of a band buffer is an ordinary dense operand.

A band buffer holds rows [base, base + capacity) of its tensor at slots 0..; `base` moves only
at halo steps (a memmove of the kept rows to the top), so the emitter follows it statically,
exactly as `pexopt.simulate.bands` does at run time.

The per-op renderers are reused unchanged: the band geometry is a copy of the op and its
params with band shapes and pads, the operands come from `band_io`, and the kernel parameter
struct is a local copy of the op's const struct with the band fields patched.
"""

from __future__ import annotations

import dataclasses

from pexopt.codegen.views import View, contig, pad4
from pexopt.errors import PexError
from pexopt.graph.ir import ConvAttrs, Op, PoolAttrs, Tensor
from pexopt.graph.params import OpParams
from pexopt.graph.rows import input_rows, row_bytes
from pexopt.ops import SPECS, OpKind, Rows
from pexopt.plan.format import Step

BAND_STRUCT = "pex_band"


class BandsMixin:
    """Band and halo steps; needs `bufs`, `tensors`, `graph`, `ptr`, `emit`, `where` and the
    per-kind `HANDLERS` (passed in, to keep the import graph one way)."""

    band_bases: dict[str, int]
    band_io: dict[str, object] | None
    band_struct: str | None
    hybrid_io: dict | None
    cmsis: bool

    def _band_capacity(self, name: str, t: Tensor) -> int:
        # the emitter is int8 only: a row's bytes are its elements
        return self.bufs[name].size // row_bytes(self.graph, t.id)

    def halo(self, step: Step) -> None:
        """Move the kept rows to the top of each band buffer the step writes."""
        r0, r1 = step.rows or (0, 0)
        for name in step.writes:
            b = self.bufs[name]
            t = self.tensors[b.tensor]
            rb = row_bytes(self.graph, t.id)
            base = self.band_bases.get(name, 0)
            if r0 < base or r1 - base > self._band_capacity(name, t):
                raise PexError(f"codegen: step {step.index}: halo rows [{r0}, {r1}) are not "
                               f"in its band buffer (rows from {base})")
            if r0 != base and r1 > r0:
                n = (r1 - r0) * rb
                self.emit(f"memmove({self.ptr(name, 0, n)}, {self.ptr(name, (r0 - base) * rb, n)}, "
                          f"{n});")
            else:
                self.emit("/* the kept rows are already at the top */")
            self.band_bases[name] = r0

    def _band_operand(self, step: Step, name: str | None, t: Tensor, lo: int, hi: int,
                      write: bool) -> tuple[str, View]:
        """Pointer to row `lo` of tensor t (its band buffer or the full tensor) and the dense
        view of rows [lo, hi)."""
        where = f"codegen: step {step.index}"
        dims = pad4(t.shape, where)
        bdims = (dims[0], hi - lo) + dims[2:]
        rb = row_bytes(self.graph, t.id)
        if name is not None and self.bufs[name].kind == "band":
            base = self.band_bases.get(name, 0)
            if lo < base or hi - base > self._band_capacity(name, t):
                what = "writes" if write else "reads"
                raise PexError(f"{where} {what} rows [{lo}, {hi}) of '{t.name}', which its "
                               f"band buffer does not hold (rows from {base})")
            return self.ptr(name, (lo - base) * rb, (hi - lo) * rb), View(0, bdims, contig(bdims))
        return self.ptr(t.name if name is None else name, lo * rb, (hi - lo) * rb), \
            View(0, bdims, contig(bdims))

    def band(self, step: Step, op: Op, p: OpParams, handlers: dict) -> None:
        """Output rows step.rows of op, through the op's own renderer on the band geometry."""
        where = self.where(op)
        mode = SPECS[op.kind].rows
        if mode == Rows.NONE or step.rows is None or len(op.outputs) != 1:
            raise PexError(f"{where}: step {step.index} runs in row bands, which this operator "
                           "cannot")
        if any(ix is not None for ix in p.in_index) or p.out_index is not None:
            raise PexError(f"{where}: a layout copy cannot run in row bands")
        if not step.writes:
            raise PexError(f"codegen: step {step.index} writes no buffer")
        r0, r1 = step.rows
        g = self.graph
        by_tensor = {self.bufs[n].tensor: n for n in step.reads if n in self.bufs}
        # a hybrid step reads tiles and writes its slice through `hybrid_io`: no whole-width
        # operand of those (it would not fit the tile)
        hybrid = step.slice is not None
        ins, in_shapes, lows = [], [], []
        for tid in op.inputs:
            t = g.tensors[tid]
            lo, hi = input_rows(g, op, tid, r0, r1)
            name = by_tensor.get(t.name)
            if name is None and not t.external:
                raise PexError(f"codegen: step {step.index} does not read '{t.name}'")
            tile = hybrid and name is not None and self.bufs[name].kind == "tile"
            ins.append(None if tile else self._band_operand(step, name, t, lo, hi, False))
            in_shapes.append((t.shape[0], hi - lo) + tuple(t.shape[2:]))
            lows.append((lo, hi))
        t_out = g.tensors[op.outputs[0]]
        out = None if hybrid else self._band_operand(step, step.writes[0], t_out, r0, r1, True)
        bop, bp = op, dataclasses.replace(
            p, in_shapes=tuple(in_shapes),
            out_shape=(t_out.shape[0], r1 - r0) + tuple(t_out.shape[2:]))
        patch: list[str] = []
        if mode == Rows.WINDOW:
            a = op.attrs
            assert isinstance(a, (ConvAttrs, PoolAttrs))
            (lo, hi), h_in = lows[0], g.tensors[op.inputs[0]].shape[1]
            top = max(0, a.pads[0] - r0 * a.stride[0])
            # bottom padding past the rows read: only avg pooling counting padding sees it
            bottom = h_in + a.pads[2] - hi
            bop = dataclasses.replace(op, attrs=dataclasses.replace(
                a, pads=(top, a.pads[1], bottom, a.pads[3])))
            # the whole op's const data first, so it never holds band geometry
            c = self.pool_consts(op, p) if op.kind in (OpKind.MAXPOOL, OpKind.AVGPOOL) \
                else self.conv_consts(op, p)
            fields = [("in_h", hi - lo), ("out_h", r1 - r0), ("pad_t", top)]
            if c.ctype == "pex_pool_t":
                fields.append(("pad_b", bottom))
            patch = [f"{c.ctype} {BAND_STRUCT} = {c.struct};"]
            patch += [f"{BAND_STRUCT}.{f} = {v};" for f, v in fields]
            patch.append(f"(void){BAND_STRUCT};  /* unused when CMSIS-NN runs the band */")
        run = dataclasses.replace(step, mode="whole")
        cmsis = self.cmsis
        if step.slice is not None:  # hybrid: the op's channel-slice renderer on the band
            self.hybrid_io = self.hybrid_operands(step, op)
            run = dataclasses.replace(step, mode="slice" if step.mode == "band" else step.mode)
            self.cmsis = False  # portable kernels: the plan gives hybrid steps no scratch
        self.emit("{")
        for ln in patch:
            self.emit("    " + ln)
        mark = len(self.body)
        self.band_io = {"in": ins, "out": out}
        self.band_struct = BAND_STRUCT if patch else None
        try:
            handlers[op.kind](self, run, bop, bp)
        finally:
            self.band_io, self.band_struct, self.hybrid_io = None, None, None
            self.cmsis = cmsis
        self.body[mark:] = ["    " + ln if ln and not ln.startswith("#") else ln
                            for ln in self.body[mark:]]
        self.emit("}")
