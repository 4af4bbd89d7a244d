"""Structured output and tool calls through the OpenAI-compatible HTTP API: the same
engine constraints a gRPC caller gets, in OpenAI's shapes, with the official client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from modelwire import AsyncClient
from tests.conftest import RunningServer, start_server
from tests.test_tool_calls import SCHEMAS, template_tools, tools_model

COLOR = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"type": "integer"}},
    "required": ["color", "size"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(preset_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from modelwire_server.config import ServerConfig
    from modelwire_server.server import preset_configs

    models = [m for m in preset_configs("tiny") if m.name == "tiny-gpt2"]
    models.append(tools_model(tmp_path_factory))
    running = start_server(ServerConfig(port=0, http_port=0, models=models))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def oai(server: RunningServer) -> AsyncIterator[openai.AsyncOpenAI]:
    url = f"http://127.0.0.1:{server.server.http_port}/v1"
    async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture
async def sdk(server: RunningServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.target, timeout=120) as client:
        yield client


async def test_a_json_schema_answer_is_valid_and_equals_grpc(
    oai: openai.AsyncOpenAI, sdk: AsyncClient
) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "c", "schema": COLOR, "strict": True}}
    for seed in range(8):
        reply = await oai.chat.completions.create(
            model="tools", messages=ASK, response_format=schema,  # type: ignore[arg-type]
            temperature=1.0, seed=seed, max_tokens=60,
        )  # fmt: skip
        choice = reply.choices[0]
        if choice.finish_reason == "stop":
            jsonschema.validate(json.loads(choice.message.content or ""), COLOR)
        else:  # cut by max_tokens: not complete, but never off the schema's path
            assert choice.finish_reason == "length"
        grpc_reply = await sdk.generate(
            messages=ASK, model="tools", response_format=COLOR,
            temperature=1.0, seed=seed, max_new_tokens=60,
        )  # fmt: skip
        assert choice.message.content == grpc_reply.text


async def test_json_object_and_vllm_s_guided_choice(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(
        model="tools", messages=ASK, temperature=0, max_tokens=40,
        extra_body={"guided_choice": ["sunny", "rainy and cold"]},
    )  # fmt: skip
    assert reply.choices[0].message.content in ("sunny", "rainy and cold")
    assert reply.choices[0].finish_reason == "stop"
    completion = await oai.completions.create(
        model="tiny-gpt2", prompt="A date:", temperature=0, max_tokens=20,
        extra_body={"guided_regex": r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"},
    )  # fmt: skip
    assert len(completion.choices[0].text) == 10 and completion.choices[0].text.startswith("20")
    streamed = await oai.chat.completions.create(
        model="tools", messages=ASK, response_format={"type": "json_object"},
        temperature=0, max_tokens=8, stream=True,
    )  # fmt: skip
    chunks = [c.choices[0] async for c in streamed if c.choices]
    text = "".join(c.delta.content or "" for c in chunks)
    if chunks[-1].finish_reason == "stop":  # the JSON closed: any JSON value
        json.loads(text)
    else:
        assert chunks[-1].finish_reason == "length" and text


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}},
            "response_format.json_schema",
        ),
        ({"extra_body": {"guided_regex": "(unclosed"}}, "response_format.regex"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0]"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [{"role": "tool", "content": "18"}]}, "messages[0].tool_call_id"),
    ],
)
async def test_bad_formats_and_tools_are_400_naming_the_field(
    oai: openai.AsyncOpenAI, extra: dict, param: str
) -> None:
    body = {"model": "tools", "messages": ASK, "max_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(**body)
    assert caught.value.param == param, caught.value.body


async def test_a_required_tool_call_comes_back_typed_streamed_or_not(
    oai: openai.AsyncOpenAI,
) -> None:
    tools = template_tools()
    reply = await oai.chat.completions.create(
        model="tools", messages=ASK, tools=tools, tool_choice="required",  # type: ignore[arg-type]
        temperature=1.0, seed=3, max_tokens=120,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])

    named = {"type": "function", "function": {"name": "get_time"}}
    stream = await oai.chat.completions.create(
        model="tools", messages=ASK, tools=tools, tool_choice=named,  # type: ignore[arg-type]
        temperature=1.0, seed=3, max_tokens=120, stream=True,
    )  # fmt: skip
    chunks = [c async for c in stream]
    last = chunks[-1].choices[0]
    assert last.finish_reason == "tool_calls"
    [streamed] = last.delta.tool_calls or []
    assert streamed.index == 0 and streamed.function and streamed.function.name == "get_time"

    # A call and the tool's answer go back as turns (a short call: the tiny context).
    short = {"id": call.id, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    follow_up = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [short]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"},
    ]
    answer = await oai.chat.completions.create(
        model="tools",
        messages=follow_up,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
    )
    assert answer.choices[0].finish_reason in ("length", "stop")
