"""ONNX -> IR: real models, QDQ/float equivalence, fusion rules and one-line errors."""

from __future__ import annotations

import time
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import (
    BUNDLED_ALL,
    BUNDLED_PAIRS,
    SHARED_MODELS,
    const,
    conv_weights,
    make_onnx,
    one_op_model,
    vi,
)
from onnx import TensorProto, helper

from pexopt.errors import ModelError
from pexopt.frontend.onnx_import import import_onnx
from pexopt.graph.ir import ConvAttrs, Graph, live_bytes
from pexopt.ops import ALIAS_ONNX_OPS, OpKind


def _file_order_peak(g: Graph) -> int:
    return max(live_bytes(g, range(len(g.ops))))


def _check_graph(g: Graph) -> None:
    assert len(g.ops) > 0
    assert all(t.nbytes > 0 for t in g.tensors), [t.name for t in g.tensors if t.nbytes <= 0]
    assert all(op.onnx_type not in ALIAS_ONNX_OPS for op in g.ops)
    # the NHWC<->NCHW Transposes of converted models are layout views, not operators
    assert not [op.name for op in g.ops if op.kind == OpKind.TRANSPOSE]
    assert len(g.inputs) == 1 and len(g.outputs) >= 1
    assert _file_order_peak(g) > 0


# -- every real model ---------------------------------------------------------------------------

SHARED_INPUTS = {
    "mlperf_vww_96_int8": (1, 96, 96, 3),
    "tflm_person_detect": (1, 96, 96, 1),
    "mlperf_kws_dscnn_int8": (1, 49, 10, 1),
    "mlperf_ic_resnet8_int8": (1, 32, 32, 3),
    "mlperf_ic_resnet_large_int8": (1, 32, 32, 3),
    "mcunet_in3_320kb_1mb_imagenet": (1, 176, 176, 3),
    "tinyengine_vww": (1, 80, 80, 3),
    "tinyengine_detection": (1, 128, 160, 3),
    "tinyengine_mcunetv2_large": (1, 224, 224, 3),
    "tinyengine_mnist_lenet300100": (1, 28, 28, 1),
    "mlperf_ad_autoencoder_int8": (1, 640),
    "tflm_hello_world_int8": (1, 1),
    "tflm_micro_speech_int8": (1, 1960),
}


@pytest.mark.parametrize("name", SHARED_MODELS)
def test_shared_model_imports(shared_models_dir: Path, name: str) -> None:
    path = shared_models_dir / f"{name}.onnx"
    assert path.is_file(), f"{path} is missing"
    g = import_onnx(path)
    _check_graph(g)
    if name in SHARED_INPUTS:
        assert g.tensors[g.inputs[0]].shape == SHARED_INPUTS[name]
    assert g.source_sha256 and len(g.source_sha256) == 64


BUNDLED_INPUTS = {"dscnn_kws": (1, 49, 10, 1), "resnet8": (1, 32, 32, 3),
                  "mcunet_mixed": (1, 96, 96, 3), "mbv1_w025_r96": (1, 96, 96, 3),
                  "mbv2_w035_r96": (1, 96, 96, 3), "mbv2_w035_r144": (1, 144, 144, 3)}


@pytest.mark.parametrize("suffix", ["", "_int8"])
@pytest.mark.parametrize("name", BUNDLED_ALL)
def test_bundled_model_imports(models_dir: Path, name: str, suffix: str) -> None:
    g = import_onnx(models_dir / f"{name}{suffix}.onnx")
    _check_graph(g)
    inp = g.tensors[g.inputs[0]]
    assert inp.shape == BUNDLED_INPUTS[name]
    assert inp.dtype == "int8" and inp.nbytes == inp.elements
    assert all(op.name for op in g.ops)


def test_tinyengine_vww_pad_folding(shared_models_dir: Path) -> None:
    path = shared_models_dir / "tinyengine_vww.onnx"
    folded = import_onnx(path, fold_pad=True)
    kept = import_onnx(path, fold_pad=False)
    assert not [op for op in folded.ops if op.kind == OpKind.PAD]
    pads = [op for op in kept.ops if op.kind == OpKind.PAD]
    assert pads
    assert len(kept.ops) == len(folded.ops) + len(pads)
    # folding removes the padded copies: the file-order peak can only go down
    assert _file_order_peak(folded) <= _file_order_peak(kept)


