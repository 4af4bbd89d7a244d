"""Token selection for one batched step, vectorised over rows with per-row parameters.

Order, as in the spec: logit bias → repetition penalty → presence/frequency penalties
→ (banned ids and n-gram repeats, EOS below min_new_tokens, forced BOS/EOS) → the
request's own logits hook (where generate puts a caller's processors) → the response
format's mask (constrained rows only, one packed bitmask for all) → temperature →
top-k → top-p → min-p → typical-p → sample or argmax. Beam rows stop after the
penalties and the hook: their scores are log-probabilities (transformers runs its
processors on log_softmax for beams) and the beam group picks the continuations.

Sampling uses inverse-CDF with one uniform draw per row from that row's own CPU
``torch.Generator``: every per-row operation (softmax, sort, cumsum) is independent of
the other rows, so a seed gives the same tokens whatever else is in the batch, and the
same draws on any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from modelwire_server.engine import constraints
from modelwire_server.engine import logits as lp
from modelwire_server.engine.errors import InvalidRequest
from modelwire_server.engine.types import LogitsHook, ResolvedSampling


class SamplingRow(Protocol):
    """What the sampler needs to know about one row of the batch."""

    sampling: ResolvedSampling
    is_beam: bool
    generator: torch.Generator | None
    prompt_seen: torch.Tensor | None  # [V] bool, for the repetition penalty
    counts: torch.Tensor | None  # [V] float32 output-token counts
    bias: tuple[torch.Tensor, torch.Tensor] | None  # (ids, values)
    suppressed: list[int]  # ids forbidden at this step (bans, EOS below min_new_tokens)
    forced: tuple[int, ...]  # the only ids allowed at this step (forced BOS/EOS), or ()
    top_logprobs: int
    wants_logprobs: bool
    logits_hook: LogitsHook | None  # the request's own processor (Whisper timestamps)
    constraint: constraints.RowConstraint | None  # the response format's matcher

    def history(self) -> list[int]:
        """The row's tokens so far, as the logits hook sees them."""
        ...


@dataclass(slots=True)
class Selection:
    """Result of one step: ``tokens[i]`` for non-beam rows (-1 for beam rows)."""

    tokens: list[int]
    scores: torch.Tensor  # processed scores; log-probs for beam rows
    raw_logprobs: torch.Tensor | None  # [B, V] log_softmax of the raw logits
    chosen_logprobs: list[float | None]
    top: dict[int, list[tuple[int, float]]]  # row -> top alternatives (raw)


def _column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype).to(like.device).view(-1, 1)


