"""Checking a request against the model and the engine's limits, once, at submit.

A request that passes is turned into ``Prepared``: concrete values the step loop uses
without further checks. Every refusal names the request field (proto dotted path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modelwire_server.engine.errors import InvalidRequest
from modelwire_server.engine.kvcache import grown_columns
from modelwire_server.engine.types import GenerationRequest, ResolvedSampling

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class Limits:
    vocab_size: int
    max_context: int | None
    max_new_tokens_cap: int
    default_max_new_tokens: int
    max_batch_tokens: int
    eos_ids: frozenset[int]
    # An encoder-decoder's decoder start tokens: they, not the prompt, open the decoded
    # sequence that max_context bounds; the prompt (encoder input) has max_prompt.
    decoder_prefix: tuple[int, ...] | None = None
    max_prompt: int | None = None
    # The encoder width of an encoder-decoder whose encoder reads features (pixel values,
    # audio) rather than tokens: what a request's cross-attention cache holds per row.
    encoder_tokens: int = 0
    # The KV budget (kv_cache_memory, bytes) and one token's KV bytes: a request whose
    # rows cannot fit in it even alone is refused. None: no byte budget.
    kv_budget: int | None = None
    kv_column_bytes: int | None = None

    def context_ids(self, request: GenerationRequest) -> list[int]:
        """The tokens the generated ones follow: the request's decoder start, else the
        model's decoder prefix, else the prompt."""
        if self.decoder_prefix is not None:
            if request.decoder_prompt_ids is not None:
                return list(request.decoder_prompt_ids)
            return list(self.decoder_prefix)
        return request.prompt_ids

    def encoder_cost(self, request: GenerationRequest) -> int:
        """Cache tokens the encoder side of a row holds: its prompt, or its features."""
        if self.decoder_prefix is not None and not request.prompt_ids and request.extras:
            return self.encoder_tokens
        return len(request.prompt_ids)


@dataclass(frozen=True, slots=True)
class Prepared:
    request: GenerationRequest
    sampling: ResolvedSampling
    max_new_tokens: int
    min_new_tokens: int
    eos_ids: frozenset[int]  # empty with ignore_eos
    stop_ids: frozenset[int]
    rows: int  # engine rows: num_beams for beam search, else n
    # Cache columns one row can come to hold: an encoder-decoder's encoder side (its
    # cross-attention cache), and the side that grows (a causal LM's prompt + output,
    # a decoder's output). A batch pads every row to the widest on each side.
    encoder_width: int
    decoder_width: int
    context_ids: list[int]  # what the output follows (see Limits.context_ids)
    # Generated-token index -> the only tokens allowed there (forced BOS / EOS).
    forced: dict[int, tuple[int, ...]]
    banned: tuple[int, ...] = ()  # never chosen: single-token bad_words_ids, suppress_tokens
    # begin_suppress_tokens: banned only at generated-token index ``begin_index``
    begin_banned: tuple[int, ...] = ()
    begin_index: int = 0
    no_repeat_ngram: int = 0  # no n-gram of this size twice (0 = off)

    @property
    def is_beam(self) -> bool:
        return self.sampling.num_beams > 1

    @property
    def cost(self) -> int:
        """Batch tokens this request holds alone: rows x (encoder + decoder width)."""
        return self.rows * (self.encoder_width + self.decoder_width)


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise InvalidRequest(field, message)


def _check_ids(ids: Any, vocab: int, field: str) -> None:
    bad = [i for i in ids if not 0 <= int(i) < vocab]
    _require(not bad, field, f"token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})")


# Ranges of the float parameters: finite, and wide enough for any real use, so that no
# value can turn a step's arithmetic into inf, NaN or a division by zero (a temperature
# of 1e-45 overflows the logits; length ** length_penalty underflows to 0 past +-10 or so
# at long lengths). Each is (low, high, inclusive low).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
MAX_REPETITION_PENALTY = 100.0
MAX_LENGTH_PENALTY = 10.0


def _check_float(value: float, field: str, low: float, high: float, *, open_low: bool) -> None:
    bracket = "(" if open_low else "["
    inside = math.isfinite(value) and (low < value if open_low else low <= value) and value <= high
    _require(inside, field, f"must be a finite number in {bracket}{low:g}, {high:g}], not {value}")


