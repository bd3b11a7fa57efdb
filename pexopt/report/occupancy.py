"""Which arena bytes each buffer holds at each plan step, as the plan lays them out (issue #13
item 17): what the memory timeline stacks and the arena layout draws.

Live buffers may legally share bytes in two ways, and each byte is then counted once:
- an in-place handover (`alias_of`): at the step that writes the new buffer over the old one,
  only the new one holds the bytes;
- a band-written output streamed over its input (row bands, `check_streaming`): the output
  holds the rows written so far (bands are written top down, so a prefix of its buffer), the
  input the rest of their overlap; the pair together holds their union.
So the bytes of a step are the union of its live buffers' address ranges, never more than the
arena of a valid plan.
"""

from __future__ import annotations

from collections.abc import Iterator

from pexopt.plan.format import Buffer, Plan

Interval = tuple[int, int]  # [lo, hi) addresses
Occupancy = list[dict[str, list[Interval]]]  # per step: buffer name -> its intervals then


def live_buffers(plan: Plan) -> list[list[Buffer]]:
    """Per step, the buffers live then, without one being overwritten in place at that step
    (the buffer written over it holds the bytes)."""
    n = len(plan.steps)
    handover = {(b.alias_of, b.first_step) for b in plan.buffers if b.alias_of}
    live: list[list[Buffer]] = [[] for _ in range(n)]
    for b in plan.buffers:
        if b.size <= 0:
            continue
        for s in range(max(0, b.first_step), min(n - 1, b.last_step) + 1):
            if not (s == b.last_step and (b.name, s) in handover):
                live[s].append(b)
    return live


def written_bytes(plan: Plan) -> dict[str, list[int]]:
    """For buffers written band by band (steps with `rows`): per step, the bytes of the rows
    written up to and including it (a prefix of the buffer: bands go top down)."""
    writes: dict[str, list[tuple[int, int]]] = {}
    for i, s in enumerate(plan.steps):
        if isinstance(s.rows, list) and len(s.rows) == 2 and s.mode in ("band", "requantize"):
            for name in s.writes:
                writes.setdefault(name, []).append((i, s.rows[1]))
    sizes = {b.name: b.size for b in plan.buffers}
    res: dict[str, list[int]] = {}
    for name, ws in writes.items():
        height, size = max(r for _, r in ws), sizes.get(name, 0)
        if height <= 0 or size <= 0:
            continue
        row = [0] * len(plan.steps)
        done = 0
        it = iter(sorted(ws))
        nxt = next(it, None)
        for i in range(len(plan.steps)):
            while nxt is not None and nxt[0] <= i:
                done = max(done, min(nxt[1], height))
                nxt = next(it, None)
            row[i] = size * done // height
        res[name] = row
    return res


def _clusters(live: list[Buffer]) -> Iterator[list[Buffer]]:
    """Groups of buffers whose address ranges overlap (chained), in address order."""
    group: list[Buffer] = []
    end = 0
    for b in sorted(live, key=lambda b: (b.offset, b.name)):
        if group and b.offset >= end:
            yield group
            group = []
        group.append(b)
        end = max(end, b.offset + b.size) if len(group) > 1 else b.offset + b.size
    if group:
        yield group


def _share(group: list[Buffer], step: int, written: dict[str, list[int]]
           ) -> dict[str, list[Interval]]:
    """Each byte of an overlapping group to one buffer: rows a band output has written
    (the latest writer first), then whole buffers, then a band output's unwritten rest."""
    pieces: list[tuple[tuple[int, int], str, int, int]] = []  # (priority, name, lo, hi)
    for b in group:
        lo, hi = b.offset, b.offset + b.size
        done = written[b.name][step] if b.name in written else None
        if done is None:
            pieces.append(((1, 0), b.name, lo, hi))
        else:
            pieces.append(((0, -b.first_step), b.name, lo, lo + done))
            pieces.append(((2, -b.first_step), b.name, lo + done, hi))
    cuts = sorted({x for _, _, lo, hi in pieces for x in (lo, hi)})
    res: dict[str, list[Interval]] = {}
    for x0, x1 in zip(cuts, cuts[1:]):
        owners = [(p, name) for p, name, lo, hi in pieces if lo <= x0 and x1 <= hi and lo < hi]
        if not owners:
            continue
        name = min(owners)[1]
        got = res.setdefault(name, [])
        if got and got[-1][1] == x0:
            got[-1] = (got[-1][0], x1)
        else:
            got.append((x0, x1))
    return res


def occupancy(plan: Plan) -> Occupancy:
    """Per step: buffer name -> the address intervals it holds then (no byte twice)."""
    written = written_bytes(plan)
    res: Occupancy = []
    for s, live in enumerate(live_buffers(plan)):
        held: dict[str, list[Interval]] = {}
        for group in _clusters(live):
            if len(group) == 1:
                b = group[0]
                held[b.name] = [(b.offset, b.offset + b.size)]
            else:
                for name, iv in _share(group, s, written).items():
                    held.setdefault(name, []).extend(iv)
        res.append(held)
    return res


def step_bytes(occ: Occupancy) -> list[int]:
    """Bytes held at each step (the union of the live buffers' ranges)."""
    return [sum(hi - lo for ivs in held.values() for lo, hi in ivs) for held in occ]


def rectangles(plan: Plan, occ: Occupancy) -> list[tuple[Buffer, int, int, int, int]]:
    """(buffer, first step, end step (exclusive), lo, hi) boxes drawing `occ`: one box per
    buffer and run of steps over which an interval it holds stays the same."""
    out: list[tuple[Buffer, int, int, int, int]] = []
    for b in plan.buffers:
        open_: dict[Interval, int] = {}
        lo_s, hi_s = max(0, b.first_step), min(len(occ) - 1, b.last_step)
        for s in range(lo_s, hi_s + 2):
            now = set(occ[s].get(b.name, ())) if s <= hi_s else set()
            for iv in [iv for iv in open_ if iv not in now]:
                out.append((b, open_.pop(iv), s, *iv))
            for iv in now:
                open_.setdefault(iv, s)
    return out
