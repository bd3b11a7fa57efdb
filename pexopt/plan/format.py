"""The plan file (`pexopt-plan/2`): what runs when, and where every buffer lives in the arena.

Version 2 adds row bands (`rows` on steps, modes "band" and "halo", buffer kind "band"); version
1 files load unchanged (they have none of these).

Field names are a contract with other tools (validator, simulator, codegen, report); see README.
Steps and buffer lifetimes use inclusive step indices (`first_step`, `last_step`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from pexopt.errors import PlanError
from pexopt.limits import MAX_PLAN_BUFFERS, MAX_PLAN_BYTES, MAX_PLAN_STEPS, dumps, load_json

FORMAT = "pexopt-plan/2"
READABLE = ("pexopt-plan/1", FORMAT)
VOLATILE_SOLVER_FIELDS = ("seconds", "workers")  # not written: plans are byte-reproducible


@dataclass
class Step:
    index: int
    op: str  # ONNX node name of the operator
    kind: str
    reads: list[str]
    writes: list[str]
    slice: list[int] | None = None  # channel range [c0, c1) of a split step
    mode: str = "whole"  # whole | slice | accumulate | requantize | band | halo
    scratch: list[str] = field(default_factory=list)  # temporaries used during the step
    rows: list[int] | None = None  # output rows [r0, r1) of a band step; rows kept by a halo


@dataclass
class Buffer:
    name: str
    tensor: str | None
    kind: str  # "tensor" (later: "slice", "accumulator", "scratch")
    offset: int
    size: int
    first_step: int
    last_step: int
    alias_of: str | None = None


@dataclass
class SolverInfo:
    """How the plan was solved. `seconds` and `workers` stay in memory only: the file holds
    nothing that depends on the wall clock or the thread count, so it is reproducible."""

    status: str
    bound: int
    gap: float
    seconds: float | None
    seed: int
    workers: int | None
    time_limit: float


@dataclass
class Plan:
    model: dict[str, str]  # {"path": ..., "sha256": ...}
    arena_bytes: int
    budget_bytes: int | None
    fits: bool
    align: int
    dtype: str
    input_external: bool
    steps: list[Step]
    buffers: list[Buffer]
    solver: SolverInfo
    baselines: dict[str, Any] = field(default_factory=dict)
    splits: list[dict[str, Any]] = field(default_factory=list)
    target: str | None = None  # CMSIS-NN kernel scratch planned for it; None: none planned
    format: str = FORMAT
    # estimated instructions/cycles/ms on a target profile (README: plan format); optional
    latency: dict[str, Any] | None = None

    def to_json(self) -> str:
        d = _plain(self)
        for volatile in VOLATILE_SOLVER_FIELDS:
            d["solver"].pop(volatile, None)
        d = {"format": d.pop("format"), **d}
        if d["latency"] is None:  # plans without an estimate stay byte-identical to before
            del d["latency"]
        return dumps(d, "plan", indent=1) + "\n"

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)


def _plain(x: Any) -> Any:
    """dataclasses.asdict for plan data (dataclasses, lists, tuples, dicts, scalars), without
    its deep copies: asdict took seconds on a 5,000-operator plan."""
    if is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in fields(x)}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    if isinstance(x, dict):
        return {_plain(k): _plain(v) for k, v in x.items()}
    return x


KSCRATCH = "@kscratch"


def kscratch_name(op: str) -> str:
    """The kernel scratch (CMSIS-NN ctx.buf) buffer of an op or of a split segment (named
    after its first op); other scratch buffers are in-place temporaries (`<op>@temp`)."""
    return f"{op}{KSCRATCH}"


def is_kscratch(name: str) -> bool:
    """Whether a scratch buffer name is kernel scratch (not an in-place temporary)."""
    return name.endswith(KSCRATCH)


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write a file so that readers see either the old content or the whole new one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)  # mkstemp creates 0600; give the file the usual permissions
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _req(d: dict, key: str, typ: type | tuple, where: str) -> Any:
    if key not in d:
        raise PlanError(f"{where}: missing field '{key}'")
    v = d[key]
    if typ is int and isinstance(v, bool) or not isinstance(v, typ):
        raise PlanError(f"{where}: field '{key}' has the wrong type")
    return v


def load_plan(path: str | Path) -> Plan:
    """Read a plan file; any malformed content is a one-line PlanError naming the field."""
    p = Path(path)
    if not p.is_file():
        raise PlanError(f"{path}: no such file")
    d = load_json(_read_capped(p), str(path), what="JSON plan", error=PlanError)
    _check_counts(d, str(path))
    return plan_from_dict(d, str(path))


def _read_capped(p: Path) -> bytes:
    """The file's bytes, refused before reading when it is larger than any plan can be."""
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_PLAN_BYTES + 1)  # the size may change between stat and read
    except OSError as e:
        raise PlanError(f"{p}: cannot read ({e.strerror or type(e).__name__})") from None
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError(f"{p}: larger than {MAX_PLAN_BYTES >> 20} MiB, the largest plan "
                        "pexopt reads")
    return raw


def _check_counts(d: Any, where: str) -> None:
    """Steps and buffers within the caps, before any of them is converted."""
    if not isinstance(d, dict):
        return
    for key, cap in (("steps", MAX_PLAN_STEPS), ("buffers", MAX_PLAN_BUFFERS)):
        v = d.get(key)
        if isinstance(v, list) and len(v) > cap:
            raise PlanError(f"{where}: {len(v):,} {key}, more than the {cap:,} pexopt reads")