def _check_sampling(s: ResolvedSampling, vocab: int) -> None:
    _require(
        s.temperature == 0 or MIN_TEMPERATURE <= s.temperature <= MAX_TEMPERATURE,
        "sampling.temperature",
        f"must be 0 (greedy) or a finite number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], "
        f"not {s.temperature}",
    )
    _require(s.top_k >= 0, "sampling.top_k", "must be >= 0 (0 = off)")
    _check_float(s.top_p, "sampling.top_p", 0, 1, open_low=True)
    _check_float(s.min_p, "sampling.min_p", 0, 1, open_low=False)
    _check_float(s.typical_p, "sampling.typical_p", 0, 1, open_low=True)
    _check_float(
        s.repetition_penalty,
        "sampling.repetition_penalty",
        1 / MAX_REPETITION_PENALTY,
        MAX_REPETITION_PENALTY,
        open_low=False,
    )
    for name in ("presence_penalty", "frequency_penalty"):
        _check_float(getattr(s, name), f"sampling.{name}", -2, 2, open_low=False)
    _check_float(
        s.length_penalty,
        "sampling.length_penalty",
        -MAX_LENGTH_PENALTY,
        MAX_LENGTH_PENALTY,
        open_low=False,
    )
    _require(s.seed is None or 0 <= s.seed < 2**63, "sampling.seed", "must be in [0, 2**63)")
    _require(s.num_beams >= 1, "sampling.num_beams", "must be >= 1")
    _require(s.n >= 1, "sampling.n", "must be >= 1")
    if s.num_beams > 1:
        _require(s.n <= s.num_beams, "sampling.n", "with beam search, n must be <= num_beams")
    _check_ids(s.logit_bias.keys(), vocab, "sampling.logit_bias")
    _require(
        all(math.isfinite(v) and -100 <= v <= 100 for v in s.logit_bias.values()),
        "sampling.logit_bias",
        "biases must be finite numbers in [-100, 100]",
    )


def _max_new_tokens(request: GenerationRequest, limits: Limits) -> int:
    prompt = len(limits.context_ids(request))
    room = limits.max_context - prompt if limits.max_context is not None else None
    asked = request.stopping.max_new_tokens
    if asked is None:
        value = limits.default_max_new_tokens
        return min(value, room) if room is not None else value
    _require(asked >= 1, "stopping.max_new_tokens", "must be >= 1")
    _require(
        asked <= limits.max_new_tokens_cap,
        "stopping.max_new_tokens",
        f"{asked} is over this server's cap of {limits.max_new_tokens_cap}",
    )
    _require(
        room is None or asked <= room,
        "stopping.max_new_tokens",
        f"{'prompt' if limits.decoder_prefix is None else 'decoder start'} ({prompt}) + "
        f"max_new_tokens ({asked}) exceeds the context ({limits.max_context})",
    )
    return asked


def _check_prompt_length(prompt: int, limits: Limits) -> None:
    if limits.decoder_prefix is not None:
        _require(
            limits.max_prompt is None or prompt <= limits.max_prompt,
            "prompt",
            f"the prompt has {prompt} tokens; the model's encoder takes {limits.max_prompt}",
        )
    elif limits.max_context is not None:
        _require(
            prompt < limits.max_context,
            "prompt",
            f"the prompt has {prompt} tokens; the model's context is {limits.max_context}",
        )


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)


def _forced(
    request: GenerationRequest, limits: Limits, generation_config: Any, max_new: int
) -> dict[int, tuple[int, ...]]:
    """Forced tokens as transformers' ForcedBOS/ForcedEOS processors place them: BOS when
    the sequence (context + output) has length 1, EOS as the last allowed token."""
    bos = request.forced_bos_token_id
    if bos is None:
        bos = getattr(generation_config, "forced_bos_token_id", None)
    _check_ids(_ids(bos), limits.vocab_size, "forced_bos_token_id")
    forced: dict[int, tuple[int, ...]] = {}
    if bos is not None and len(limits.context_ids(request)) == 1:
        forced[0] = _ids(bos)
    eos = _ids(getattr(generation_config, "forced_eos_token_id", None))
    if eos:
        forced[max_new - 1] = eos  # after BOS: transformers runs the EOS processor last
    return forced


def _min_new_tokens(
    request: GenerationRequest, limits: Limits, generation_config: Any, max_new: int
) -> int:
    """The request's min_new_tokens, or the generation_config's min_length when that asks
    for more (it counts the context, as transformers' MinLengthLogitsProcessor does)."""
    min_length = int(getattr(generation_config, "min_length", None) or 0)
    from_config = min_length - len(limits.context_ids(request))
    return min(max_new, max(request.stopping.min_new_tokens, from_config))


def _banned(generation_config: Any) -> tuple[int, ...]:
    """Tokens never to choose. Multi-token bad_words_ids are not supported (ignored)."""
    words = getattr(generation_config, "bad_words_ids", None) or []
    banned = {int(w[0]) for w in words if len(w) == 1}
    banned.update(int(t) for t in getattr(generation_config, "suppress_tokens", None) or [])
    return tuple(sorted(banned))


def _begin_banned(
    request: GenerationRequest, limits: Limits, generation_config: Any
) -> tuple[tuple[int, ...], int]:
    """begin_suppress_tokens and the generated-token index they apply at, as transformers'
    SuppressTokensAtBeginLogitsProcessor places them: the first generated token, or the one
    after a forced BOS when the context is a lone start token."""
    ids = _ids(getattr(generation_config, "begin_suppress_tokens", None))
    if not ids:
        return (), 0
    bos = request.forced_bos_token_id
    if bos is None:
        bos = getattr(generation_config, "forced_bos_token_id", None)
    after_bos = bos is not None and len(limits.context_ids(request)) == 1
    return tuple(sorted(set(ids))), 1 if after_bos else 0


