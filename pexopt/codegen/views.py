"""Strided 4-D views of arena buffers and C literal helpers for the emitter."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pexopt.errors import PexError


def pad4(shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    """A shape as 4-D (leading 1s added, leading 1s of a longer shape dropped)."""
    shape = tuple(int(d) for d in shape)
    while len(shape) > 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > 4:
        raise PexError(f"{where}: tensors of rank {len(shape)} are not supported by the C "
                       "emitter")
    return (1,) * (4 - len(shape)) + shape


def contig(dims: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a dense row-major 4-D array."""
    s = [1, 1, 1, 1]
    for k in (2, 1, 0):
        s[k] = s[k + 1] * dims[k + 1]
    return tuple(s)


@dataclass
class View:
    """A strided 4-D view at element offset `base` of some buffer."""

    base: int
    dims: tuple[int, ...]
    strides: tuple[int, ...]

    def span(self) -> int:
        """Elements from the view's first element to its last, inclusive (0 if empty)."""
        if any(d <= 0 for d in self.dims):
            return 0
        if any(s < 0 for s in self.strides):
            raise PexError("codegen: a view with negative strides; its accesses cannot be "
                           "bounded")
        return 1 + sum((d - 1) * s for d, s in zip(self.dims, self.strides))

    def c(self) -> str:
        d = ", ".join(str(x) for x in self.dims)
        s = ", ".join(str(x) for x in self.strides)
        return f"&(const pex_view){{{{{d}}}, {{{s}}}}}"

    def broadcast_to(self, out_dims: tuple[int, ...], where: str) -> View:
        st = []
        for d, s, o in zip(self.dims, self.strides, out_dims):
            if d == o:
                st.append(s if d > 1 else 0)
            elif d == 1:
                st.append(0)
            else:
                raise PexError(f"{where}: shapes {self.dims} and {out_dims} do not broadcast")
        return View(self.base, tuple(out_dims), tuple(st))

    def pixel_stride(self, where: str) -> int:
        """The pixel stride of an NHWC view whose rows are pixel-contiguous."""
        n, h, w, c = self.dims
        pix = self.strides[2] if w > 1 else self.strides[1] if h > 1 else \
            self.strides[0] if n > 1 else c
        want = (h * w * pix, w * pix, pix, 1)
        for k in range(4):
            if self.dims[k] > 1 and self.strides[k] != want[k]:
                raise PexError(f"{where}: an input or output layout the C kernels cannot "
                               f"address (dims {self.dims}, strides {self.strides})")
        return pix


def index_view(idx: np.ndarray | None, shape: tuple[int, ...], where: str) -> View:
    """The view of a kernel operand: contiguous `shape`, or the strided form of `idx`."""
    if idx is None:
        dims = pad4(shape, where)
        return View(0, dims, contig(dims))
    dims = pad4(idx.shape, where)
    a = idx.reshape(dims).astype(np.int64)
    base = int(a.reshape(-1)[0]) if a.size else 0
    strides = []
    for k in range(4):
        if dims[k] > 1:
            unit = [0, 0, 0, 0]
            unit[k] = 1
            strides.append(int(a[tuple(unit)]) - base)
        else:
            strides.append(0)
    grid = np.indices(dims).reshape(4, -1)
    rebuilt = base + sum(grid[k] * strides[k] for k in range(4))
    if not np.array_equal(rebuilt, a.reshape(-1)):
        raise PexError(f"{where}: a layout copy the C emitter cannot express as a strided view")
    return View(base, dims, tuple(strides))


def hexf(x: float) -> str:
    """An exact C99 double literal."""
    x = float(x)
    if not math.isfinite(x):
        raise PexError(f"codegen: non-finite constant {x}")
    return x.hex() if x != 0.0 else "0.0"


def ints(values: np.ndarray | list[int], per_line: int = 24) -> str:
    """A C initialiser body of integers, `per_line` to a line."""
    vals = [str(int(v)) for v in np.asarray(values).reshape(-1).tolist()]
    if not vals:
        vals = ["0"]
    lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    return "    " + ",\n    ".join(lines)
