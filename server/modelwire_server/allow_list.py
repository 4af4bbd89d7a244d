"""Which sources ModelService.LoadModel may load: the config's ``load_allow_list``.

Each entry is either an absolute directory (a source inside it, after resolving ``..``
and symlinks, is allowed) or a glob matched against hub ids and ``preset:`` names.
A source that looks like a path is only ever matched against directories, so a glob
such as ``*`` cannot open the whole file system.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path


def looks_like_path(source: str) -> bool:
    """Whether ``source`` names a file system path rather than a hub id."""
    return source.startswith(("/", ".", "~")) or "\\" in source or ".." in source


def allowed(source: str, allow_list: list[str]) -> bool:
    """True if ``allow_list`` lets LoadModel load ``source``."""
    if looks_like_path(source):
        if not source.startswith("/"):
            return False  # relative paths depend on the server's cwd: never allowed
        try:
            target = Path(source).resolve()
        except (OSError, ValueError):  # NUL bytes, names too long: no directory of ours
            return False
        dirs = (Path(p).resolve() for p in allow_list if p.startswith("/"))
        return any(target.is_relative_to(d) for d in dirs)
    patterns = (p for p in allow_list if not p.startswith("/"))
    return any(fnmatch.fnmatchcase(source, p) for p in patterns)