def test_fully_connected_macs_through_flatten(shared_models_dir: Path) -> None:
    """A Gemm reading a Reshape of a 4-D tensor reduces over all of it (784 -> 300)."""
    g = import_onnx(shared_models_dir / "tinyengine_mnist_lenet300100.onnx")
    fcs = [op for op in g.ops if op.kind == OpKind.FULLY_CONNECTED]
    assert [op.macs for op in fcs] == [784 * 300, 300 * 100, 100 * 10]


def test_opaque_operator_is_kept(shared_models_dir: Path) -> None:
    g = import_onnx(shared_models_dir / "tinyengine_mnist_lenet300100.onnx")
    assert [op.onnx_type for op in g.ops if op.kind == OpKind.OPAQUE] == ["LogSoftmax"]


# -- QDQ and float give the same IR ---------------------------------------------------------------

def _signature(g: Graph) -> Counter:
    t = g.tensors
    return Counter((op.kind, tuple(t[i].shape for i in op.inputs),
                    tuple(t[o].shape for o in op.outputs), tuple(t[o].nbytes for o in op.outputs),
                    op.macs) for op in g.ops)


@pytest.mark.parametrize("name", BUNDLED_PAIRS)
def test_qdq_matches_float(models_dir: Path, name: str) -> None:
    fg = import_onnx(models_dir / f"{name}.onnx")
    qg = import_onnx(models_dir / f"{name}_int8.onnx")
    assert _signature(fg) == _signature(qg)
    assert len(fg.ops) == len(qg.ops)
    assert sum(t.nbytes for t in fg.tensors) == sum(t.nbytes for t in qg.tensors)
    assert fg.tensors[fg.inputs[0]].shape == qg.tensors[qg.inputs[0]].shape
    assert [fg.tensors[o].nbytes for o in fg.outputs] == [qg.tensors[o].nbytes for o in qg.outputs]
    assert _file_order_peak(fg) == _file_order_peak(qg)
    # the float graph fuses Relu/Relu6 into its convs; the quantiser dropped them instead
    assert any(op.activation is not None for op in fg.ops)
    assert all(op.activation is None for op in qg.ops)
    assert not [op for op in fg.ops + qg.ops if op.kind in (OpKind.RELU, OpKind.CLIP)]
    # QDQ: every activation tensor carries its quantisation
    assert all(t.qparams is not None for t in qg.tensors)


@pytest.mark.parametrize("name", ["resnet8_int8", "mcunet_mixed", "dscnn_kws_int8"])
def test_dtype_float32_is_four_times_int8(models_dir: Path, name: str) -> None:
    i8 = import_onnx(models_dir / f"{name}.onnx", dtype="int8")
    f32 = import_onnx(models_dir / f"{name}.onnx", dtype="float32")
    assert [t.name for t in i8.tensors] == [t.name for t in f32.tensors]
    for a, b in zip(i8.tensors, f32.tensors):
        assert (a.dtype, b.dtype) == ("int8", "float32")
        assert b.nbytes == 4 * a.nbytes, a.name
    assert _file_order_peak(f32) == 4 * _file_order_peak(i8)
    assert f32.dtype == "float32"


def test_dtype_float32_shared(shared_models_dir: Path) -> None:
    """The TinyEngine models take a float32 input that is quantised first: int8 in the arena."""
    path = shared_models_dir / "tinyengine_vww.onnx"
    i8, f32 = import_onnx(path), import_onnx(path, dtype="float32")
    assert all(b.nbytes == 4 * a.nbytes for a, b in zip(i8.tensors, f32.tensors))


def test_input_external(models_dir: Path) -> None:
    path = models_dir / "resnet8_int8.onnx"
    g = import_onnx(path)
    e = import_onnx(path, input_external=True)
    inp = e.tensors[e.inputs[0]]
    assert inp.external and inp.nbytes == 32 * 32 * 3
    assert [t.id for t in e.tensors if t.external] == list(e.inputs)
    assert not any(t.external for t in g.tensors)
    lb, le = live_bytes(g, range(len(g.ops))), live_bytes(e, range(len(e.ops)))
    first_reader = min(op.id for op in e.ops if inp.id in op.inputs)
    last_reader = max(op.id for op in e.ops if inp.id in op.inputs)
    for step, (a, b) in enumerate(zip(lb, le)):
        assert a - b == (inp.nbytes if first_reader <= step <= last_reader else 0), step
    assert e.notes


