"""The package graph is acyclic (issue #14 item 5): a unit is a subpackage of pexopt/ (graph,
solver, plan, ...) or a top-level module (pipeline, cli, ...); every `import pexopt.X` and
`from pexopt.X import ...` is an edge, function-local and TYPE_CHECKING imports included."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pexopt"
ROOT_UNIT = "pexopt"  # pexopt/__init__.py


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    file: str  # relative to the repository root
    line: int

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst}  ({self.file}:{self.line})"


def unit_of_file(path: Path, pkg: Path = PKG) -> str:
    parts = path.relative_to(pkg).parts
    if len(parts) > 1:
        return parts[0]
    return ROOT_UNIT if parts[0] == "__init__.py" else path.stem


def unit_of_module(module: str) -> str | None:
    """'pexopt.plan.build' -> 'plan', 'pexopt.cli' -> 'cli', 'pexopt' -> 'pexopt', 'os' -> None."""
    parts = module.split(".")
    if parts[0] != "pexopt":
        return None
    return parts[1] if len(parts) > 1 else ROOT_UNIT


def _is_module(module: str, pkg: Path) -> bool:
    rel = Path(*module.split(".")[1:])
    return (pkg / rel).is_dir() or (pkg / rel).with_suffix(".py").is_file()


def imported_modules(path: Path, pkg: Path = PKG) -> list[tuple[str, int]]:
    """Every module the file imports, with the statement's line, wherever the statement is."""
    package = ["pexopt", *path.relative_to(pkg).parent.parts]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:  # `from pexopt import limits` imports pexopt.limits
                sub = f"{module}.{alias.name}"
                inner = module.split(".")[0] == "pexopt" and _is_module(sub, pkg)
                found.append((sub if inner else module, node.lineno))
    return found


def unit_edges(pkg: Path = PKG) -> list[Edge]:
    """One edge per import statement between two different units."""
    edges = []
    root = pkg.parent
    for path in sorted(pkg.rglob("*.py")):
        src = unit_of_file(path, pkg)
        for module, line in imported_modules(path, pkg):
            dst = unit_of_module(module)
            if dst is not None and dst != src:
                edges.append(Edge(src, dst, path.relative_to(root).as_posix(), line))
    return list(dict.fromkeys(edges))  # one per statement, however many names it imports


def unit_graph(edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle [a, b, ..., a] where each unit imports the next, or None if the graph is acyclic."""
    try:  # sorted: the same cycle whatever the hash seed
        tuple(TopologicalSorter({u: sorted(d) for u, d in sorted(graph.items())}).static_order())
    except CycleError as err:
        # graphlib reads graph[u] as u's predecessors and lists the cycle along successor edges,
        # that is from the imported unit to the importer: reversed, each unit imports the next.
        return list(reversed(err.args[1]))
    return None


def order(graph: dict[str, set[str]]) -> list[str]:
    """The units, each after every unit it imports (ties by name, so the order is stable)."""
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    out: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        out += ready
        sorter.done(*ready)
    return out


def cycle_report(cycle: list[str], edges: list[Edge]) -> str:
    lines = ["import cycle between units: " + " -> ".join(cycle)]
    for src, dst in zip(cycle, cycle[1:]):
        lines += [f"  {e}" for e in edges if (e.src, e.dst) == (src, dst)]
    return "\n".join(lines)


def test_package_graph_is_acyclic() -> None:
    edges = unit_edges()
    graph = unit_graph(edges)
    assert {"graph", "solver", "plan", "pipeline", "cli"} <= graph.keys()  # the parse saw them
    cycle = find_cycle(graph)
    assert cycle is None, cycle_report(cycle, edges)


def test_low_units_stay_low() -> None:
    """Data flows solver -> plan: plan (and the schedule types) never import the solver."""
    graph = unit_graph(unit_edges())
    assert "solver" not in graph["plan"]
    assert graph.get("schedule", set()) <= {"graph", "partial", "errors", "ops", ROOT_UNIT}


def test_find_cycle_on_a_hand_made_graph() -> None:
    acyclic = {"cli": {"pipeline", "plan"}, "pipeline": {"solver", "plan"}, "solver": {"graph"},
               "plan": {"graph"}, "graph": set()}
    assert find_cycle(acyclic) is None
    assert order(acyclic) == ["graph", "plan", "solver", "pipeline", "cli"]

    cyclic = {**acyclic, "plan": {"graph", "solver"}, "solver": {"graph", "latency"},
              "latency": {"plan"}}
    cycle = find_cycle(cyclic)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"plan", "solver", "latency"}
    assert all(b in cyclic[a] for a, b in zip(cycle, cycle[1:]))  # each imports the next
    with pytest.raises(CycleError):
        order(cyclic)


def test_unit_edges_count_local_imports_and_report_lines(tmp_path: Path) -> None:
    pkg = tmp_path / "pexopt"
    (pkg / "plan").mkdir(parents=True)
    (pkg / "solver").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "limits.py").write_text("")
    (pkg / "plan" / "__init__.py").write_text("")
    (pkg / "plan" / "build.py").write_text(
        "import os\nfrom pexopt.solver.core import Schedule\nfrom pexopt.plan import format\n")
    (pkg / "solver" / "__init__.py").write_text("")
    (pkg / "solver" / "core.py").write_text(
        "from pexopt import limits\n\n\ndef f():\n    import pexopt.plan.build\n"
        "    from ..plan import build\n")
    edges = unit_edges(pkg)
    assert sorted(map(str, edges)) == [
        "plan -> solver  (pexopt/plan/build.py:2)",
        "solver -> limits  (pexopt/solver/core.py:1)",
        "solver -> plan  (pexopt/solver/core.py:5)",
        "solver -> plan  (pexopt/solver/core.py:6)",
    ]
    cycle = find_cycle(unit_graph(edges))
    assert cycle is not None
    report = cycle_report(cycle, edges)
    assert "pexopt/plan/build.py:2" in report and "pexopt/solver/core.py:5" in report