def apply_penalties(scores: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Logit bias, repetition penalty, presence/frequency, EOS suppression, forced ids."""
    for i, row in enumerate(rows):
        if row.bias is not None:
            ids, values = row.bias
            scores[i].index_add_(0, ids, values)
    rep = [i for i, r in enumerate(rows) if r.sampling.repetition_penalty != 1.0]
    if rep:
        seen = torch.stack([rows[i].prompt_seen for i in rep])  # type: ignore[misc]
        seen |= torch.stack([rows[i].counts for i in rep]) > 0  # type: ignore[misc]
        penalty = _column([rows[i].sampling.repetition_penalty for i in rep], scores)
        scores[rep] = lp.repetition_penalty(scores[rep], seen, penalty)
    pf = [
        i
        for i, r in enumerate(rows)
        if r.sampling.presence_penalty != 0.0 or r.sampling.frequency_penalty != 0.0
    ]
    if pf:
        counts = torch.stack([rows[i].counts for i in pf])  # type: ignore[misc]
        presence = _column([rows[i].sampling.presence_penalty for i in pf], scores)
        frequency = _column([rows[i].sampling.frequency_penalty for i in pf], scores)
        scores[pf] = lp.presence_frequency(scores[pf], counts, presence, frequency)
    for i, row in enumerate(rows):
        if row.suppressed:
            scores[i, row.suppressed] = lp.NEG_INF
        if row.forced:  # ForcedBOS/EOSTokenLogitsProcessor: forced ids 0, all else -inf
            scores[i] = lp.NEG_INF
            scores[i, list(row.forced)] = 0.0
        if row.logits_hook is not None:
            scores[i] = row.logits_hook(row.history(), scores[i])
    return scores


def apply_constraints(scores: torch.Tensor, rows: list[SamplingRow]) -> None:
    """Mask each constrained row to the tokens its format allows next (in place)."""
    constrained = [i for i, r in enumerate(rows) if r.constraint is not None]
    if not constrained:
        return
    items = [(i, rows[i].constraint, rows[i].history()) for i in constrained]
    constraints.mask_rows(scores, items)  # type: ignore[arg-type]
    # A format whose next tokens are all banned or suppressed leaves nothing to choose:
    # fail that request here, before any row draws its random number.
    best = scores.amax(dim=-1) if len(constrained) == len(rows) else scores[constrained].amax(-1)
    if torch.isneginf(best).any():
        raise InvalidRequest(
            "response_format",
            "allows no token that the model's banned, suppressed or forced tokens leave",
        )


def warp(scores: torch.Tensor, params: list[ResolvedSampling]) -> torch.Tensor:
    """Temperature, then the truncation warpers that any of these rows uses."""
    scores = lp.temperature(scores, _column([p.temperature for p in params], scores))
    if any(p.top_k > 0 for p in params):
        k = torch.tensor([p.top_k for p in params], device=scores.device)
        scores = lp.top_k(scores, k, max(p.top_k for p in params))
    if any(p.top_p < 1.0 for p in params):
        scores = lp.top_p(scores, _column([p.top_p for p in params], scores))
    if any(p.min_p > 0.0 for p in params):
        scores = lp.min_p(scores, _column([p.min_p for p in params], scores))
    if any(p.typical_p < 1.0 for p in params):
        scores = lp.typical_p(scores, _column([p.typical_p for p in params], scores))
    return scores


def sample(scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row by inverse CDF, one uniform draw from each row's generator."""
    cdf = scores.softmax(dim=-1).cumsum(dim=-1)
    draws = [float(torch.rand((), generator=g)) for g in generators]
    u = torch.tensor(draws, dtype=cdf.dtype).to(cdf.device).view(-1, 1) * cdf[:, -1:]
    picked = torch.searchsorted(cdf, u, right=True).view(-1)
    return picked.clamp(max=scores.shape[-1] - 1)


def select(logits: torch.Tensor, rows: list[SamplingRow]) -> Selection:
    """Choose the next token of every non-beam row; process scores for beam rows."""
    beams = [i for i, r in enumerate(rows) if r.is_beam]
    need_raw = bool(beams) or any(r.wants_logprobs or r.top_logprobs for r in rows)
    raw = torch.log_softmax(logits, dim=-1) if need_raw else None
    scores = logits.clone()
    if beams and raw is not None:
        scores[beams] = raw[beams]
    scores = apply_penalties(scores, rows)
    apply_constraints(scores, rows)

    tokens = torch.full((len(rows),), -1, dtype=torch.long, device=logits.device)
    greedy = [i for i, r in enumerate(rows) if not r.is_beam and r.sampling.greedy]
    if greedy:
        tokens[greedy] = scores[greedy].argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if not r.is_beam and not r.sampling.greedy]
    if sampled:
        warped = warp(scores[sampled], [rows[i].sampling for i in sampled])
        gens = [rows[i].generator for i in sampled]
        tokens[sampled] = sample(warped, gens)  # type: ignore[arg-type]
    token_list = tokens.tolist()
    return Selection(
        tokens=token_list,
        scores=scores,
        raw_logprobs=raw,
        chosen_logprobs=_chosen(raw, token_list, rows),
        top=top_alternatives(raw, rows),
    )


def _chosen(
    raw: torch.Tensor | None, tokens: list[int], rows: list[SamplingRow]
) -> list[float | None]:
    want = [i for i, r in enumerate(rows) if r.wants_logprobs and not r.is_beam]
    out: list[float | None] = [None] * len(rows)
    if raw is None or not want:
        return out
    picked = raw[want, [tokens[i] for i in want]].tolist()
    for i, value in zip(want, picked, strict=True):
        out[i] = value
    return out


def top_alternatives(
    raw: torch.Tensor | None, rows: list[SamplingRow]
) -> dict[int, list[tuple[int, float]]]:
    """The ``top_logprobs`` most likely tokens of each asking row, from the raw distribution."""
    want = [i for i, r in enumerate(rows) if r.top_logprobs > 0]
    if raw is None or not want:
        return {}
    k = max(rows[i].top_logprobs for i in want)
    values, ids = torch.topk(raw[want], min(k, raw.shape[-1]), dim=-1)
    result = {}
    for j, (vals, toks) in enumerate(zip(values.tolist(), ids.tolist(), strict=True)):
        n = rows[want[j]].top_logprobs
        result[want[j]] = list(zip(toks[:n], vals[:n], strict=True))
    return result
