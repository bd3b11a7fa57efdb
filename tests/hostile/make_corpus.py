#!/usr/bin/env python3
"""Build the hostile-input corpus of tests/test_hostile.py (deterministic, a few KB in all).

Usage::

    python tests/hostile/make_corpus.py [--out DIR]     # default: this folder

Every file is rebuilt byte for byte on each run (fixed seeds, no timestamps); the test
regenerates the corpus into a temporary folder and compares it with the committed files.

Models (`*.onnx`): broken files, graphs the importer must refuse with one line, and two valid
models (`good.onnx`, `other.onnx`) the plan tests solve. Plans (`plan_*.json`): files that are
not plans at all or have fields of the wrong type (plans edited from a real solve are made by
the test itself, since they carry the model's sha256).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


def _vi(name: str, shape: list | None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes: list, inputs: list, outputs: list, inits: list = (), name: str = "g"
           ) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                          producer_name="pexopt-hostile")
    m.ir_version = 8
    return m


def _conv_model(seed: int, cout: int) -> onnx.ModelProto:
    """x(1,3,8,8) -> Conv 3x3 pads 1 -> Relu -> y: valid, solves in milliseconds."""
    w = np.random.default_rng(seed).standard_normal((cout, 3, 3, 3)).astype(np.float32)
    return _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3],
                                    pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["c"], ["y"], name="relu")],
                  [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, cout, 8, 8])],
                  [numpy_helper.from_array(w, "w")])


def _qdq_conv_model(seed: int, cout: int) -> onnx.ModelProto:
    """The same conv as int8 QDQ (fixed scales): what `codegen` accepts."""
    rng = np.random.default_rng(seed)
    wq = rng.integers(-127, 128, (cout, 3, 3, 3)).astype(np.int8)
    sw = np.full(cout, 0.01, np.float32)
    bq = rng.integers(-500, 500, cout).astype(np.int32)
    sx, so = np.float32(0.02), np.float32(0.05)
    f32 = numpy_helper.from_array
    inits = [f32(wq, "wq"), f32(sw, "ws"), f32(np.zeros(cout, np.int8), "wzp"),
             f32(bq, "bq"), f32((sx * sw).astype(np.float32), "bs"),
             f32(np.zeros(cout, np.int32), "bzp"), f32(np.asarray(sx), "sx"),
             f32(np.asarray(0, np.int8), "zx"), f32(np.asarray(so), "so"),
             f32(np.asarray(-128, np.int8), "zo")]
    node = helper.make_node
    return _model([node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="x_Q"),
                   node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="x_DQ"),
                   node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], name="w_DQ", axis=0),
                   node("DequantizeLinear", ["bq", "bs", "bzp"], ["b"], name="b_DQ", axis=0),
                   node("Conv", ["xd", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3],
                        pads=[1, 1, 1, 1]),
                   node("Relu", ["c"], ["r"], name="relu"),
                   node("QuantizeLinear", ["r", "so", "zo"], ["yq"], name="y_Q"),
                   node("DequantizeLinear", ["yq", "so", "zo"], ["y"], name="y_DQ")],
                  [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, cout, 8, 8])], inits)


def _relu(shape: list, elem: int = TensorProto.FLOAT, op: str = "Relu") -> onnx.ModelProto:
    return _model([helper.make_node(op, ["x"], ["y"], name=op.lower())],
                  [_vi("x", shape, elem)], [_vi("y", shape, elem)])


def _concat(elem: int) -> onnx.ModelProto:
    """Concat(x, x) over channels, x of dtype `elem` (Concat accepts every tensor type)."""
    return _model([helper.make_node("Concat", ["x", "x"], ["y"], name="concat", axis=1)],
                  [_vi("x", [1, 4, 2, 2], elem)], [_vi("y", [1, 8, 2, 2], elem)])


def _external(location: str) -> onnx.ModelProto:
    """x + w where w's data is 'external' at `location` (never written by us)."""
    w = onnx.TensorProto()
    w.name, w.data_type = "w", TensorProto.FLOAT
    w.dims.extend([1, 4, 1, 1])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    return _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                  [_vi("x", [1, 4, 2, 2])], [_vi("y", [1, 4, 2, 2])], [w])


