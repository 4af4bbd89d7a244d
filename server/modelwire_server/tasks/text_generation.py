"""text-generation: decoder-only models behind the generation engine.

The runner loads the model and tokenizer, turns prompts and chat messages into token
ids, and drives the engine: while it has work, one ``engine.step`` at a time runs on
the device worker, so one-shot tasks on the same device interleave between steps.
The encoder-decoder runners (``tasks.seq2seq``) reuse all of it but loading and prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelwire_server import errors
from modelwire_server.engine import errors as engine_errors
from modelwire_server.engine.adapter import ModelAdapter
from modelwire_server.engine.constraints import Compiled, ConstraintCompiler
from modelwire_server.engine.engine import GenerationEngine
from modelwire_server.engine.kvbudget import resolve_budget
from modelwire_server.engine.types import (
    Failed,
    FinishReason,
    GenerationRequest,
    ResponseFormat,
)
from modelwire_server.engine_client import EngineDriver, Rename, domain_error
from modelwire_server.engine_process import EngineInfo, ProcessEngineDriver
from modelwire_server.tasks.base import TaskRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolCallTurn:
    """A tool call an assistant turn made: its id, the tool's name, arguments as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatTurn:
    """A chat message as the servicer hands it over: role and ordered parts; a "tool"
    turn names the call it answers, an assistant turn may carry the calls it made."""

    role: str
    parts: Sequence[str | bytes]  # text, or encoded image bytes
    tool_call_id: str = ""
    tool_calls: Sequence[ToolCallTurn] = ()


@dataclass(frozen=True)
class TextResult:
    """One request's output: its text, why it ended, and how many tokens it took."""

    text: str
    reason: FinishReason
    generated_tokens: int


@dataclass(frozen=True)
class Tokenized:
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    text: str


def run_inline(
    engine: GenerationEngine,
    request: GenerationRequest | Sequence[GenerationRequest],
    *,
    max_new_tokens: int,
) -> None:
    """Run ``request`` (or several, as one batch) to its end right here (on the worker,
    at load: warm-ups), ``max_new_tokens`` tokens with EOS ignored; raise what it
    failed with."""
    requests = [request] if isinstance(request, GenerationRequest) else list(request)
    events: list[object] = []
    steps = len(requests) * (max_new_tokens + 8)
    for one in requests:
        one.stopping.max_new_tokens = max_new_tokens
        one.stopping.ignore_eos = True
        for _ in range(steps):
            try:
                engine.submit(one, events.append)
                break
            except engine_errors.QueueFull:  # a queue of one: admit the last one first
                engine.step()
    for _ in range(steps):
        if not engine.has_work():
            break
        engine.step()
    failed = [e for e in events if isinstance(e, Failed)]
    if failed:
        raise failed[0].error


def _input_named(input_field: str | None, i: int) -> Rename | None:
    """Names an invalid prompt ``{input_field}[i]`` (None: the engine's own field name)."""
    if input_field is None:
        return None

    def rename(exc: engine_errors.InvalidRequest) -> errors.InvalidArgument:
        field = f"{input_field}[{i}]" if exc.field == "prompt" else exc.field
        return errors.InvalidArgument(field, exc.message)

    return rename


def _template_message(i: int, turn: ChatTurn) -> dict[str, Any]:
    """A turn as chat templates read it (transformers' convention: a call's arguments
    as a mapping, a tool turn's ``tool_call_id``)."""
    message: dict[str, Any] = {"role": turn.role, "content": "".join(map(str, turn.parts))}
    if turn.tool_call_id:
        message["tool_call_id"] = turn.tool_call_id
    calls = []
    for j, call in enumerate(turn.tool_calls):
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError as exc:
            raise errors.InvalidArgument(
                f"messages[{i}].tool_calls[{j}].arguments", f"is not JSON: {exc}"
            ) from None
        function = {"name": call.name, "arguments": arguments}
        calls.append({"id": call.id, "type": "function", "function": function})
    if calls:
        message["tool_calls"] = calls
    return message


