"""Every lower bound is valid for every option the CP-SAT model allows (issue #13 item 6).

The reference is the optimum CP-SAT proves by itself with the bound switched off
(`use_bound=False`: no early stop at `top >= bound`, `status == "OPTIMAL"` from CP-SAT), on
small random CNN-like graphs with depthwise convs that may run in place, element-wise ops that
may write over their input, kernel scratch (`target`), an external input, alignment, channel
splits, row bands, hybrid segments and streaming. Before the fix the no-split bound ignored the
in-place depthwise and reported OPTIMAL above the optimum (mcunet_in3: 340,736 B for 247,808 B).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import onnx
import pytest
from fuzz_graphs import Spec, float_model

from pexopt.frontend.onnx_import import import_onnx
from pexopt.graph.ir import Graph
from pexopt.plan.build import build_plan
from pexopt.plan.validator import validate
from pexopt.schedule import SolverParams
from pexopt.solver.bounds import any_order_bound, order_search_bound
from pexopt.solver.cpsat_layout import (
    all_inplace_candidates,
    candidates,
    lower_bound,
    op_scratch,
    solve_layout,
)

MCUNET_IN3 = "mcunet_in3_320kb_1mb_imagenet.onnx"
QUICK = {"time_limit": 5.0, "workers": 1}


def random_spec(seed: int) -> Spec:
    """A few layers on a small tensor; depthwise convs keep their shape (in place possible)."""
    rng = random.Random(seed)
    c, h = rng.choice((2, 3, 4, 6)), rng.choice((4, 6, 8))
    layers: list[tuple] = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(("block", "block", "dw", "pw", "conv", "res", "act", "cat"))
        if kind == "block":  # expand, depthwise, project: the depthwise sets the peak
            layers += [("pw", 4 * c, "relu"), ("dw", 3, 1, 1, "relu"), ("pw", c, "")]
            continue
        act = rng.choice(("", "relu"))
        if kind == "dw":
            layers.append(("dw", 3, 1, 1, act))
        elif kind == "pw":
            layers.append(("pw", rng.choice((2, 4, 8)), act))
        elif kind == "conv":
            layers.append(("conv", rng.choice((2, 4)), 3, rng.choice((1, 2)), 1, act))
        elif kind == "res":
            layers.append(("res", 1, act))
        elif kind == "act":
            layers.append(("act", "relu"))
        else:
            layers.append(("cat", 2, 2, act))
    return Spec(c, h, h, seed, tuple(layers))


def graph_of(seed: int, tmp: Path, external: bool = False) -> Graph:
    path = tmp / f"g{seed}.onnx"
    if not path.exists():
        onnx.save(float_model(random_spec(seed)), str(path))
    return import_onnx(path, dtype="int8", input_external=external)


def free_optimum(g: Graph, params: SolverParams):  # noqa: ANN201
    """CP-SAT's own optimum, no bound (every stage runs to its proof)."""
    free = solve_layout(g, SolverParams(**{**params.__dict__, "use_bound": False}))
    assert free.status == "OPTIMAL", (g.name, params, free.stages)
    return free


NO_SPLIT = [(*c, 1) for c in itertools.product((True, False), (None, "cortex-m4"), (False, True))]
NO_SPLIT.append((True, "cortex-m4", False, 4))  # alignment only adds bytes


@pytest.mark.parametrize("seed", range(8))
def test_no_split_bounds_below_the_optimum(seed: int, tmp_path: Path) -> None:
    """any_order_bound, the order search and the solver's reported bound never exceed the
    bound-free optimum, for in place on/off, kernel scratch, an external input and alignment;
    with the bound on the solver finds the same optimum."""
    dw_inplace = 0
    for inplace, target, external, align in NO_SPLIT:
        g = graph_of(seed, tmp_path, external)
        p = SolverParams(split=False, inplace=inplace, target=target, align=align, **QUICK)
        free = free_optimum(g, p)
        scr = op_scratch(g, target)
        lb, _ = any_order_bound(g, inplace, scr)
        case = (seed, inplace, target, external, align)
        assert lb <= free.arena, (case, lb, free.arena)
        assert lower_bound(g, p, []) == lb
        cands = all_inplace_candidates(g) if inplace else None
        searched, _ = order_search_bound(g, lb, free.arena + 1, cands, scratch=scr)
        assert lb <= searched <= free.arena, (case, searched, free.arena)
        bounded = solve_layout(g, p)
        assert bounded.arena == free.arena, (case, bounded.arena, free.arena, bounded.stages)
        assert bounded.bound <= bounded.arena and bounded.status == "OPTIMAL", case
        dw_inplace += bool(free.temps)
    if any(op.kind.value == "depthwise" for op in graph_of(seed, tmp_path).ops):
        assert dw_inplace, seed  # an in-place depthwise is part of some optimum


SPLIT = [  # (channels, rows, hybrid, stream, reorder)
    (True, False, False, False, True), (False, True, False, True, True),
    (True, True, True, True, True), (True, True, False, False, True),
    (True, True, True, True, False),
]


