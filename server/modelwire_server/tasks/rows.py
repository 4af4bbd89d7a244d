"""Token rows from many requests run through an encoder in padded forward passes.

The text tasks turn each request into one or more rows of token ids (a text, a
premise/hypothesis pair, a window of a long text). All rows of a batch go through the
model together: sorted by length so that rows of similar length share a pass and little
compute goes to padding, and cut into passes of at most ``max_tokens`` padded tokens
so that a batch of long windows never needs more memory than the budget allows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from modelwire_server.batcher import check_abandoned


@dataclass(frozen=True)
class Row:
    """One model input: token ids and, for models that read them, token type ids."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None


# Reads what a row needs from a forward pass, e.g. ``lambda out: out.logits``; the
# tensor's first dimension is the pass's rows.
Readout = Callable[[Any], torch.Tensor]
# Keeps part of row ``i``'s readout on the device (e.g. the logits at its mask tokens),
# so that a vocabulary-wide readout never travels whole.
Pick = Callable[[int, torch.Tensor], torch.Tensor]


def run_rows(
    model: Any,
    rows: Sequence[Row],
    readout: Readout,
    *,
    pad_id: int,
    max_tokens: int,
    device: torch.device,
    pick: Pick | None = None,
) -> list[torch.Tensor]:
    """Each row's slice of ``readout`` (float32, on the CPU), in the order of ``rows``.

    Token-level readouts keep the pass's padded length: the caller trims to its row.
    """
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    results: list[torch.Tensor | None] = [None] * len(rows)
    for n, chunk in enumerate(_chunks(order, rows, max_tokens)):
        if n:
            check_abandoned()  # stop here if every caller of the batch has gone
        batch = _pad([rows[i] for i in chunk], pad_id, device)
        with torch.inference_mode():
            out = readout(model(**batch))
            if pick is None:
                out = out.float().cpu()
            for position, i in enumerate(chunk):
                row = out[position]
                results[i] = row if pick is None else pick(i, row).float().cpu()
    return [r for r in results if r is not None]


def _chunks(order: list[int], rows: Sequence[Row], max_tokens: int) -> list[list[int]]:
    """Consecutive runs of ``order`` whose padded size stays within ``max_tokens``."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Rows are sorted by length, so the newest row is the longest of its chunk.
        width = len(rows[i].input_ids)
        if current and width * (len(current) + 1) > max_tokens:
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


def _pad(rows: list[Row], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    # Right padding: absolute position embeddings then see each row as if it ran alone.
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        length = len(row.input_ids)
        ids[n, :length] = torch.tensor(row.input_ids)
        mask[n, :length] = 1
        if row.token_type_ids is not None:
            types[n, :length] = torch.tensor(row.token_type_ids)
    batch = {"input_ids": ids, "attention_mask": mask}
    if rows[0].token_type_ids is not None:
        batch["token_type_ids"] = types
    return {k: v.to(device) for k, v in batch.items()}


def reads_token_types(tokenizer: Any) -> bool:
    """Whether the model takes token_type_ids (BERT does; RoBERTa, DistilBERT do not)."""
    return "token_type_ids" in getattr(tokenizer, "model_input_names", ())


def pad_id_of(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if isinstance(pad, int) else 0