def test_bad_dtype_refused(models_dir: Path) -> None:
    with pytest.raises(ModelError, match="--dtype"):
        import_onnx(models_dir / "resnet8_int8.onnx", dtype="float64")


# -- synthetic models: fusion, folding, aliasing ---------------------------------------------

def _conv(inp: str, w: str, out: str, name: str, **attrs: object) -> onnx.NodeProto:
    return helper.make_node("Conv", [inp, w], [out], name=name, **attrs)


def _bn(inp: str, out: str, c: int, name: str = "bn") -> tuple[onnx.NodeProto, list]:
    inits = [const(f"{name}_s", np.ones(c)), const(f"{name}_b", np.zeros(c)),
             const(f"{name}_m", np.zeros(c)), const(f"{name}_v", np.ones(c))]
    node = helper.make_node("BatchNormalization", [inp] + [i.name for i in inits], [out],
                            name=name)
    return node, inits


def test_conv_bn_relu_fuse(tmp_path: Path) -> None:
    bn, bn_init = _bn("c", "b", 4)
    path = make_onnx(
        tmp_path / "cbr.onnx",
        [_conv("x", "w", "c", "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]), bn,
         helper.make_node("Relu", ["b"], ["y"], name="relu")],
        [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])], [conv_weights("w", 4, 3, 3, 3), *bn_init])
    g = import_onnx(path)
    assert len(g.ops) == 1
    op = g.ops[0]
    assert op.kind == OpKind.CONV and op.name == "conv"
    assert op.activation is not None and op.activation.name == "relu"
    assert op.onnx_nodes == ("conv", "bn", "relu")
    assert [g.tensors[t].name for t in op.inputs] == ["x"]
    assert [g.tensors[t].name for t in op.outputs] == ["y"]
    assert [t.name for t in g.tensors] == ["x", "y"]
    assert g.tensors[op.outputs[0]].shape == (1, 8, 8, 4)


def test_clip_fuses_as_relu6(tmp_path: Path) -> None:
    path = make_onnx(
        tmp_path / "c6.onnx",
        [_conv("x", "w", "c", "conv", kernel_shape=[1, 1]),
         helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip")],
        [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 4, 4])],
        [conv_weights("w", 2, 3, 1, 1), const("lo", 0.0), const("hi", 6.0)])
    g = import_onnx(path)
    assert len(g.ops) == 1 and g.ops[0].activation.name == "relu6"
    assert (g.ops[0].activation.lo, g.ops[0].activation.hi) == (0.0, 6.0)


def test_relu_not_fused_when_conv_output_has_other_readers(tmp_path: Path) -> None:
    path = make_onnx(
        tmp_path / "nofuse.onnx",
        [_conv("x", "w", "c", "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("Add", ["c", "r"], ["y"], name="add")],
        [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])], [conv_weights("w", 4, 3, 3, 3)])
    g = import_onnx(path)
    assert [op.kind for op in g.ops] == [OpKind.CONV, OpKind.RELU, OpKind.ADD]
    assert g.ops[0].activation is None
    c = g.tensor("c").id
    assert c in g.ops[1].inputs and c in g.ops[2].inputs


