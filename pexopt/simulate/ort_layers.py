"""Layer-by-layer agreement with onnxruntime on a QDQ model, each operator fed onnxruntime's own
int8 inputs (teacher forcing).

onnxruntime runs a QDQ model's requantisation in float (ties to even), TFLite and pexopt in
fixed point: single results differ by one step now and then, and through a deep network with
random weights such differences grow. Comparing each operator on the same inputs separates the
int8 semantics (one step at most, rarely) from that accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from pexopt.graph.ir import Graph
from pexopt.graph.params import graph_params
from pexopt.simulate.kernels import KERNELS
from pexopt.simulate.onnxrt import ort_session
from pexopt.simulate.reference import kernel_input, store_output, stored_int8


@dataclass(frozen=True)
class LayerAgreement:
    """One operator's int8 output against onnxruntime's, in quantisation steps."""

    op: str
    elements: int
    max_steps: int
    mean_steps: float


def _int8_names(model: onnx.ModelProto) -> dict[str, str]:
    """Float tensor name -> the int8 output of the QuantizeLinear that quantises it."""
    return {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def _to_ir(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An onnxruntime value (NCHW when 4-D) in the IR's layout (NHWC)."""
    if x.ndim == 4 and len(shape) == 4 and x.shape[1] == shape[3] and x.shape[2] == shape[1]:
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x).reshape(shape)


def layer_agreement(graph: Graph, feed: dict[str, np.ndarray]) -> list[LayerAgreement]:
    """Every int8 operator whose inputs and output onnxruntime also quantises, run by our kernel
    on onnxruntime's inputs and compared with onnxruntime's output (the model as imported)."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.source.model)
    q = _int8_names(model)
    wanted = {t.name: q.get(t.name, t.name) for t in graph.tensors if stored_int8(t)}
    names = sorted(set(wanted.values()) & {o for o in q.values()})
    del model.graph.output[:]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT8,
                                                                     None))
    sess = ort_session(model.SerializeToString())
    theirs = dict(zip(names, sess.run(None, feed)))
    params = graph_params(graph)
    out: list[LayerAgreement] = []
    for op in graph.ops:
        ins = [graph.tensors[t] for t in op.inputs]
        res = graph.tensors[op.outputs[0]]
        if not stored_int8(res) or wanted.get(res.name) not in theirs or \
                any(wanted.get(t.name) not in theirs for t in ins):
            continue
        p = params[op.id]
        xs = [kernel_input(t, p, k, _to_ir(theirs[wanted[t.name]], t.shape))
              for k, t in enumerate(ins)]
        ours = store_output(res, p, KERNELS[op.kind](op, p, xs, None, None))
        ref = _to_ir(theirs[wanted[res.name]], res.shape)
        d = np.abs(ours.astype(np.int32) - ref.astype(np.int32))
        out.append(LayerAgreement(op.name, int(d.size), int(d.max(initial=0)),
                                  float(d.mean()) if d.size else 0.0))
    return out
