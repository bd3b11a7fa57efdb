"""A sweep file's YAML node tree, read with line numbers: typed access (`_Reader`) and the
errors it collects (`_Errors`: every one names the file, the line and the field, all raised as
one `PexError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pexopt.errors import PexError


class _Errors:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[tuple[int, str]] = []

    def add(self, node: yaml.Node | None, where: str, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.items.append((line, f"{self.path}:{line}: {where}: {msg}"))

    def raise_any(self) -> None:
        texts = [t for _, t in sorted(self.items, key=lambda x: x[0])]  # stable: by line
        if len(texts) == 1:
            raise PexError(texts[0])
        if texts:
            raise PexError(f"{len(texts)} errors: " + "; ".join(texts))


class _Reader:
    """Typed access to a composed YAML node tree (which keeps line numbers)."""

    def __init__(self, loader: yaml.SafeLoader, errors: _Errors) -> None:
        self.loader, self.err = loader, errors

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return _NotScalar
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node, where: str, allowed: tuple[str, ...]
                ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.err.add(node, where or "(top level)",
                         f"expected a mapping of {', '.join(allowed)}, got {_kind(node)}")
            return None
        res: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            key = self.scalar(k)
            name = f"{where}.{key}" if where else str(key)
            if not isinstance(key, str):
                self.err.add(k, where or "(top level)", f"key {_show(k)} is not a name")
            elif key not in allowed:
                self.err.add(k, name, f"unknown key '{key}' (known: {', '.join(allowed)})")
            elif key in res:
                self.err.add(k, name, f"duplicate key '{key}'")
            else:
                res[key] = (k, v)
        return res

    def items(self, node: yaml.Node, where: str) -> list[tuple[yaml.Node, str]]:
        """A list (or a single scalar, taken as a list of one) -> (node, field) pairs."""
        if isinstance(node, yaml.SequenceNode):
            return [(n, f"{where}[{i}]") for i, n in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode) and self.scalar(node) is not None:
            return [(node, where)]
        self.err.add(node, where, f"expected a list, got {_kind(node)}")
        return []


class _NotScalarType:
    pass


_NotScalar = _NotScalarType()


def _kind(node: yaml.Node | None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node is None or node.tag.endswith(":null"):
        return "nothing"
    value = str(node.value) if len(str(node.value)) <= 40 else f"{str(node.value)[:37]}..."
    return f"{node.tag.rsplit(':', 1)[-1]} '{value}'"


def _show(node: yaml.Node) -> str:
    return f"'{node.value}'" if isinstance(node, yaml.ScalarNode) else _kind(node)
