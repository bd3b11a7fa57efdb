"""Rescale the image input of an ONNX model (sweep `resolutions`), when its shapes re-infer.

The stored intermediate shapes (value_info) and output shapes of an exported model describe the
old size and make strict shape inference fail, so a rescaled copy drops them, sets the new input
size and re-infers everything. A model whose shapes do not follow the input (a Reshape to a fixed
size, a Gemm sized for the old feature map, an input that is not an image) is refused with a
one-line PexError: the sweep records the point as failed.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import shape_inference

from pexopt.errors import PexError
from pexopt.plan.format import write_atomic


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


def _prod(dims: list[int | None]) -> int | None:
    n = 1
    for d in dims:
        if d is None:
            return None
        n *= d
    return n


def image_input(model: onnx.ModelProto, where: str) -> tuple[str, list[int], tuple[int, int]]:
    """(name, dims, (height axis, width axis)) of the model's one rank-4 image input."""
    inits = {i.name for i in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    if len(ins) != 1:
        raise PexError(f"{where}: cannot change the resolution of a model with {len(ins)} "
                       "inputs (only one image input is supported)")
    dims = _dims(ins[0])
    shown = "x".join("?" if d is None else str(d) for d in dims) or "no shape"
    if len(dims) != 4 or any(d is None for d in dims):
        raise PexError(f"{where}: cannot change the resolution: input '{ins[0].name}' "
                       f"({shown}) is not a static rank-4 image")
    nchw, nhwc = dims[1] <= 4, dims[3] <= 4  # the channel axis: grey, RGB or RGBA
    if nchw == nhwc:
        raise PexError(f"{where}: cannot change the resolution: cannot tell the channel axis "
                       f"of input '{ins[0].name}' ({shown})")
    return ins[0].name, [int(d) for d in dims], ((2, 3) if nchw else (1, 2))


def rescale_model(src: str | Path, hw: tuple[int, int], dst: str | Path
                  ) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """Write `src` with its image input resized to `hw` (height, width) to `dst`.

    Returns (model path to use, input shapes for ImportOptions). The model's own size returns
    `src` unchanged. Raises PexError when the graph's shapes do not re-infer consistently.
    """
    src = Path(src)
    where = f"{src}"
    try:
        model = onnx.load(str(src))
    except Exception as e:  # protobuf raises several unrelated types
        raise PexError(f"{where}: not an ONNX model ({type(e).__name__})") from None
    name, dims, (ah, aw) = image_input(model, where)
    new = list(dims)
    new[ah], new[aw] = hw
    if new == dims:
        return src, {}
    target = f"{hw[0]}x{hw[1]}"
    old_shapes = {v.name: _dims(v) for v in [*model.graph.value_info, *model.graph.output]}
    del model.graph.value_info[:]
    for o in model.graph.output:  # symbolic: inference fills in the new sizes
        for k, d in enumerate(o.type.tensor_type.shape.dim):
            d.dim_param = f"{o.name}_dim{k}"
    inp = next(i for i in model.graph.input if i.name == name)
    for k, d in enumerate(inp.type.tensor_type.shape.dim):
        d.dim_value = new[k]
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PexError(f"{where}: cannot rescale to {target}: the graph's shapes do not "
                       f"follow the input ({first[:200]})") from None
    shapes = {v.name: _dims(v) for v in [*inferred.graph.value_info, *inferred.graph.output]}
    shapes[name] = new
    for o in inferred.graph.output:
        d = shapes.get(o.name, [])
        if not d or any(x is None for x in d):
            raise PexError(f"{where}: cannot rescale to {target}: output '{o.name}' has no "
                           "static shape after re-inference")
    for v, old in old_shapes.items():  # a size folded into the batch axis, a changed rank
        d = shapes.get(v)
        if old and d and (len(d) != len(old) or (old[0] is not None and d[0] != old[0])):
            raise PexError(f"{where}: cannot rescale to {target}: '{v}' would be "
                           f"{_show(d)} instead of {_show(old)} (a reshape does not follow "
                           "the input size)")
    for node in inferred.graph.node:  # Reshape to a fixed size: element counts must agree
        if node.op_type == "Reshape" and node.input and node.output:
            a, b = _prod(shapes.get(node.input[0], [None])), _prod(shapes.get(node.output[0],
                                                                              [None]))
            if a is not None and b is not None and a != b:
                raise PexError(f"{where}: cannot rescale to {target}: Reshape '{node.name}' "
                               f"has a fixed size ({b} elements, its input has {a})")
    del inferred.graph.value_info[:]
    try:
        data = inferred.SerializeToString()
    except Exception as e:  # > 2 GB
        raise PexError(f"{where}: cannot write the rescaled model ({type(e).__name__})") from None
    write_atomic(dst, data)
    return Path(dst), {name: tuple(new)}


def _show(d: list[int | None]) -> str:
    return "x".join("?" if x is None else str(x) for x in d)
