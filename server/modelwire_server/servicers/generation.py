"""Generate, Tokenize, Summarize and Translate: protobuf ⇄ the engine's plain types.

Generate streams the engine's events of one request; Summarize and Translate submit
one engine request per input (encoder-decoder models) and answer when all are done.
A chat with image parts (image-text-to-text models) brings the model's image inputs
beside its prompt ids, and Tokenize gives that chat's expanded prompt (one token per
image feature), the ids Generate prefills.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2

from modelwire.v1 import common_pb2, generate_pb2
from modelwire.v1 import inference_service_pb2 as pb
from modelwire_server import errors
from modelwire_server.engine import types as et
from modelwire_server.interceptors import current_request_id
from modelwire_server.servicers.common import RpcGroup, deadline_of, optional
from modelwire_server.tasks import tool_calls
from modelwire_server.tasks.seq2seq import SummarizationTask, TranslationTask
from modelwire_server.tasks.text_generation import (
    ChatTurn,
    TextGenerationTask,
    TextResult,
    ToolCallTurn,
)

_FINISH = {
    et.FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    et.FinishReason.EOS: common_pb2.FINISH_REASON_EOS,
    et.FinishReason.STOP_SEQUENCE: common_pb2.FINISH_REASON_STOP_SEQUENCE,
    et.FinishReason.TIME_LIMIT: common_pb2.FINISH_REASON_TIME_LIMIT,
    et.FinishReason.CANCELLED: common_pb2.FINISH_REASON_CANCELLED,
}
_SAMPLING_FIELDS = (
    "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
    "presence_penalty", "frequency_penalty", "seed", "num_beams", "length_penalty", "n",
)  # fmt: skip


def sampling_params(msg: common_pb2.SamplingParameters) -> et.SamplingParams:
    values = {name: optional(msg, name) for name in _SAMPLING_FIELDS}
    return et.SamplingParams(**values, logit_bias=dict(msg.logit_bias))  # type: ignore[arg-type]


def stopping_params(msg: common_pb2.StoppingParameters) -> et.StoppingParams:
    return et.StoppingParams(
        max_new_tokens=optional(msg, "max_new_tokens"),  # type: ignore[arg-type]
        min_new_tokens=msg.min_new_tokens,
        stop=list(msg.stop),
        stop_token_ids=list(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
        include_stop_in_output=msg.include_stop_in_output,
        time_limit_ms=optional(msg, "time_limit_ms"),  # type: ignore[arg-type]
    )


def output_options(msg: generate_pb2.GenerateOptions) -> et.OutputOptions:
    skip = optional(msg, "skip_special_tokens")
    return et.OutputOptions(
        logprobs=msg.logprobs,
        top_logprobs=msg.top_logprobs,
        echo_prompt_tokens=msg.echo_prompt_tokens,
        skip_special_tokens=True if skip is None else bool(skip),
    )


def response_format(request: generate_pb2.GenerateRequest, limit: int) -> et.ResponseFormat | None:
    """The request's response format as the engine's type, checked for shape (the
    compiler checks the rest); None when there is none."""
    if not request.HasField("response_format"):
        return None
    msg = request.response_format
    kind = msg.WhichOneof("format")
    if kind is None:
        raise errors.InvalidArgument(
            "response_format", "set one of json_object, json_schema, regex, choice, grammar"
        )
    field = f"response_format.{kind}"
    if kind == "json_object":
        return et.ResponseFormat("json_object")
    if kind == "choice":
        choices = tuple(msg.choice.choices)
        if not choices or not all(choices):
            raise errors.InvalidArgument(field, "needs at least one choice, none of them empty")
        if sum(map(len, choices)) > limit:
            raise errors.InvalidArgument(field, f"has over {limit} characters")
        return et.ResponseFormat("choice", choices=choices)
    if kind == "json_schema":
        spec = msg.json_schema.schema
        strict = msg.json_schema.strict if msg.json_schema.HasField("strict") else True
    else:
        spec, strict = getattr(msg, kind), True
    if not spec:
        raise errors.InvalidArgument(field, "must not be empty")
    if len(spec) > limit:
        raise errors.InvalidArgument(field, f"has {len(spec)} characters; the limit is {limit}")
    return et.ResponseFormat(kind, spec=spec, strict=strict)  # type: ignore[arg-type]


def chat_turns(messages: common_pb2.ChatMessages) -> list[ChatTurn]:
    if not messages.messages:
        raise errors.InvalidArgument("messages", "must hold at least one message")
    return [
        ChatTurn(
            m.role,
            [p.image.data if p.HasField("image") else p.text for p in m.content],
            tool_call_id=m.tool_call_id,
            tool_calls=[ToolCallTurn(c.id, c.name, c.arguments) for c in m.tool_calls],
        )
        for m in messages.messages
    ]


def check_chat_chars(messages: common_pb2.ChatMessages, limit: int) -> None:
    """A chat's text counts against the same character limit as a raw prompt."""
    chars = sum(len(p.text) for m in messages.messages for p in m.content)
    if chars > limit:
        raise errors.InvalidArgument(
            "messages", f"have {chars} characters of text; the limit is {limit}"
        )


