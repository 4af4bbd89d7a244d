"""Per-token descriptions (text, special flag, log-probabilities) for events."""

from __future__ import annotations

from typing import Any

import torch

from modelwire_server.engine.types import TokenInfo


class TokenTexts:
    """``decode([id])`` of each token, cached: the vocabulary is finite and this runs
    for every token of every stream."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._special = frozenset(getattr(tokenizer, "all_special_ids", []) or [])
        self._cache: dict[int, str] = {}

    def text(self, token: int) -> str:
        text = self._cache.get(token)
        if text is None:
            text = self._tokenizer.decode([token], skip_special_tokens=False)
            self._cache[token] = text
        return text

    def info(
        self,
        token: int,
        logprob: float | None = None,
        top: list[tuple[int, float]] | None = None,
    ) -> TokenInfo:
        return TokenInfo(
            id=token,
            text=self.text(token),
            logprob=logprob,
            top=[(t, self.text(t), v) for t, v in top or []],
            special=token in self._special,
        )

    def prompt_infos(
        self, prompt: list[int], logits: torch.Tensor | None, top_n: int
    ) -> list[TokenInfo]:
        """Echoed prompt tokens; with ``logits`` (``[len(prompt), V]``), each token's
        log-probability given the ones before it (the first has none)."""
        if logits is None:
            return [self.info(t) for t in prompt]
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        targets = torch.tensor(prompt[1:], device=logprobs.device).view(-1, 1)
        chosen = logprobs.gather(1, targets).view(-1).tolist()
        tops: list[list[tuple[int, float]]] = [[] for _ in chosen]
        if top_n:
            values, ids = torch.topk(logprobs, min(top_n, logprobs.shape[-1]), dim=-1)
            pairs = zip(ids.tolist(), values.tolist(), strict=True)
            tops = [list(zip(i, v, strict=True)) for i, v in pairs]
        infos = [self.info(prompt[0])]
        infos += [self.info(t, c, top) for t, c, top in zip(prompt[1:], chosen, tops, strict=True)]
        return infos
