"""The only way text from a model reaches generated C: identifiers and comments, sanitised.

ONNX node and tensor names are arbitrary strings. `NameTable.ident` maps them to C identifiers
(ASCII letters, digits, underscore; never a keyword or a reserved name; unique per table);
`comment` makes a string safe inside a `/* ... */` comment: one line of a small character set
(no '*', '\\', '?', quotes, '#', '<', '>'), so no comment delimiter, line splice, trigraph or
directive-looking text survives. Nothing else in the emitter writes model-controlled text.
"""

from __future__ import annotations

import re

# C99 + C11 keywords, and names our own files use, none of which a sanitised name may take.
C_KEYWORDS: frozenset[str] = frozenset({
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch",
    "typedef", "union", "unsigned", "void", "volatile", "while", "_Alignas", "_Alignof",
    "_Atomic", "_Bool", "_Complex", "_Generic", "_Imaginary", "_Noreturn", "_Static_assert",
    "_Thread_local", "bool", "true", "false", "asm", "typeof", "main", "NULL",
})

MAX_IDENT = 40  # characters taken from the name; C99 guarantees 63 significant characters

_BAD = re.compile(r"[^A-Za-z0-9_]+")
_COMMENT_OK = re.compile(r"[^A-Za-z0-9 _.,:;=+\-@()\[\]{}|~!%&^$/]")


def sanitize(name: str) -> str:
    """`name` reduced to [A-Za-z0-9_], never empty, never starting with a digit or '_'."""
    s = _BAD.sub("_", str(name)).strip("_")
    s = re.sub(r"_+", "_", s)[:MAX_IDENT].rstrip("_")
    if not s:
        s = "n"
    if s[0].isdigit():
        s = "n" + s
    if s in C_KEYWORDS:
        s = s + "_"
    return s


class NameTable:
    """Unique C identifiers for model names (`prefix` + sanitised name, numbered on clashes)."""

    def __init__(self, reserved: set[str] | None = None) -> None:
        self._taken: set[str] = set(reserved or ())
        self._by_key: dict[tuple[str, object], str] = {}

    def ident(self, name: str, prefix: str = "", key: object = None) -> str:
        """The identifier of (`prefix`, `key`) made from `name` (`key` defaults to `name`; give
        distinct keys to distinct objects with equal names); the same call returns the same
        identifier."""
        k0 = (prefix, str(name) if key is None else key)
        if k0 in self._by_key:
            return self._by_key[k0]
        base = prefix + sanitize(name)
        if base in C_KEYWORDS or base.startswith("_"):
            base = "n" + base
        cand, k = base, 2
        while cand in self._taken or cand in C_KEYWORDS:
            cand = f"{base.rstrip('_')}_{k}"
            k += 1
        self._taken.add(cand)
        self._by_key[k0] = cand
        return cand


def comment(text: str, limit: int = 120) -> str:
    """`text` made safe for the inside of a C block comment (one line, no delimiters)."""
    s = _COMMENT_OK.sub("_", str(text).replace("\n", " ").replace("\r", " "))
    s = s.replace("/*", "/_").replace("*/", "_/")  # '*' is already gone; belt and braces
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return s
