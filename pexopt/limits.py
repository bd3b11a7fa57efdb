"""Caps on what pexopt reads and the ranges of its numeric options (issue #13 items 12-14).

Each cap is checked before the work or the allocation it bounds; a value outside it is one
`PexError` line naming the option, file or field (README "What is checked" lists them). JSON
that pexopt writes is strict (no NaN or Infinity), and the plan reader refuses it too.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pexopt.errors import PexError

# -- numeric options (CLI, target profiles, sweep files) ----------------------------------------
MAX_TIME_LIMIT = 1e6  # seconds (11.6 days): also CP-SAT's max_time_in_seconds
MAX_WORKERS = 256  # CP-SAT threads, or sweep processes
MAX_SEED = (1 << 31) - 1  # CP-SAT's random_seed is an int32
MAX_ALIGN = 4096  # bytes, a power of two
MAX_BYTES = 1 << 31  # an SRAM budget or a profile's sram_bytes (2 GiB)
MAX_DIM = 1 << 31  # elements of an --input-shape (every dimension and their product)
MAX_PARETO_POINTS = 64
MAX_PRUNE_STEP = 4096
MAX_SIM_INPUTS = 1000
MAX_RANDOM_DAGS = 1000
MAX_DAG_OPS = 2000
MAX_LATENCY_INSTRUCTIONS = 1 << 50  # a --latency bound (CP-SAT sums it in int64)
CLOCK_HZ = (1e3, 1e11)  # a target profile's clock
CYCLES_PER_INSTRUCTION = (1e-3, 1e3)
MAX_COST_PER_UNIT = 1e7  # instructions per call/pixel/output/tap/MAC of a kernel class
MAX_SLICE_WIDTHS = 64  # entries of a profile's solver.slice_widths
MAX_SLICE_WIDTH = 1 << 16

# -- plan files (pexopt/plan/format.py) ----------------------------------------------------------
MAX_PLAN_BYTES = 32 << 20  # 32 MiB
MAX_PLAN_DEPTH = 16  # JSON nesting; a plan needs 4
MAX_PLAN_VALUES = 4_000_000  # JSON values (commas + brackets), counted before parsing
MAX_PLAN_STEPS = 200_000
MAX_PLAN_BUFFERS = 200_000
MAX_INT_DIGITS = 19  # digits of a plan's integers (|n| < 10^19; ranges: the validator)

# -- sweep files (pexopt/sweep/config.py) --------------------------------------------------------
MAX_GLOB_MATCHES = 1000  # files one `models:` glob may match
MAX_GLOB_ENTRIES = 50_000  # folder entries one glob may visit (symlinks not followed)
MAX_SWEEP_POINTS = 100_000  # points of one sweep (the product or the list)
MAX_RESOLUTION = 1 << 14  # height or width of a sweep resolution


def check_int(what: str, v: Any, lo: int, hi: int) -> int:
    """`v` as an int in [lo, hi], else one line naming `what` and the range."""
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise PexError(f"{what}: {_show(v)} is not a whole number in {lo:,}..{hi:,}")
    return v


def check_float(what: str, v: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """`v` as a finite float in [lo, hi] (or (lo, hi] with `lo_open`), else one line."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    f = float(v) if ok and (not isinstance(v, int) or abs(v) < 1 << 1000) else math.nan
    if not (math.isfinite(f) and (lo < f if lo_open else lo <= f) and f <= hi):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise PexError(f"{what}: {_show(v)} is not a finite number in {rng}")
    return f


def _show(v: Any) -> str:
    text = repr(v) if not isinstance(v, int) or abs(v) < 10 ** 30 else "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


# -- strict JSON ---------------------------------------------------------------------------------

def _finite_path(obj: Any, path: str = "") -> str | None:
    """The path of the first NaN or infinite float inside `obj` (None if there is none)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "(top level)"
    items = obj.items() if isinstance(obj, dict) else \
        enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _finite_path(v, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]")
        if found is not None:
            return found.lstrip(".")
    return None


def dumps(obj: Any, what: str = "JSON output", **kw: Any) -> str:
    """`json.dumps` that never writes NaN or Infinity (not JSON): a non-finite number is one
    line naming `what` and the field, and nothing is written."""
    try:
        return json.dumps(obj, allow_nan=False, **kw)
    except ValueError:
        field = _finite_path(obj)
        if field is None:
            raise
        raise PexError(f"{what}: field '{field}' is not a finite number; JSON cannot hold "
                       "it, nothing written") from None


class _Refused(Exception):
    """Raised by the parse hooks; load_json turns it into one PexError line."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-')):,} digits (at most "
                       f"{MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 100:
        raise _Refused(f"a number written with {len(text):,} characters")
    v = float(text)
    if not math.isfinite(v):
        raise _Refused(f"the number {text[:20]} is out of range")
    return v


def _parse_constant(text: str) -> Any:
    raise _Refused(f"{text} is not a number JSON allows")


def _count_values(raw: bytes, max_values: int) -> None:
    """An upper bound on the JSON values (commas and brackets, strings included), counted
    before parsing so that no file makes millions of Python objects."""
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if values > max_values:
        raise _Refused(f"more than {max_values:,} JSON values; refusing to parse it")


_DIGITS = bytes(ord("0") if chr(i).isdigit() and i < 128 else ord(" ") for i in range(256))


def _long_digits(raw: bytes) -> bool:
    """Whether a run of more than MAX_INT_DIGITS digits occurs anywhere (strings included)."""
    return b"0" * (MAX_INT_DIGITS + 1) in raw.translate(_DIGITS)


def _check_depth(obj: Any, max_depth: int) -> None:
    """Nesting at most `max_depth` (the parser itself stops near 1,000 levels)."""
    level: list[Any] = [obj]  # the containers at depth 1, 2, ...
    for _ in range(max_depth):
        level = [v for c in level for v in (c.values() if isinstance(c, dict) else c)
                 if isinstance(v, (dict, list))]
        if not level:
            return
    raise _Refused(f"JSON nested more than {max_depth} levels deep")


def load_json(raw: bytes, where: str, *, what: str = "JSON", error: type = PexError,
              max_depth: int = MAX_PLAN_DEPTH, max_values: int = MAX_PLAN_VALUES) -> Any:
    """Parse size-capped JSON bytes strictly: nesting and value count checked first, then
    integers beyond int64, out-of-range floats and NaN/Infinity refused while parsing. Every
    failure is one `error` line starting with `where`."""
    try:
        _count_values(raw, max_values)
        # the integer hook costs a Python call per integer: only where a long one may be
        hook = _parse_int if _long_digits(raw) else int
        obj = json.loads(raw.decode("utf-8"), parse_int=hook, parse_float=_parse_float,
                         parse_constant=_parse_constant)
        if isinstance(obj, (dict, list)):
            _check_depth(obj, max_depth)
        return obj
    except _Refused as e:
        raise error(f"{where}: {e}") from None
    except RecursionError:
        raise error(f"{where}: JSON nested more than {max_depth} levels deep") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{where}: not a {what} ({e.__class__.__name__})") from None