@pytest.mark.parametrize("seed", range(3))
def test_split_bounds_below_the_optimum(seed: int, tmp_path: Path) -> None:
    """With channel splits, row bands, hybrid segments and streaming (and in place, kernel
    scratch, an external input): the split bound and the reported bound never exceed the
    arena of the bound-free optimum; the bound-on plan validates."""
    rng = random.Random(seed)
    for channels, rows, hybrid, stream, reorder in SPLIT:
        inplace, external = rng.random() < 0.7, rng.random() < 0.3
        target = rng.choice((None, "cortex-m4"))
        g = graph_of(seed, tmp_path, external)
        p = SolverParams(split=True, channels=channels, rows=rows, hybrid=hybrid, stream=stream,
                         reorder=reorder, inplace=inplace, target=target, align=1, **QUICK)
        free = free_optimum(g, p)
        segs, rws = candidates(g, p)
        lb = lower_bound(g, p, segs + rws)
        case = (seed, channels, rows, hybrid, stream, reorder, inplace, external, target)
        assert lb <= free.arena, (case, lb, free.arena)
        bounded = solve_layout(g, p)
        assert bounded.bound <= min(bounded.arena, free.arena), (case, bounded.bound,
                                                                 free.arena)
        assert validate(build_plan(g, bounded), g, check_hash=False) == [], case


def test_row_bound_does_not_count_an_external_input(tmp_path: Path) -> None:
    """A row segment reading the graph input counts its bytes only when it is in the arena."""
    from pexopt.partial.bands import row_macro_bytes

    p = SolverParams(split=True, channels=False, rows=True, hybrid=False, **QUICK)
    inside, outside = graph_of(1, tmp_path), graph_of(1, tmp_path, external=True)
    x = inside.tensors[inside.inputs[0]].nbytes
    ext = {s.ops: s for s in candidates(outside, p)[1]}
    reading = [s for s in candidates(inside, p)[1] if inside.inputs[0] in s.inputs]
    assert reading
    for s in reading:
        assert row_macro_bytes(outside, ext[s.ops], False) == \
            row_macro_bytes(inside, s, False) - x


def test_mcunet_in3_layer_by_layer(shared_models_dir: Path) -> None:
    """Regression: `--no-split` on mcunet_in3 reported 340,736 B OPTIMAL; a validated
    layer-by-layer plan of 247,808 B exists (its in-place depthwise convs). The plan is at
    most that, its bound at most its arena; with CMSIS-NN scratch (cortex-m4) 247,840 B."""
    g = import_onnx(shared_models_dir / MCUNET_IN3)
    assert any_order_bound(g)[0] <= 247_808
    for target, best in ((None, 247_808), ("cortex-m4", 247_840)):
        s = solve_layout(g, SolverParams(split=False, target=target, time_limit=20.0))
        assert s.arena <= best, (target, s.arena, s.stages)
        assert s.bound <= s.arena, (target, s.bound, s.arena)
        assert s.temps  # the in-place depthwise convs the old bound ignored
        assert validate(build_plan(g, s), g, check_hash=False) == []


def test_bench_layer_by_layer_is_the_optimum(tmp_path: Path) -> None:
    """bench's layer-by-layer column is the proven no-split optimum (not the short seed
    solve inside the split run)."""
    from pexopt.pipeline import ImportOptions, bench_model

    seed = 5  # the old bound stopped its layer-by-layer solve at 2,048 B for 1,280 B
    g = graph_of(seed, tmp_path)
    params = SolverParams(rows=False, time_limit=4.0, workers=1)
    row = bench_model(tmp_path / f"g{seed}.onnx", ImportOptions(), params)
    free = free_optimum(g, SolverParams(split=False, **QUICK))
    assert row.layerwise == free.arena
    assert row.bound <= row.arena


@pytest.mark.parametrize("seed", [1, 10])
def test_bound_of_a_cut_model_is_checked_beyond_the_cut(seed: int, tmp_path: Path) -> None:
    """The model may leave row segments out (`worth_trying`); its proven bound then holds for
    plans without them only. Given the channel-only optimum and its bound as if row bands had
    all been left out, `_beyond_the_cut` returns a bound below the optimum with row bands (and
    the better plan it finds)."""
    from pexopt.solver.substages import _beyond_the_cut

    g = graph_of(seed, tmp_path)
    p = SolverParams(split=True, rows=True, hybrid=False, align=1, **QUICK)
    chan = solve_layout(g, SolverParams(**{**p.__dict__, "rows": False}))
    opt = free_optimum(g, p)
    assert opt.arena < chan.arena  # row bands pay here: the cut bound would be wrong
    segs, rows = candidates(g, p)
    lb = lower_bound(g, p, segs + rows)
    best, bound, note = _beyond_the_cut(g, p, segs + rows, segs, chan, chan.arena, lb,
                                        lambda: 5.0, lambda _: True)
    assert lb <= bound <= opt.arena, (note, lb, bound, opt.arena)
    assert best.arena <= chan.arena
