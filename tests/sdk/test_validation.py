"""Bad arguments are a ValueError naming the parameter, raised before anything is sent."""

from __future__ import annotations

import math
from typing import Any

import pytest

from modelwire import AsyncClient, ChatMessage, ImagePart
from tests.sdk.fakes import Fakes

GENERATE_CASES: list[tuple[dict[str, Any], str]] = [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"min_p": -0.01}, "min_p"),
    ({"min_p": 1.5}, "min_p"),
    ({"typical_p": 0}, "typical_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.01}, "frequency_penalty"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"logit_bias": {"7": 1.0}}, "logit_bias"),
    ({"logit_bias": {7: math.inf}}, r"logit_bias\[7\]"),
    ({"num_beams": 0}, "num_beams"),
    ({"n": 0}, "n"),
    ({"n": 3, "num_beams": 2}, "n"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"min_new_tokens": -1}, "min_new_tokens"),
    ({"min_new_tokens": 9, "max_new_tokens": 8}, "min_new_tokens"),
    ({"stop": [""]}, r"stop\[0\]"),
    ({"stop": [1]}, r"stop\[0\]"),
    ({"stop_token_ids": [-1]}, r"stop_token_ids\[0\]"),
    ({"time_limit_ms": 0}, "time_limit_ms"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": -1}, "top_logprobs"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"timeout": 0}, "timeout"),
    ({"request_id": ""}, "request_id"),
]


@pytest.mark.parametrize(("kwargs", "name"), GENERATE_CASES)
async def test_generate_arguments(
    client: AsyncClient, fakes: Fakes, kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        await client.generate("hi", **kwargs)
    with pytest.raises(ValueError, match=f"`{name}`"):
        client.generate_stream("hi", **kwargs)
    assert fakes.recorder.calls == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of `prompt` and `messages`"),
        ({"prompt": "a", "messages": [ChatMessage("user", "b")]}, "exactly one"),
        ({"messages": []}, "`messages` must not be empty"),
        ({"messages": [{"role": "", "content": "x"}]}, r"`messages\[0\].role`"),
        ({"messages": [{"role": "user", "text": "x"}]}, r"`messages\[0\]` has unknown keys"),
        ({"messages": [ChatMessage("user", [b"raw"])]}, r"`messages\[0\].content\[0\]`"),
        ({"messages": [ChatMessage("user", [ImagePart(b"")])]}, r"content\[0\].data"),
    ],
)
async def test_generate_input(
    client: AsyncClient, fakes: Fakes, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        await client.generate(**kwargs)
    assert fakes.recorder.calls == []


async def test_unknown_generate_option_is_a_type_error(client: AsyncClient, fakes: Fakes) -> None:
    with pytest.raises(TypeError, match="temprature"):
        await client.generate("hi", temprature=0.5)  # type: ignore[call-arg]
    assert fakes.recorder.calls == []


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.classify_text([]), "`inputs` must not be empty"),
        (lambda c: c.classify_text(["ok", 3]), r"`inputs\[1\]` must be a string"),
        (lambda c: c.classify_text(b"bytes"), "`inputs`"),
        (lambda c: c.classify_text("x", top_k=0), "`top_k`"),
        (lambda c: c.classify_text("x", function_to_apply="relu"), "`function_to_apply`"),
        (lambda c: c.classify_text("x", model=3), "`model`"),
        (lambda c: c.embed([]), "`inputs`"),
        (lambda c: c.embed("x", pooling="max"), "`pooling`"),
        (lambda c: c.embed("x", normalize=1), "`normalize`"),
        (lambda c: c.tokenize(), "exactly one of `text` and `messages`"),
        (lambda c: c.tokenize("x", messages=[ChatMessage("user", "y")]), "exactly one"),
        (lambda c: c.tokenize("x", add_special_tokens="no"), "`add_special_tokens`"),
        (lambda c: c.get_model(""), "`name`"),
        (lambda c: c.classify_text("x", timeout=-1), "`timeout`"),
    ],
)
async def test_task_arguments(client: AsyncClient, fakes: Fakes, call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        await call(client)
    assert fakes.recorder.calls == []
