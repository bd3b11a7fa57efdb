"""Frontends: a model file in, a self-contained IR Graph out (`pexopt.graph.ir`).

Every interpretation of a file format (ONNX: QDQ pairs, BatchNorm folding, Gemm transposes,
layout Transposes, Pads) lives here; the back ends read the Graph and the per-operator kernel
constants it carries (`Graph.source`), never the file."""
