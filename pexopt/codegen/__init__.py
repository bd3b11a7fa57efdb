"""C code generation: a plan and its model as C sources for a microcontroller."""

from pexopt.codegen.emit import emit_c
from pexopt.codegen.names import NameTable, comment, sanitize

__all__ = ["emit_c", "NameTable", "comment", "sanitize"]
