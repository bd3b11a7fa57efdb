"""Lower bounds on the arena that hold for every operator order and every option the CP-SAT
model allows (in-place writes of element-wise ops and of depthwise convs through a temporary,
kernel scratch, split, row and hybrid segments, streaming; external tensors count nothing;
alignment only adds bytes)."""

from __future__ import annotations

import math
import time

from pexopt.deadline import check as check_deadline
from pexopt.graph.ir import Graph, ancestor_masks, descendant_masks, mask_bits
from pexopt.ops import SPECS
from pexopt.schedule import temp_bytes

# an op's ways to run whole: (input it overwrites or None, bytes added to the sum of its own
# inputs and outputs while it runs: kernel scratch, minus what the overwritten input saves)
Options = dict[int, list[tuple[int | None, int]]]


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


def dw_inplace_ok(graph: Graph, k: int, i: int) -> bool:
    """A depthwise conv may overwrite its input channel by channel if shapes are equal."""
    op = graph.ops[k]
    if not SPECS[op.kind].inplace_temp or len(op.outputs) != 1:
        return False
    t_in, t_out = graph.tensors[i], graph.tensors[op.outputs[0]]
    return (t_in.shape == t_out.shape and i not in graph.outputs and not t_in.external
            and not t_out.external and t_out.nbytes > 0)


def all_inplace_candidates(graph: Graph) -> dict[int, list[int]]:
    """Every in-place option of the CP-SAT model: element-wise ops and depthwise convs."""
    cands = {k: list(v) for k, v in inplace_candidates(graph).items()}
    for op in graph.ops:
        for i in dict.fromkeys(op.inputs):
            if dw_inplace_ok(graph, op.id, i):
                cands.setdefault(op.id, []).append(i)
    return cands


def whole_options(graph: Graph, inplace: dict[int, list[int]] | None,
                  scratch: dict[int, int] | None) -> Options:
    """Op id -> its ways to run whole, as the CP-SAT model encodes them: plain (its kernel
    scratch), an element-wise write over a dying input (the output shares the input's bytes,
    the kernel scratch stays), or an in-place depthwise (the output shares the input's bytes
    but one H x W temporary; pexopt's kernel, no kernel scratch)."""
    scratch = scratch or {}
    res: Options = {}
    for op in graph.ops:
        k = op.id
        opts: list[tuple[int | None, int]] = [(None, scratch.get(k, 0))]
        for i in (inplace or {}).get(k, []):
            o = graph.tensors[op.outputs[0]].nbytes
            if dw_inplace_ok(graph, k, i):
                opts.append((i, temp_bytes(graph, k) - o))
            else:
                opts.append((i, scratch.get(k, 0) - min(graph.tensors[i].nbytes, o)))
        res[k] = opts
    return res


def _least_extra(opts: list[tuple[int | None, int]], dies: object) -> int:
    """The smallest addition among an op's options whose overwritten input dies there."""
    return min(d for i, d in opts if i is None or dies(i))  # type: ignore[operator]


def _op_floors(graph: Graph, inplace: bool, scratch: dict[int, int] | None,
               reach: Reach) -> list[int]:
    """Per op: the least bytes live while it runs whole in any order: its inputs and outputs,
    every tensor produced by an ancestor (or a graph input) that a descendant reads (or that
    is a graph output), plus its cheapest way to run (`whole_options`)."""
    outs = set(graph.outputs)
    options = whole_options(graph, all_inplace_candidates(graph) if inplace else None, scratch)
    floors = []
    for op in graph.ops:
        check_deadline()
        k = op.id
        own = set(op.inputs) | set(op.outputs)
        whole = sum(reach.size[t] for t in own) + reach.must_live(k, k, own)

        def dies(i: int, k: int = k) -> bool:
            return i not in outs and not reach.read_after(i, k)

        floors.append(whole + _least_extra(options[k], dies))
    return floors


def any_order_bound(graph: Graph, inplace: bool = True,
                    scratch: dict[int, int] | None = None) -> tuple[int, int]:
    """(bound, op id) of the largest bytes that must be live while some op runs, in any order
    and with any in-place choice (element-wise or depthwise) and kernel scratch (`scratch`: op
    id -> bytes while it runs whole; none for an in-place depthwise)."""
    floors = _op_floors(graph, inplace, scratch, Reach(graph))
    if not floors:
        return 0, -1
    where = max(range(len(floors)), key=lambda k: floors[k])
    return max(0, floors[where]), where


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


