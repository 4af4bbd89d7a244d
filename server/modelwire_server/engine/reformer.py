"""Reformer language models, one row per forward pass, each with its own cache.

Reformer keeps no keys and values: its ``ReformerDynamicCache`` holds each layer's past
hidden states (and LSH buckets), and a cached step takes its position from how many
states the cache holds, for the whole batch at once. Padded rows of different lengths
therefore cannot share a step, and its chunked attention pads prompts on the right
itself (passing positions or a mask with that padding fails inside transformers). So
each row runs alone, exactly as ``generate()`` runs a batch of one: the prompt
unpadded at prefill, then one token with the row's own cache per step. The rows
still join the engine's batch (scheduling, sampling and streaming are shared); only
the forward passes go row by row.
"""

from __future__ import annotations

from typing import Any

import torch

from modelwire_server.engine.adapter import PrefillInput, PrefillOutput, model_context_length


def is_reformer(model: Any) -> bool:
    return getattr(model.config, "model_type", None) == "reformer"


def _copy(cache: Any) -> Any:
    """An independent copy: an update replaces a layer's tensors (``torch.cat``) rather
    than writing into them, so new lists over the same tensors are enough."""
    return type(cache)(list(zip(cache.buckets_cache, cache.states_cache, strict=False)))


class RowCaches:
    """The running rows' Reformer caches, one per row."""

    def __init__(self, caches: list[Any]) -> None:
        self.caches = caches

    @property
    def rows(self) -> int:
        return len(self.caches)

    def select(self, index: torch.Tensor) -> None:
        self.caches = [_copy(self.caches[int(i)]) for i in index.tolist()]

    def merge(self, other: RowCaches) -> None:
        self.caches = self.caches + other.caches

    def rollback(self) -> None:
        """Nothing to undo: ``ReformerAdapter.decode`` commits only when every row ran."""

    def lengths(self) -> list[int]:
        return [cache.get_start_idx() for cache in self.caches]

    def tokens_in_use(self) -> int:
        return sum(self.lengths())

    def slots(self) -> int:
        return self.tokens_in_use()  # no padding


class ReformerAdapter:
    """``ReformerModelWithLMHead`` (causal, ``is_decoder=True``), row by row."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str) -> None:
        self.model = model
        self.device = torch.device(device)
        self.vocab_size = int(model.config.vocab_size)
        self.max_context = model_context_length(model.config)
        self.max_prompt: int | None = None
        self.decoder_prefix: list[int] | None = None

    @torch.inference_mode()
    def prefill(self, inputs: list[PrefillInput]) -> PrefillOutput:
        logits, caches, prompt_logits = [], [], []
        for item in inputs:
            ids = torch.tensor([item.prompt_ids], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, use_cache=True)
            logits.append(out.logits[:, -1, :].float())
            caches.append(out.past_buckets_states)
            prompt_logits.append(out.logits[0].float() if item.want_prompt_logits else None)
        return PrefillOutput(torch.cat(logits), RowCaches(caches), prompt_logits)

    @torch.inference_mode()
    def decode(self, state: Any, tokens: torch.Tensor) -> torch.Tensor:
        assert isinstance(state, RowCaches)
        # Work on copies so that a row failing midway leaves every cache as it was.
        caches = [_copy(cache) for cache in state.caches]
        logits = []
        for cache, token in zip(caches, tokens.tolist(), strict=True):
            ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, past_buckets_states=cache, use_cache=True)
            logits.append(out.logits[:, -1, :].float())
        state.caches = caches
        return torch.cat(logits)
