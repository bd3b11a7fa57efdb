"""Random and structured IR graphs for solver tests, built directly (no ONNX).

Every tensor is int8 with shape (1, 1, 1, nbytes), so nbytes == elements. Elementwise ops (ADD,
RELU) write an output of exactly their inputs' size, so they may run in place; CONCAT's output is
the sum of its inputs. Tensor ids follow creation order (graph input first, then op outputs) and
ops are listed in a topological (file) order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pexopt.graph.ir import Graph, Op, Tensor
from pexopt.ops import OpKind

SMALL_SIZES: tuple[int, ...] = tuple(range(4, 65, 4))  # brute-force friendly
KB_SIZES: tuple[int, ...] = tuple(k * 1024 for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48))

_ONNX_TYPE = {OpKind.CONV: "Conv", OpKind.ADD: "Add", OpKind.RELU: "Relu",
              OpKind.CONCAT: "Concat"}


class Builder:
    """Appends tensors and ops in creation order; `graph()` freezes them."""

    def __init__(self, name: str, input_bytes: int) -> None:
        self.name = name
        self.tensors: list[Tensor] = []
        self.ops: list[Op] = []
        self.input = self.tensor(input_bytes)

    def tensor(self, nbytes: int) -> int:
        tid = len(self.tensors)
        self.tensors.append(Tensor(tid, f"t{tid}", (1, 1, 1, nbytes), "int8", nbytes))
        return tid

    def size(self, t: int) -> int:
        return self.tensors[t].nbytes

    def op(self, kind: OpKind, inputs: Sequence[int], nbytes: int | None = None) -> int:
        """Add one op reading `inputs`; returns its output tensor id."""
        if kind in (OpKind.ADD, OpKind.RELU):
            sizes = {self.size(t) for t in inputs}
            assert len(sizes) == 1, "elementwise inputs must have one size"
            nbytes = sizes.pop()
        elif kind == OpKind.CONCAT:
            nbytes = sum(self.size(t) for t in inputs)
        assert nbytes is not None and nbytes > 0
        out = self.tensor(nbytes)
        k = len(self.ops)
        name = f"{kind.value}{k}"
        self.ops.append(Op(k, name, kind, _ONNX_TYPE[kind], tuple(inputs), (out,),
                           macs=nbytes, onnx_nodes=(name,)))
        return out

    def graph(self, outputs: Sequence[int] | None = None) -> Graph:
        """Freeze; outputs default to every tensor nobody reads (the graph input excluded)."""
        if outputs is None:
            read = {t for op in self.ops for t in op.inputs}
            outputs = [t for t in range(1, len(self.tensors)) if t not in read]
        assert outputs, "a graph needs an output"
        return Graph(name=self.name, tensors=tuple(self.tensors), ops=tuple(self.ops),
                     inputs=(self.input,), outputs=tuple(outputs), dtype="int8")


def _rng(rng: random.Random | int) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def random_dag(rng: random.Random | int, n_ops: int, branching: float = 0.35,
               inplace_frac: float = 0.3, concat_frac: float = 0.15,
               sizes: Sequence[int] = SMALL_SIZES, name: str = "random") -> Graph:
    """A random topologically ordered DAG of CONV / ADD / RELU / CONCAT with one graph input.

    branching: probability that an op reads an older tensor instead of the newest one (parallel
    branches); inplace_frac: probability of an elementwise op (ADD when two live tensors share a
    size, else RELU); concat_frac: probability of a 2-3 input CONCAT. CONVs keep their input's
    size 30% of the time so residual ADDs find partners. Unread tensors become graph outputs.
    """
    r = _rng(rng)
    b = Builder(name, r.choice(sizes))
    unread: list[int] = [b.input]  # tensors no op reads yet, oldest first

    def pick_primary() -> int:
        newest = len(b.tensors) - 1
        if r.random() >= branching or newest == 0:
            return newest
        pool = unread if unread and r.random() < 0.5 else list(range(len(b.tensors)))
        return r.choice(pool)

    for _ in range(n_ops):
        a = pick_primary()
        roll = r.random()
        if roll < inplace_frac:
            partners = [t for t in range(len(b.tensors)) if t != a and b.size(t) == b.size(a)]
            if partners and r.random() < 0.6:
                fresh = [t for t in partners if t in unread]
                ins = [a, r.choice(fresh or partners)]
                r.shuffle(ins)
                out = b.op(OpKind.ADD, ins)
            else:
                ins = [a]
                out = b.op(OpKind.RELU, ins)
        elif roll < inplace_frac + concat_frac and len(b.tensors) >= 2:
            others = [t for t in range(len(b.tensors)) if t != a]
            k = min(len(others), r.choice((1, 1, 2)))
            fresh = [t for t in others if t in unread]
            extra = r.sample(fresh, min(k, len(fresh)))
            extra += r.sample([t for t in others if t not in extra], k - len(extra))
            ins = [a, *extra]
            r.shuffle(ins)
            out = b.op(OpKind.CONCAT, ins)
        else:
            ins = [a]
            nbytes = b.size(a) if r.random() < 0.3 else r.choice(sizes)
            out = b.op(OpKind.CONV, ins, nbytes)
        for t in ins:
            if t in unread:
                unread.remove(t)
        unread.append(out)
    return b.graph()


def chain(sizes: Sequence[int], relu_after: Sequence[int] = (), name: str = "chain") -> Graph:
    """Input of sizes[0], then CONV i writing sizes[i + 1]; a RELU after each CONV in relu_after."""
    b = Builder(name, sizes[0])
    t = b.input
    for i, s in enumerate(sizes[1:]):
        t = b.op(OpKind.CONV, [t], s)
        if i in relu_after:
            t = b.op(OpKind.RELU, [t])
    return b.graph()


def inception(n_branches: int = 2, depth: int = 2, big: int = 48, small: int = 8,
              stem: int = 16, interleave: bool = True, name: str = "inception") -> Graph:
    """stem CONV -> n parallel branches (a big CONV, then depth-1 CONVs down to `small`) -> CONCAT.

    With interleave (the bad file order) the branches run layer by layer, so every branch's big
    first tensor is live at once; run branch after branch, only one big tensor is live at a time.
    """
    b = Builder(name, stem)
    s = b.op(OpKind.CONV, [b.input], stem)
    heads = [s] * n_branches
    layers = [[big] + [small] * (depth - 1) for _ in range(n_branches)]
    if interleave:
        for d in range(depth):
            for j in range(n_branches):
                heads[j] = b.op(OpKind.CONV, [heads[j]], layers[j][d])
    else:
        for j in range(n_branches):
            for d in range(depth):
                heads[j] = b.op(OpKind.CONV, [heads[j]], layers[j][d])
    b.op(OpKind.CONCAT, heads)
    return b.graph()


def unet(levels: int = 2, enc: int = 16, skip: int = 64, dec: int = 8,
         name: str = "unet") -> Graph:
    """U-Net-like: encoder CONVs halve the size; each level's skip path is a wide expanding CONV
    (`skip >> level` bytes) and a narrowing CONV (`dec` bytes) read by the decoder CONCAT. The file
    order expands right after the encoder level and narrows only in the decoder, so every wide
    skip tensor is live across the bottleneck; running each expand next to its narrow is better.
    """
    b = Builder(name, enc)
    t = b.input
    wide_skips = []
    for lv in range(levels):
        t = b.op(OpKind.CONV, [t], max(4, enc >> lv))
        wide_skips.append(b.op(OpKind.CONV, [t], max(4, skip >> lv)))
        t = b.op(OpKind.RELU, [t])
    t = b.op(OpKind.CONV, [t], dec)
    for w in reversed(wide_skips):
        t = b.op(OpKind.CONCAT, [t, b.op(OpKind.CONV, [w], dec)])
        t = b.op(OpKind.CONV, [t], dec)
    return b.graph()


def wide(n_branches: int, size: int = 16, name: str = "wide") -> Graph:
    """One input fanned out to n independent CONVs joined by one CONCAT: n! orders."""
    b = Builder(name, size)
    heads = [b.op(OpKind.CONV, [b.input], size) for _ in range(n_branches)]
    b.op(OpKind.CONCAT, heads)
    return b.graph()


def topo_orders(graph: Graph) -> list[list[int]]:
    """Every topological order of the ops."""
    n = len(graph.ops)
    preds = graph.preds()
    res: list[list[int]] = []

    def rec(order: list[int], done: set[int]) -> None:
        if len(order) == n:
            res.append(list(order))
            return
        for k in range(n):
            if k not in done and preds[k] <= done:
                order.append(k)
                done.add(k)
                rec(order, done)
                done.discard(k)
                order.pop()

    rec([], set())
    return res
