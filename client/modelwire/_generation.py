"""Generate: the request's parameters, and the stream's messages as SDK types."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypedDict

from modelwire import _validation as check
from modelwire._chat import ChatMessageLike, chat_messages
from modelwire._structured import (
    Parser,
    ResponseFormat,
    ToolChoiceLike,
    ToolLike,
    response_format_pb,
    tool_choice_pb,
    tools_pb,
)
from modelwire._types import (
    FinishReason,
    GenerationChunk,
    GenerationResult,
    SequenceResult,
    Token,
    ToolCall,
    TopLogprob,
    Usage,
)
from modelwire.v1 import common_pb2, generate_pb2

MAX_TOP_LOGPROBS = 20


class GenerateParams(TypedDict, total=False):
    """Keyword options of ``generate`` and ``generate_stream``; each one left out (or None)
    takes the model's own ``generation_config`` value (greedy decoding without one)."""

    # -- sampling --
    #: Softmax temperature, >= 0; 0 is greedy.
    temperature: float | None
    #: Keep the k most likely tokens; 0 disables.
    top_k: int | None
    #: Nucleus sampling mass, in (0, 1].
    top_p: float | None
    #: Drop tokens below min_p times the top token's probability, in [0, 1].
    min_p: float | None
    #: Locally typical sampling mass, in (0, 1].
    typical_p: float | None
    #: CTRL repetition penalty over prompt and output tokens, > 0; 1 disables.
    repetition_penalty: float | None
    #: OpenAI presence penalty (output tokens), in [-2, 2].
    presence_penalty: float | None
    #: OpenAI frequency penalty (output tokens), in [-2, 2].
    frequency_penalty: float | None
    #: Seed of this request's own generator (uint64); unset draws one, returned at the end.
    seed: int | None
    #: Token id -> bias added to its logit.
    logit_bias: Mapping[int, float] | None
    #: Beam search width; 1 disables beam search.
    num_beams: int | None
    #: Beam scores are divided by length ** length_penalty.
    length_penalty: float | None
    #: Independent samples; with beams, how many of the best beams (<= num_beams).
    n: int | None
    # -- stopping --
    #: Most tokens to generate, >= 1.
    max_new_tokens: int | None
    #: EOS is suppressed until this many tokens are generated.
    min_new_tokens: int | None
    #: String(s) that end a sequence when produced.
    stop: str | Sequence[str] | None
    #: Token ids that end a sequence, beside the model's EOS ids.
    stop_token_ids: Sequence[int] | None
    #: Keep generating past EOS.
    ignore_eos: bool | None
    #: Keep a matched stop string at the end of the text.
    include_stop_in_output: bool | None
    #: Stop after this many milliseconds (finish reason TIME_LIMIT).
    time_limit_ms: int | None
    # -- options --
    #: Return each chosen token's log-probability (raw distribution).
    logprobs: bool | None
    #: Also return this many alternatives per step, 0 to 20.
    top_logprobs: int | None
    #: Return the prompt's tokens on the first chunk.
    echo_prompt_tokens: bool | None
    #: Leave special tokens out of the text (the server's default is True).
    skip_special_tokens: bool | None
    #: Keep only the last N prompt tokens instead of refusing an over-long prompt.
    truncate_prompt_tokens: int | None
    # -- structured output --
    #: The format the output must have: a JSON-schema dict, a pydantic model class, or
    #: JsonObject(), JsonSchema(...), Regex(...), Choice(...), Grammar(...). The result's
    #: ``parsed`` holds the decoded value.
    response_format: ResponseFormat | None
    # -- tools (chat only) --
    #: Tools the model may call: Tool objects or mappings (OpenAI's shape too).
    tools: Sequence[ToolLike] | None
    #: "auto" (default), "none", "required", or the name of the tool to call.
    tool_choice: ToolChoiceLike | None
    # -- scheduling --
    #: Higher is admitted first and preempted last; equal ones first come, first served.
    priority: int | None


