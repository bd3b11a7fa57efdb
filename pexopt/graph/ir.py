"""The IR: a DAG of fused operators over activation tensors, shapes in deployment layout (NHWC)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pexopt.ops import OpKind

R = TypeVar("R")

DTYPE_BYTES: dict[str, int] = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "float32": 4,
                               "float16": 2, "int64": 8, "bool": 1}


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine quantisation: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class Tensor:
    """An activation tensor; `nbytes` is its size in the deployment dtype.

    An external tensor (the graph input with --input-external) lives outside the arena.
    """

    id: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    qparams: QParams | None = None
    external: bool = False

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Activation:
    """A fused activation clamp (Relu: 0..inf, Relu6: 0..6, Clip: lo..hi) in real units."""

    name: str
    lo: float | None
    hi: float | None


@dataclass(frozen=True)
class ConvAttrs:
    """Convolution geometry; pads are (top, left, bottom, right)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]
    group: int


@dataclass(frozen=True)
class PoolAttrs:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]


@dataclass(frozen=True)
class Op:
    """One IR operator: an ONNX node plus whatever was fused into it.

    `name` is the ONNX node name of the main node; `onnx_nodes` every ONNX node it stands for.
    `inputs`/`outputs` are tensor ids (activations only; constants are in `consts`).
    """

    id: int
    name: str
    kind: OpKind
    onnx_type: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    macs: int = 0
    attrs: ConvAttrs | PoolAttrs | None = None
    activation: Activation | None = None
    consts: tuple[str, ...] = ()
    onnx_nodes: tuple[str, ...] = ()
    plain_inputs: tuple[bool, ...] = ()  # per input: read as stored, so channel-sliceable

    def sliceable(self) -> bool:
        """Every input is read as stored (no reshape moving the channel axis in between)."""
        return all(self.plain_inputs) if self.plain_inputs else True


@dataclass(frozen=True)
class Graph:
    """A topologically ordered operator DAG (file order), with graph inputs and outputs."""

    name: str
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    dtype: str
    source_sha256: str = ""
    source_path: str = ""
    notes: tuple[str, ...] = field(default=())
    # what the frontend kept of the model (kernel constants, its own index): the back ends
    # read it, never the file (pexopt.graph.params.graph_params); None for synthetic graphs
    source: Any = field(default=None, compare=False, repr=False)

    def __hash__(self) -> int:
        """Hashed once: graphs key per-segment caches (band schedules, costs), and hashing
        every op and tensor on each lookup made planning quadratic in operators."""
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.name, self.tensors, self.ops, self.inputs, self.outputs, self.dtype,
                      self.source_sha256, self.source_path, self.notes))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:
        """Pickled without the cached hash (string hashes differ between processes)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_hash", "_memo")}

    def producer(self) -> dict[int, int]:
        """Tensor id -> id of the op that writes it (graph inputs have none)."""
        return {t: op.id for op in self.ops for t in op.outputs}

    def consumers(self) -> dict[int, list[int]]:
        """Tensor id -> ids of the ops that read it, in op order."""
        out: dict[int, list[int]] = {t.id: [] for t in self.tensors}
        for op in self.ops:
            for t in dict.fromkeys(op.inputs):
                out[t].append(op.id)
        return out

    def preds(self) -> list[set[int]]:
        """Op id -> ids of the ops it reads from."""
        prod = self.producer()
        return [{prod[t] for t in op.inputs if t in prod} for op in self.ops]

    def succs(self) -> list[set[int]]:
        out: list[set[int]] = [set() for _ in self.ops]
        for k, ps in enumerate(self.preds()):
            for p in ps:
                out[p].add(k)
        return out

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


def ancestors(succs: list[set[int]]) -> list[set[int]]:
    """Transitive predecessors of every node of a DAG given as successor sets in topo order."""
    n = len(succs)
    preds: list[set[int]] = [set() for _ in range(n)]
    for k, ss in enumerate(succs):
        for s in ss:
            preds[s].add(k)
    anc: list[set[int]] = [set() for _ in range(n)]
    for k in range(n):
        for p in preds[k]:
            anc[k] |= anc[p]
            anc[k].add(p)
    return anc


def descendants(succs: list[set[int]]) -> list[set[int]]:
    """Transitive successors of every node of a DAG in topo order."""
    n = len(succs)
    desc: list[set[int]] = [set() for _ in range(n)]
    for k in reversed(range(n)):
        for s in succs[k]:
            desc[k] |= desc[s]
            desc[k].add(s)
    return desc


def live_bytes(graph: Graph, order: Iterable[int]) -> list[int]:
    """Sum of live tensor bytes at each step of `order` (no in-place, no fragmentation)."""
    order = list(order)
    pos = {op: i for i, op in enumerate(order)}
    n = len(order)
    prod = graph.producer()
    cons = graph.consumers()
    outs = set(graph.outputs)
    live = [0] * n
    for t in graph.tensors:
        if t.external:
            continue
        start = pos[prod[t.id]] if t.id in prod else 0
        ends = [pos[c] for c in cons[t.id]]
        end = n - 1 if t.id in outs or not ends else max(ends)
        if t.id not in prod and not ends and t.id not in outs:
            continue
        for s in range(start, end + 1):
            live[s] += t.nbytes
    return live


def ancestor_masks(succs: list[set[int]]) -> list[int]:
    """Transitive predecessors of every node as bit masks (bit p set: p is an ancestor).

    Bit masks instead of `ancestors`' sets: on a 5,000-operator chain the sets hold 12.5 M
    entries; the masks are 5,000 integers of 5,000 bits and one OR per edge."""
    n = len(succs)
    preds: list[list[int]] = [[] for _ in range(n)]
    for k, ss in enumerate(succs):
        for s in ss:
            preds[s].append(k)
    anc = [0] * n
    for k in range(n):
        m = 0
        for p in preds[k]:
            m |= anc[p] | (1 << p)
        anc[k] = m
    return anc


def descendant_masks(succs: list[set[int]]) -> list[int]:
    """Transitive successors of every node as bit masks (see `ancestor_masks`)."""
    n = len(succs)
    desc = [0] * n
    for k in reversed(range(n)):
        m = 0
        for s in succs[k]:
            m |= desc[s] | (1 << s)
        desc[k] = m
    return desc


def mask_bits(m: int) -> list[int]:
    """The set bits of a mask, lowest first (linear in its length, not in its bits)."""
    s = bin(m)[:1:-1]
    res, i = [], s.find("1")
    while i >= 0:
        res.append(i)
        i = s.find("1", i + 1)
    return res


def per_graph(fn: Callable[..., R]) -> Callable[..., R]:
    """Cache fn(graph, *args) inside the graph (it lives and dies with it).

    For per-segment facts (band schedules, streaming deltas) asked for by the bound, the
    model, the greedy planner and the cost model: an lru_cache of fixed size thrashed on
    thousands of operators, and each lookup hashed the whole graph."""
    name = fn.__qualname__

    @functools.wraps(fn)
    def wrapper(graph: Graph, *args: Any) -> R:
        memo = graph.__dict__.get("_memo")
        if memo is None:
            memo = {}
            object.__setattr__(graph, "_memo", memo)
        cache = memo.setdefault(name, {})
        if args not in cache:
            cache[args] = fn(graph, *args)
        return cache[args]

    return wrapper