def models() -> dict[str, bytes]:
    good = _conv_model(0, 4).SerializeToString()
    rng = np.random.default_rng(20240601)
    res: dict[str, bytes] = {
        "good.onnx": good,
        "other.onnx": _conv_model(1, 6).SerializeToString(),
        "good_int8.onnx": _qdq_conv_model(0, 4).SerializeToString(),
        "other_int8.onnx": _qdq_conv_model(1, 6).SerializeToString(),
        "truncated.onnx": good[: len(good) // 2],
        "random_bytes.onnx": rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(),
        "empty_file.onnx": b"",
    }
    # a cycle: a = Add(x, c); c = Relu(a)
    res["cycle.onnx"] = _model(
        [helper.make_node("Add", ["x", "c"], ["a"], name="add"),
         helper.make_node("Relu", ["a"], ["c"], name="relu_back"),
         helper.make_node("Relu", ["a"], ["y"], name="relu_out")],
        [_vi("x", [1, 4, 4, 4])], [_vi("y", [1, 4, 4, 4])]).SerializeToString()
    # the same value produced by two nodes
    res["duplicate_names.onnx"] = _model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu_a"),
         helper.make_node("Sigmoid", ["x"], ["y"], name="sigmoid_b")],
        [_vi("x", [1, 4, 4, 4])], [_vi("y", [1, 4, 4, 4])]).SerializeToString()
    # empty value names: the graph input, the node's input and output are all ""
    res["empty_names.onnx"] = _model(
        [helper.make_node("Relu", [""], [""], name="")],
        [_vi("", [1, 4, 4, 4])], [_vi("", [1, 4, 4, 4])]).SerializeToString()
    res["dynamic_dim.onnx"] = _relu([1, 3, "H", 8]).SerializeToString()
    res["zero_dim.onnx"] = _relu([1, 0, 8, 8]).SerializeToString()
    res["negative_dim.onnx"] = _relu([1, -3, 8, 8]).SerializeToString()
    # 10^12 elements: a graph input, and an intermediate made by Expand from a 1-element input
    res["huge_input.onnx"] = _relu([1, 10000, 10000, 10000]).SerializeToString()
    shape = numpy_helper.from_array(np.array([1, 10000, 10000, 10000], np.int64), "shape")
    res["huge_intermediate.onnx"] = _model(
        [helper.make_node("Expand", ["x", "shape"], ["e"], name="expand"),
         helper.make_node("ReduceMax", ["e"], ["y"], name="reduce", keepdims=1)],
        [_vi("x", [1, 1, 1, 1])], [_vi("y", [1, 1, 1, 1])], [shape]).SerializeToString()
    res["string_dtype.onnx"] = _concat(TensorProto.STRING).SerializeToString()
    res["complex_dtype.onnx"] = _concat(TensorProto.COMPLEX64).SerializeToString()
    res["external_parent.onnx"] = _external("../x.bin").SerializeToString()
    res["external_absolute.onnx"] = _external("/etc/hostname").SerializeToString()
    return res


def plans() -> dict[str, bytes]:
    base = {"format": "pexopt-plan/1", "model": {"path": "good.onnx", "sha256": "0" * 64},
            "arena_bytes": 512, "budget_bytes": None, "fits": True, "align": 4,
            "dtype": "int8", "input_external": False, "steps": [], "buffers": [],
            "solver": {"status": "OPTIMAL", "bound": 0, "gap": 0.0, "seconds": 0.0, "seed": 0,
                       "workers": 1, "time_limit": 1.0}, "baselines": {}}

    def variant(**kw: object) -> bytes:
        return json.dumps({**base, **kw}, indent=1).encode()

    return {
        "plan_not_json.json": b"{\"format\": \"pexopt-plan/1\", \"steps\": [1, 2,\n",
        "plan_binary.json": bytes(range(256)),
        "plan_list.json": b"[1, 2, 3]\n",
        "plan_wrong_format.json": variant(format="pexopt-plan/99"),
        "plan_arena_string.json": variant(arena_bytes="big"),
        "plan_steps_int.json": variant(steps=5),
        "plan_step_not_object.json": variant(steps=["conv"]),
        "plan_offset_float.json": variant(buffers=[{
            "name": "x", "tensor": "x", "kind": "tensor", "offset": 1.5, "size": 4,
            "first_step": 0, "last_step": 0, "alias_of": None}]),
        "plan_solver_bound_string.json": variant(solver={**base["solver"], "bound": "lots"}),
        "plan_budget_string.json": variant(budget_bytes="128k"),
        "plan_baselines_list.json": variant(baselines=[1, 2]),
        "plan_slice_int.json": variant(steps=[{"index": 0, "op": "conv", "kind": "conv",
                                               "reads": [], "writes": [], "slice": 3}]),
    }


def corpus() -> dict[str, bytes]:
    return {**models(), **plans()}


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in sorted(corpus().items()):
        p = out / name
        p.write_bytes(data)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    paths = write(args.out)
    print(f"{len(paths)} files, {sum(p.stat().st_size for p in paths):,} bytes in {args.out}")


if __name__ == "__main__":
    main()
