"""Per-row decoder positions for encoder-decoders whose position embeddings read the cache.

BART, Marian, Pegasus, M2M100/NLLB and their kin embed a decoder token's position from
the cache's length (``cache.get_seq_length()``): one number for the whole batch, taken
from the physical width of the cache. In a batch whose rows were left-padded to a
common width that is the wrong position for every padded row, and their forward passes
take no ``position_ids``. So a forward hook on the decoder's ``embed_positions``
replaces its output, during a decode step, with the embeddings of each row's own
position, looked up in the module's own table with the module's own indexing (so the
values are the very ones the model would have used for that position).

T5-style decoders have no position embedding: their relative attention bias depends
only on key position minus query position, which left padding shifts equally, so they
need nothing here (the engine tests check both kinds against ``generate``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# Decoders that have no absolute position embedding at all (relative attention bias).
RELATIVE_POSITION_MODELS = frozenset({"t5", "mt5", "umt5", "longt5"})

Lookup = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


def _sinusoidal_table(module: Any, positions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """M2M100 / NLLB: positions count from ``padding_idx + 1``; a pad token gets the
    (zero) ``padding_idx`` row, as ``create_position_ids_from_input_ids`` does."""
    pad = module.padding_idx
    ids = torch.where(tokens == pad, torch.full_like(positions, pad), positions + pad + 1)
    return module.weights.index_select(0, ids.view(-1)).view(*ids.shape, -1).detach()


def _embedding_table(module: Any, positions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """BART / mBART (learned, ``offset`` 2) and Marian / Pegasus (sinusoidal, offset 0)."""
    return nn.Embedding.forward(module, positions + getattr(module, "offset", 0))


def lookup_for(module: Any) -> Lookup:
    if all(hasattr(module, name) for name in ("weights", "padding_idx", "make_weights")):
        return _sinusoidal_table
    if isinstance(module, nn.Embedding):
        return _embedding_table
    raise TypeError(
        f"unsupported decoder position embedding {type(module).__name__}: its rows could "
        "not be positioned independently in a continuous batch"
    )


class DecoderPositions:
    """Overrides the decoder's position embeddings with per-row positions, on demand."""

    def __init__(self, model: Any) -> None:
        decoder = model.get_decoder()
        module = getattr(decoder, "embed_positions", None)
        self._lookup: Lookup | None = None
        self._override: tuple[torch.Tensor, torch.Tensor] | None = None
        if module is None:
            model_type = getattr(model.config, "model_type", "")
            if model_type not in RELATIVE_POSITION_MODELS:
                raise TypeError(
                    f"unsupported encoder-decoder {model_type!r}: its decoder positions "
                    "are neither relative nor an embed_positions table"
                )
            return
        self._lookup = lookup_for(module)
        # The hook leaves every other call (prefill, or generate() in the tests) alone.
        module.register_forward_hook(self._hook)

    @contextmanager
    def override(self, positions: torch.Tensor, tokens: torch.Tensor) -> Iterator[None]:
        """Within the block, decoder token ``r`` sits at ``positions[r]`` (``[R, L]``)."""
        self._override = (positions, tokens) if self._lookup is not None else None
        try:
            yield
        finally:
            self._override = None

    def _hook(self, module: Any, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self._override is None or self._lookup is None:
            return None
        positions, tokens = self._override
        return self._lookup(module, positions, tokens).to(device=output.device)