def test_relu_not_fused_into_graph_output(tmp_path: Path) -> None:
    """A conv output that is also a graph output must stay un-clamped."""
    path = make_onnx(
        tmp_path / "out.onnx",
        [_conv("x", "w", "c", "conv", kernel_shape=[1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        [vi("x", [1, 3, 4, 4])], [vi("c", [1, 2, 4, 4]), vi("y", [1, 2, 4, 4])],
        [conv_weights("w", 2, 3, 1, 1)])
    g = import_onnx(path)
    assert [op.kind for op in g.ops] == [OpKind.CONV, OpKind.RELU]


def _pad_conv(tmp_path: Path, value: float | None, pads: list[int], name: str) -> Path:
    ins = ["x", "pads"] + (["v"] if value is not None else [])
    inits = [const("pads", pads, np.int64), conv_weights("w", 4, 3, 3, 3)]
    if value is not None:
        inits.append(const("v", value))
    h_out = 8 + pads[2] + pads[6] - 2
    w_out = 8 + pads[3] + pads[7] - 2
    return make_onnx(
        tmp_path / f"{name}.onnx",
        [helper.make_node("Pad", ins, ["p"], name="pad", mode="constant"),
         _conv("p", "w", "y", "conv", kernel_shape=[3, 3], pads=[1, 0, 0, 1])],
        [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, h_out + 1, w_out + 1])], inits)


def test_zero_pad_folds_into_conv(tmp_path: Path) -> None:
    # ONNX pads: begins (N, C, H, W) then ends; here top 1, left 2, bottom 3, right 4
    path = _pad_conv(tmp_path, 0.0, [0, 0, 1, 2, 0, 0, 3, 4], "zpad")
    g = import_onnx(path)
    assert [op.kind for op in g.ops] == [OpKind.CONV]
    conv = g.ops[0]
    assert isinstance(conv.attrs, ConvAttrs)
    # conv pads (top 1, left 0, bottom 0, right 1) plus the Pad's
    assert conv.attrs.pads == (2, 2, 3, 5)
    assert [g.tensors[t].name for t in conv.inputs] == ["x"]
    assert conv.onnx_nodes == ("pad", "conv")
    assert "p" not in {t.name for t in g.tensors}
    # without folding, the pad is an operator with its own buffer
    kept = import_onnx(path, fold_pad=False)
    assert [op.kind for op in kept.ops] == [OpKind.PAD, OpKind.CONV]
    assert kept.ops[1].attrs.pads == (1, 0, 0, 1)
    assert kept.tensor("p").shape == (1, 12, 14, 3)


def test_default_pad_value_folds(tmp_path: Path) -> None:
    g = import_onnx(_pad_conv(tmp_path, None, [0, 0, 1, 1, 0, 0, 1, 1], "dpad"))
    assert [op.kind for op in g.ops] == [OpKind.CONV]
    assert g.ops[0].attrs.pads == (2, 1, 1, 2)


def test_nonzero_pad_does_not_fold(tmp_path: Path) -> None:
    g = import_onnx(_pad_conv(tmp_path, 1.0, [0, 0, 1, 1, 0, 0, 1, 1], "npad"))
    assert [op.kind for op in g.ops] == [OpKind.PAD, OpKind.CONV]
    assert g.ops[1].attrs.pads == (1, 0, 0, 1)


def test_channel_pad_does_not_fold(tmp_path: Path) -> None:
    path = make_onnx(
        tmp_path / "cpad.onnx",
        [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
         _conv("p", "w", "y", "conv", kernel_shape=[1, 1])],
        [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 4, 4])],
        [const("pads", [0, 1, 0, 0, 0, 0, 0, 0], np.int64), conv_weights("w", 2, 4, 1, 1)])
    g = import_onnx(path)
    assert [op.kind for op in g.ops] == [OpKind.PAD, OpKind.CONV]


@pytest.mark.parametrize("view", ["Reshape", "Flatten", "Squeeze"])
def test_views_are_aliases(tmp_path: Path, view: str) -> None:
    inits = [conv_weights("w", 8, 3, 1, 1), const("fc_w", np.ones((8, 5))),
             const("fc_b", np.zeros(5))]
    if view == "Reshape":
        node = helper.make_node("Reshape", ["c", "shape"], ["v"], name="view")
        inits.append(const("shape", [1, 8], np.int64))
    elif view == "Flatten":
        node = helper.make_node("Flatten", ["c"], ["v"], name="view", axis=1)
    else:
        node = helper.make_node("Squeeze", ["c", "axes"], ["v"], name="view")
        inits.append(const("axes", [2, 3], np.int64))
    path = make_onnx(
        tmp_path / "view.onnx",
        [_conv("x", "w", "c", "conv", kernel_shape=[1, 1]), node,
         helper.make_node("Gemm", ["v", "fc_w", "fc_b"], ["y"], name="fc")],
        [vi("x", [1, 3, 1, 1])], [vi("y", [1, 5])], inits)
    g = import_onnx(path)
    assert [op.kind for op in g.ops] == [OpKind.CONV, OpKind.FULLY_CONNECTED]
    conv, fc = g.ops
    assert fc.inputs == conv.outputs  # the same tensor: no copy, no buffer
    assert "v" not in {t.name for t in g.tensors}
    assert len(g.tensors) == 3
    assert fc.macs == 8 * 5


