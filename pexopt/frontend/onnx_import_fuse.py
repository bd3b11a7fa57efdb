"""Fusion of the importer: BatchNormalization into convs, a constant bias Add into Gemm/MatMul,
activations into the op before them, zero Pads into the convs that read them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pexopt.frontend.onnx_import_base import _Op
from pexopt.frontend.onnx_import_ops import OpCollection
from pexopt.graph.ir import Activation, ConvAttrs
from pexopt.ops import SPECS, OpKind


class Fusion(OpCollection):
    def _consumers(self) -> dict[str, list[_Op]]:
        cons: dict[str, list[_Op]] = {}
        for op in self.ops:
            if not op.dead:
                for t in op.inputs:
                    cons.setdefault(t, []).append(op)
        return cons

    def _graph_outputs(self) -> set[str]:
        return {self.r(o.name) for o in self.g.output}

    def _fuse_into_producer(self, want: callable, producer_ok: callable,
                            apply: callable) -> None:
        """Fuse each op accepted by `want` into the sole-consumer producer `producer_ok` accepts."""
        outs = self._graph_outputs()
        prod = {t: op for op in self.ops if not op.dead for t in op.outputs}
        cons = self._consumers()
        for op in self.ops:
            if op.dead or not want(op) or len(op.inputs) != 1:
                continue
            t = op.inputs[0]
            p = prod.get(t)
            if p is None or p.dead or len(p.outputs) != 1 or t in outs or not producer_ok(p, op):
                continue
            if len(cons.get(t, [])) != 1:
                continue
            apply(p, op)
            p.outputs = op.outputs
            p.fused += op.fused
            p.consts += op.consts
            op.dead = True
            for o in op.outputs:
                prod[o] = p

    def fuse(self) -> None:
        # BatchNormalization into the conv before it; a constant bias Add into Gemm/MatMul.
        self._fuse_into_producer(
            lambda op: op.node.op_type == "BatchNormalization",
            lambda p, op: p.kind in (OpKind.CONV, OpKind.DEPTHWISE, OpKind.GROUPED_CONV),
            lambda p, op: None)
        self._fuse_into_producer(
            lambda op: op.node.op_type == "Add" and op.kind == OpKind.CHANNEL_AFFINE,
            lambda p, op: p.kind == OpKind.FULLY_CONNECTED and p.activation is None
            and len(p.consts) < 2,
            lambda p, op: None)
        self._fuse_into_producer(
            lambda op: SPECS[op.kind].is_activation,
            lambda p, op: SPECS[p.kind].takes_activation and p.activation is None,
            lambda p, op: setattr(p, "activation", self._activation(op)))
        if self.fold_pad:
            self._fold_pads()

    def _activation(self, op: _Op) -> Activation:
        if op.kind == OpKind.RELU:
            return Activation("relu", 0.0, None)
        lo = hi = None
        node = op.node
        if len(node.input) > 1 and node.input[1]:
            v = self.const(node.input[1])
            lo = float(np.asarray(v).reshape(-1)[0]) if v is not None else None
        if len(node.input) > 2 and node.input[2]:
            v = self.const(node.input[2])
            hi = float(np.asarray(v).reshape(-1)[0]) if v is not None else None
        for a in node.attribute:
            if a.name == "min":
                lo = a.f
            elif a.name == "max":
                hi = a.f
        name = "relu6" if (lo, hi) == (0.0, 6.0) else ("relu" if lo == 0.0 and hi is None
                                                        else "clip")
        return Activation(name, lo, hi)

    def _fold_pads(self) -> None:
        """Fold a zero constant spatial Pad into every conv that reads it (convs pad with zp)."""
        cons = self._consumers()
        outs = self._graph_outputs()
        for op in self.ops:
            if op.dead or op.node.op_type != "Pad" or len(op.inputs) != 1:
                continue
            t = op.outputs[0]
            readers = cons.get(t, [])
            if not readers or t in outs or any(
                    c.kind not in (OpKind.CONV, OpKind.DEPTHWISE, OpKind.GROUPED_CONV)
                    for c in readers):
                continue
            pads = self._pad_amounts(op)
            if pads is None:
                continue
            for c in readers:
                a = c.attrs
                assert isinstance(a, ConvAttrs)
                c.attrs = replace(a, pads=tuple(x + y for x, y in zip(a.pads, pads)))
                c.raw_inputs = [op.raw_inputs[0] if i == t else r
                                for i, r in zip(c.inputs, c.raw_inputs)]
                c.inputs = [op.inputs[0] if i == t else i for i in c.inputs]
                c.fused = op.fused + c.fused
            op.dead = True

    def _pad_amounts(self, op: _Op) -> tuple[int, int, int, int] | None:
        node = op.node
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        if mode not in (b"constant", "constant"):
            return None
        pads = self.const(node.input[1]) if len(node.input) > 1 else None
        if pads is None:
            return None
        value = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if value is not None and float(np.asarray(value, dtype=np.float64).reshape(-1)[0]) != 0.0:
            zp = self.qparams.get(op.inputs[0])
            raw = np.asarray(value).reshape(-1)[0]
            if not (zp is not None and value.dtype.kind in "iu" and int(raw) == zp.zero_point):
                return None
        p = [int(x) for x in np.asarray(pads).reshape(-1)]
        if len(p) != 8:
            return None
        if op.outputs[0] in self.channels_last:  # begins (N, H, W, C) then ends (N, H, W, C)
            p = [p[0], p[3], p[1], p[2], p[4], p[7], p[5], p[6]]
        if any(p[i] for i in (0, 1, 4, 5)) or any(x < 0 for x in p):
            return None  # only non-negative spatial pads
        # begins (N, C, H, W) then ends (N, C, H, W); ours: top, left, bottom, right
        return (p[2], p[3], p[6], p[7])