def segment_floor(graph: Graph, seg: object, stream: bool, seg_scratch: int,
                  reach: Reach) -> int:
    """Least bytes live while a split, row or hybrid segment runs: its full inputs, its output
    (or int32 accumulator), its smallest workspace and kernel scratch (a row or hybrid segment:
    least over band heights, streaming included when allowed), and every tensor produced before
    it and read after it."""
    from pexopt.partial.bands import row_macro_bytes
    from pexopt.partial.candidates import accumulator_bytes, workspace_bytes

    s = seg
    size = reach.size
    own = set(s.inputs) | {s.output} | set(s.internal)
    out = accumulator_bytes(graph.tensors[s.output]) if s.accumulate else size[s.output]
    io_ws = (row_macro_bytes(graph, s, stream) if s.dim in ("rows", "hybrid") else
             sum(size[t] for t in s.inputs) + out
             + min(workspace_bytes(graph, s, w) for w in s.widths))
    return io_ws + seg_scratch + reach.must_live(s.ops[0], s.ops[-1], own)


def split_bound(graph: Graph, segments: list, inplace: bool = True,
                scratch: dict[int, int] | None = None,
                seg_scratch: dict[int, int] | None = None, stream: bool = True) -> int:
    """A lower bound valid for every order and every choice among `segments`.

    While op k runs it is either whole (its `_op_floors` value: any in-place option, kernel
    scratch `scratch`) or inside one segment g (`segment_floor`, with `seg_scratch`: segment
    id -> its smallest kernel scratch over widths).
    """
    reach = Reach(graph)
    floors = _op_floors(graph, inplace, scratch, reach)
    for s in segments:
        check_deadline()
        macro = segment_floor(graph, s, stream, (seg_scratch or {}).get(s.id, 0), reach)
        for k in s.ops:
            floors[k] = min(floors[k], macro)
    return max(floors, default=0)


class _OrderSearch:
    """What every probe of `order_search_bound` shares: per op its predecessors as a bit mask,
    the bytes it adds and makes, its cheapest ways to run; the bytes live before the first."""

    def __init__(self, graph: Graph, inplace: dict[int, list[int]] | None,
                 scratch: dict[int, int] | None, max_states: int, deadline: float) -> None:
        n = len(graph.ops)
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
        options = whole_options(graph, inplace, scratch)
        # a graph input nobody reads is live at the first step only: leave it out (a weaker bound)
        start = sum(size[t] for t in graph.inputs if t in outs or cons[t])
        full = (1 << n) - 1
        self.n, self.size, self.outs, self.cons_mask, self.preds = n, size, outs, cons_mask, preds
        self.ops, self.add, self.born, self.options = ops, add, born, options
        self.start, self.full = start, full
        self.max_states, self.deadline = max_states, deadline

    def feasible(self, x: int) -> list[int] | bool | None:
        """An order whose sum of live bytes never exceeds x, False if none, None if the search
        would visit more than `max_states` sets or ran past the deadline."""
        n, size, outs, cons_mask, preds = self.n, self.size, self.outs, self.cons_mask, self.preds
        ops, add, born, options = self.ops, self.add, self.born, self.options
        start, full, max_states, deadline = self.start, self.full, self.max_states, self.deadline
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
                extra = _least_extra(options[k], lambda i, a=after: not cons_mask[i] & ~a
                                     and i not in outs)
                if live + born[k] + extra > x:
                    continue
                parent[after] = (done, k)
                if len(parent) > max_states or (len(parent) % 4096 == 0
                                                and time.time() > deadline):
                    return None
                stack.append((after, live + add[k] - dying))
        return False


def order_search_bound(graph: Graph, lo: int, hi: int, inplace: dict[int, list[int]] | None,
                       max_states: int = 200_000, seconds: float = 10.0,
                       scratch: dict[int, int] | None = None
                       ) -> tuple[int, list[int] | None]:
    """Raise the lower bound `lo` by proving that no operator order keeps the sum of live
    bytes at or below some X < hi, each op run its cheapest way (`whole_options`: in-place
    pairs `inplace` counted once, an in-place depthwise with its temporary, kernel scratch
    `scratch`). Valid when no op can run inside a split segment.

    Binary search on X; each probe (`_OrderSearch.feasible`) is a depth-first search over
    executed-op sets that never exceeds X. A probe that would visit more than `max_states` sets
    stops the search; every X proven impossible so far still gives a valid bound X + 1
    (likewise past `seconds`). Returns the bound and an order that reaches the smallest X found
    feasible (or None).
    """
    deadline = time.time() + seconds
    n = len(graph.ops)
    if n == 0 or lo >= hi:
        return lo, None
    search = _OrderSearch(graph, inplace, scratch, max_states, deadline)
    feasible, size, options = search.feasible, search.size, search.options

    # every sum of live bytes (with in-place savings and scratch) is a multiple of g
    parts = [x for x in size if x] + [abs(d) for v in options.values() for _, d in v if d]
    g = math.gcd(*parts) if parts else 1
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