@pytest.mark.parametrize("op_type", ["Erf", "LRN"])
def test_unknown_op_is_opaque(tmp_path: Path, op_type: str) -> None:
    attrs = {"size": 3} if op_type == "LRN" else {}
    path = make_onnx(
        tmp_path / "opaque.onnx",
        [_conv("x", "w", "c", "conv", kernel_shape=[1, 1]),
         helper.make_node(op_type, ["c"], ["y"], name="odd", **attrs)],
        [vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 4, 4])], [conv_weights("w", 2, 3, 1, 1)])
    g = import_onnx(path)
    assert [op.kind for op in g.ops] == [OpKind.CONV, OpKind.OPAQUE]
    odd = g.ops[1]
    assert odd.name == "odd" and odd.onnx_type == op_type
    assert odd.inputs == g.ops[0].outputs
    out = g.tensors[odd.outputs[0]]
    assert out.shape == (1, 4, 4, 2) and out.nbytes == 32


def test_depthwise_grouped_and_macs(tmp_path: Path) -> None:
    c = 8
    path = make_onnx(
        tmp_path / "groups.onnx",
        [_conv("x", "w1", "a", "dense", kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1]),
         _conv("a", "w2", "b", "dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=c),
         _conv("b", "w3", "d", "dw_mult", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=c),
         _conv("d", "w4", "y", "grouped", kernel_shape=[1, 1], group=4)],
        [vi("x", [1, 3, 16, 12])], [vi("y", [1, 8, 8, 6])],
        [conv_weights("w1", c, 3, 3, 3), conv_weights("w2", c, 1, 3, 3),
         conv_weights("w3", 2 * c, 1, 3, 3), conv_weights("w4", 8, 4, 1, 1)])
    g = import_onnx(path)
    kinds = [op.kind for op in g.ops]
    assert kinds == [OpKind.CONV, OpKind.DEPTHWISE, OpKind.DEPTHWISE, OpKind.GROUPED_CONV]
    assert [g.tensors[op.outputs[0]].shape for op in g.ops] == [
        (1, 8, 6, 8), (1, 8, 6, 8), (1, 8, 6, 16), (1, 8, 6, 8)]
    # H_out * W_out * C_out * C_in / group * kh * kw
    assert [op.macs for op in g.ops] == [
        8 * 6 * 8 * 3 * 9, 8 * 6 * 8 * 1 * 9, 8 * 6 * 16 * 1 * 9, 8 * 6 * 8 * 4 * 1]
    assert [op.attrs.group for op in g.ops] == [1, 8, 8, 4]  # 8 outputs: 6 is not divisible
    assert g.ops[0].attrs.stride == (2, 2) and g.ops[0].attrs.kernel == (3, 3)


def test_same_upper_pads(tmp_path: Path) -> None:
    path = make_onnx(
        tmp_path / "same.onnx",
        [_conv("x", "w", "y", "conv", kernel_shape=[4, 4], strides=[2, 2], auto_pad="SAME_UPPER")],
        [vi("x", [1, 3, 9, 9])], [vi("y", [1, 2, 5, 5])], [conv_weights("w", 2, 3, 4, 4)])
    g = import_onnx(path)
    # total pad (5-1)*2 + 4 - 9 = 3 per axis, the extra one at the end
    assert g.ops[0].attrs.pads == (1, 1, 2, 2)


# -- errors: one line, a ModelError, naming the problem -------------------------------------

