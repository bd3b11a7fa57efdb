"""Lower bounds on the arena that hold for every operator order."""

from __future__ import annotations

import math

from pexopt.deadline import check as check_deadline
from pexopt.graph.ir import Graph, ancestor_masks, descendant_masks, mask_bits
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


def any_order_bound(graph: Graph, inplace: bool = True,
                    scratch: dict[int, int] | None = None) -> tuple[int, int]:
    """(bound, op id) of the largest bytes that must be live while some op runs, in any order.

    Live at op k in every order: its inputs and outputs, and every tensor produced by an
    ancestor of k (or a graph input) that a descendant of k reads (or that is a graph output).
    With in-place allowed, an op may share one dying input with its output. `scratch`: op id ->
    kernel scratch bytes while it runs whole (not counted for ops that may run as an in-place
    depthwise, which needs none).
    """
    reach = Reach(graph)
    outs = set(graph.outputs)
    size = reach.size
    cands = inplace_candidates(graph) if inplace else {}
    best, where = 0, -1
    for op in graph.ops:
        k = op.id
        live = set(op.inputs) | set(op.outputs) | set(reach.must[k])
        total = sum(size[t] for t in live)
        saving = 0
        for i in cands.get(k, []):
            if i in outs or reach.read_after(i, k):
                continue
            saving = max(saving, min(size[i], size[op.outputs[0]]))
        total -= saving
        if not SPECS[op.kind].inplace_temp:
            total += (scratch or {}).get(k, 0)
        if total > best:
            best, where = total, k
    return best, where


class Reach:
    """Which tensors must be live while an op (or a chain of ops) runs, in every order.

    A tensor t is live at op k in every order when it is made before k (a graph input, or
    produced by an ancestor of k) and read after k (a graph output, or read by a descendant of
    k): k lies in desc(producer) & (union of anc(consumer)). Computed once per tensor with bit
    masks, so the bounds cost the number of (op, tensor) pairs that hold, not ops x tensors
    (a 5,000-operator chain took minutes)."""

    def __init__(self, graph: Graph) -> None:
        succs = graph.succs()
        n = len(graph.ops)
        self.anc, self.desc = ancestor_masks(succs), descendant_masks(succs)
        prod, cons = graph.producer(), graph.consumers()
        everything = (1 << n) - 1
        outs = set(graph.outputs)
        self.graph = graph
        self.size = [0 if t.external else t.nbytes for t in graph.tensors]
        self.cons_mask = [sum(1 << c for c in cons[t.id]) for t in graph.tensors]
        self.later = [0] * len(graph.tensors)  # ops some reader of t comes after
        self.must: list[list[int]] = [[] for _ in range(n)]
        for t in graph.tensors:
            check_deadline()
            later = everything if t.id in outs else 0
            for c in cons[t.id]:
                later |= self.anc[c]
            self.later[t.id] = later
            made = self.desc[prod[t.id]] if t.id in prod else everything
            if self.size[t.id] > 0:
                for k in mask_bits(made & later):
                    self.must[k].append(t.id)

    def read_after(self, t: int, k: int) -> bool:
        """Some op reading t is a descendant of op k."""
        return bool(self.cons_mask[t] & self.desc[k])

    def must_live(self, first: int, last: int, skip: set[int]) -> int:
        """Bytes of tensors produced before `first` (in every order) and read after `last`;
        `first` is `last` or one of its ancestors (a segment's chain)."""
        if first != last and not (self.anc[last] >> first) & 1:
            raise ValueError(f"op {first} is not an ancestor of op {last}")
        # made before first and read after last implies live at first: only must[first]
        return sum(self.size[t] for t in self.must[first]
                   if t not in skip and (self.later[t] >> last) & 1)


