"""Overlapping windows over a text longer than an encoder's maximum, and their merge.

A long text is encoded once, whole; its content tokens are cut into windows of the
model's size that overlap by a quarter window, each wrapped in the special tokens the
tokenizer adds (``[CLS] ... [SEP]``). After the forward passes every token takes its
prediction from the window where it sits farthest from an edge (the "max context" rule
of BERT's SQuAD code), so no token is judged with only one side of its context and no
token is counted twice. A text that fits is one window: exactly what the model sees
when it reads the text alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from modelwire_server.tasks.rows import Row


@dataclass(frozen=True)
class Layout:
    """How many special tokens the tokenizer puts before and after a single text."""

    prefix: int
    suffix: int


def special_layout(tokenizer: Any) -> Layout:
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("a")["input_ids"]
    for start in range(len(wrapped) - len(plain) + 1):
        if wrapped[start : start + len(plain)] == plain:
            return Layout(start, len(wrapped) - start - len(plain))
    raise ValueError("cannot tell the tokenizer's special tokens from the text's")


@dataclass(frozen=True)
class Window:
    """Content tokens [start, start + length) of the text, as one model row."""

    start: int
    length: int
    row: Row


def split(row: Row, layout: Layout, max_length: int | None) -> list[Window]:
    """Windows covering every content token of ``row`` (the whole text's encoding)."""
    content = len(row.input_ids) - layout.prefix - layout.suffix
    if max_length is None or len(row.input_ids) <= max_length:
        return [Window(0, content, row)]
    size = max_length - layout.prefix - layout.suffix
    if size < 1:
        raise ValueError(f"a window of {max_length} tokens leaves no room for text")
    step = size - size // 4
    # The last window ends at the text's end rather than running short, so it keeps a
    # full window of context.
    starts = [*range(0, content - size, step), content - size]
    return [Window(s, size, _slice(row, layout, s, size)) for s in starts]


def _slice(row: Row, layout: Layout, start: int, size: int) -> Row:
    def cut(values: list[int]) -> list[int]:
        head = values[: layout.prefix]
        tail = values[len(values) - layout.suffix :] if layout.suffix else []
        body = values[layout.prefix + start : layout.prefix + start + size]
        return [*head, *body, *tail]

    types = None if row.token_type_ids is None else cut(row.token_type_ids)
    return Row(cut(row.input_ids), types)


def merge(windows: list[Window], outputs: list[torch.Tensor], layout: Layout) -> torch.Tensor:
    """Per-token outputs of the whole text from its windows' per-token outputs.

    ``outputs[k]`` is window k's readout (at least its row's length along dim 0). Rows
    of the result for special tokens come from the first and last windows.
    """
    total = layout.prefix + windows[-1].start + windows[-1].length + layout.suffix
    merged = outputs[0].new_zeros((total, *outputs[0].shape[1:]))
    best = torch.full((total,), -1, dtype=torch.long)
    for window, out in zip(windows, outputs, strict=True):
        positions = torch.arange(window.length)
        # Distance to the nearer edge of the window: the context a token had there.
        context = torch.minimum(positions, window.length - 1 - positions)
        target = layout.prefix + window.start + positions
        better = context > best[target]
        merged[target[better]] = out[layout.prefix + positions[better]]
        best[target[better]] = context[better]
    merged[: layout.prefix] = outputs[0][: layout.prefix]
    last_row = len(windows[-1].row.input_ids)
    if layout.suffix:
        merged[total - layout.suffix :] = outputs[-1][last_row - layout.suffix : last_row]
    return merged
