"""Text tables for the CLI (rich) and Markdown for README/bench files."""

from __future__ import annotations

import io
import os

from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.table import Table

from pexopt.graph.ir import Graph
from pexopt.ops import OpKind
from pexopt.pipeline import BenchRow, SolveResult
from pexopt.plan.format import is_kscratch
from pexopt.report.labels import OpLabels, buffer_labels, short_name


def kb(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def inspect_table(graph: Graph, peak: tuple[int, int]) -> Table:
    """One row per IR operator: #, op (short name; `--json` has the full one), kind, output
    shape, bytes, MACs, how many other ONNX nodes are fused into it."""
    t = Table(title=f"{graph.name}: {len(graph.ops)} operators, activations {graph.dtype}")
    for col in ("#", "op", "kind", "output shape", "bytes", "MACs", "fused nodes"):
        t.add_column(col, justify="right" if col in ("#", "bytes", "MACs", "fused nodes")
                     else "left")
    for op in graph.ops:
        outs = [graph.tensors[o] for o in op.outputs]
        kind = op.kind.value + (f" +{op.activation.name}" if op.activation else "")
        if op.kind == OpKind.OPAQUE:
            kind = f"opaque ({op.onnx_type}, never split)"
        fused = sum(n != op.name for n in op.onnx_nodes)
        t.add_row(str(op.id), short_name(op.name), kind,
                  " ".join("x".join(map(str, o.shape)) for o in outs),
                  f"{sum(o.nbytes for o in outs):,}", f"{op.macs:,}", str(fused))
    return t


def inspect_summary(graph: Graph, peak: tuple[int, int]) -> list[str]:
    nbytes, k = peak
    ins = ", ".join(f"{short_name(graph.tensors[i].name)} "
                    f"{'x'.join(map(str, graph.tensors[i].shape))}"
                    + (" (external, not counted)" if graph.tensors[i].external else "")
                    for i in graph.inputs)
    label = OpLabels(graph)
    lines = [f"input: {ins}",
             f"naive peak (file order, sum of live bytes): {nbytes:,} B at op "
             f"'{label(graph.ops[k].name)}'" if graph.ops else "no operators",
             f"MACs: {sum(o.macs for o in graph.ops):,}"]
    opaque = [label(o.name) for o in graph.ops if o.kind == OpKind.OPAQUE]
    if opaque:
        lines.append(f"opaque operators (kept whole): {', '.join(opaque)}")
    return lines


def solve_table(res: SolveResult) -> Table:
    p, s = res.plan, res.schedule
    t = Table(title=f"{res.graph.name}: {len(res.graph.ops)} operators"
              + ("" if not p.input_external else " (graph input external)"))
    for col in ("TFLM arena", "layer by layer", "partial execution", "pexopt/TFLM",
                "lower bound", "gap", "status", "solve s", "budget", "fits"):
        t.add_column(col, justify="right")
    split = res.layerwise is not None
    t.add_row(kb(res.tflm), kb(res.layerwise if split else p.arena_bytes),
              kb(p.arena_bytes) if split else "off (--no-split)",
              f"{p.arena_bytes / res.tflm:.3f}" if res.tflm else "-", kb(s.bound),
              f"{100 * s.gap:.1f}%", s.status, f"{s.seconds:.2f}", kb(p.budget_bytes),
              "-" if p.budget_bytes is None else ("yes" if p.fits else "NO"))
    return t


def splits_table(res: SolveResult) -> Table | None:
    """One row per split subgraph: operators (labels), slice width, slices, bytes saved."""
    if not res.plan.splits:
        return None
    label = OpLabels(res.graph)
    t = Table(title="partial execution: split subgraphs")
    for col in ("operators", "kinds", "channels", "slice width", "slices", "accumulates",
                "bytes saved"):
        t.add_column(col, justify="left" if col in ("operators", "kinds") else "right")
    for sp in res.plan.splits:
        dim = sp.get("split", {}).get("dim")
        rows = dim in ("rows", "hybrid")  # row bands: rows and band height
        extent = f"{sp['channels']} rows" if rows else str(sp["channels"])
        chans = f" x {sp['split'].get('slice_width')} ch" if dim == "hybrid" else ""
        width = (f"{sp['width']} rows{chans}" + (", streams" if sp.get("streaming") else "")
                 if rows else str(sp["width"]))
        t.add_row(" -> ".join(map(label, sp["ops"])), " -> ".join(sp["kinds"]), extent, width,
                  str(sp["slices"]), "yes" if sp["accumulate"] else "no",
                  f"{sp['bytes_saved']:,}")
    return t


def inplace_line(res: SolveResult) -> str | None:
    """Operators that write over a dying input (and the temporary they need)."""
    bufs = {b.name: b for b in res.plan.buffers}
    label, short = OpLabels(res.graph), buffer_labels(bufs)
    parts = []
    for s in res.plan.steps:
        if s.mode != "whole":
            continue
        for w in s.writes:
            b = bufs.get(w)
            if b is None or b.alias_of is None or bufs[b.alias_of].kind != "tensor":
                continue
            tmp = "".join(f" through a {bufs[x].size:,} B temporary" for x in s.scratch
                          if not is_kscratch(x))  # kernel scratch is no in-place temporary
            parts.append(f"{label(s.op)} over {short[b.alias_of]}{tmp}")
    return "in place: " + "; ".join(parts) if parts else None


def peak_line(res: SolveResult) -> str:
    """Where the plan peaks: step, operator label, the largest live buffers (short names), and
    which of them stream over another (their bytes overlap: the peak counts them once)."""
    from pexopt.plan.validator_rows import streaming_pairs

    pk = res.peak
    live = {n for n, _ in pk.buffers}
    pairs = sorted((a, b) for a, b in streaming_pairs(res.plan) if a in live and b in live)
    short = buffer_labels([*(n for n, _ in pk.buffers[:4]), *(x for p in pairs for x in p)])
    bufs = ", ".join(f"{short[n]} ({b:,} B)" for n, b in pk.buffers[:4])
    more = f" and {len(pk.buffers) - 4} more" if len(pk.buffers) > 4 else ""
    streams = "".join(f"; {short[b]} streams over {short[a]}" for a, b in pairs)
    return (f"peak {pk.live:,} B at step {pk.step} '{OpLabels(res.graph)(pk.op)}': "
            f"{bufs}{more}{streams}")


BENCH_COLS = ("model", "ops", "TFLM arena", "reorder bound", "layer by layer",
              "channel split", "row bands", "hybrid (pexopt)", "splits", "pexopt/TFLM",
              "lower bound", "gap", "status", "solve s", "peak at (live buffers, B)")


def bench_cells(r: BenchRow) -> list[str]:
    return [r.model, str(r.ops), kb(r.tflm), kb(r.reorder_bound), kb(r.layerwise),
            kb(r.channel_arena), kb(r.rows_arena), kb(r.arena),
            str(r.splits), f"{r.ratio:.3f}", kb(r.bound), f"{100 * r.gap:.1f}%", r.status,
            f"{r.seconds:.2f}", r.peak]


TARGET_COLS = ("model", "layer by layer arena", "pexopt arena",
               "instructions (layer by layer)", "instructions (pexopt)",
               "overhead", "flash B", "RAM B", "bit-exact vs simulator", "note")


def target_cells(r: BenchRow) -> list[str]:
    ov = r.overhead
    return [r.model, kb(r.layerwise), kb(r.arena), kb(r.insns_layerwise), kb(r.insns_split),
            "-" if ov is None else f"{100 * ov:+.1f}%", kb(r.flash_bytes), kb(r.ram_bytes),
            "-" if r.exact_on_target is None else ("yes" if r.exact_on_target else "NO"),
            r.target_note[:80]]


def bench_table(rows: list[BenchRow]) -> Table:
    t = Table(title="pexopt bench (int8, graph input in the arena unless noted)")
    for c in BENCH_COLS:
        t.add_column(c, justify="left" if c in ("model", "status") or c.startswith("peak")
                     else "right")
    for r in rows:
        t.add_row(*bench_cells(r))
    return t


def target_table(rows: list[BenchRow], target: str) -> Table:
    """Instructions per inference of the generated C under QEMU, both plans."""
    t = Table(title=f"generated C on {target} under QEMU (portable kernels)")
    for c in TARGET_COLS:
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        t.add_row(*target_cells(r))
    return t


def target_markdown(rows: list[BenchRow], target: str) -> str:
    head = "| " + " | ".join(TARGET_COLS) + " |\n"
    sep = "|" + "|".join("---" if c == "model" else "---:" for c in TARGET_COLS) + "|\n"
    body = "".join("| " + " | ".join(target_cells(r)) + " |\n" for r in rows)
    return (head + sep + body + f"\nInstructions executed inside pex_invoke on {target} "
            "(QEMU, exact count by a TCG plugin; instructions, not cycles); flash = .text + "
            ".data; RAM = .data + .bss (arena included) + stack high-water mark.\n")


def bench_markdown(rows: list[BenchRow], workers: int) -> str:
    head = "| " + " | ".join(BENCH_COLS) + " |\n"
    sep = "|" + "|".join("---" if c in ("model", "status") or c.startswith("peak") else "---:"
                         for c in BENCH_COLS) + "|\n"
    body = "".join("| " + " | ".join(bench_cells(r)) + " |\n" for r in rows)
    note = (f"\nArena bytes, int8 activations, graph input counted; {workers} CP-SAT workers. "
            "TFLM = TFLM's greedy planner in file order (explicit Pads kept); reorder bound = "
            "best peak sum of live bytes over all operator orders (no offsets, no splits); "
            "layer by layer = pexopt without splits; channel split = pexopt with channel splits "
            "only (Pex); row bands = pexopt with row bands only (MCUNetV2-like, but halos kept, "
            "not recomputed, and the input counted); hybrid = pexopt with channel splits and row "
            "bands in one model (streaming in place included; the plan); lower bound and gap "
            "refer to it.\n")
    return head + sep + body + note


# -- fitting a table to the output width (issue #13 item 16) --------------------------------

PIPE_WIDTH = 160  # output width to a pipe or file when COLUMNS is not set


def output_width(console: Console) -> int:
    """Columns to fit: the terminal's; to a pipe or file COLUMNS, else PIPE_WIDTH."""
    if console.is_terminal:
        return console.width
    cols = os.environ.get("COLUMNS", "").strip()
    return int(cols) if cols.isdigit() and 0 < int(cols) < 1 << 16 else PIPE_WIDTH


def _longest_word(cell: object) -> int:
    return max((cell_len(w) for w in str(cell).split()), default=0)


def _longest_line(cell: object) -> int:
    return max((cell_len(line) for line in str(cell).splitlines()), default=0)


def _set_widths(table: Table, width: int) -> bool:
    """Give every column a width between its longest word (its header whole, if all headers
    fit so) and its longest cell so that the table fits `width` (rich's own squeeze can cut a
    number short); False if it cannot."""
    cols = table.columns
    words = [max(1, _longest_word(c.header), *(_longest_word(x) for x in c.cells))
             for c in cols]
    hi = [max(a, _longest_line(c.header), *(_longest_line(x) for x in c.cells))
          for a, c in zip(words, cols)]
    extra = (2 if table.box and table.show_edge else 0) + (len(cols) - 1 if table.box else 0)
    free = width - extra - sum(2 for _ in cols)  # 2: a cell's padding
    lo = [max(a, _longest_line(c.header)) for a, c in zip(words, cols)]
    if sum(lo) > free:
        lo = words
    room = free - sum(lo)
    if room < 0:
        return False
    want = [b - a for a, b in zip(lo, hi)]
    total = sum(want)
    widths = [a + (w if total <= room else w * room // total) for a, w in zip(lo, want)]
    for c, w in zip(cols, widths):
        c.width = w
    return True


def _width_of(renderable: RenderableType, width: int) -> int:
    """Columns the widest line of `renderable` takes when printed `width` wide."""
    con = Console(width=1 << 15, file=io.StringIO(), color_system=None, legacy_windows=False)
    with con.capture() as cap:  # a wide console: what does not fit shows, is not cropped
        con.print(renderable, width=width, crop=False)
    return max((cell_len(line) for line in cap.get().splitlines()), default=0)


def records(table: Table) -> Table:
    """The same cells, one 'column | value' block per row (for tables too wide to fit)."""
    t = Table(title=table.title, show_header=False)
    t.add_column("field", justify="left", overflow="fold")
    t.add_column("value", justify="left", overflow="fold")
    cols = [(str(c.header), list(c.cells)) for c in table.columns]
    n = max((len(cells) for _, cells in cols), default=0)
    for r in range(n):
        for i, (head, cells) in enumerate(cols):
            t.add_row(head, cells[r] if r < len(cells) else "", end_section=i == len(cols) - 1)
    return t


def fit(renderable: RenderableType, width: int) -> RenderableType:
    """A table with column widths that fit `width` and cut no word, else the same cells as
    records (which rich folds only where a single word is wider than the terminal); other
    renderables (a Text wraps by itself) unchanged."""
    if not isinstance(renderable, Table):
        return renderable
    if _set_widths(renderable, width) and _width_of(renderable, width) <= width:
        return renderable
    for c in renderable.columns:
        c.width = None
    rec = records(renderable)
    _set_widths(rec, width)
    return rec
