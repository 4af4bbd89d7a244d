"""``/v1/chat/completions`` and ``/v1/completions``: OpenAI JSON ⇄ the Generate path.

A request becomes the ``GenerateRequest`` a gRPC client would send, and runs through
the servicer's own ``generate`` (prompt checks, engine submit, stream merging, usage
for the access log, cancel in ``finally``): one request path for both fronts, so the
streamed text of a seeded request is the gRPC stream's text. Its messages become
OpenAI's chunks here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from modelwire.v1 import common_pb2, generate_pb2
from modelwire_server.errors import InvalidArgument
from modelwire_server.http import fields, structured
from modelwire_server.servicers.generation import generate
from modelwire_server.tasks.text_generation import TextGenerationTask

FINISH = {
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_EOS: "stop",
    common_pb2.FINISH_REASON_STOP_SEQUENCE: "stop",
    common_pb2.FINISH_REASON_TIME_LIMIT: "length",
    common_pb2.FINISH_REASON_CANCELLED: "stop",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
}
# Server field names → this API's, for 400s (``param``).
_STOPPING = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
CHAT_RENAMES = {**_STOPPING, "prompt": "messages"}
COMPLETION_RENAMES = {**_STOPPING, "top_logprobs": "logprobs"}
# OpenAI's numeric parameters and vLLM's common extensions, as SamplingParameters names them.
_SAMPLING_NUMBERS = (
    "temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p",
    "repetition_penalty",
)  # fmt: skip
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_DATA_URI = "data:"


class NoDeadline:
    """The servicer's ``context`` for a call without a deadline (HTTP has none)."""

    def time_remaining(self) -> None:
        return None


def generate_request(body: dict[str, Any], *, chat: bool) -> generate_pb2.GenerateRequest:
    """The GenerateRequest for an OpenAI chat (or completions) body, minus its input."""
    fields.refuse_unsupported(body)
    request = generate_pb2.GenerateRequest(model=fields.string(body, "model", required=True))
    sampling = request.sampling
    for name in _SAMPLING_NUMBERS:
        value = fields.number(body, name)
        if value is not None:
            setattr(sampling, name, value)
    for name in ("n", "seed", "top_k"):
        value = fields.integer(body, name)
        if value is not None:
            _set(sampling, name, value, name)
    bias = body.get("logit_bias")
    if bias is not None:
        sampling.logit_bias.update(_logit_bias(bias))
    stopping = request.stopping
    for name in ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",):
        value = fields.integer(body, name)
        if value is not None:
            _set(stopping, "max_new_tokens", value, name)
            break
    min_tokens = fields.integer(body, "min_tokens")
    if min_tokens is not None:
        _set(stopping, "min_new_tokens", min_tokens, "min_tokens")
    stopping.stop.extend(fields.strings(body, "stop") or [])
    stopping.ignore_eos = bool(fields.boolean(body, "ignore_eos"))
    priority = fields.integer(body, "priority")
    if priority is not None:
        # vLLM's extension reads lower as sooner; GenerateRequest.priority higher as
        # sooner: negated (an int32's -2**31 becomes the highest one, 2**31 - 1).
        _set(request, "priority", priority, "priority")
        request.priority = min(-priority, INT32_MAX)
    if chat:
        if fields.boolean(body, "logprobs"):
            request.options.logprobs = True
            top = fields.integer(body, "top_logprobs") or 0
            _set(request.options, "top_logprobs", top, "top_logprobs")
        elif body.get("top_logprobs"):
            raise InvalidArgument("top_logprobs", "needs logprobs set to true")
    else:
        top = fields.integer(body, "logprobs")
        if top is not None:
            request.options.logprobs = True
            _set(request.options, "top_logprobs", top, "logprobs")
        if fields.boolean(body, "echo"):
            raise InvalidArgument("echo", "is not supported")
        if body.get("suffix"):
            raise InvalidArgument("suffix", "is not supported")
        best_of = fields.integer(body, "best_of")
        if best_of is not None and best_of != (fields.integer(body, "n") or 1):
            raise InvalidArgument("best_of", "is not supported (other than equal to n)")
    structured.apply(body, request, chat=chat)
    return request


INT32_MAX = 2**31 - 1


