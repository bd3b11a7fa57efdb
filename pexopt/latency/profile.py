"""Target profiles: a board's clock, SRAM, solver settings and the per-kernel cost coefficients.

A profile is YAML (`solver_configs/<name>.yaml`, or any path a user passes). Costs are in
*instructions* executed inside `pex_invoke` by pexopt's portable kernels, fitted by
`pexopt calibrate` from exact QEMU instruction counts; QEMU does not model cycles, so
`cycles_per_instruction` is a stated assumption that turns instructions into cycles and
milliseconds. Every error is one line naming the file and the field.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pexopt import limits as lim
from pexopt.errors import PexError
from pexopt.latency.features import CLASS_FEATURES, COST_CLASSES, unit_key

FORMAT = "pexopt-profile/1"
PROFILE_DIR = Path(__file__).resolve().parents[2] / "solver_configs"
CORES = ("cortex-m4", "cortex-m7", "cortex-m55")
TOP_KEYS = ("format", "name", "core", "board", "sram_bytes", "clock_hz", "qemu_board",
            "cycles_per_instruction", "measured", "note", "solver", "costs", "fit")
SOLVER_KEYS = ("time_limit", "workers", "slice_widths")


class ProfileError(PexError):
    """A profile file is missing, not YAML, or has a wrong or missing field."""


@dataclass(frozen=True)
class SolverSettings:
    """Solver defaults for this target; `slice_widths` None means pexopt's default widths."""

    time_limit: float = 30.0
    workers: int = 2
    slice_widths: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Profile:
    """One target: `costs[cls][unit_key(count)]` instructions per unit (latency.features)."""

    name: str
    core: str  # codegen target (CMSIS-NN architecture, QEMU compiler flags)
    board: str
    sram_bytes: int
    clock_hz: float
    cycles_per_instruction: float  # an assumption: QEMU counts instructions, not cycles
    costs: dict[str, dict[str, float]]
    solver: SolverSettings = field(default_factory=SolverSettings)
    qemu_board: str | None = None  # the board the coefficients were measured on
    measured: str = ""
    note: str = ""
    fit: dict[str, dict[str, float]] = field(default_factory=dict)
    path: str = ""
    sha256: str = ""

    def coefficient(self, cls: str, count: str) -> float:
        """Instructions per unit of `count` for kernel class `cls` (0 if the class omits it)."""
        return self.costs.get(cls, {}).get(unit_key(count), 0.0)


def display_path(p: Profile) -> str:
    """The profile's file as a plan records it: solver_configs/<name>.yaml for shipped ones."""
    path = Path(p.path)
    if path.parent == PROFILE_DIR:
        return f"{PROFILE_DIR.name}/{path.name}"
    return p.path


def shipped_profiles() -> list[str]:
    """Names of the profiles in solver_configs/."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A shipped profile's file for a bare name, else the path itself."""
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(shipped_profiles()) or "none"
            raise ProfileError(f"--target: '{name_or_path}' is neither a shipped profile "
                               f"({known}) nor a .yaml path")
        return path
    return Path(name_or_path)


def load_profile(name_or_path: str) -> Profile:
    """Load and validate a profile: a shipped name (`cortex-m4`) or a YAML path."""
    path = resolve(str(name_or_path))
    if not path.is_file():
        raise ProfileError(f"{path}: no such profile file")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"{path}{line}: not valid YAML ({type(e).__name__})") from None
    prof = profile_from_dict(data, str(path))
    return replace(prof, path=str(path), sha256=hashlib.sha256(raw).hexdigest())


def _err(where: str, key: str, msg: str) -> ProfileError:
    return ProfileError(f"{where}: {key}: {msg}")


def _number(d: dict, key: str, where: str, positive: bool = True, integer: bool = False,
            default: Any = ..., lo: float = 0.0, hi: float = math.inf) -> Any:
    """A number field in [lo, hi] (lo excluded when `positive` and lo is 0)."""
    if key not in d:
        if default is ...:
            raise _err(where, key, "missing")
        return default
    v = d[key]
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    # comparisons, not math.isfinite: that raises OverflowError on a 400-digit integer
    if isinstance(v, bool) or not ok or not -math.inf < v < math.inf:
        raise _err(where, key, f"must be {'an integer' if integer else 'a number'}, "
                   f"not {_short(v)}")
    if v < 0 or (positive and v == 0):
        raise _err(where, key, f"must be {'positive' if positive else '>= 0'}, not {_short(v)}")
    if not lo <= v <= hi:
        raise _err(where, key, f"must be in [{lo:g}, {hi:g}], not {_short(v)}")
    return v


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(d: dict, key: str, where: str, default: str | None = None) -> str | None:
    v = d.get(key, default)
    if v is not None and not isinstance(v, str):
        raise _err(where, key, f"must be text, not {v!r}")
    return v


def _unknown(d: dict, allowed: tuple[str, ...], where: str, prefix: str = "") -> None:
    for k in d:
        if k not in allowed:
            raise _err(where, f"{prefix}{k}", f"unknown field (allowed: {', '.join(allowed)})")