def _raises(path: Path | str, match: str, **kw: object) -> ModelError:
    with pytest.raises(ModelError, match=match) as info:
        import_onnx(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    e = _raises(tmp_path / "nope.onnx", "no such file")
    assert "nope.onnx" in str(e)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    _raises(tmp_path, "not a file")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    _raises(path, "not an ONNX model")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _raises(path, "not an ONNX model")


@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_truncated_model(models_dir: Path, tmp_path: Path, fraction: float) -> None:
    data = (models_dir / "resnet8_int8.onnx").read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    _raises(path, "not an ONNX model|invalid ONNX model")


def test_cycle(tmp_path: Path) -> None:
    # 'first' reads t2, produced by the later 'second', which reads first's output t1
    path = make_onnx(
        tmp_path / "cycle.onnx",
        [helper.make_node("Add", ["x", "t2"], ["t1"], name="first"),
         helper.make_node("Relu", ["t1"], ["t2"], name="second")],
        [vi("x", [1, 4])], [vi("t2", [1, 4])], check=False)
    e = _raises(path, "cycle")
    assert "first" in str(e) or "second" in str(e)


def test_nodes_out_of_order_are_sorted(tmp_path: Path) -> None:
    """Not a cycle: a DAG stored in the wrong order is sorted, not refused."""
    path = make_onnx(
        tmp_path / "unsorted.onnx",
        [helper.make_node("Relu", ["t1"], ["y"], name="second"),
         helper.make_node("Sigmoid", ["x"], ["t1"], name="first")],
        [vi("x", [1, 4])], [vi("y", [1, 4])], check=False)
    g = import_onnx(path)
    assert [op.name for op in g.ops] == ["first", "second"]


def test_dynamic_dimension(tmp_path: Path) -> None:
    path = one_op_model(tmp_path / "dyn.onnx", "Relu", ["N", 3, 8, 8])
    e = _raises(path, "--input-shape")
    assert "dynamic" in str(e) and "'x'" in str(e)
    g = import_onnx(path, input_shapes={"x": (1, 3, 8, 8)})
    assert g.tensors[g.inputs[0]].shape == (1, 8, 8, 3)
    assert g.tensors[g.outputs[0]].nbytes == 192


def test_input_shape_errors(tmp_path: Path) -> None:
    path = one_op_model(tmp_path / "dyn.onnx", "Relu", ["N", 3, 8, 8])
    _raises(path, "no input 'z'", input_shapes={"z": (1, 3, 8, 8)})
    _raises(path, "rank", input_shapes={"x": (1, 3, 8)})


def test_zero_dimension(tmp_path: Path) -> None:
    _raises(one_op_model(tmp_path / "zero.onnx", "Relu", [1, 0, 8, 8]), "zero or negative")


@pytest.mark.parametrize("elem", [TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.DOUBLE])
def test_unsupported_dtype(tmp_path: Path, elem: int) -> None:
    path = one_op_model(tmp_path / "dtype.onnx", "Transpose", [2, 3], [3, 2], elem=elem,
                        perm=[1, 0])
    e = _raises(path, "unsupported dtype")
    assert TensorProto.DataType.Name(elem) in str(e)


def test_external_data_outside_folder(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(bytes(16))
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 4],
                    data_location=TensorProto.EXTERNAL)
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../outside.bin"
    path = make_onnx(tmp_path / "sub" / "ext.onnx",
                     [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                     [vi("x", [1, 4])], [vi("y", [1, 4])], [w], check=False)
    e = _raises(path, "outside the model's folder")
    assert "outside.bin" in str(e)


def test_external_data_missing(tmp_path: Path) -> None:
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 4],
                    data_location=TensorProto.EXTERNAL)
    entry = w.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    path = make_onnx(tmp_path / "ext.onnx", [helper.make_node("Add", ["x", "w"], ["y"])],
                     [vi("x", [1, 4])], [vi("y", [1, 4])], [w], check=False)
    _raises(path, "missing")


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(np.ones(4, np.float32).tobytes())
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 4],
                    data_location=TensorProto.EXTERNAL)
    entry = w.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    path = make_onnx(tmp_path / "ext.onnx", [helper.make_node("Add", ["x", "w"], ["y"])],
                     [vi("x", [1, 4])], [vi("y", [1, 4])], [w], check=False)
    g = import_onnx(path)
    assert [op.kind for op in g.ops] == [OpKind.CHANNEL_AFFINE]


def _quick_and_small(fn) -> None:  # noqa: ANN001
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5.0
    assert peak < 64 << 20, f"allocated {peak} bytes"


def test_huge_input_refused(tmp_path: Path) -> None:
    path = one_op_model(tmp_path / "huge.onnx", "Relu", [1000, 1000, 1000, 1000])
    _quick_and_small(lambda: _raises(path, "too large"))


def test_huge_intermediate_refused(tmp_path: Path) -> None:
    # a Pad that turns a 2x2 input into ~10^12 elements
    pad = 500_000
    path = make_onnx(
        tmp_path / "hugepad.onnx",
        [helper.make_node("Pad", ["x", "pads"], ["y"], name="pad")],
        [vi("x", [1, 1, 2, 2])], [vi("y", ["n", "c", "h", "w"])],
        [const("pads", [0, 0, pad, pad, 0, 0, pad, pad], np.int64)])
    _quick_and_small(lambda: _raises(path, "too large"))


def test_no_activation_operators(tmp_path: Path) -> None:
    path = one_op_model(tmp_path / "id.onnx", "Identity", [1, 4])
    _raises(path, "no operators")
