"""Load an ONNX file safely: clear errors for missing, broken, cyclic or dynamic models."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
from onnx import shape_inference

from pexopt.errors import ModelError

MAX_ELEMENTS = 1 << 31  # no MCU tensor is larger; refuse before any allocation


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x144x144' -> (1, 3, 144, 144)."""
    try:
        dims = tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ModelError(f"--input-shape: '{text}' is not a shape like 1x3x144x144") from None
    if not dims or any(d <= 0 for d in dims):
        raise ModelError(f"--input-shape: '{text}' has a zero or negative dimension")
    return dims


def _check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in init.external_data if e.key == "location"), "")
        target = (folder / loc).resolve()
        if not str(target).startswith(str(folder.resolve()) + os.sep):
            raise ModelError(
                f"initializer '{init.name}': external data '{loc}' lies outside the model's folder"
            )
        if not target.is_file():
            raise ModelError(f"initializer '{init.name}': external data file '{loc}' is missing")


def _check_acyclic(graph: onnx.GraphProto, path: str) -> None:
    """Sort nodes topologically in place; name a node on a cycle if there is one."""
    produced_by: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for o in node.output:
            if o:
                produced_by[o] = i
    deps = [{produced_by[x] for x in node.input if x in produced_by} for node in graph.node]
    order: list[int] = []
    state = [0] * len(graph.node)  # 0 new, 1 on stack, 2 done
    for root in range(len(graph.node)):
        if state[root]:
            continue
        stack = [(root, iter(sorted(deps[root])))]
        state[root] = 1
        while stack:
            k, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[k] = 2
                order.append(k)
            elif state[nxt] == 1:
                name = graph.node[nxt].name or graph.node[nxt].output[0]
                raise ModelError(f"{path}: the graph has a cycle through node '{name}'")
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(deps[nxt]))))
    if order != list(range(len(graph.node))):
        nodes = [graph.node[i] for i in order]
        del graph.node[:]
        graph.node.extend(nodes)


def _set_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    inputs = {i.name: i for i in model.graph.input}
    for name, dims in shapes.items():
        if name not in inputs:
            raise ModelError(f"--input-shape: the model has no input '{name}' "
                             f"(inputs: {', '.join(inputs)})")
        tt = inputs[name].type.tensor_type
        if len(tt.shape.dim) not in (0, len(dims)):
            raise ModelError(f"--input-shape: input '{name}' has rank {len(tt.shape.dim)}, "
                             f"not {len(dims)}")
        del tt.shape.dim[:]
        for d in dims:
            tt.shape.dim.add().dim_value = d


def load_model(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None
               ) -> onnx.ModelProto:
    """Read, check and shape-infer an ONNX model; every failure is a one-line ModelError."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{path}: no such file")
    if not p.is_file():
        raise ModelError(f"{path}: not a file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises several unrelated types
        raise ModelError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(f"{path}: not an ONNX model (no graph or no nodes)")
    _check_external_data(model, p.parent)
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as e:
        raise ModelError(f"{path}: cannot load external data ({e})") from None
    _check_acyclic(model.graph, str(path))
    seen: set[str] = {i.name for i in model.graph.input}
    for node in model.graph.node:
        for name in node.output:
            if name in seen:
                raise ModelError(f"{path}: value '{name}' is produced more than once "
                                 f"(node '{node.name}')")
            if name:
                seen.add(name)
    if input_shapes:
        _set_input_shapes(model, input_shapes)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: invalid ONNX model: {first}") from None
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if not inp.type.tensor_type.HasField("shape"):
            raise ModelError(f"{path}: input '{inp.name}' has no shape; pass "
                             f"--input-shape {inp.name}=1x3x144x144")
        for d in dims:
            if not d.HasField("dim_value"):
                sym = d.dim_param or "?"
                raise ModelError(
                    f"{path}: input '{inp.name}' has dynamic dimension '{sym}'; pass "
                    f"--input-shape {inp.name}=" + "x".join(
                        str(x.dim_value) if x.HasField("dim_value") else ("1" if i == 0 else "N")
                        for i, x in enumerate(dims)))
            if d.dim_value <= 0:
                raise ModelError(f"{path}: input '{inp.name}' has a zero or negative dimension")
        n = 1
        for d in dims:
            n *= d.dim_value
        if n > MAX_ELEMENTS:
            raise ModelError(f"{path}: input '{inp.name}' has {n} elements, too large for an MCU")
    try:
        model = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: shape inference failed: {first}") from None
    return model
