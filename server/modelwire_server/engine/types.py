"""Plain data types of the generation engine: request parameters and the events it emits.

Nothing here knows about protobuf or gRPC: the servicer converts its messages to
these types and the events back to messages.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# transformers' own defaults for fields a model's generation_config leaves unset
# (GenerationConfig._get_default_generation_params in transformers 5), so that an unset
# field behaves as it does in ``model.generate()``.
_HF_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "typical_p": 1.0,
    "repetition_penalty": 1.0,
    "num_beams": 1,
    "length_penalty": 1.0,
    "num_return_sequences": 1,
    "early_stopping": False,
}


@dataclass(frozen=True, slots=True)
class ResolvedSampling:
    """Concrete sampling values for one request (no ``None`` left but ``seed``)."""

    greedy: bool
    temperature: float
    top_k: int  # 0 = off
    top_p: float  # 1.0 = off
    min_p: float  # 0.0 = off
    typical_p: float  # 1.0 = off
    repetition_penalty: float  # 1.0 = off
    presence_penalty: float
    frequency_penalty: float
    seed: int | None
    num_beams: int
    length_penalty: float
    early_stopping: bool | str
    n: int
    logit_bias: dict[int, float]

    @property
    def uses_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


@dataclass(slots=True)
class SamplingParams:
    """How tokens are chosen. ``None`` takes the model's ``generation_config`` value.

    Sampling is on when ``temperature`` is set above 0, or when it is unset and the
    model's generation_config says ``do_sample``; a model without a generation_config
    decodes greedily unless the request sets a temperature. ``temperature == 0`` is
    always greedy. Beam search (``num_beams > 1``) is deterministic: it ignores the
    temperature, the warpers and the seed, and applies logit bias and penalties to the
    log-probabilities as transformers' logits processors do.
    """

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    num_beams: int | None = None
    length_penalty: float | None = None
    n: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)

    def resolve(self, generation_config: Any | None) -> ResolvedSampling:
        """Fill every unset field from ``generation_config``, then transformers' defaults."""
        gc = generation_config

        def pick(name: str, config_name: str | None = None) -> Any:
            value = getattr(self, name, None)
            if value is None and gc is not None:
                value = getattr(gc, config_name or name, None)
            return value if value is not None else _HF_DEFAULTS.get(config_name or name)

        do_sample = bool(getattr(gc, "do_sample", False)) if gc is not None else False
        temperature = float(pick("temperature"))
        greedy = self.temperature == 0 if self.temperature is not None else not do_sample
        greedy = greedy or temperature == 0
        return ResolvedSampling(
            greedy=greedy,
            temperature=temperature,
            top_k=int(pick("top_k") or 0),
            top_p=float(pick("top_p")),
            min_p=float(pick("min_p") or 0.0),
            typical_p=float(pick("typical_p")),
            repetition_penalty=float(pick("repetition_penalty")),
            presence_penalty=float(self.presence_penalty or 0.0),
            frequency_penalty=float(self.frequency_penalty or 0.0),
            seed=self.seed,
            num_beams=int(pick("num_beams")),
            length_penalty=float(pick("length_penalty")),
            early_stopping=getattr(gc, "early_stopping", None) or _HF_DEFAULTS["early_stopping"],
            n=int(pick("n", "num_return_sequences")),
            logit_bias=dict(self.logit_bias),
        )


@dataclass(slots=True)
class StoppingParams:
    """When a sequence ends. ``max_new_tokens=None`` takes the engine's default."""

    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_in_output: bool = False
    time_limit_ms: int | None = None


@dataclass(slots=True)
class OutputOptions:
    """What each event carries besides the text."""

    logprobs: bool = False
    top_logprobs: int = 0
    echo_prompt_tokens: bool = False
    skip_special_tokens: bool = True


