"""Batched logits processors with per-row parameters.

Each function takes scores ``[B, V]`` and per-row parameters shaped ``[B, 1]`` (or
``[B]``), and returns new scores; a row whose parameter is the "off" value is left
exactly as it was. Callers skip a function when no row uses it (known on the host, so
no device sync is needed to decide). The formulas follow transformers' processors (named in each
docstring) so that one request behaves as ``model.generate()`` would.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def repetition_penalty(
    scores: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """CTRL: a seen token's logit is divided by ``penalty`` if positive, else multiplied
    (RepetitionPenaltyLogitsProcessor). ``seen`` is ``[B, V]`` bool over prompt and output."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def presence_frequency(
    scores: torch.Tensor, counts: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor
) -> torch.Tensor:
    """OpenAI: ``logit -= count * frequency + (count > 0) * presence`` over output tokens."""
    return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence


def temperature(scores: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """TemperatureLogitsWarper; rows that do not sample carry 1.0."""
    return scores / temp


def top_k(scores: torch.Tensor, k: torch.Tensor, k_max: int) -> torch.Tensor:
    """TopKLogitsWarper: drop logits below the k-th largest (ties with it stay).

    ``k`` is ``[B]`` int; 0 or anything ``>= V`` turns it off for that row. ``k_max`` is
    its largest value, passed in so that reading it needs no device sync.
    """
    vocab = scores.shape[-1]
    active = (k > 0) & (k < vocab)
    kk = torch.where(active, k, torch.ones_like(k)).clamp(max=vocab)
    top = torch.topk(scores, max(1, min(k_max, vocab)), dim=-1).values
    kth = top.gather(-1, (kk - 1).view(-1, 1))
    remove = (scores < kth) & active.view(-1, 1)
    return scores.masked_fill(remove, NEG_INF)


def top_p(scores: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """TopPLogitsWarper: keep the smallest set of most likely tokens whose mass reaches
    ``p`` (``[B, 1]``; 1.0 = off). Sorted ascending as transformers does, so ties break alike."""
    active = p < 1.0
    sorted_logits, order = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_remove = cumulative <= (1 - p)
    sorted_remove[..., -1] = False
    remove = sorted_remove.scatter(1, order, sorted_remove) & active
    return scores.masked_fill(remove, NEG_INF)


def min_p(scores: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """MinPLogitsWarper: drop tokens less likely than ``m`` times the top token (0.0 = off)."""
    active = m > 0.0
    probs = scores.softmax(dim=-1)
    remove = probs < m * probs.amax(dim=-1, keepdim=True)
    remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return scores.masked_fill(remove & active, NEG_INF)


def typical_p(scores: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """TypicalLogitsWarper: keep the tokens whose surprisal is closest to the entropy,
    up to probability ``mass`` (``[B, 1]``; 1.0 = off)."""
    active = mass < 1.0
    normalized = torch.log_softmax(scores, dim=-1)
    entropy = -(normalized * normalized.exp()).nansum(-1, keepdim=True)
    shifted = torch.abs(-normalized - entropy)
    sorted_shifted, order = torch.sort(shifted, descending=False)
    cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp(max=scores.shape[-1] - 1)
    sorted_remove = sorted_shifted > sorted_shifted.gather(1, last.view(-1, 1))
    sorted_remove[..., :1] = False
    remove = sorted_remove.scatter(1, order, sorted_remove) & active
    return scores.masked_fill(remove, NEG_INF)