@dataclass(frozen=True)
class ToolUse:
    """A request's tools, and whether and which one the model must call."""

    specs: list[tool_calls.ToolSpec]
    mode: tool_calls.ToolMode
    name: str | None  # the one tool tool_choice names

    @property
    def offered(self) -> bool:
        return bool(self.specs) and self.mode != "none"

    @property
    def forced(self) -> bool:
        return self.offered and (self.mode == "required" or self.name is not None)


_TOOL_MODES: dict[int, tool_calls.ToolMode] = {
    generate_pb2.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    generate_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    generate_pb2.TOOL_CHOICE_MODE_NONE: "none",
    generate_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
}


def tool_use(request: generate_pb2.GenerateRequest) -> ToolUse | None:
    """The request's tools, checked; None when it has none."""
    choice = request.tool_choice.WhichOneof("choice") if request.HasField("tool_choice") else None
    if not request.tools:
        if choice == "name" or request.tool_choice.mode == generate_pb2.TOOL_CHOICE_MODE_REQUIRED:
            raise errors.InvalidArgument("tool_choice", "needs tools")
        return None
    if request.WhichOneof("input") != "messages":
        raise errors.InvalidArgument("tools", "need a chat (messages), not a raw prompt")
    specs = tool_calls.tool_specs([(t.name, t.description, t.parameters) for t in request.tools])
    name = request.tool_choice.name if choice == "name" else None
    mode = "required" if name else _TOOL_MODES.get(request.tool_choice.mode, "auto")
    tools = ToolUse(specs, mode, name)
    if tools.forced and request.HasField("response_format"):
        raise errors.InvalidArgument(
            "tool_choice", "a required tool call cannot be combined with response_format"
        )
    return tools


async def constraint_of(
    runner: TextGenerationTask, request: generate_pb2.GenerateRequest, tools: ToolUse | None
) -> Any:
    """The compiled format the output must have (the request's, or a forced tool call's)."""
    fmt = response_format(request, runner.config.max_input_chars)
    if fmt is not None:
        return await runner.compile_format(fmt)
    if tools is None or not tools.forced:
        return None
    forcing = tool_calls.forcing_format(tools.specs, tools.name)
    try:
        return await runner.compile_format(forcing)
    except errors.InvalidArgument as exc:
        raise errors.InvalidArgument("tools", f"cannot force a call: {exc}") from None


def token_pb(token: et.TokenInfo) -> generate_pb2.Token:
    message = generate_pb2.Token(id=token.id, text=token.text, special=token.special)
    if token.logprob is not None:
        message.logprob = token.logprob
    message.top_logprobs.extend(
        generate_pb2.TopLogprob(id=i, text=text, logprob=lp) for i, text, lp in token.top
    )
    return message


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration


def usage_pb(usage: et.Usage) -> generate_pb2.Usage:
    return generate_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        generated_tokens=usage.generated_tokens,
        queue_time=_duration(usage.queue_time_s),
        time_to_first_token=_duration(usage.time_to_first_token_s),
        total_time=_duration(usage.total_time_s),
        cached_prompt_tokens=usage.cached_prompt_tokens,
    )