ResponseKind = Literal["json_object", "json_schema", "regex", "choice", "grammar"]


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The format a request's output must have; hashable, the compiled-format cache's key.

    ``spec`` is the schema's JSON text, the regex or the grammar (empty for json_object and
    choice); ``choices`` the strings of a choice. ``strict`` False lets a JSON schema's
    objects hold properties it does not name (JSON Schema's default); True (the default,
    as OpenAI's strict mode) allows only the named ones.
    """

    kind: ResponseKind
    spec: str = ""
    choices: tuple[str, ...] = ()
    strict: bool = True


# (row ids so far, row scores [V]) -> new scores; see GenerationRequest.logits_hook
LogitsHook = Callable[[list[int], Any], Any]


@dataclass(slots=True)
class GenerationRequest:
    """One Generate call, already tokenized (the servicer applies chat templates).

    For an encoder-decoder, ``prompt_ids`` is the encoder input; the decoder starts from
    the model's decoder start token.
    """

    prompt_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stopping: StoppingParams = field(default_factory=StoppingParams)
    options: OutputOptions = field(default_factory=OutputOptions)
    request_id: str = ""
    deadline: float | None = None  # time.monotonic() seconds
    # The token every sequence must start with (an M2M100/NLLB target language);
    # None takes the generation_config's forced_bos_token_id.
    forced_bos_token_id: int | None = None
    # Model inputs beside the tokens, prepared by the runner off the worker: pixel values
    # for an image-text-to-text prompt, or the encoder's whole input (pixel values, audio
    # features) for an encoder-decoder whose encoder does not read tokens. Tensors of
    # one item (batch axis 1), concatenated across the rows of a prefill.
    extras: dict[str, Any] | None = None
    # An encoder-decoder's decoder start tokens for this request (Whisper's language and
    # task tokens); None: the model's decoder start token.
    decoder_prompt_ids: list[int] | None = None
    # A per-request logits processor, the last one before the warpers (where
    # ``model.generate(logits_processor=[...])`` puts a caller's processors): called on the
    # device worker for each row of this request at every step with the row's ids so far
    # (context + output) and its ``[V]`` scores after the built-in processors (bias,
    # penalties, suppression, forced tokens); returns the scores to choose from. Beam rows
    # pass log-probabilities. Whisper's timestamp rules and language detection use it. An
    # exception it raises fails this request alone (as any step failure a request causes).
    logits_hook: LogitsHook | None = None
    # The compiled response format (``constraints.Compiled``), or None for free text:
    # each row's tokens are masked to what the format allows next.
    constraint: Any | None = None
    # Higher is admitted first and preempted last; equal priorities are FIFO.
    priority: int = 0


class FinishReason(enum.Enum):
    LENGTH = "length"
    EOS = "eos"
    STOP_SEQUENCE = "stop_sequence"
    TIME_LIMIT = "time_limit"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One token: ``text`` is ``decode([id])``; ``logprob`` and ``top`` come from the model's
    raw distribution (log_softmax of unprocessed logits) and are set only when asked."""

    id: int
    text: str
    logprob: float | None = None
    top: list[tuple[int, str, float]] = field(default_factory=list)
    special: bool = False


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    generated_tokens: int
    queue_time_s: float
    time_to_first_token_s: float | None
    total_time_s: float
    cached_prompt_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """Always the first event of a request; ``tokens`` only with ``echo_prompt_tokens``."""

    prompt_tokens: int
    tokens: list[TokenInfo] | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """New text and tokens of sequence ``index``; ``text`` may be empty while held back."""

    index: int
    text: str
    tokens: list[TokenInfo]


@dataclass(frozen=True, slots=True)
class Finished:
    """The last event of sequence ``index``.

    ``text`` is always the sequence's full text (for a streamed sequence, the
    concatenation of its deltas). ``tokens`` is empty for streamed sequences (their
    tokens went out in deltas) and holds every token of a beam.
    """

    index: int
    reason: FinishReason
    text: str
    tokens: list[TokenInfo]
    usage: Usage
    seed: int | None


@dataclass(frozen=True, slots=True)
class Failed:
    """Ends the whole request with an error; no event follows."""

    error: Exception


Event = PromptInfo | Delta | Finished | Failed
Sink = Callable[[Event], None]