def profile_from_dict(d: Any, where: str = "profile") -> Profile:
    """A validated Profile from parsed YAML; errors name `where` and the field."""
    if not isinstance(d, dict):
        raise ProfileError(f"{where}: not a mapping of profile fields")
    _unknown(d, TOP_KEYS, where)
    if d.get("format") != FORMAT:
        raise _err(where, "format", f"must be {FORMAT}, not {d.get('format')!r}")
    name = _text(d, "name", where)
    if not name:
        raise _err(where, "name", "missing")
    core = _text(d, "core", where)
    if core not in CORES:
        raise _err(where, "core", f"must be one of {', '.join(CORES)}, not {core!r}")
    sol = d.get("solver", {}) or {}
    if not isinstance(sol, dict):
        raise _err(where, "solver", "must be a mapping")
    _unknown(sol, SOLVER_KEYS, where, "solver.")
    widths = sol.get("slice_widths")
    if widths is not None:
        if (not isinstance(widths, list) or not 0 < len(widths) <= lim.MAX_SLICE_WIDTHS
                or not all(isinstance(w, int) and not isinstance(w, bool)
                           and 0 < w <= lim.MAX_SLICE_WIDTH for w in widths)):
            raise _err(where, "solver.slice_widths", f"must be null or a list of at most "
                       f"{lim.MAX_SLICE_WIDTHS} integers in 1..{lim.MAX_SLICE_WIDTH}")
        widths = tuple(sorted(set(widths)))
    solver = SolverSettings(time_limit=float(_number(sol, "time_limit", f"{where}: solver",
                                                     default=30.0, hi=lim.MAX_TIME_LIMIT)),
                            workers=_number(sol, "workers", f"{where}: solver", integer=True,
                                            default=2, lo=1, hi=lim.MAX_WORKERS),
                            slice_widths=widths)
    costs_raw = d.get("costs")
    if not isinstance(costs_raw, dict):
        raise _err(where, "costs", "missing or not a mapping of kernel classes")
    costs: dict[str, dict[str, float]] = {}
    for cls in COST_CLASSES:
        c = costs_raw.get(cls)
        if not isinstance(c, dict):
            raise _err(where, f"costs.{cls}", "missing or not a mapping")
        keys = tuple(unit_key(f) for f in CLASS_FEATURES[cls])
        _unknown(c, keys, where, f"costs.{cls}.")
        for k in keys:
            if k not in c:
                raise _err(where, f"costs.{cls}.{k}", "missing")
        costs[cls] = {k: float(_number(c, k, f"{where}: costs.{cls}", positive=False,
                                       hi=lim.MAX_COST_PER_UNIT)) for k in keys}
    _unknown(costs_raw, COST_CLASSES, where, "costs.")
    fit = d.get("fit", {}) or {}
    if not isinstance(fit, dict):
        raise _err(where, "fit", "must be a mapping")
    qb = _text(d, "qemu_board", where)
    return Profile(name=name, core=core, board=_text(d, "board", where, "") or "",
                   sram_bytes=_number(d, "sram_bytes", where, integer=True, lo=1,
                                      hi=lim.MAX_BYTES),
                   clock_hz=float(_number(d, "clock_hz", where, lo=lim.CLOCK_HZ[0],
                                          hi=lim.CLOCK_HZ[1])),
                   cycles_per_instruction=float(_number(
                       d, "cycles_per_instruction", where, lo=lim.CYCLES_PER_INSTRUCTION[0],
                       hi=lim.CYCLES_PER_INSTRUCTION[1])),
                   costs=costs, solver=solver, qemu_board=qb,
                   measured=_text(d, "measured", where, "") or "",
                   note=_text(d, "note", where, "") or "", fit=dict(fit))


def profile_yaml(p: Profile, header: str = "") -> str:
    """The YAML text of a profile (the calibration writes this); `header` becomes comments."""
    d: dict[str, Any] = {
        "format": FORMAT, "name": p.name, "core": p.core, "board": p.board,
        "sram_bytes": p.sram_bytes, "clock_hz": p.clock_hz, "qemu_board": p.qemu_board,
        "cycles_per_instruction": p.cycles_per_instruction, "measured": p.measured,
        "note": p.note,
        "solver": {"time_limit": p.solver.time_limit, "workers": p.solver.workers,
                   "slice_widths": list(p.solver.slice_widths) if p.solver.slice_widths
                   else None},
        "costs": {c: {k: round(v, 4) for k, v in p.costs[c].items()} for c in COST_CLASSES},
        "fit": p.fit,
    }
    body = yaml.safe_dump(d, sort_keys=False, width=100)
    lines = [f"# {ln}".rstrip() for ln in header.splitlines()]
    return "\n".join(lines + [body]) if lines else body


def resolve_target(target: str) -> tuple[Profile | None, str]:
    """(profile or None, codegen core) of a `--target`: a shipped profile name or a .yaml path
    gives its profile and core; a CMSIS-NN core without a shipped profile (e.g. cortex-m33)
    gives that core alone (no latency model)."""
    from pexopt.cmsis_scratch import TARGETS

    if target in TARGETS and target not in shipped_profiles():
        return None, target
    profile = load_profile(target)
    return profile, profile.core
