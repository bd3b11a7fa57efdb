"""The solver's result types, shared by solver and plan: the parameters of a solve
(`SolverParams`, with its `CostModel`), the solved `Schedule`, and the size of its in-place
depthwise temporaries (`temp_bytes`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pexopt.graph.ir import Graph
from pexopt.partial.candidates import Segment


class CostModel(Protocol):
    """Estimated cost (instructions, integers) of running an operator whole, a split segment
    at one slice width, or a depthwise op in place; supplied by a target profile."""

    def op(self, graph: Graph, k: int) -> int: ...

    def segment(self, graph: Graph, seg: Segment, width: int) -> int: ...

    def inplace(self, graph: Graph, k: int) -> int: ...


@dataclass(frozen=True)
class SolverParams:
    """Every technique is a switch so tests can ablate it and check the optimum is unchanged."""

    time_limit: float = 30.0
    workers: int = 2
    seed: int = 0
    align: int = 4
    reorder: bool = True
    inplace: bool = True
    cumulative: bool = True
    hint: bool = True
    use_bound: bool = True
    split: bool = True
    max_segment_len: int = 6
    max_widths: int = 8
    slice_widths: tuple[int, ...] | None = None
    deterministic_time: float | None = None
    cost: CostModel | None = field(default=None, compare=False)  # latency estimate per choice
    latency: int | None = None  # hard bound on the estimated cost (needs `cost`)
    target: str | None = None  # CMSIS-NN kernel scratch for this target; None: none
    rows: bool = False  # row-band segments (with `split`)
    channels: bool = True  # channel-slice segments (with `split`); off: row bands alone
    stream: bool = True  # row segments may stream their output over their input
    hybrid: bool = True  # with `rows` and `channels`: bands and channel slices at once
    max_heights: int = 6


@dataclass
class Schedule:
    """A solved schedule: order, offsets, in-place and split choices."""

    order: list[int]
    offsets: dict[int, int]
    inplace: dict[int, int]  # output tensor id -> input tensor id it overwrites
    arena: int
    bound: int
    status: str
    seconds: float
    params: SolverParams = field(default_factory=SolverParams)
    segments: list[Segment] = field(default_factory=list)
    splits: dict[int, int] = field(default_factory=dict)  # used segment id -> slice width
    workspace: dict[int, int] = field(default_factory=dict)  # used segment id -> offset
    temps: dict[int, int] = field(default_factory=dict)  # in-place depthwise op id -> offset
    kscratch: dict[int, int] = field(default_factory=dict)  # whole op id -> its scratch offset
    stages: list[str] = field(default_factory=list)
    streams: set[int] = field(default_factory=set)  # row segment ids streaming in place
    cost: int | None = None  # the model's latency expression at this schedule (cost model only)

    @property
    def gap(self) -> float:
        return 0.0 if self.arena == 0 else max(0.0, (self.arena - self.bound) / self.arena)


def temp_bytes(graph: Graph, k: int) -> int:
    """The H x W temporary of an in-place depthwise conv (one channel of its output)."""
    t = graph.tensors[graph.ops[k].outputs[0]]
    return t.nbytes // max(1, t.shape[-1])