def _set(message: Any, name: str, value: int, param: str) -> None:
    """``message.name = value``; a value the field's integer type cannot hold is a 400."""
    try:
        setattr(message, name, value)
    except (ValueError, TypeError):
        raise InvalidArgument(param, f"{value} is out of range") from None


def _logit_bias(bias: Any) -> dict[int, float]:
    if not isinstance(bias, dict):
        raise InvalidArgument("logit_bias", "must be an object of token id → bias")
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not str(key).lstrip("-").isdigit():
            raise InvalidArgument("logit_bias", f"key {key!r} is not a token id")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidArgument("logit_bias", f"the bias of {key} must be a number")
        if not -100 <= value <= 100:
            raise InvalidArgument("logit_bias", f"the bias of {key} must be in [-100, 100]")
        if not 0 <= int(key) < 2**31:
            raise InvalidArgument("logit_bias", f"key {key} is not a token id")
        out[int(key)] = float(value)
    return out


def chat_messages(body: dict[str, Any]) -> common_pb2.ChatMessages:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidArgument("messages", "must be a non-empty list of messages")
    out = common_pb2.ChatMessages()
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidArgument(where, "must be an object with role and content")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidArgument(f"{where}.role", f"must be one of {', '.join(_ROLES)}")
        turn = out.messages.add(role=_ROLES[role])
        turn.content.extend(_parts(message.get("content"), f"{where}.content"))
        structured.tool_turn(turn, message, where)
    return out


def _parts(content: Any, where: str) -> list[common_pb2.ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [common_pb2.ContentPart(text=content)]
    if not isinstance(content, list):
        raise InvalidArgument(where, "must be a string or a list of parts")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(common_pb2.ContentPart(text=part["text"]))
        elif kind == "image_url":
            data = _image_bytes(part.get("image_url"), f"{where}[{j}].image_url")
            parts.append(common_pb2.ContentPart(image=common_pb2.Image(data=data)))
        else:
            raise InvalidArgument(
                f"{where}[{j}]", "must be a text part or an image_url part with a data: URI"
            )
    return parts


def _image_bytes(image_url: Any, where: str) -> bytes:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url.startswith(_DATA_URI):
        raise InvalidArgument(
            where, "must be a data: URI (data:image/png;base64,...): the server fetches no URLs"
        )
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise InvalidArgument(where, "must be a base64 data: URI")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise InvalidArgument(where, f"is not valid base64: {exc}") from None


def prompts(body: dict[str, Any]) -> list[str]:
    value = body.get("prompt")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(p, int | list) for p in value):
        raise InvalidArgument("prompt", "token id prompts are not supported; send text")
    raise InvalidArgument("prompt", "must be a string or a non-empty list of strings")


def stream_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidArgument("stream_options", "must be an object")
    return bool(fields.boolean(options, "include_usage"))


# -- running and answering -------------------------------------------------------------


class Primed:
    """A Generate stream whose first message has come already; ``aclose`` ends the
    generation (its ``finally`` cancels the engine rows) whether or not it was read."""

    def __init__(
        self,
        first: generate_pb2.GenerateResponse,
        stream: AsyncGenerator[generate_pb2.GenerateResponse, None],
    ) -> None:
        self._first: generate_pb2.GenerateResponse | None = first
        self._stream = stream

    def __aiter__(self) -> Primed:
        return self

    async def __anext__(self) -> generate_pb2.GenerateResponse:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._stream)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def primed(
    runner: TextGenerationTask, request: generate_pb2.GenerateRequest, request_id: str
) -> Primed:
    """``generate``'s stream, already past its first message, so that what fails before
    anything is generated (bad fields, a full queue) fails the HTTP call with its status
    instead of a 200 stream."""
    stream = generate(runner, request, NoDeadline(), request_id)  # type: ignore[arg-type]
    try:
        first = await anext(stream)
    except BaseException:
        await stream.aclose()
        raise
    return Primed(first, stream)


@dataclass
class Choice:
    """One sequence's answer, gathered for a non-streamed reply."""

    text: list[str] = field(default_factory=list)
    tokens: list[generate_pb2.Token] = field(default_factory=list)
    finish: str | None = None
    tool_calls: list[common_pb2.ToolCall] = field(default_factory=list)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    _prompts_seen: set[int] = field(default_factory=set)

    def add(self, message: generate_pb2.GenerateResponse, stream: int = 0) -> None:
        if message.HasField("prompt_token_count"):
            self.prompt_tokens += message.prompt_token_count
        if message.finish_reason:
            self.completion_tokens += message.usage.generated_tokens
            if stream not in self._prompts_seen:  # a prompt's cache hit counts once
                self._prompts_seen.add(stream)
                self.cached_tokens += message.usage.cached_prompt_tokens

    def json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


