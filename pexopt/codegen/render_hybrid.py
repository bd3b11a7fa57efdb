"""Emitter mixin: hybrid steps (a row band and a channel slice at once, issue #7 part 4) as C.

A hybrid "band" or "accumulate" step goes through `BandsMixin.band` (the band geometry and the
patched kernel struct) and then through the op's own renderer in channel-slice mode; this mixin
gives that renderer its sliced operands (`hybrid_io`, read by `slice_operand`): channels
[c0, c1) of the rows the step reads or writes, in the band buffer (every channel: pixel stride
C), in a tile (one band x one slice, dense, rows from the tile's first row) or in a full tensor.
A "requantize" step with rows turns the band accumulator into int8 in place
(`pex_requantize_s8` on the band's pixels) and copies those rows into the output tensor.
Hybrid steps run the portable kernels (the plan gives them no CMSIS-NN scratch).
"""

from __future__ import annotations

from pexopt.codegen.views import View, contig, pad4
from pexopt.errors import PexError
from pexopt.graph.ir import Op, Tensor
from pexopt.graph.params import OpParams
from pexopt.graph.rows import input_rows
from pexopt.ops import SPECS, Split
from pexopt.plan.format import Step


class HybridMixin:
    """Needs `bufs`, `graph`, `ptr`, `both`, `conv_consts`, `acc_ptr`, `band_bases`."""

    hybrid_io: dict[str, tuple[str, View, bool]] | None
    tile_rows: dict[str, int]

    def _hybrid_operand(self, step: Step, name: str | None, t: Tensor, lo: int, hi: int,
                        c0: int, c1: int) -> tuple[str, View, bool]:
        """Pointer to row `lo`, channel c0 of tensor t in its buffer, and the view of rows
        [lo, hi) x channels [c0, c1)."""
        where = f"codegen: step {step.index}"
        full = pad4(t.shape, where)
        c = full[3]
        dims = (full[0], hi - lo, full[2], c1 - c0)
        kind = self.bufs[name].kind if name is not None else "tensor"
        if kind == "tile":
            first = self.tile_rows.get(name, lo)
            v = View(0, dims, contig(dims))
            return self.ptr(name, (lo - first) * full[2] * (c1 - c0), v.span()), v, True
        row = full[2] * c
        v = View(0, dims, contig((full[0], hi - lo, full[2], c)))
        if kind == "band":
            base = self.band_bases.get(name, 0)
            if lo < base or (hi - base) * row > self.bufs[name].size:
                raise PexError(f"{where} reads rows [{lo}, {hi}) of '{t.name}', which its band "
                               f"buffer does not hold (rows from {base})")
            return self.ptr(name, (lo - base) * row + c0, v.span()), v, c1 - c0 == c
        return self.ptr(t.name if name is None else name, lo * row + c0, v.span()), v, \
            c1 - c0 == c

    def hybrid_operands(self, step: Step, op: Op) -> dict[str, tuple[str, View, bool]]:
        """Tensor name -> sliced band operand, for every input and the output of the step."""
        r0, r1 = step.rows
        c0, c1 = step.slice
        by_tensor = {self.bufs[n].tensor: n for n in step.reads if n in self.bufs}
        res = {}
        # an output slice of a dense conv reads every input channel (`whole_in`, band rows):
        # its inputs have no slice operand
        same = step.mode == "accumulate" or SPECS[op.kind].split == Split.SAME_SLICE
        for tid in op.inputs if same else ():
            t = self.graph.tensors[tid]
            lo, hi = input_rows(self.graph, op, tid, r0, r1)
            res[t.name] = self._hybrid_operand(step, by_tensor.get(t.name), t, lo, hi, c0, c1)
        if step.mode == "band":
            out = self.graph.tensors[op.outputs[0]]
            name = step.writes[0]
            if self.bufs[name].kind == "tile":
                self.tile_rows[name] = r0  # a tile is written from its slot 0
            res[out.name] = self._hybrid_operand(step, name, out, r0, r1, c0, c1)
        return res

    def hybrid_requantize(self, step: Step, op: Op, p: OpParams) -> None:
        """The band accumulator -> int8 in place, then into rows step.rows of the output."""
        r0, r1 = step.rows
        c = self.conv_consts(op, p)
        t = self.graph.tensors[op.outputs[0]]
        _, _, w, cout = pad4(t.shape, self.where(op))
        acc = self.bufs[step.reads[0]]
        pixels = (r1 - r0) * w
        n = pixels * cout
        self.both(step, None, [
            f"pex_requantize_s8({self.acc_ptr(acc.name, 4 * n)}, {pixels}, {cout}, {c.mult}, "
            f"{c.shift}, {p.out_zp}, {int(p.act_min)}, {int(p.act_max)});",
            f"memcpy({self.ptr(step.writes[0], r0 * w * cout, n)}, {self.ptr(acc.name, 0, n)}, "
            f"{n});"], "")
