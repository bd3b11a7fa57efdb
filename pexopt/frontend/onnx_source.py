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
        self._params: dict[int, dict[int, OpParams]] = {}  # graph hash -> op id -> params

    def index(self) -> OnnxIndex:
        if self._index is None:
            self._index = OnnxIndex(self.model, self.path)
        return self._index

    def params(self, graph: Graph) -> dict[int, OpParams]:
        """Op id -> kernel constants of `graph` (this model's import, in any dtype); raises
        ModelError naming the node for one the kernels cannot run."""
        key = hash(graph)
        if key not in self._params:
            self._params[key] = load_params(self.index(), graph)
        return self._params[key]

    def model_bytes(self) -> bytes:
        return self.model.SerializeToString()

    def __getstate__(self) -> dict:
        """Pickled as the model alone (string hashes, hence the cache keys, differ between
        processes)."""
        return {"model": self.model, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], state["path"])  # type: ignore[misc]
