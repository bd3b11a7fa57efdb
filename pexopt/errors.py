"""Typed errors that the CLI turns into one-line messages and exit code 2."""

from __future__ import annotations


class PexError(Exception):
    """Bad input or an impossible request; the message names the file, node or field."""


class ModelError(PexError):
    """The ONNX model cannot be imported."""


class PlanError(PexError):
    """A plan file cannot be read or does not belong to the model."""
