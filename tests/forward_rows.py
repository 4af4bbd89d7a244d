"""Watching a served model's forward passes from a test (the text task batching tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def forward_rows(model: Any) -> Iterator[list[int]]:
    """Collects the number of rows of each forward pass of ``model`` while open."""
    rows: list[int] = []

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        rows.append(int(ids.shape[0]))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()
