"""Sweep files (YAML): which models, input sizes, budgets and modes to plan, validated up front.

Every error names the file, the line and the field (``sweep.yaml:7: budgets[1]: ...``); all of
them are collected and raised as one `PexError`, before anything runs or is written.

    models: [../models/mbv1_w025_r96_int8.onnx, "../models/mbv2_*_int8.onnx"]  # paths, globs
    resolutions: [96, 128x160]     # optional: rescale the image input (height x width)
    budgets: [64k, 128k]           # SRAM sizes (k = 1024)
    modes: [layerwise, split]      # optional, default [hybrid]; also rows
    latency: [50ms]                # optional: a bound on the target profile's estimate
    targets: [cortex-m4]           # optional: profile (name or .yaml): scratch, latency
    solver: {time_limit: 30, workers: 1, seed: 0}
    simulate: false
    points:                        # optional: explicit points instead of the product
      - {model: ../models/resnet8_int8.onnx, budget: 48k, mode: split}

Relative model paths and globs are relative to the sweep file's folder; a single value may
stand for a list of one. In `points`, a missing key takes the top-level value when that list has
exactly one (mode defaults to hybrid, as `solve` does). `resolutions` apply to models whose single
image input can be resized and whose shapes re-infer (see rescale.py); other models fail that
point, with the reason, when the sweep runs.

The YAML node access and its errors are in config_yaml.py, the value parsers in config_values.py.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pexopt import limits as lim
from pexopt.errors import PexError
from pexopt.sweep.config_values import (
    _LIST_KEYS,
    _PARSERS,
    _is_int,
    _is_num,
    _model,
)
from pexopt.sweep.config_yaml import _Errors, _kind, _NotScalar, _Reader

__all__ = [  # the sweep file's public names (the parsers live in config_values.py)
    "POINT_KEYS", "SOLVER_KEYS", "TOP_KEYS", "Point", "SolverSettings", "Sweep", "load_sweep",
    "res_text",
]

TOP_KEYS = ("models", "resolutions", "budgets", "latency", "targets", "modes", "solver",
            "simulate", "codegen", "points")
SOLVER_KEYS = ("time_limit", "workers", "seed")
POINT_KEYS = ("model", "resolution", "budget", "mode", "latency", "target")


@dataclass(frozen=True)
class SolverSettings:
    """CP-SAT settings shared by every point (workers = CP-SAT threads per point)."""

    time_limit: float = 30.0
    workers: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Point:
    """One independent planning task."""

    model: str  # absolute path of the ONNX file
    resolution: tuple[int, int] | None  # (height, width) of the image input, None = as is
    budget: int  # bytes
    mode: str  # layerwise | split | rows | hybrid
    latency: str | None = None  # a bound on the target profile's estimate
    target: str | None = None  # recorded

    @property
    def model_name(self) -> str:
        return Path(self.model).stem

    def settings(self) -> dict[str, Any]:
        """What defines the point besides the model's bytes (part of its resume key)."""
        return {"resolution": res_text(self.resolution), "budget": self.budget,
                "mode": self.mode, "latency": self.latency, "target": self.target}

    def label(self) -> str:
        parts = [self.model_name]
        if self.resolution:
            parts.append(f"r{res_text(self.resolution)}")
        parts += [f"b{self.budget}", self.mode]
        if self.target:
            parts.append(f"t{self.target}")
        if self.latency:
            parts.append(f"l{self.latency}")
        return "__".join(parts)


@dataclass
class Sweep:
    path: Path
    points: list[Point]
    solver: SolverSettings = field(default_factory=SolverSettings)
    simulate: bool = False
    codegen: bool = False

    def settings(self) -> dict[str, Any]:
        return {"solver": asdict(self.solver), "simulate": self.simulate,
                "codegen": self.codegen}


def res_text(res: tuple[int, int] | None) -> str | None:
    return None if res is None else f"{res[0]}x{res[1]}"





