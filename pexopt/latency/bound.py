"""The latency bound as the solver sees it: a `--latency` text turned into estimated
instructions, and a target profile's cost model in the integer form CP-SAT constrains."""

from __future__ import annotations

import re
from collections.abc import Callable

from pexopt.errors import PexError
from pexopt.graph.ir import Graph
from pexopt.latency.cost import op_instructions, segment_instructions
from pexopt.latency.profile import Profile
from pexopt.limits import MAX_LATENCY_INSTRUCTIONS
from pexopt.partial.candidates import Segment

_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_COUNT = {"": 1.0, "cycles": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_LATENCY = re.compile(r"^\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$",
                      re.IGNORECASE)


def parse_latency(text: str, profile: Profile) -> int:
    """`--latency` in estimated instructions: `150ms`, `0.2s`, `800us` (time at the profile's
    clock and assumed cycles per instruction) or cycles: `30M`, `500k`, `30000000`,
    `3e7cycles`."""
    m = _LATENCY.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or (unit not in _TIME and unit not in _COUNT):
        raise PexError(f"--latency: '{text}' is not a time (150ms, 0.2s, 800us) or a cycle "
                       f"count (30M, 500k, 30000000)")
    value = float(m.group(1))
    cycles = value * profile.clock_hz * _TIME[unit] if unit in _TIME else value * _COUNT[unit]
    if cycles <= 0:
        raise PexError(f"--latency: '{text}' must be positive")
    instructions = cycles / profile.cycles_per_instruction
    if not 1 <= instructions <= MAX_LATENCY_INSTRUCTIONS:  # inf too: CP-SAT sums int64
        raise PexError(f"--latency: '{text[:40]}' is {instructions:.3g} instructions on "
                       f"{profile.name}, not 1..{MAX_LATENCY_INSTRUCTIONS:.3g}")
    return int(instructions)


def instructions_to_ms(instructions: float, profile: Profile) -> float:
    """Milliseconds at the profile's clock, with its assumed cycles per instruction."""
    return instructions * profile.cycles_per_instruction / profile.clock_hz * 1e3


class ProfileCost:
    """A profile's estimates, rounded to whole instructions, for the CP-SAT latency constraint
    (`pexopt.schedule.CostModel`); memoised per graph, the model asks repeatedly."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._memo: dict[tuple, int] = {}
        self._graphs: dict[int, Graph] = {}  # keeps each graph alive, so its id stays its own

    def _get(self, key: tuple, compute: Callable[[], float]) -> int:
        if key not in self._memo:
            self._memo[key] = round(compute())
        return self._memo[key]

    def op(self, graph: Graph, k: int) -> int:
        self._graphs[id(graph)] = graph
        return self._get((id(graph), k, False),
                         lambda: op_instructions(self.profile, graph, k))

    def segment(self, graph: Graph, seg: Segment, width: int) -> int:
        """A channel segment at slice width `width`, or a row segment at band height `width`
        (streaming or not: writing over the input moves no extra bytes)."""
        self._graphs[id(graph)] = graph
        # dim is part of the key: a row and a channel segment can have the same ops
        return self._get((id(graph), "seg", seg.dim, seg.ops, seg.accumulate, width),
                         lambda: segment_instructions(self.profile, graph, seg, width))

    def inplace(self, graph: Graph, k: int) -> int:
        slow = self._get((id(graph), k, True),
                         lambda: op_instructions(self.profile, graph, k, inplace=True))
        return max(0, slow - self.op(graph, k))