def alone_kv_bytes(rows: int, encoder_width: int, decoder_width: int, column_bytes: int) -> int:
    """The most KV bytes a request's rows hold running alone: the growing side with a
    growable buffer's slack, the encoder side as it is."""
    return rows * (encoder_width + grown_columns(decoder_width)) * column_bytes


def _check_kv_budget(
    rows: int, prompt: int, max_new: int, encoder_width: int, limits: Limits
) -> None:
    budget, column = limits.kv_budget, limits.kv_column_bytes
    if budget is None or column is None:
        return
    need = alone_kv_bytes(rows, encoder_width, prompt + max_new - encoder_width, column)
    _require(
        need <= budget,
        "stopping.max_new_tokens",
        f"{rows} x (prompt {prompt} + max_new_tokens {max_new}) tokens need {need} bytes of "
        f"KV cache even alone, more than this model's kv_cache_memory of {budget} bytes",
    )


def _check_constrained(request: GenerationRequest, beam: bool) -> None:
    """What a response format cannot go with: beams (they would need a matcher per
    hypothesis, forked at every step), and anything that keeps EOS from ending a
    sequence that the format has closed (then only EOS is allowed)."""
    _require(not beam, "response_format", "is not supported with beam search (num_beams > 1)")
    stopping = request.stopping
    _require(
        not stopping.ignore_eos,
        "stopping.ignore_eos",
        "cannot be combined with response_format: a completed format allows only EOS",
    )
    _require(
        stopping.min_new_tokens == 0,
        "stopping.min_new_tokens",
        "cannot be combined with response_format: a completed format allows only EOS",
    )


def prepare(request: GenerationRequest, limits: Limits, generation_config: Any) -> Prepared:
    """Validate ``request`` and resolve its parameters; raise ``InvalidRequest``."""
    prompt = len(request.prompt_ids)
    encoder_decoder = limits.decoder_prefix is not None
    # An encoder that reads features (pixel values, audio) takes no prompt tokens.
    _require(
        prompt > 0 or (encoder_decoder and bool(request.extras)),
        "prompt",
        "the prompt has no tokens",
    )
    _check_ids(request.prompt_ids, limits.vocab_size, "prompt")
    _check_prompt_length(prompt, limits)
    if request.decoder_prompt_ids is not None:
        _require(encoder_decoder, "prompt", "a decoder prompt needs an encoder-decoder model")
        _require(bool(request.decoder_prompt_ids), "prompt", "the decoder prompt is empty")
        _check_ids(request.decoder_prompt_ids, limits.vocab_size, "prompt")
    sampling = request.sampling.resolve(generation_config)
    _check_sampling(sampling, limits.vocab_size)
    stopping, options = request.stopping, request.options
    max_new = _max_new_tokens(request, limits)
    _require(
        0 <= stopping.min_new_tokens <= max_new,
        "stopping.min_new_tokens",
        "must be in [0, max_new_tokens]",
    )
    _require(all(stopping.stop), "stopping.stop", "stop strings must not be empty")
    _check_ids(stopping.stop_token_ids, limits.vocab_size, "stopping.stop_token_ids")
    _require(
        stopping.time_limit_ms is None or stopping.time_limit_ms > 0,
        "stopping.time_limit_ms",
        "must be > 0",
    )
    _require(
        0 <= options.top_logprobs <= MAX_TOP_LOGPROBS,
        "options.top_logprobs",
        f"must be in [0, {MAX_TOP_LOGPROBS}]",
    )
    beam = sampling.num_beams > 1
    _require(not (beam and stopping.stop), "stopping.stop", "not supported with beam search")
    if request.constraint is not None:
        _check_constrained(request, beam)
    rows = sampling.num_beams if beam else sampling.n
    prompt_cost = limits.encoder_cost(request)
    cost = rows * (prompt_cost + max_new)
    encoder_width = prompt_cost if encoder_decoder else 0
    _require(
        cost <= limits.max_batch_tokens,
        "stopping.max_new_tokens",
        f"{rows} x (prompt {prompt_cost} + max_new_tokens {max_new}) tokens exceed this server's "
        f"batch budget of {limits.max_batch_tokens}",
    )
    _check_kv_budget(rows, prompt_cost, max_new, encoder_width, limits)
    begin_banned, begin_index = _begin_banned(request, limits, generation_config)
    return Prepared(
        request=request,
        sampling=sampling,
        max_new_tokens=max_new,
        min_new_tokens=_min_new_tokens(request, limits, generation_config, max_new),
        eos_ids=frozenset() if stopping.ignore_eos else limits.eos_ids,
        stop_ids=frozenset(stopping.stop_token_ids),
        rows=rows,
        encoder_width=encoder_width,
        decoder_width=prompt_cost + max_new - encoder_width,
        context_ids=limits.context_ids(request),
        forced=_forced(request, limits, generation_config, max_new),
        banned=_banned(generation_config),
        begin_banned=begin_banned,
        begin_index=begin_index,
        no_repeat_ngram=int(getattr(generation_config, "no_repeat_ngram_size", None) or 0),
    )