def plan_from_dict(d: Any, where: str = "plan") -> Plan:
    """A Plan from parsed JSON; wrong types are one-line PlanErrors naming the field."""
    try:
        return _plan_from_dict(d, where)
    except PlanError:
        raise
    except (TypeError, ValueError, AttributeError) as e:
        raise PlanError(f"{where}: malformed plan ({e})") from None


def _range(v: Any, w: str, key: str) -> list[int] | None:
    if v is None:
        return None
    if (not isinstance(v, list) or len(v) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in v)):
        raise PlanError(f"{w}: field '{key}' must be null or [lo, hi]")
    return list(v)


def _slice(v: Any, w: str) -> list[int] | None:
    return _range(v, w, "slice")


def _plan_from_dict(d: Any, where: str) -> Plan:
    if not isinstance(d, dict):
        raise PlanError(f"{where}: not a plan object")
    fmt = d.get("format")
    if fmt not in READABLE:
        raise PlanError(f"{where}: format '{fmt}' is not one of {', '.join(READABLE)}")
    model = _req(d, "model", dict, where)
    steps = []
    for i, s in enumerate(_req(d, "steps", list, where)):
        w = f"{where}: steps[{i}]"
        if not isinstance(s, dict):
            raise PlanError(f"{w}: not an object")
        steps.append(Step(index=_req(s, "index", int, w), op=_req(s, "op", str, w),
                          kind=_req(s, "kind", str, w), reads=list(_req(s, "reads", list, w)),
                          writes=list(_req(s, "writes", list, w)),
                          slice=_slice(s.get("slice"), w),
                          mode=str(s.get("mode", "whole")),
                          scratch=list(s.get("scratch", [])),
                          rows=_range(s.get("rows"), w, "rows")))
    buffers = []
    for i, b in enumerate(_req(d, "buffers", list, where)):
        w = f"{where}: buffers[{i}]"
        if not isinstance(b, dict):
            raise PlanError(f"{w}: not an object")
        buffers.append(Buffer(name=_req(b, "name", str, w), tensor=b.get("tensor"),
                              kind=_req(b, "kind", str, w), offset=_req(b, "offset", int, w),
                              size=_req(b, "size", int, w),
                              first_step=_req(b, "first_step", int, w),
                              last_step=_req(b, "last_step", int, w),
                              alias_of=b.get("alias_of")))
    s = _req(d, "solver", dict, where)
    w = f"{where}: solver"
    solver = SolverInfo(status=str(s.get("status", "")), bound=_num(s, "bound", int, 0, w),
                        gap=_num(s, "gap", float, 0.0, w),
                        seconds=_num(s, "seconds", float, None, w),
                        seed=_num(s, "seed", int, 0, w), workers=_num(s, "workers", int, None, w),
                        time_limit=_num(s, "time_limit", float, 0.0, w))
    return Plan(model={"path": str(model.get("path", "")), "sha256": str(model.get("sha256", ""))},
                arena_bytes=_req(d, "arena_bytes", int, where),
                budget_bytes=_num(d, "budget_bytes", int, None, where),
                fits=bool(d.get("fits", False)), align=_num(d, "align", int, 1, where),
                dtype=_dtype(d, where),
                input_external=bool(d.get("input_external", False)), steps=steps,
                buffers=buffers, solver=solver, baselines=_dict(d, "baselines", where),
                splits=list(d.get("splits", [])), latency=_latency(d, where),
                target=_target(d, where))


def _latency(d: dict, where: str) -> dict | None:
    """The optional `latency` object: null/absent, or an object whose estimates are numbers."""
    v = d.get("latency")
    if v is None:
        return None
    if not isinstance(v, dict):
        raise PlanError(f"{where}: field 'latency' must be an object")
    for key in ("instructions", "cycles", "ms"):
        _num(v, key, float, 0.0, f"{where}: latency")
    return dict(v)


PLAN_DTYPES = ("int8", "float32")  # the deployment dtypes a plan can be solved for


def _dtype(d: dict, where: str) -> str:
    """The plan's deployment dtype, named as the plan's field (not as `--dtype`)."""
    v = d.get("dtype", "int8")
    if v not in PLAN_DTYPES:
        shown = f"'{v}'" if isinstance(v, str) else type(v).__name__
        raise PlanError(f"{where}: field 'dtype' is {shown[:40]}, not one of "
                        f"{', '.join(PLAN_DTYPES)}")
    return v


def _target(d: dict, where: str) -> str | None:
    """Optional `target` (plans written before it existed have none)."""
    v = d.get("target")
    if v is not None and not isinstance(v, str):
        raise PlanError(f"{where}: field 'target' must be null or a string")
    return v


def _num(d: dict, key: str, typ: type, default: Any, where: str) -> Any:
    """An optional number field; a string or other type is an error naming the field."""
    v = d.get(key, default)
    if v is None and default is None:
        return None
    ok = (int,) if typ is int else (int, float)
    if isinstance(v, bool) or not isinstance(v, ok):
        raise PlanError(f"{where}: field '{key}' must be a number, not {type(v).__name__}")
    return typ(v)


def _dict(d: dict, key: str, where: str) -> dict:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise PlanError(f"{where}: field '{key}' must be an object")
    return dict(v)
