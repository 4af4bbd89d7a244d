"""Beam-search requests in the shared batch: one step of a group's rows, and its end.

The engine hands a beam group its rows' processed log-probabilities; ``BeamSearch``
picks the continuations, and the rows are re-pointed at the cache rows they continue
(``sources``), carrying their penalty counts along.
"""

from __future__ import annotations

from typing import Any

from modelwire_server.engine.sampler import Selection
from modelwire_server.engine.sequence import RequestGroup, Row
from modelwire_server.engine.tokens import TokenTexts
from modelwire_server.engine.types import Finished, FinishReason, TokenInfo


def advance_beams(
    group: RequestGroup,
    rows: list[Row],
    index: list[int],
    selection: Selection,
    texts: TokenTexts,
) -> list[int] | None:
    """One beam step for ``rows`` (batch rows ``index``); return, per row, the batch row
    whose cache it continues, or None when the search is done."""
    assert group.beam is not None
    if group.first_token_at is None:
        group.first_token_at = group.clock()
    options = group.prepared.request.options
    raw = selection.raw_logprobs

    def info(source: int, token: int) -> TokenInfo:
        r = index[source]
        logprob = float(raw[r, token]) if options.logprobs and raw is not None else None
        return texts.info(token, logprob, selection.top.get(r))

    step = group.beam.step(selection.scores[index], info)
    if step.done:
        return None
    counts = [rows[s].counts for s in step.sources]
    for k, row in enumerate(rows):
        source_counts = counts[k]
        if source_counts is not None:
            row.counts = source_counts.clone()
            row.count(step.tokens[k])
        row.pending = step.tokens[k]
    return [index[s] for s in step.sources]


def finish_beams(group: RequestGroup, reason: FinishReason | None, tokenizer: Any) -> None:
    """Emit one ``Finished`` per returned beam, best first. ``reason`` overrides the
    natural one (EOS / stop token / length) for time limits and cancellation."""
    assert group.beam is not None
    prepared = group.prepared
    n = prepared.sampling.n
    results = group.beam.results(n) if reason is not FinishReason.CANCELLED else []
    for i in range(n):
        hyp = results[i] if i < len(results) else None
        tokens = hyp.tokens if hyp else []
        why = reason or _natural_reason(group, tokens)
        text = _text(group, tokens, why, tokenizer)
        infos = hyp.infos if hyp else []
        group.emit(Finished(i, why, text, infos, group.usage(len(tokens)), None))
    group.open_rows = 0


def _natural_reason(group: RequestGroup, tokens: list[int]) -> FinishReason:
    last = tokens[-1] if tokens else None
    if last in group.prepared.eos_ids:
        return FinishReason.EOS
    if last in group.prepared.stop_ids:
        return FinishReason.STOP_SEQUENCE
    return FinishReason.LENGTH


def _text(group: RequestGroup, tokens: list[int], reason: FinishReason, tokenizer: Any) -> str:
    """The beam's text as a stream would have sent it: the stop token's own text only
    with include_stop_in_output."""
    request = group.prepared.request
    stopped = reason in (FinishReason.EOS, FinishReason.STOP_SEQUENCE)
    if stopped and tokens and not request.stopping.include_stop_in_output:
        tokens = tokens[:-1]
    skip = request.options.skip_special_tokens
    context = group.context_ids
    prompt_text = tokenizer.decode(context, skip_special_tokens=skip)
    full = tokenizer.decode(context + tokens, skip_special_tokens=skip)
    return full[len(prompt_text) :]
