"""Short labels for long operator and buffer names (issue #13 item 16).

Models converted from TensorFlow name a node after every layer fused into it
(`model/activation_24/Relu;model/batch_normalization_24/FusedBatchNormV3;...`, 300+
characters). Tables show a short label instead: the first `;` part of the name, cut in the
middle when still long; an operator's label starts with its IR index (`#12`, the `#` of
`pexopt inspect`), which makes it unique. Full names stay in every `--json` output and file.
"""

from __future__ import annotations

from collections.abc import Iterable

from pexopt.graph.ir import Graph

NAME_CHARS = 24  # the shortened name of a label, at most
ELLIPSIS = "..."


def cut_middle(text: str, n: int = NAME_CHARS) -> str:
    """`text` if it has at most n characters, else its start (two thirds: where names differ
    most) and its end around '...'."""
    if len(text) <= n:
        return text
    keep = max(2, n - len(ELLIPSIS))
    head = (2 * keep + 2) // 3
    return text[:head] + ELLIPSIS + text[len(text) - (keep - head):]


def short_name(name: str, n: int = NAME_CHARS) -> str:
    """A readable short form of a node or buffer name: the first `;` part (the layer TF names
    the node after), without leading path parts while too long (`model/`, scopes), cut in the
    middle to n characters; a buffer suffix (`@slice`, `@band`, `@kscratch`, ...) is kept,
    since it tells which buffer of the tensor it is."""
    base, at, suffix = name.rpartition("@")
    if not at or not suffix.isalnum():  # no pexopt buffer suffix
        base, suffix = name, ""
    parts = (base.split(";", 1)[0] or base).split("/")
    while len("/".join(parts)) > n and len(parts) > 2:  # keep the layer and the node
        parts = parts[1:]
    return cut_middle("/".join(parts), n) + (f"@{suffix}" if suffix else "")


def op_label(op_id: int, name: str, n: int = NAME_CHARS) -> str:
    """`#<IR index> <short name>`: unique, since IR indices are."""
    return f"#{op_id} {short_name(name, n)}"


class OpLabels:
    """Operator name -> label for one graph (a name not in the graph keeps its short form)."""

    def __init__(self, graph: Graph | None, n: int = NAME_CHARS) -> None:
        self.n = n
        self.ids: dict[str, int] = {}
        for op in graph.ops if graph is not None else ():
            self.ids.setdefault(op.name, op.id)  # ops sharing a name: the first one's index

    def __call__(self, name: str) -> str:
        k = self.ids.get(name)
        return short_name(name, self.n) if k is None else op_label(k, name, self.n)


def buffer_labels(names: Iterable[str], n: int = NAME_CHARS) -> dict[str, str]:
    """Short labels for buffer names, unique among them: names whose short forms collide get
    longer forms, then a `~k` counter."""
    names = list(dict.fromkeys(names))
    res = {x: short_name(x, n) for x in names}
    for width in (2 * n, 4 * n):
        seen: dict[str, int] = {}
        for x in names:
            seen[res[x]] = seen.get(res[x], 0) + 1
        clash = [x for x in names if seen[res[x]] > 1]
        if not clash:
            return res
        for x in clash:
            res[x] = short_name(x, width)
    count: dict[str, int] = {}
    for x in names:
        k = count[res[x]] = count.get(res[x], 0) + 1
        if k > 1:
            res[x] = f"{res[x]}~{k}"
    return res
