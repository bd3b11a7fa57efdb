"""What the ONNX frontend keeps of a model so that no back end opens the file again."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from pexopt.frontend.onnx_index import OnnxIndex
from pexopt.frontend.onnx_params import load_params

if TYPE_CHECKING:
    from pexopt.graph.ir import Graph
    from pexopt.graph.params import OpParams


class OnnxSource:
    """The imported (shape-inferred) ONNX model in memory: kernel constants per operator
    (`params`), the ONNX-side index (layouts, output names) and the bytes onnxruntime runs."""

    def __init__(self, model: onnx.ModelProto, path: str) -> None:
        self.model = model
        self.path = path  # for messages: where the constants came from
        self._index: OnnxIndex | None = None
        # graph -> op id -> params (keyed by the graph itself, never by its hash alone: a
        # collision must not hand one graph another's constants)
        self._params: dict[Graph, dict[int, OpParams]] = {}

    def index(self) -> OnnxIndex:
        if self._index is None:
            self._index = OnnxIndex(self.model, self.path)
        return self._index

    def params(self, graph: Graph) -> dict[int, OpParams]:
        """Op id -> kernel constants of `graph` (this model's import, in any dtype); raises
        ModelError naming the node for one the kernels cannot run."""
        if graph not in self._params:
            self._params[graph] = load_params(self.index(), graph)
        return self._params[graph]

    def model_bytes(self) -> bytes:
        return self.model.SerializeToString()

    def __getstate__(self) -> dict:
        """Pickled as the model alone (the caches are rebuilt where they are needed)."""
        return {"model": self.model, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], state["path"])  # type: ignore[misc]
