"""Globs of a sweep file's `models:` that always finish (issue #13 item 13).

`glob.glob(recursive=True)` follows symlinked folders, so `loopdir/**/*.onnx` with a link back
to `loopdir` never ends, and `/**/*.onnx` walks the whole machine. Here a glob never enters a
symlinked folder (a symlinked file still matches), visits at most `MAX_GLOB_ENTRIES` folder
entries and matches at most `MAX_GLOB_MATCHES` files; past either cap it is refused. The syntax
is glob's: `*`, `?`, `[...]` within one name, `**` for any number of folders, and names that
start with a dot match only a pattern that does too.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from functools import lru_cache
from pathlib import Path

from pexopt.limits import MAX_GLOB_ENTRIES, MAX_GLOB_MATCHES


def _name_matches(name: str, pat: str) -> bool:
    if name.startswith(".") and not pat.startswith("."):
        return False  # as glob: hidden names need an explicit dot
    return fnmatch.fnmatchcase(name, pat)


@lru_cache(maxsize=4096)
def _matches(pat: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """Whether the folder names `names` (relative to the glob's root) match `pat`."""
    if not pat:
        return not names
    if pat[0] == "**":
        for k in range(len(names) + 1):
            if _matches(pat[1:], names[k:]):
                return True
            if k < len(names) and names[k].startswith("."):
                return False  # ** does not enter hidden folders
        return False
    return bool(names) and _name_matches(names[0], pat[0]) and _matches(pat[1:], names[1:])


def _may_enter(pat: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """Whether a folder at `names` can hold a match (its names fit the fixed leading parts)."""
    for i, name in enumerate(names):
        if i < len(pat) and pat[i] == "**":  # never into a hidden folder; an explicit .x may
            return (not any(n.startswith(".") for n in names[i:])
                    or any(p.startswith(".") for p in pat[i + 1:]))
        if i >= len(pat) - 1:
            return False  # deeper than the pattern reaches
        if not _name_matches(name, pat[i]):
            return False
    return True


def safe_glob(pattern: str) -> list[str]:
    """Resolved paths of the files matching `pattern` (an absolute or relative glob), sorted.
    Raises ValueError (a one-line message) past the caps."""
    parts = Path(pattern).parts
    fixed = next(i for i, p in enumerate([*parts, "*"]) if glob.has_magic(p))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    pat = tuple(parts[fixed:])
    found: list[str] = []
    visited = 0
    stack: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while stack:
        folder, names = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # unreadable or vanished: glob skips it too
            continue
        visited += len(entries)
        if visited > MAX_GLOB_ENTRIES:
            raise ValueError(f"the glob '{pattern}' visits more than {MAX_GLOB_ENTRIES:,} "
                             "folder entries; narrow it")
        for e in entries:
            sub = (*names, e.name)
            if e.is_dir(follow_symlinks=False):
                if _may_enter(pat, sub):
                    stack.append((Path(e.path), sub))
            elif e.is_file() and _matches(pat, sub):  # a symlinked file counts, not a folder
                found.append(str(Path(e.path).resolve()))
                if len(found) > MAX_GLOB_MATCHES:
                    raise ValueError(f"the glob '{pattern}' matches more than "
                                     f"{MAX_GLOB_MATCHES:,} files; narrow it")
    return sorted(found)