def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; any problem is one PexError naming file, line, field."""
    path = Path(path)
    if not path.is_file():
        raise PexError(f"{path}: no such sweep file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise PexError(f"{path}: cannot read the sweep file ({type(e).__name__})") from None
    err = _Errors(path)
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            raise PexError(f"{path}:{line}: YAML syntax error: {e.problem or e}") from None
        except yaml.YAMLError as e:
            raise PexError(f"{path}: YAML error: {e}") from None
        sweep = _read(_Reader(loader, err), root, path)
    finally:
        loader.dispose()
    err.raise_any()
    assert sweep is not None
    return sweep


def _read(r: _Reader, root: yaml.Node | None, path: Path) -> Sweep | None:
    err = r.err
    if root is None:
        err.add(None, "(top level)", "the sweep file is empty")
        return None
    top = r.mapping(root, "", TOP_KEYS)
    if top is None:
        return None
    base = path.parent
    values: dict[str, list[tuple[Any, yaml.Node]]] = {}  # key -> [(value, node)]
    for key, single in _LIST_KEYS.items():
        if key in top:
            values[key] = _parse_list(r, top[key][1], key, _PARSERS[single])
    if "models" in top:
        values["models"] = []
        for n, where in r.items(top["models"][1], "models"):
            try:
                values["models"] += [(m, n) for m in _model(r.scalar(n), base)]
            except ValueError as e:
                err.add(n, where, str(e))
    solver = _solver(r, top["solver"][1]) if "solver" in top else SolverSettings()
    flags = {"simulate": False, "codegen": False}
    for key in flags:
        if key in top:
            v = r.scalar(top[key][1])
            if isinstance(v, bool):
                flags[key] = v
            else:
                err.add(top[key][1], key, f"expected true or false, got {_kind(top[key][1])}")
    if "points" in top:
        points = _points(r, top["points"], values, base)
    else:
        points = _product(r, root, top, values)
    if err.items:
        return None
    uniq = list(dict.fromkeys(points))
    return Sweep(path=path, points=uniq, solver=solver, simulate=flags["simulate"],
                 codegen=flags["codegen"])


def _parse_list(r: _Reader, node: yaml.Node, key: str, parse: Any) -> list[tuple[Any, yaml.Node]]:
    res = []
    for n, where in r.items(node, key):
        v = r.scalar(n)
        if v is _NotScalar:
            r.err.add(n, where, f"expected a value, got {_kind(n)}")
            continue
        try:
            res.append((parse(v), n))
        except ValueError as e:
            r.err.add(n, where, str(e))
    return res


def _solver(r: _Reader, node: yaml.Node) -> SolverSettings:
    m = r.mapping(node, "solver", SOLVER_KEYS)
    if not m:
        return SolverSettings()
    kw: dict[str, Any] = {}
    for key, (_, vn) in m.items():
        v = r.scalar(vn)
        where = f"solver.{key}"
        if key == "time_limit" and not (_is_num(v) and 0 < v <= lim.MAX_TIME_LIMIT):
            r.err.add(vn, where, f"expected a number of seconds in (0, {lim.MAX_TIME_LIMIT:g}]"
                      f", got {_kind(vn)}")
        elif key == "workers" and not (_is_int(v) and 1 <= v <= lim.MAX_WORKERS):
            r.err.add(vn, where, f"expected a whole number in 1..{lim.MAX_WORKERS}, "
                      f"got {_kind(vn)}")
        elif key == "seed" and not (_is_int(v) and 0 <= v <= lim.MAX_SEED):
            r.err.add(vn, where, f"expected a whole number in 0..{lim.MAX_SEED:,}, "
                      f"got {_kind(vn)}")
        else:
            kw[key] = float(v) if key == "time_limit" else v
    return SolverSettings(**kw)


def _product(r: _Reader, root: yaml.Node, top: dict, values: dict) -> list[Point]:
    for key in ("models", "budgets"):
        if key not in top:
            r.err.add(root, key, f"missing key '{key}' (or give explicit 'points')")
    if r.err.items:
        return []
    dims = {"models": values["models"], "resolutions": values.get("resolutions", [(None, None)]),
            "budgets": values["budgets"], "modes": values.get("modes", [("hybrid", None)]),
            "latency": values.get("latency", [(None, None)]),
            "targets": values.get("targets", [(None, None)])}
    empty = [k for k, v in dims.items() if not v]
    for k in empty:
        if k != "models":  # an unmatched model already has its own error
            r.err.add(top[k][1], k, f"empty product: '{k}' is empty, so the sweep has no points")
    if not dims["models"] and not r.err.items:
        r.err.add(top["models"][1], "models", "empty product: no models")
    if r.err.items:
        return []
    n = math.prod(len(v) for v in dims.values())
    if n > lim.MAX_SWEEP_POINTS:  # before building them
        r.err.add(root, "(top level)", f"the product has {n:,} points, more than "
                  f"{lim.MAX_SWEEP_POINTS:,}; split the sweep")
        return []
    return [Point(model=m, resolution=res, budget=b, mode=mo, latency=lat, target=t)
            for (m, _), (res, _), (b, _), (mo, _), (lat, _), (t, _)
            in itertools.product(*dims.values())]


def _points(r: _Reader, entry: tuple[yaml.Node, yaml.Node], values: dict, base: Path
            ) -> list[Point]:
    node = entry[1]
    if not isinstance(node, yaml.SequenceNode):
        r.err.add(node, "points", f"expected a list of points, got {_kind(node)}")
        return []
    if not node.value:
        r.err.add(node, "points", "empty product: 'points' is empty, so the sweep has no points")
        return []
    defaults = {"model": "models", "resolution": "resolutions", "budget": "budgets",
                "mode": "modes", "latency": "latency", "target": "targets"}
    res = []
    for i, pn in enumerate(node.value):
        where = f"points[{i}]"
        m = r.mapping(pn, where, POINT_KEYS)
        if m is None:
            continue
        got: dict[str, list[Any]] = {}
        ok = True
        for key in POINT_KEYS:
            if key in m:
                vn = m[key][1]
                v = r.scalar(vn)
                try:
                    if v is _NotScalar:
                        raise ValueError(f"expected a value, got {_kind(vn)}")
                    got[key] = _model(v, base) if key == "model" else [_PARSERS[key](v)]
                except ValueError as e:
                    r.err.add(vn, f"{where}.{key}", str(e))
                    ok = False
                continue
            top = values.get(defaults[key])
            if top is not None and len(top) == 1:
                got[key] = [top[0][0]]
            elif top is not None and len(top) > 1:
                r.err.add(pn, f"{where}.{key}", f"missing '{key}' (the top-level "
                          f"'{defaults[key]}' has {len(top)} values, so none is a default)")
                ok = False
            elif key in ("model", "budget"):
                r.err.add(pn, f"{where}.{key}", f"missing '{key}'")
                ok = False
            else:
                got[key] = ["hybrid" if key == "mode" else None]
        if ok:
            res += [Point(model=mo, resolution=got["resolution"][0], budget=got["budget"][0],
                          mode=got["mode"][0], latency=got["latency"][0],
                          target=got["target"][0]) for mo in got["model"]]
        if len(res) > lim.MAX_SWEEP_POINTS:
            r.err.add(pn, where, f"more than {lim.MAX_SWEEP_POINTS:,} points; split the sweep")
            return []
    return res