def event_pb(event: et.Event, *, beam: bool) -> generate_pb2.GenerateResponse:
    if isinstance(event, et.PromptInfo):
        return generate_pb2.GenerateResponse(
            prompt_token_count=event.prompt_tokens,
            prompt_tokens=[token_pb(t) for t in event.tokens or ()],
        )
    if isinstance(event, et.Delta):
        return generate_pb2.GenerateResponse(
            index=event.index, text=event.text, tokens=[token_pb(t) for t in event.tokens]
        )
    assert isinstance(event, et.Finished)
    message = generate_pb2.GenerateResponse(
        index=event.index, finish_reason=_FINISH[event.reason], usage=usage_pb(event.usage)
    )
    if event.seed is not None:
        message.seed = event.seed
    if beam:  # beams stream nothing before their final message: it carries it all
        message.text = event.text
        message.tokens.extend(token_pb(t) for t in event.tokens)
    return message


def fold_finish(
    messages: list[generate_pb2.GenerateResponse],
) -> list[generate_pb2.GenerateResponse]:
    """Put a sequence's finish onto its delta just before, to save a message."""
    out: list[generate_pb2.GenerateResponse] = []
    for message in messages:
        last = out[-1] if out else None
        if (
            message.finish_reason
            and last is not None
            and not last.finish_reason
            and not last.HasField("prompt_token_count")
            and last.index == message.index
            and not message.text
        ):
            last.finish_reason = message.finish_reason
            last.usage.CopyFrom(message.usage)
            last.tool_calls.extend(message.tool_calls)
            if message.HasField("seed"):
                last.seed = message.seed
            continue
        out.append(message)
    return out


async def prompt_ids(
    runner: TextGenerationTask,
    request: generate_pb2.GenerateRequest,
    tools: ToolUse | None = None,
) -> tuple[list[int], dict[str, Any] | None]:
    """The prompt's token ids, and the model inputs beside them (an image-text-to-text
    chat's pixel values; None for text). Offered tools go to the chat template."""
    extras: dict[str, Any] | None = None
    which = request.WhichOneof("input")
    if which == "prompt":
        if not request.prompt:
            raise errors.InvalidArgument("prompt", "must not be empty")
        if len(request.prompt) > runner.config.max_input_chars:
            raise errors.InvalidArgument(
                "prompt",
                f"has {len(request.prompt)} characters; the limit is "
                f"{runner.config.max_input_chars}",
            )
        ids = await asyncio.to_thread(runner.encode_prompt, request.prompt)
    elif which == "messages":
        check_chat_chars(request.messages, runner.config.max_input_chars)
        turns = chat_turns(request.messages)
        if tools is not None and tools.offered:
            specs = tool_calls.template_tools(tools.specs)
            ids = await asyncio.to_thread(runner.encode_chat, turns, specs)
        else:
            ids, extras = await asyncio.to_thread(runner.prompt_inputs, turns)
    else:
        raise errors.InvalidArgument("prompt", "set either prompt or messages")
    keep = optional(request.options, "truncate_prompt_tokens")
    if keep is not None:
        if keep < 1:
            raise errors.InvalidArgument("options.truncate_prompt_tokens", "must be at least 1")
        cut = ids[: max(len(ids) - keep, 0)]
        if runner.placeholder_ids.intersection(cut):
            # The model would get image features without their places in the prompt.
            first = next(i for i, t in enumerate(ids) if t in runner.placeholder_ids)
            raise errors.InvalidArgument(
                "options.truncate_prompt_tokens",
                f"would cut into the prompt's images; keep at least {len(ids) - first} "
                f"of its {len(ids)} tokens",
            )
        ids = ids[-keep:]  # type: ignore[index]
    if not ids:
        raise errors.InvalidArgument("prompt", "tokenizes to no tokens")
    return ids, extras