# The longer warm-up prompt: past the chunk and window sizes where attention changes
# its path (Reformer's chunks, sliding windows), and a prime, so no multiple of a chunk
# size (a multiple would skip Reformer's own padding); short enough to cost little.
WARMUP_PROMPT_TOKENS = 37


class TextGenerationTask(TaskRunner):
    task = "text-generation"
    rpcs = ("Generate", "Tokenize")
    # Prompt tokens that stand for model inputs beside the tokens (image placeholders):
    # truncating a prompt must not cut any of them off.
    placeholder_ids: frozenset[int] = frozenset()

    # With ``engine_process``: what the device process reported of the model it holds.
    remote: EngineInfo | None = None

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if self.config.engine_process:
            # The model lives in a device process; this one keeps the tokenizer.
            driver = ProcessEngineDriver(self.config, self.device, self.dtype)
            driver.notify = self._notify
            self.remote = driver.launch()
            self.quantized_layers = self.remote.quantized_layers
            self.engine, self.driver = driver.engine, driver  # type: ignore[assignment]
            return
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs, **self.placement_kwargs())
        self.model = self.place(model)
        self.engine = self.make_engine()
        self.driver = EngineDriver(self.engine, self.worker, self.config.name)

    @property
    def architecture(self) -> str:
        return self.remote.architecture if self.remote is not None else super().architecture

    def _notify(self, up: bool, why: str) -> None:
        if self.availability is not None:
            self.availability(up, why)

    def discard(self) -> None:
        if self.remote is not None:
            self.driver.stop()  # type: ignore[attr-defined]

    def make_engine(self, adapter: ModelAdapter | None = None) -> GenerationEngine:
        """The engine over this runner's model (``adapter``: None picks the model's kind)."""
        return GenerationEngine(
            self.model,
            self.tokenizer,
            device=self.device,
            generation_config=getattr(self.model, "generation_config", None),
            max_batch_tokens=self.config.max_batch_tokens,
            max_waiting=self.config.max_waiting,
            max_new_tokens_cap=self.config.max_new_tokens,
            default_max_new_tokens=self.config.default_max_new_tokens,
            adapter=adapter,
            prefix_caching=self.config.prefix_caching,
            prefill_chunk_tokens=self.prefill_chunk_tokens,
            kv_cache_memory=resolve_budget(self.config.kv_cache_memory, torch.device(self.device)),
        )

    @property
    def prefill_chunk_tokens(self) -> int:
        """The configured chunk, else 512 on a GPU and 64 on the CPU."""
        chunk = self.config.prefill_chunk_tokens
        return chunk if chunk is not None else 512 if self.device.type == "cuda" else 64

    @functools.cached_property
    def constraints(self) -> ConstraintCompiler:
        """Compiles (and caches) this model's response formats."""
        limits = self.engine.limits
        return ConstraintCompiler(self.tokenizer, limits.vocab_size, limits.eos_ids)

    async def compile_format(self, fmt: ResponseFormat) -> Compiled:
        """``fmt`` compiled on a thread of its own: neither the event loop nor the device
        worker (whose decode steps other requests wait for) ever runs the compiler."""
        try:
            return await asyncio.to_thread(self.constraints.compile, fmt)
        except engine_errors.EngineError as exc:
            raise domain_error(exc) from None

    @property
    def context_length(self) -> int | None:
        return self.engine.limits.max_context

    @property
    def generation_config(self) -> Any:
        return self.engine.generation_config

    # -- driving the engine ------------------------------------------------------------

    async def start(self) -> None:
        await self.driver.start()

    async def close(self) -> None:
        await self.driver.close()

    def warmup(self) -> None:
        """Generate two tokens for a short and a longer prompt as one batch, end to end
        (on the worker: steps run inline): a padded prefill of a real length and a
        decode step, so that a model the engine cannot drive fails at load. (A device
        process has warmed its engine up before it said it was ready.)"""
        if self.remote is None:
            self._warm_engine()
        # The tokenizer's byte table for response formats: built at load, not by the
        # first constrained request (a tenth of a second for a 50k vocabulary). A
        # tokenizer it cannot read fails constrained requests only, not the model.
        try:
            self.constraints.warm()
        except Exception:
            log.warning("model %s: response formats unavailable", self.config.name, exc_info=True)

    def _warm_engine(self) -> None:
        short = self.encode_prompt("Hello")[-8:] or [0]
        limits = self.engine.limits
        length = min(WARMUP_PROMPT_TOKENS, limits.max_batch_tokens - 2)
        if limits.max_context is not None:
            length = min(length, limits.max_context - 3)
        longer = (short * length)[: max(length, 1)]
        self.run_inline(
            [GenerationRequest(prompt_ids=short), GenerationRequest(prompt_ids=longer)],
            max_new_tokens=2,
        )

    def run_inline(
        self, request: GenerationRequest | Sequence[GenerationRequest], *, max_new_tokens: int
    ) -> None:
        run_inline(self.engine, request, max_new_tokens=max_new_tokens)

    async def complete_all(
        self, requests: Sequence[GenerationRequest], input_field: str | None
    ) -> list[TextResult]:
        """Submit every request at once (so they decode together, and with other calls),
        and return each one's final text, in order. An error, or a caller that goes away,
        cancels them all. A request the engine refuses for its prompt is INVALID_ARGUMENT
        naming ``{input_field}[i]`` (None: the engine's own field name)."""
        async with contextlib.AsyncExitStack() as streams:
            opened = [
                await streams.enter_async_context(
                    self.driver.open(request, rename=_input_named(input_field, i))
                )
                for i, request in enumerate(requests)
            ]
            ends = await asyncio.gather(*(stream.final() for stream in opened))
        return [TextResult(e.text, e.reason, e.usage.generated_tokens) for [e] in ends]

    # -- prompts -----------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def render_chat(
        self,
        turns: Sequence[ChatTurn],
        *,
        add_generation_prompt: bool,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> str:
        """The chat rendered by the model's template; ``tools`` (OpenAI-style function
        specs) go to the template, which says how the model is told about them."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise errors.InvalidArgument(
                "messages", f"model {self.config.name!r} has no chat template; send a prompt"
            )
        messages = []
        for i, turn in enumerate(turns):
            if not turn.role:
                raise errors.InvalidArgument(f"messages[{i}].role", "must not be empty")
            for j, part in enumerate(turn.parts):
                if isinstance(part, bytes):
                    raise errors.InvalidArgument(
                        f"messages[{i}].content[{j}].image",
                        f"model {self.config.name!r} is not an image-text-to-text model",
                    )
            messages.append(_template_message(i, turn))
        extra = {"tools": list(tools)} if tools else {}
        try:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False, **extra
            )
        except Exception as exc:  # a template may reject roles or orderings
            raise errors.InvalidArgument(
                "messages", f"the chat template refused them: {exc}"
            ) from None

    def encode_chat(
        self, turns: Sequence[ChatTurn], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        text = self.render_chat(turns, add_generation_prompt=True, tools=tools)
        # The template already holds BOS and the like.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_inputs(self, turns: Sequence[ChatTurn]) -> tuple[list[int], dict[str, Any] | None]:
        """A chat's prompt ids and the model inputs beside them (``extras``; None: text)."""
        return self.encode_chat(turns), None

    def tokenize(
        self,
        text: str | None,
        turns: Sequence[ChatTurn] | None,
        *,
        add_special_tokens: bool,
        add_generation_prompt: bool,
    ) -> Tokenized:
        if turns is not None:
            text = self.render_chat(turns, add_generation_prompt=add_generation_prompt)
            add_special_tokens = False
        assert text is not None
        encoded = self.tokenizer(
            text, add_special_tokens=add_special_tokens, return_offsets_mapping=True
        )
        ids = list(encoded["input_ids"])
        return Tokenized(
            ids=ids,
            tokens=self.tokenizer.convert_ids_to_tokens(ids),
            offsets=[tuple(o) for o in encoded["offset_mapping"]],
            text=text,
        )
