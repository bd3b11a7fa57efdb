"""What the figures of `pexopt report` and `sweep-report` share (matplotlib, Agg, no pyplot
state): a new figure, its PNG and SVG bytes in memory, and the folder written all or none."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BUDGET_COLOR = "#D62728"
DPI = 130


def new_figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render(fig: Figure, stem: str) -> dict[str, bytes]:
    """The figure as `<stem>.png` and `<stem>.svg`, in memory (written by pexopt.outputs)."""
    res = {}
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=DPI)
        res[f"{stem}.{ext}"] = buf.getvalue()
    return res


def write_report(out: Path, files: dict[str, bytes], opt: str, inputs: Sequence[Any]) -> None:
    """Check the folder's outputs, then write them all or none (issue #13 items 7-10)."""
    from pexopt.outputs import Outputs

    outs = Outputs(inputs=list(inputs))
    outs.folder(out, opt, files)  # a manifest: never over a user's summary.md
    outs.check()
    outs.put_folder(out, files)
    outs.commit()
