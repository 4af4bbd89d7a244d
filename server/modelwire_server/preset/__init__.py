"""The built-in offline ``tiny`` preset: random-weight models for every task.

Each model is built from a config (no downloads), with a tokenizer trained on a small
built-in corpus, and written with ``save_pretrained`` into a cache directory on first
use. Their outputs are meaningless; they exist so that the server starts anywhere and
so that tests can compare the server against transformers on real model classes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Bump when any builder changes, so stale caches are rebuilt rather than reused.
PRESET_VERSION = "3"


@dataclass(frozen=True)
class PresetModel:
    """One tiny model of the preset."""

    name: str
    task: str
    build: Callable[[Path], None]
    default: bool = False
    description: str = ""
    # More ModelConfig fields the preset serves it with.
    settings: dict[str, object] = field(default_factory=dict)


def preset_dir() -> Path:
    """Where preset models are cached (``MODELWIRE_CACHE`` or ``~/.cache/modelwire``)."""
    root = os.environ.get("MODELWIRE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "modelwire"
    )
    return Path(root) / f"preset-v{PRESET_VERSION}"


def all_models() -> list[PresetModel]:
    """Every model of the preset, text models first."""
    from modelwire_server.preset import media, text

    return [*text.MODELS, *media.MODELS]


def get(name: str) -> PresetModel:
    for model in all_models():
        if model.name == name:
            return model
    raise KeyError(f"no preset model named {name!r}")


_build_lock = threading.Lock()


def ensure_model(name: str) -> Path:
    """Return the directory of preset model ``name``, building it first if needed.

    Building writes into a temporary sibling directory and renames it into place, so
    a crash mid-build never leaves a half-written model that later looks complete.
    """
    target = preset_dir() / name
    if (target / ".complete").exists():
        return target
    with _build_lock:
        if (target / ".complete").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            get(name).build(tmp)
            (tmp / ".complete").write_text(PRESET_VERSION)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_all(names: list[str] | None = None) -> dict[str, Path]:
    """Build (or find) the named preset models, or all of them."""
    wanted = names if names is not None else [m.name for m in all_models()]
    return {name: ensure_model(name) for name in wanted}