async def gather(streams: list[Primed], n: int) -> tuple[dict[int, Choice], Usage]:
    """Every stream to its end; choice ``p * n + index`` for stream ``p``'s sequences."""
    usage = Usage()
    choices: dict[int, Choice] = {}

    async def drain(p: int, stream: Primed) -> None:
        async for message in stream:
            usage.add(message, p)
            if message.HasField("prompt_token_count"):
                continue
            choice = choices.setdefault(p * n + message.index, Choice())
            choice.text.append(message.text)
            choice.tokens.extend(message.tokens)
            choice.tool_calls.extend(message.tool_calls)
            if message.finish_reason:
                choice.finish = FINISH[message.finish_reason]

    await asyncio.gather(*(drain(p, s) for p, s in enumerate(streams)))
    return dict(sorted(choices.items())), usage


def chat_logprobs(tokens: list[generate_pb2.Token]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.text,
                "logprob": t.logprob,
                "bytes": list(t.text.encode()),
                "top_logprobs": [
                    {"token": a.text, "logprob": a.logprob, "bytes": list(a.text.encode())}
                    for a in t.top_logprobs
                ],
            }
            for t in tokens
        ]
    }


def completion_logprobs(tokens: list[generate_pb2.Token], offset: int) -> dict[str, Any]:
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{a.text: a.logprob for a in t.top_logprobs} for t in tokens],
        "text_offset": offsets,
    }


@dataclass
class Reply:
    """The fixed part of every chunk or body of one call."""

    id: str
    model: str
    chat: bool
    logprobs: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, choices: dict[int, Choice], usage: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [self._choice(i, c) for i, c in choices.items()],
            "usage": usage.json(),
        }

    def _choice(self, index: int, choice: Choice) -> dict[str, Any]:
        text = "".join(choice.text)
        logprobs = None
        if self.logprobs:
            logprobs = (
                chat_logprobs(choice.tokens) if self.chat else completion_logprobs(choice.tokens, 0)
            )
        out: dict[str, Any] = {"index": index, "logprobs": logprobs, "finish_reason": choice.finish}
        if self.chat:
            out["message"] = {"role": "assistant", "content": text}
            if choice.tool_calls:
                out["message"]["content"] = text or None
                out["message"]["tool_calls"] = structured.tool_calls_json(
                    choice.tool_calls, streamed=False
                )
        else:
            out["text"] = text
        return out

    def chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage.json()
        return out


async def chunks(
    reply: Reply, stream: Primed, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    """OpenAI's stream chunks for one Generate stream (the caller frames them as SSE)."""
    usage = Usage()
    started: set[int] = set()
    offsets: dict[int, int] = {}
    async for message in stream:
        usage.add(message)
        if message.HasField("prompt_token_count"):
            continue
        if not (message.text or message.finish_reason or (reply.logprobs and message.tokens)):
            continue  # text held back (a partial character or stop string): nothing to say
        index = message.index
        choice: dict[str, Any] = {"index": index}
        if reply.chat:
            delta: dict[str, Any] = {"content": message.text}
            if index not in started:
                delta["role"] = "assistant"
                started.add(index)
            if message.tool_calls:
                delta["tool_calls"] = structured.tool_calls_json(message.tool_calls, streamed=True)
            choice["delta"] = delta
        else:
            choice["text"] = message.text
        logprobs = None
        if reply.logprobs and message.tokens:
            tokens = list(message.tokens)
            if reply.chat:
                logprobs = chat_logprobs(tokens)
            else:
                logprobs = completion_logprobs(tokens, offsets.get(index, 0))
                offsets[index] = offsets.get(index, 0) + len(message.text)
        choice["logprobs"] = logprobs
        choice["finish_reason"] = FINISH.get(message.finish_reason)
        yield reply.chunk([choice], usage=None)
    if include_usage:
        yield reply.chunk([], usage=usage)
