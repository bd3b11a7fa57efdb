"""Load an ONNX file safely: clear errors for missing, broken, cyclic or dynamic models."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import onnx
from onnx import shape_inference

from pexopt.errors import ModelError

# Caps checked before anything is allocated (README "What is checked"). No MCU tensor comes
# near them; they keep the simulator's float64 reference runs within a few GiB.
MAX_ELEMENTS = 1 << 26  # elements of one activation tensor (graph inputs and intermediates)
MAX_ACTIVATION_BYTES = 1 << 30  # all activation tensors of a model together, deployment dtype
MAX_MODEL_BYTES = 1 << 28  # the .onnx file, and all its constants (inline and external)
MIN_OPSET = 7  # the oldest default-domain opset onnxruntime runs
ORT_KNOWN_OPSET = 20  # every onnxruntime pexopt installs (>= 1.17) runs opsets up to this
CONTROL_FLOW = {"If", "Loop", "Scan"}


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


def _declared_bytes(init: onnx.TensorProto) -> int | None:
    """Bytes an initializer's dims and dtype declare (None: a dtype without a fixed size)."""
    n = 1
    for d in init.dims:
        if d < 0:
            return None
        n *= d
    try:
        item = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    except Exception:  # an unknown or string dtype: the checker names it
        return None
    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(init.data_type)
    return (n * bits + 7) // 8 if bits else n * item


def _check_external_data(model: onnx.ModelProto, folder: Path) -> int:
    """Every external initializer inside the model's folder, its declared size within the file
    and the cap; returns the bytes they declare (checked before any of them is read)."""
    total = 0
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        ext = {e.key: e.value for e in init.external_data}
        loc = ext.get("location", "")
        target = (folder / loc).resolve()
        if not str(target).startswith(str(folder.resolve()) + os.sep):
            raise ModelError(
                f"initializer '{init.name}': external data '{loc}' lies outside the model's folder"
            )
        if not target.is_file():
            raise ModelError(f"initializer '{init.name}': external data file '{loc}' is missing")
        try:
            offset, length = int(ext.get("offset", 0)), ext.get("length")
            length = None if length is None else int(length)
        except ValueError:
            raise ModelError(f"initializer '{init.name}': external data offset or length is "
                             "not a number") from None
        want = _declared_bytes(init)
        if want is None or offset < 0 or (length is not None and length != want):
            raise ModelError(f"initializer '{init.name}': external data length "
                             f"{length} does not match its dims {list(init.dims)}")
        if want > MAX_MODEL_BYTES:
            raise ModelError(f"initializer '{init.name}': {want:,} B of external data, more "
                             f"than the cap of {MAX_MODEL_BYTES:,} B")
        if offset + want > target.stat().st_size:
            raise ModelError(f"initializer '{init.name}': external data '{loc}' holds "
                             f"{target.stat().st_size:,} B, the tensor needs {want:,} B "
                             f"from offset {offset:,}")
        total += want
    return total


def _check_inline_data(model: onnx.ModelProto, path: str, external: int) -> None:
    """Inline initializers hold the data their dims declare (numpy would otherwise fail or
    allocate from the dims alone); all constants together stay within MAX_MODEL_BYTES."""
    total = external
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        want = _declared_bytes(init)
        if want is None:
            continue
        total += want
        if init.HasField("raw_data") and len(init.raw_data) != want:
            raise ModelError(f"{path}: initializer '{init.name}' holds {len(init.raw_data):,} B "
                             f"of data, its dims {list(init.dims)} need {want:,} B")
    if total > MAX_MODEL_BYTES:
        raise ModelError(f"{path}: the model's constants declare {total:,} B, more than the "
                         f"cap of {MAX_MODEL_BYTES:,} B")


def _check_nodes(model: onnx.ModelProto, path: str) -> None:
    """Opsets onnx and onnxruntime both implement, unique node names, no control flow."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and not opset_supported(o.version):
            raise ModelError(f"{path}: opset {o.version} is not supported (onnx and "
                             f"onnxruntime here run opsets {MIN_OPSET} to {max_opset()})")
    names: set[str] = set()
    for node in model.graph.node:
        if node.op_type in CONTROL_FLOW or any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                for a in node.attribute):
            raise ModelError(f"{path}: node '{node.name or node.output[0]}' ({node.op_type}): "
                             "control flow (If/Loop/Scan, subgraphs) is not supported")
        if node.name and node.name in names:
            raise ModelError(f"{path}: node name '{node.name}' is used more than once")
        names.add(node.name)


def opset_supported(version: int) -> bool:
    """Whether both the installed onnx and onnxruntime implement this default-domain opset."""
    if not MIN_OPSET <= version <= onnx.defs.onnx_opset_version():
        return False
    return version <= ORT_KNOWN_OPSET or _ort_runs_opset(version)


def max_opset() -> int:
    """The newest default-domain opset both the installed onnx and onnxruntime implement."""
    v = onnx.defs.onnx_opset_version()
    while v > ORT_KNOWN_OPSET and not _ort_runs_opset(v):
        v -= 1
    return v


@functools.cache
def _ort_runs_opset(version: int) -> bool:
    """Ask onnxruntime itself (an Identity model at that opset), once per process: its
    newest opset depends on its version, which no API reports."""
    try:
        import onnxruntime as ort
    except ImportError:  # only the arena simulation needs it; onnx's range stands alone
        return True
    ops = [onnx.helper.make_opsetid("", version)]
    vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy"]
    m = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", vi[:1], vi[1:]),
        opset_imports=ops)
    m.ir_version = onnx.helper.find_min_ir_version_for(ops)
    so = ort.SessionOptions()
    so.log_severity_level = 4  # the probe's refusal is the answer, not a message for users
    try:
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


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


def read_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file with its external data, every size checked against the caps before
    it is read (file, constants, external data); no checker, no shape inference."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{path}: no such file")
    if not p.is_file():
        raise ModelError(f"{path}: not a file")
    if p.stat().st_size > MAX_MODEL_BYTES:
        raise ModelError(f"{path}: {p.stat().st_size:,} B, more than the cap of "
                         f"{MAX_MODEL_BYTES:,} B for a model file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises several unrelated types
        raise ModelError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(f"{path}: not an ONNX model (no graph or no nodes)")
    _check_inline_data(model, str(path), _check_external_data(model, p.parent))
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as e:
        raise ModelError(f"{path}: cannot load external data ({e})") from None
    _check_nodes(model, str(path))
    return model


def load_model(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None
               ) -> onnx.ModelProto:
    """Read, check and shape-infer an ONNX model; every failure is a one-line ModelError."""
    model = read_model(path)
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
            raise ModelError(f"{path}: input '{inp.name}' has {n} elements, too large for an MCU "
                             f"(cap {MAX_ELEMENTS:,} per tensor)")
    try:
        model = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: shape inference failed: {first}") from None
    return model
