"""Lower bounds on the arena that hold for every operator order."""

from __future__ import annotations

from pexopt.graph.ir import Graph, ancestors, descendants
from pexopt.ops import SPECS


def inplace_candidates(graph: Graph) -> dict[int, list[int]]:
    """Op id -> input tensor ids its output may overwrite (if that input dies there).

    Only operators whose table entry allows it, writing one output no larger than the input;
    graph outputs are never overwritten and external tensors are not in the arena.
    """
    outs = set(graph.outputs)
    res: dict[int, list[int]] = {}
    for op in graph.ops:
        if not SPECS[op.kind].inplace or len(op.outputs) != 1:
            continue
        o = graph.tensors[op.outputs[0]]
        if o.external or o.nbytes == 0:
            continue
        cands = []
        for i in dict.fromkeys(op.inputs):
            t = graph.tensors[i]
            if t.external or i in outs or t.nbytes < o.nbytes or op.inputs.count(i) > 1:
                continue
            cands.append(i)
        if cands:
            res[op.id] = cands
    return res


def any_order_bound(graph: Graph, inplace: bool = True) -> tuple[int, int]:
    """(bound, op id) of the largest bytes that must be live while some op runs, in any order.

    Live at op k in every order: its inputs and outputs, and every tensor produced by an
    ancestor of k (or a graph input) that a descendant of k reads (or that is a graph output).
    With in-place allowed, an op may share one dying input with its output.
    """
    succs = graph.succs()
    anc = ancestors(succs)
    desc = descendants(succs)
    prod = graph.producer()
    cons = graph.consumers()
    outs = set(graph.outputs)
    size = [0 if t.external else t.nbytes for t in graph.tensors]
    cands = inplace_candidates(graph) if inplace else {}
    best, where = 0, -1
    for op in graph.ops:
        k = op.id
        live = set(op.inputs) | set(op.outputs)
        for t in range(len(size)):
            if t in live or size[t] == 0:
                continue
            made_before = t not in prod or prod[t] in anc[k]
            if not made_before:
                continue
            if t in outs or any(c in desc[k] for c in cons[t]):
                live.add(t)
        total = sum(size[t] for t in live)
        saving = 0
        for i in cands.get(k, []):
            if i in outs or any(c in desc[k] for c in cons[i]):
                continue
            saving = max(saving, min(size[i], size[op.outputs[0]]))
        total -= saving
        if total > best:
            best, where = total, k
    return best, where
