"""Tool calling in chat, end to end through the SDK.

The model is the tiny GPT-2 of the preset with a chat template that knows tools (the
Hermes style: tools listed in a system block, calls as ``<tool_call>{json}</tool_call>``,
results as ``tool`` turns). Its weights are random, so a call it makes under
``tool_choice="required"`` or a named tool proves the forcing format; the prompt the
server renders is compared with transformers' ``apply_chat_template(tools=...)``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from transformers import AutoTokenizer

from modelwire import (
    AsyncClient,
    BadRequestError,
    ChatMessage,
    FinishReason,
    Regex,
    Tool,
    ToolCall,
)
from tests.conftest import RunningServer, client_fixture, preset_server

TOOLS_TEMPLATE = (
    "{% if tools %}<|system|>\nTools:\n{% for t in tools %}{{ t['function']['name'] }}: "
    "{{ t['function']['description'] }}\n"
    '{% endfor %}Call a tool as <tool_call>{"name": ..., "arguments": ...}</tool_call>'
    "{{ eos_token }}\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['role'] == 'tool' %}<tool_response id=\"{{ m['tool_call_id'] }}\">"
    "{{ m['content'] }}</tool_response>{% else %}{{ m['content'] }}{% endif %}"
    "{% if m.tool_calls is defined %}{% for c in m.tool_calls %}<tool_call>"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}"
    "</tool_call>{% endfor %}{% endif %}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    Tool("get_weather", "The weather in a city", WEATHER),
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Now", "parameters": TIME},
    },
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [ChatMessage("user", "What is the weather in Paris?")]


def tools_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A copy of tiny-gpt2 whose chat template renders tools, as the ModelConfig "tools"."""
    from modelwire_server.config import ModelConfig
    from modelwire_server.preset import ensure_model

    path = tmp_path_factory.mktemp("models") / "tiny-gpt2-tools"
    shutil.copytree(ensure_model("tiny-gpt2"), path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = TOOLS_TEMPLATE
    tokenizer.save_pretrained(path)
    return ModelConfig(name="tools", task="text-generation", source=str(path))


@pytest.fixture(scope="module")
def tools_server(preset_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    extra = [tools_model(tmp_path_factory)]
    with preset_server([], extra=extra) as running:
        yield running


client = client_fixture("tools_server", timeout=120)


def rendered_length(server: RunningServer, messages: list[dict[str, Any]], tools: Any) -> int:
    """The prompt's token count as transformers renders and tokenizes it."""
    tokenizer = AutoTokenizer.from_pretrained(server.runner("tools").config.source)
    text = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def template_tools() -> list[dict[str, Any]]:
    return [
        {"type": "function", "function": {"name": n, "description": d, "parameters": s}}
        for n, d, s in [
            ("get_weather", "The weather in a city", WEATHER),
            ("get_time", "Now", TIME),
        ]
    ]


@pytest.mark.parametrize("choice", ["required", "get_time"])
async def test_required_and_named_choice_force_a_valid_call(
    tools_server, client: AsyncClient, choice: str
) -> None:
    result = await client.generate(
        messages=ASK,
        model="tools",
        tools=TOOLS,
        tool_choice=choice,
        temperature=1.0,
        seed=5,
        n=20,
        max_new_tokens=120,
    )
    user = [{"role": "user", "content": ASK[0].content}]
    assert result.prompt_token_count == rendered_length(tools_server, user, template_tools())
    for sample in result.sequences:
        assert sample.finish_reason is FinishReason.TOOL_CALLS, sample.text
        [call] = sample.tool_calls
        assert call.id.startswith("call_")
        assert call.name in SCHEMAS if choice == "required" else call.name == choice
        jsonschema.validate(call.parsed_arguments(), SCHEMAS[call.name])
        assert sample.text.startswith("<tool_call>") and sample.text.endswith("</tool_call>")
    assert len({s.text for s in result.sequences}) > 1


async def test_auto_parses_a_call_and_streams_it_at_the_end(client: AsyncClient) -> None:
    # The random model would rarely write a call by itself: a regex makes it write one.
    call_text = '<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>'
    exact = Regex(call_text.replace("{", r"\{").replace("}", r"\}"))
    async with client.generate_stream(
        messages=ASK, model="tools", tools=TOOLS, response_format=exact, temperature=0
    ) as stream:
        chunks = [chunk async for chunk in stream]
        result = await stream.final()
    assert "".join(c.text for c in chunks) == result.text == call_text
    assert [c.tool_calls for c in chunks[:-1]] == [[]] * (len(chunks) - 1)
    [call] = chunks[-1].tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_time", {"zone": "CET"})
    assert result.sequences[0].finish_reason is FinishReason.TOOL_CALLS
    assert result.tool_calls == [call]

    free = await client.generate(messages=ASK, model="tools", tools=TOOLS, max_new_tokens=8)
    assert free.tool_calls == [] and free.sequences[0].finish_reason is not FinishReason.TOOL_CALLS


async def test_a_tool_reply_turn_goes_back_to_the_model(tools_server, client: AsyncClient) -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris", "unit": "celsius"}')
    messages = [
        *ASK,
        ChatMessage("assistant", "", tool_calls=[call]),
        ChatMessage("tool", "18 degrees", tool_call_id="call_1"),
    ]
    result = await client.generate(
        messages=messages, model="tools", tools=TOOLS, max_new_tokens=4, temperature=0
    )
    as_dicts = [
        {"role": "user", "content": ASK[0].content},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.loads(call.arguments)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"},
    ]
    assert result.prompt_token_count == rendered_length(tools_server, as_dicts, template_tools())
    # tool_choice "none": the tools are not rendered at all.
    without = await client.generate(
        messages=messages, model="tools", tools=TOOLS, tool_choice="none", max_new_tokens=1
    )
    assert without.prompt_token_count == rendered_length(tools_server, as_dicts, None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "x", "tools": TOOLS}, "tools"),
        ({"messages": ASK, "tools": TOOLS, "tool_choice": "nope"}, "tool_choice.name"),
        ({"messages": ASK, "tool_choice": "required"}, "tool_choice"),
        ({"messages": ASK, "tools": [{"name": "a", "parameters": {"type": "nope"}}],
          "tool_choice": "required"}, "tools"),
        ({"messages": ASK, "tools": TOOLS, "tool_choice": "required",
          "response_format": Regex("a")}, "tool_choice"),
    ],
)  # fmt: skip
async def test_bad_tool_requests_name_the_field(
    client: AsyncClient, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(BadRequestError) as error:
        await client.generate(model="tools", max_new_tokens=2, **kwargs)
    assert [v.field for v in error.value.field_violations] == [field]
