"""The values of a sweep file: budgets, modes, input sizes, latency bounds, targets and model
paths or globs, each parsed from one YAML scalar (a ValueError says what is wrong).
"""

from __future__ import annotations

import glob
import math
import re
from pathlib import Path
from typing import Any

from pexopt import limits as lim
from pexopt.errors import PexError
from pexopt.sweep.safe_glob import safe_glob

MODES = ("layerwise", "split", "rows", "hybrid")  # split = channel splits; hybrid = + rows
FUTURE_MODES = ("prune",)  # accepted by the schema once pexopt implements them
_LATENCY_RE = re.compile(r"\s*([0-9]*\.?[0-9]+(e[+-]?[0-9]+)?)\s*(us|ms|s|cycles)?\s*", re.I)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool)


def parse_resolution(v: Any) -> tuple[int, int]:
    """96 -> (96, 96); '96x128' -> (96, 128) (height x width), each 1..MAX_RESOLUTION."""
    top = lim.MAX_RESOLUTION
    if _is_int(v) and 0 < v <= top:
        return (v, v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]{1,9})\s*(?:[xX]\s*([0-9]{1,9}))?\s*", v)
        if m:
            h = int(m.group(1))
            w = int(m.group(2)) if m.group(2) else h
            if 0 < h <= top and 0 < w <= top:
                return (h, w)
    raise ValueError(f"'{str(v)[:40]}' is not an input size like 96 or 96x128 (each side "
                     f"1..{top})")


def _budget(v: Any) -> int:
    from pexopt.pipeline import parse_bytes

    if _is_int(v):
        if not 0 < v <= lim.MAX_BYTES:
            raise ValueError(f"'{str(v)[:40]}' is not a number of bytes in 1..{lim.MAX_BYTES:,}")
        return v
    if isinstance(v, str | float) and not isinstance(v, bool):
        try:
            return parse_bytes(str(v), "budget")
        except PexError:
            raise ValueError(f"'{str(v)[:40]}' is not a size like 131072, 128k, 128KiB or 0.5M "
                             f"(at most {lim.MAX_BYTES:,} bytes)") from None
    raise ValueError(f"expected a size like 128k, got {type(v).__name__} '{v}'")


def _mode(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a mode ({', '.join(MODES)}), got {type(v).__name__} '{v}'")
    if v in FUTURE_MODES:
        raise ValueError(f"mode '{v}' is not available yet")
    if v not in MODES:
        raise ValueError(f"unknown mode '{v}' (modes: {', '.join(MODES)})")
    return v


def _latency(v: Any) -> str:
    if _is_num(v) and 0 < v < math.inf:
        return f"{v}ms"
    m = _LATENCY_RE.fullmatch(v) if isinstance(v, str) else None
    if m and 0 < float(m.group(1)) < math.inf:  # the profile's caps apply when it runs
        return v.strip()
    raise ValueError(f"'{v}' is not a latency like 50ms, 2s, 800us or 1e6cycles "
                     "(a bare number is milliseconds)")


def _target(v: Any) -> str:
    if isinstance(v, str) and v.strip():
        return v.strip()
    raise ValueError(f"expected a target name, got {type(v).__name__} '{v}'")


def _model(v: Any, base: Path) -> list[str]:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"expected a model path or glob, got {type(v).__name__} '{v}'")
    p = Path(v).expanduser()
    full = p if p.is_absolute() else base / p
    if glob.has_magic(v):
        found = safe_glob(str(full))  # never follows symlinked folders; capped
        if not found:
            raise ValueError(f"no file matches '{v}' (looked for {full})")
        return found
    if not full.exists():
        raise ValueError(f"model '{v}' not found (looked for {full})")
    if not full.is_file():
        raise ValueError(f"model '{v}' is not a file ({full})")
    return [str(full.resolve())]


_PARSERS = {"budget": _budget, "mode": _mode, "latency": _latency, "target": _target,
            "resolution": parse_resolution}
_LIST_KEYS = {"budgets": "budget", "modes": "mode", "latency": "latency", "targets": "target",
              "resolutions": "resolution"}
