"""The SDK's result and input types: plain frozen dataclasses, no protobuf.

Results of a call carry the ``request_id`` the server echoed, so a log line or a bug
report can name the call; it takes no part in equality.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

_T = TypeVar("_T")

ModelState = Literal["loading", "ready", "failed", "unloading"]
HealthStatus = Literal["SERVING", "NOT_SERVING", "UNKNOWN", "SERVICE_UNKNOWN"]


class ResultList(list[_T], Generic[_T]):
    """A plain ``list`` of results that also knows the request id of the call behind it."""

    request_id: str | None

    def __init__(self, items: Iterable[_T] = (), *, request_id: str | None = None) -> None:
        super().__init__(items)
        self.request_id = request_id


@dataclass(frozen=True)
class LabelScore:
    """One label with its score: a probability, or a raw logit with ``function_to_apply="none"``."""

    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """The labels of one input, highest score first."""

    labels: list[LabelScore]

    @property
    def top(self) -> LabelScore:
        """The best label. Raises ``IndexError`` if the server returned none."""
        return self.labels[0]


@dataclass(frozen=True)
class Embedding:
    """The embedding of one input.

    ``values`` is the pooled vector; with ``pooling="none"`` it is empty and
    ``token_vectors`` holds one vector per token instead.
    """

    values: list[float]
    token_vectors: list[list[float]]
    token_count: int
    truncated: bool


@dataclass(frozen=True)
class TopLogprob:
    """An alternative token at one generation step, with its log-probability."""

    id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class Token:
    """One token of a prompt or of a generated sequence.

    ``logprob`` is set only when ``logprobs=True`` was asked for; ``top_logprobs`` only
    with ``top_logprobs > 0``.
    """

    id: int
    text: str
    logprob: float | None = None
    top_logprobs: list[TopLogprob] = field(default_factory=list)
    special: bool = False


@dataclass(frozen=True)
class Usage:
    """Token counts and timings of one generated sequence; durations are in seconds."""

    prompt_tokens: int
    generated_tokens: int
    queue_time: float | None = None
    time_to_first_token: float | None = None
    total_time: float | None = None
    #: Prompt tokens whose KV came from the server's prefix cache (part of prompt_tokens).
    cached_prompt_tokens: int = 0


class FinishReason(enum.StrEnum):
    """Why a generated sequence ended."""

    LENGTH = "length"
    """``max_new_tokens`` or the model's context was reached."""
    EOS = "eos"
    """The model produced an end-of-sequence token or one of ``stop_token_ids``."""
    STOP_SEQUENCE = "stop_sequence"
    """One of the ``stop`` strings was produced."""
    TIME_LIMIT = "time_limit"
    """``time_limit_ms`` ran out."""
    CANCELLED = "cancelled"
    """The call was cancelled or its deadline passed."""
    TOOL_CALLS = "tool_calls"
    """The model called tools (the result's ``tool_calls``)."""


@dataclass(frozen=True)
class ToolCall:
    """A call of a tool by the model: its ``id`` (a ``role: "tool"`` turn answering it
    names it as ``tool_call_id``), the tool's ``name`` and its ``arguments`` as JSON text."""

    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> Any:
        """``arguments`` decoded (``json.loads``)."""
        import json

        return json.loads(self.arguments)


@dataclass(frozen=True)
class GenerationChunk:
    """One message of a generation stream.

    The first chunk of a stream carries ``prompt_token_count`` (and ``prompt_tokens`` when
    ``echo_prompt_tokens=True``) and no text. Each further chunk carries new ``text`` of
    sequence ``index`` (possibly empty while a multi-byte character is incomplete); the
    last chunk of a sequence carries ``finish_reason``, ``usage`` and ``seed``.
    """

    index: int
    text: str
    tokens: list[Token]
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    seed: int | None = None
    prompt_token_count: int | None = None
    prompt_tokens: list[Token] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    """On a sequence's last chunk when the model called tools (finish reason TOOL_CALLS)."""


@dataclass(frozen=True)
class SequenceResult:
    """One finished sequence (of ``n`` samples, or one returned beam; index 0 is the best beam)."""

    index: int
    text: str
    tokens: list[Token]
    finish_reason: FinishReason | None
    usage: Usage | None
    seed: int | None
    parsed: Any = None
    """With ``response_format``: the decoded value (the JSON value, or an instance of the
    pydantic model given; the text for regex, choice and grammar formats) once the
    format closed the sequence (finish reason EOS); else None."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    """The tools the model called (finish reason TOOL_CALLS); the text holds the calls
    as the model wrote them."""


@dataclass(frozen=True)
class GenerationResult:
    """Everything a generation produced, sequences ordered by ``index``."""

    sequences: list[SequenceResult]
    prompt_token_count: int | None
    prompt_tokens: list[Token] = field(default_factory=list)
    request_id: str | None = field(default=None, compare=False)

    @property
    def text(self) -> str:
        """The text of sequence 0 (the only one unless ``n > 1``)."""
        return self.sequences[0].text if self.sequences else ""

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The ``tool_calls`` of sequence 0."""
        return self.sequences[0].tool_calls if self.sequences else []

    @property
    def parsed(self) -> Any:
        """The ``parsed`` value of sequence 0 (see ``SequenceResult.parsed``)."""
        return self.sequences[0].parsed if self.sequences else None


@dataclass(frozen=True, init=False)
class ImagePart:
    """An image inside a chat message, as encoded bytes (PNG, JPEG, WebP, ...).

    ``ImagePart(data)`` also takes a path (``str`` or ``os.PathLike``: the file's bytes),
    a PIL image or a uint8 numpy array ``(H, W)`` / ``(H, W, C)`` (sent as PNG), as the
    media calls do; ``data`` always holds the bytes.
    """

    data: bytes

    def __init__(self, data: Any) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            from modelwire._media_inputs import image  # only a non-bytes input needs it

            data = image("ImagePart.data", data).data
        object.__setattr__(self, "data", bytes(data))


@dataclass(frozen=True)
class ChatMessage:
    """A chat turn: a role ("system", "user", "assistant", "tool", ...) and its content.

    ``content`` is a string, or a list of text and image parts in order. A ``"tool"``
    turn carries a tool's result as its content and the ``tool_call_id`` it answers; an
    assistant turn may carry the ``tool_calls`` it made.
    """

    role: str
    content: str | list[str | ImagePart]
    tool_call_id: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(frozen=True)
class Tokenization:
    """The tokens of a text (or of chat messages rendered with the chat template).

    ``offsets`` are ``(start, end)`` character spans into ``text``, one per token.
    """

    token_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    text: str
    request_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ModelInfo:
    """What the server knows of one model."""

    name: str
    task: str
    architecture: str
    source: str
    device: str
    dtype: str
    state: ModelState
    failure_message: str
    context_length: int | None
    default_for_task: bool
    rpcs: list[str]
    preset: bool
    """Whether it is a random-weight model of the built-in preset (meaningless outputs)."""
    quantization: str = ""
    """Weight-only quantization of its linear layers: "none", "int8", "int4" or "fp8"
    (empty from a server that does not say); everything else runs in ``dtype``."""
    request_id: str | None = field(default=None, compare=False)