_Check = Callable[[str, Any], None]
_SAMPLING: dict[str, _Check] = {
    "temperature": partial(check.number, low=0),
    "top_k": partial(check.integer, minimum=0),
    "top_p": partial(check.number, low=0, high=1, low_open=True),
    "min_p": partial(check.number, low=0, high=1),
    "typical_p": partial(check.number, low=0, high=1, low_open=True),
    "repetition_penalty": partial(check.number, low=0, low_open=True),
    "presence_penalty": partial(check.number, low=-2, high=2),
    "frequency_penalty": partial(check.number, low=-2, high=2),
    "seed": partial(check.integer, minimum=0, maximum=check.UINT64_MAX),
    "num_beams": partial(check.integer, minimum=1),
    "length_penalty": check.number,
    "n": partial(check.integer, minimum=1),
}
_STOPPING: dict[str, _Check] = {
    "max_new_tokens": partial(check.integer, minimum=1),
    "min_new_tokens": partial(check.integer, minimum=0),
    "ignore_eos": check.boolean,
    "include_stop_in_output": check.boolean,
    "time_limit_ms": partial(check.integer, minimum=1),
}
_OPTIONS: dict[str, _Check] = {
    "logprobs": check.boolean,
    "top_logprobs": partial(check.integer, minimum=0, maximum=MAX_TOP_LOGPROBS),
    "echo_prompt_tokens": check.boolean,
    "skip_special_tokens": check.boolean,
    "truncate_prompt_tokens": partial(check.integer, minimum=1),
}
_LISTS = ("logit_bias", "stop", "stop_token_ids")
_STRUCTURED = ("response_format", "tools", "tool_choice")


def generate_request(
    prompt: str | None,
    messages: Sequence[ChatMessageLike] | None,
    model: str | None,
    params: GenerateParams,
) -> generate_pb2.GenerateRequest:
    """Check every argument and build the request; unset options stay unset on the wire."""
    known = {*_SAMPLING, *_STOPPING, *_OPTIONS, *_LISTS, *_STRUCTURED, "priority"}
    unknown = params.keys() - known
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    if (prompt is None) == (messages is None):
        raise ValueError("pass exactly one of `prompt` and `messages`")
    request = generate_pb2.GenerateRequest(model=check.optional_str("model", model))
    if messages is not None:
        request.messages.CopyFrom(chat_messages("messages", messages))
    else:
        request.prompt = check.optional_str("prompt", prompt)
    for fields, target in (
        (_SAMPLING, request.sampling),
        (_STOPPING, request.stopping),
        (_OPTIONS, request.options),
    ):
        for name, check_field in fields.items():
            value = params.get(name)
            check_field(name, value)
            if value is not None:
                setattr(target, name, value)
    _check_combinations(params)
    priority = params.get("priority")
    check.integer("priority", priority, minimum=-check.INT32_MAX - 1)
    if priority is not None:
        request.priority = priority
    request.sampling.logit_bias.update(_logit_bias(params.get("logit_bias")))
    request.stopping.stop.extend(_stop(params.get("stop")))
    request.stopping.stop_token_ids.extend(_token_ids(params.get("stop_token_ids")))
    fmt = params.get("response_format")
    if fmt is not None:
        request.response_format.CopyFrom(response_format_pb(fmt))
    if params.get("tools") is not None:
        request.tools.extend(tools_pb(params["tools"]))  # type: ignore[arg-type]
    if params.get("tool_choice") is not None:
        request.tool_choice.CopyFrom(tool_choice_pb(params["tool_choice"]))  # type: ignore[arg-type]
    return request


def _check_combinations(params: GenerateParams) -> None:
    n, beams = params.get("n"), params.get("num_beams")
    if n is not None and beams is not None and beams > 1 and n > beams:
        raise ValueError(f"`n` must be at most `num_beams` ({beams}) with beam search, got {n}")
    low, high = params.get("min_new_tokens"), params.get("max_new_tokens")
    if low is not None and high is not None and low > high:
        raise ValueError(f"`min_new_tokens` ({low}) must not exceed `max_new_tokens` ({high})")


def _logit_bias(value: Mapping[int, float] | None) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("`logit_bias` must be a mapping of token id to bias")
    for token_id, bias in value.items():
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise ValueError(f"`logit_bias` keys must be int token ids, got {token_id!r}")
        check.integer(f"logit_bias[{token_id}] key", token_id, minimum=0)
        check.number(f"logit_bias[{token_id}]", bias)
    return dict(value)