async def generate(
    runner: TextGenerationTask,
    request: generate_pb2.GenerateRequest,
    context: grpc.aio.ServicerContext,
    request_id: str,
) -> AsyncIterator[generate_pb2.GenerateResponse]:
    tools = tool_use(request)
    ids, extras = await prompt_ids(runner, request, tools)
    constraint = await constraint_of(runner, request, tools)
    gen_request = et.GenerationRequest(
        prompt_ids=ids,
        extras=extras,
        sampling=sampling_params(request.sampling),
        stopping=stopping_params(request.stopping),
        options=output_options(request.options),
        request_id=request_id,
        deadline=deadline_of(context),
        constraint=constraint,
        priority=request.priority,
    )
    interval_s = runner.config.stream_interval_ms / 1000
    # Leaving early (the client went away, an error) cancels the request in the engine.
    async with runner.driver.open(gen_request, interval_s=interval_s) as stream:
        async for events in stream:
            messages = [event_pb(e, beam=stream.beam) for e in events]
            if tools is not None and tools.offered:
                for event, message in zip(events, messages, strict=True):
                    add_tool_calls(event, message, tools)
            for message in fold_finish(messages):
                yield message


def add_tool_calls(event: et.Event, message: generate_pb2.GenerateResponse, tools: ToolUse) -> None:
    """On a sequence's last message: the tools its text calls, if it ended by itself."""
    if not isinstance(event, et.Finished) or event.reason is not et.FinishReason.EOS:
        return
    calls = tool_calls.parse_calls(event.text, tools.specs)
    if calls:
        message.tool_calls.extend(
            common_pb2.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in calls
        )
        message.finish_reason = common_pb2.FINISH_REASON_TOOL_CALLS


class GenerationRpcs(RpcGroup):
    async def Generate(
        self, request: generate_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generate_pb2.GenerateResponse]:
        runner = self.runner("Generate", request.model, TextGenerationTask)
        async for message in generate(runner, request, context, current_request_id.get()):
            yield message

    async def Tokenize(
        self, request: generate_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> generate_pb2.TokenizeResponse:
        runner = self.runner("Tokenize", request.model, TextGenerationTask)
        return await asyncio.to_thread(tokenize_pb, runner, request)

    async def Summarize(
        self, request: pb.SummarizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.SummarizeResponse:
        runner = self.runner("Summarize", request.model, SummarizationTask)
        results = await runner.summarize(
            list(request.inputs),
            sampling_params(request.sampling),
            stopping_params(request.stopping),
            request_id=current_request_id.get(),
            deadline=deadline_of(context),
        )
        return pb.SummarizeResponse(results=[generated_text_pb(r) for r in results])

    async def Translate(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranslateResponse:
        runner = self.runner("Translate", request.model, TranslationTask)
        results = await runner.translate(
            list(request.inputs),
            optional(request, "source_language"),
            request.target_language,
            sampling_params(request.sampling),
            stopping_params(request.stopping),
            request_id=current_request_id.get(),
            deadline=deadline_of(context),
        )
        return pb.TranslateResponse(results=[generated_text_pb(r) for r in results])


def generated_text_pb(result: TextResult) -> common_pb2.GeneratedText:
    return common_pb2.GeneratedText(
        text=result.text,
        finish_reason=_FINISH[result.reason],
        generated_tokens=result.generated_tokens,
    )


def tokenize_pb(
    runner: TextGenerationTask, request: generate_pb2.TokenizeRequest
) -> generate_pb2.TokenizeResponse:
    which = request.WhichOneof("input")
    if which is None:
        raise errors.InvalidArgument("text", "set either text or messages")
    if len(request.text) > runner.config.max_input_chars:
        raise errors.InvalidArgument(
            "text",
            f"has {len(request.text)} characters; the limit is {runner.config.max_input_chars}",
        )
    if which == "messages":
        check_chat_chars(request.messages, runner.config.max_input_chars)
    add_special = optional(request, "add_special_tokens")
    add_prompt = optional(request, "add_generation_prompt")
    result = runner.tokenize(
        request.text if which == "text" else None,
        chat_turns(request.messages) if which == "messages" else None,
        add_special_tokens=True if add_special is None else bool(add_special),
        add_generation_prompt=True if add_prompt is None else bool(add_prompt),
    )
    return generate_pb2.TokenizeResponse(
        token_ids=result.ids,
        tokens=result.tokens,
        offsets=[generate_pb2.Offset(start=s, end=e) for s, e in result.offsets],
        text=result.text,
    )