def split_bound(graph: Graph, segments: list, inplace: bool = True,
                scratch: dict[int, int] | None = None,
                seg_scratch: dict[int, int] | None = None, stream: bool = True) -> int:
    """A lower bound valid for every order and every choice among `segments`.

    While op k runs it is either whole (the any-order bound of k, an in-place depthwise sharing
    its input with its output through one H x W temporary) or inside one split segment g, whose
    full inputs, output (or int32 accumulator) and smallest workspace are live, plus every
    tensor produced before g and read after it. Kernel scratch (`scratch`: op id -> bytes when
    whole; `seg_scratch`: segment id -> its smallest scratch over widths) adds to each option.
    A row (or hybrid) segment counts its least bytes over its band heights, streaming included
    when allowed (`bands.row_macro_bytes`).
    """
    from pexopt.partial.bands import row_macro_bytes
    from pexopt.partial.candidates import accumulator_bytes, workspace_bytes

    reach = Reach(graph)
    outs = set(graph.outputs)
    size = reach.size
    cands = inplace_candidates(graph) if inplace else {}
    by_op: dict[int, list] = {}
    for s in segments:
        for k in s.ops:
            by_op.setdefault(k, []).append(s)
    macro: dict[int, int] = {}
    for s in segments:
        check_deadline()
        own = set(s.inputs) | {s.output} | set(s.internal)
        out = accumulator_bytes(graph.tensors[s.output]) if s.accumulate else size[s.output]
        io_ws = (row_macro_bytes(graph, s, stream) if s.dim in ("rows", "hybrid") else
                 sum(size[t] for t in s.inputs) + out
                 + min(workspace_bytes(graph, s, w) for w in s.widths))
        macro[s.id] = (io_ws + (seg_scratch or {}).get(s.id, 0)
                       + reach.must_live(s.ops[0], s.ops[-1], own))
    best = 0
    for op in graph.ops:
        k = op.id
        check_deadline()
        own = set(op.inputs) | set(op.outputs)
        whole = sum(size[t] for t in own) + reach.must_live(k, k, own)
        saving = 0
        for i in cands.get(k, []):
            if i not in outs and not reach.read_after(i, k):
                saving = max(saving, min(size[i], size[op.outputs[0]]))
        kernel = (scratch or {}).get(k, 0)
        lk = whole + kernel - saving
        if inplace and SPECS[op.kind].inplace_temp and len(op.outputs) == 1:
            o = graph.tensors[op.outputs[0]]
            for i in op.inputs:
                t = graph.tensors[i]
                if (t.shape == o.shape and not t.external and i not in outs
                        and not reach.read_after(i, k)):
                    # in place through the temporary: pexopt's kernel, no kernel scratch
                    lk = min(lk, whole - (o.nbytes - o.nbytes // max(1, o.shape[-1])))
        for s in by_op.get(k, []):
            lk = min(lk, macro[s.id])
        best = max(best, lk)
    return best


def order_search_bound(graph: Graph, lo: int, hi: int, inplace: dict[int, list[int]] | None,
                       max_states: int = 200_000, seconds: float = 10.0
                       ) -> tuple[int, list[int] | None]:
    """Raise the lower bound `lo` by proving that no operator order keeps the sum of live
    bytes (in-place pairs counted once) at or below some X < hi.

    Binary search on X; each probe is a depth-first search over executed-op sets that never
    exceeds X. A probe that would visit more than `max_states` sets stops the search; every
    X proven impossible so far still gives a valid bound X + 1 (likewise past `seconds`).
    Returns the bound and an order that reaches the smallest X found feasible (or None).
    """
    import time

    deadline = time.time() + seconds
    n = len(graph.ops)
    if n == 0 or lo >= hi:
        return lo
    size = [0 if t.external else t.nbytes for t in graph.tensors]
    cons = graph.consumers()
    outs = set(graph.outputs)
    cons_mask = {t: sum(1 << c for c in cs) for t, cs in cons.items()}
    preds = [0] * n
    for k, ps in enumerate(graph.preds()):
        for p in ps:
            preds[k] |= 1 << p
    ops = graph.ops
    add = [sum(size[t] for t in op.outputs if t in outs or cons[t]) for op in ops]
    born = [sum(size[t] for t in op.outputs) for op in ops]
    share_of = {k: [(i, min(size[i], size[ops[k].outputs[0]])) for i in v]
                for k, v in (inplace or {}).items()}
    start = sum(size[t] for t in graph.inputs)
    full = (1 << n) - 1

    def feasible(x: int) -> list[int] | bool | None:
        if start > x:
            return False
        parent = {0: (0, -1)}
        stack = [(0, start)]
        while stack:
            done, live = stack.pop()
            if done == full:
                order = []
                while done:
                    done, k = parent[done]
                    order.append(k)
                return order[::-1]
            for k in range(n):
                if (done >> k) & 1 or preds[k] & ~done:
                    continue
                after = done | (1 << k)
                if after in parent:
                    continue
                dying = sum(size[i] for i in dict.fromkeys(ops[k].inputs)
                            if not cons_mask[i] & ~after and i not in outs)
                share = max((s for i, s in share_of.get(k, ())
                             if not cons_mask[i] & ~after and i not in outs), default=0)
                if live + born[k] - share > x:
                    continue
                parent[after] = (done, k)
                if len(parent) > max_states or (len(parent) % 4096 == 0
                                                and time.time() > deadline):
                    return None
                stack.append((after, live + add[k] - dying))
        return False

    # every sum of live bytes is a multiple of g: probe only those
    g = math.gcd(*[x for x in size if x]) if any(size) else 1
    best, order = lo, None
    low, high = -(-lo // g), (hi - 1) // g  # is there an order with peak <= X * g?
    while low <= high:
        mid = (low + high) // 2
        ok = feasible(mid * g)
        if ok is None:
            break
        if ok is False:
            best = max(best, (mid + 1) * g)
            low = mid + 1
        else:
            order = ok
            high = mid - 1
    return best, order