def _stop(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    stops = check.texts("stop", value)
    for i, stop in enumerate(stops):
        if not stop:
            raise ValueError(f"`stop[{i}]` must not be empty")
    return stops


def _token_ids(value: Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, Sequence):
        raise ValueError("`stop_token_ids` must be a sequence of ints")
    for i, token_id in enumerate(value):
        check.integer(f"stop_token_ids[{i}]", token_id, minimum=0)
    return list(value)


# --- the stream's messages ----------------------------------------------------------

_FINISH_REASONS = {
    common_pb2.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    common_pb2.FINISH_REASON_EOS: FinishReason.EOS,
    common_pb2.FINISH_REASON_STOP_SEQUENCE: FinishReason.STOP_SEQUENCE,
    common_pb2.FINISH_REASON_TIME_LIMIT: FinishReason.TIME_LIMIT,
    common_pb2.FINISH_REASON_CANCELLED: FinishReason.CANCELLED,
    common_pb2.FINISH_REASON_TOOL_CALLS: FinishReason.TOOL_CALLS,
}


def _token(t: generate_pb2.Token) -> Token:
    return Token(
        id=t.id,
        text=t.text,
        logprob=t.logprob if t.HasField("logprob") else None,
        top_logprobs=[TopLogprob(a.id, a.text, a.logprob) for a in t.top_logprobs],
        special=t.special,
    )


def _usage(u: generate_pb2.Usage) -> Usage:
    def seconds(name: str) -> float | None:
        return getattr(u, name).ToTimedelta().total_seconds() if u.HasField(name) else None

    return Usage(
        prompt_tokens=u.prompt_tokens,
        generated_tokens=u.generated_tokens,
        queue_time=seconds("queue_time"),
        time_to_first_token=seconds("time_to_first_token"),
        total_time=seconds("total_time"),
        cached_prompt_tokens=u.cached_prompt_tokens,
    )


def generation_chunk(r: generate_pb2.GenerateResponse) -> GenerationChunk:
    """One stream message as a chunk; unset optional fields become None."""
    return GenerationChunk(
        index=r.index,
        text=r.text,
        tokens=[_token(t) for t in r.tokens],
        finish_reason=_FINISH_REASONS.get(r.finish_reason),
        usage=_usage(r.usage) if r.HasField("usage") else None,
        seed=r.seed if r.HasField("seed") else None,
        prompt_token_count=r.prompt_token_count if r.HasField("prompt_token_count") else None,
        prompt_tokens=[_token(t) for t in r.prompt_tokens],
        tool_calls=[ToolCall(c.id, c.name, c.arguments) for c in r.tool_calls],
    )


@dataclass
class _Sequence:
    parts: list[str] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    seed: int | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


class GenerationAccumulator:
    """Folds chunks into per-sequence results, so a stream read in part can still be finished."""

    def __init__(self, parse: Parser | None = None) -> None:
        self._parse = parse
        self._sequences: dict[int, _Sequence] = {}
        self._prompt_token_count: int | None = None
        self._prompt_tokens: list[Token] = []

    def add(self, chunk: GenerationChunk) -> None:
        if chunk.prompt_token_count is not None:
            self._prompt_token_count = chunk.prompt_token_count
        self._prompt_tokens.extend(chunk.prompt_tokens)
        has_own_content = chunk.text or chunk.tokens or chunk.finish_reason or chunk.usage
        if not has_own_content and chunk.seed is None:
            return  # the prompt-only first message belongs to no sequence
        sequence = self._sequences.setdefault(chunk.index, _Sequence())
        sequence.parts.append(chunk.text)
        sequence.tokens.extend(chunk.tokens)
        sequence.finish_reason = chunk.finish_reason or sequence.finish_reason
        sequence.usage = chunk.usage or sequence.usage
        sequence.seed = chunk.seed if chunk.seed is not None else sequence.seed
        sequence.tool_calls.extend(chunk.tool_calls)

    def text(self, index: int = 0) -> str:
        sequence = self._sequences.get(index)
        return "".join(sequence.parts) if sequence else ""

    def result(self, request_id: str | None) -> GenerationResult:
        return GenerationResult(
            sequences=[
                SequenceResult(
                    index=i,
                    text="".join(s.parts),
                    tokens=list(s.tokens),
                    finish_reason=s.finish_reason,
                    usage=s.usage,
                    seed=s.seed,
                    parsed=self._parsed(s),
                    tool_calls=list(s.tool_calls),
                )
                for i, s in sorted(self._sequences.items())
            ],
            prompt_token_count=self._prompt_token_count,
            prompt_tokens=list(self._prompt_tokens),
            request_id=request_id,
        )

    def _parsed(self, sequence: _Sequence) -> Any:
        """The value of a sequence that its format closed (it ended with EOS); None for
        free text and for a sequence cut short (length, stop string, time limit)."""
        if self._parse is None or sequence.finish_reason is not FinishReason.EOS:
            return None
        return self._parse("".join(sequence.parts))
