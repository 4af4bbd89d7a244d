"""The OpenAI-compatible HTTP API through the official ``openai`` client, against a real
server serving gRPC and HTTP from one process: same models, same engine.

References: transformers' ``generate()`` for greedy text, and the gRPC front (through
the SDK) for seeded sampling, embeddings, transcription and speech, so both doors are
shown to give the same answers.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import openai
import pytest
import soundfile
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelwire import AsyncClient, ImagePart
from tests.conftest import (
    AccessLines,
    RunningServer,
    encode_image,
    engine_stats_once_idle,
    preset_variant,
    start_server,
    swelling_tone,
)

KEY = "test-key"
MODELS = ("tiny-llama", "tiny-gpt2", "tiny-embed", "tiny-whisper", "tiny-vits", "tiny-llava")


@pytest.fixture(scope="module")
def http_server(preset_cache: Path) -> Iterator[RunningServer]:
    from modelwire_server.config import ServerConfig
    from modelwire_server.server import preset_configs

    models = [m for m in preset_configs("tiny") if m.name in MODELS]
    config = ServerConfig(port=0, http_port=0, metrics_port=0, models=models, api_keys=[KEY])
    running = start_server(config)
    try:
        yield running
    finally:
        running.stop()


def base_url(running: RunningServer) -> str:
    return f"http://127.0.0.1:{running.server.http_port}"


@pytest.fixture
async def oai(http_server: RunningServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(http_server)}/v1", api_key=KEY, max_retries=0, timeout=60
    ) as client:
        yield client


@pytest.fixture
async def sdk(http_server: RunningServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(http_server.target, api_key=KEY, timeout=60) as client:
        yield client


def reference_text(path: str, prompt_ids: list[int], max_new_tokens: int) -> str:
    """Greedy ``generate()`` text: what the output adds to the prompt's decoded text."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
        )
    full = tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
    return full[len(tokenizer.decode(prompt_ids, skip_special_tokens=True)) :]


# -- generation --------------------------------------------------------------------------


async def test_chat_greedy_equals_generate(http_server, oai: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me a story"}]
    path = http_server.runner("tiny-llama").config.source
    tokenizer = AutoTokenizer.from_pretrained(path)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]

    reply = await oai.chat.completions.create(
        model="tiny-llama",
        messages=messages,
        temperature=0,
        max_tokens=12,
        extra_body={"ignore_eos": True},
    )
    [choice] = reply.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == reference_text(path, prompt_ids, 12)
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt_ids), 12)
    assert reply.model == "tiny-llama" and reply.object == "chat.completion"


async def test_completion_greedy_equals_generate(http_server, oai: openai.AsyncOpenAI) -> None:
    path = http_server.runner("tiny-gpt2").config.source
    prompt = "The quick brown fox"
    prompt_ids = AutoTokenizer.from_pretrained(path)(prompt)["input_ids"]
    reply = await oai.completions.create(
        model="tiny-gpt2", prompt=prompt, temperature=0, max_tokens=10,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    [choice] = reply.choices
    assert choice.text == reference_text(path, prompt_ids, 10)
    assert choice.finish_reason == "length"

    streamed = await oai.completions.create(
        model="tiny-gpt2", prompt=prompt, temperature=0, max_tokens=10, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert "".join([c.choices[0].text async for c in streamed if c.choices]) == choice.text

    # Several prompts, n each: choice p * n + i is sample i of prompt p.
    several = await oai.completions.create(
        model="tiny-gpt2", prompt=[prompt, "Hello"], n=2, temperature=0, max_tokens=10,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    assert several.choices[0].text == several.choices[1].text == choice.text
    assert several.choices[2].text != choice.text


async def test_seeded_chat_stream_equals_grpc_generate(
    oai: openai.AsyncOpenAI, sdk: AsyncClient
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    params = {"temperature": 0.9, "top_p": 0.95, "seed": 1234, "presence_penalty": 0.5}
    stream = await oai.chat.completions.create(
        model="tiny-llama",
        messages=messages,
        max_tokens=16,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
        **params,
    )
    texts = {0: "", 1: ""}
    roles, finishes, usage = [], {}, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            roles += [choice.delta.role] if choice.delta.role else []
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    grpc = await sdk.generate(
        messages=messages, model="tiny-llama", max_new_tokens=16, n=2, ignore_eos=True, **params
    )
    assert texts == {s.index: s.text for s in grpc.sequences}
    assert texts[0] != texts[1]  # two samples, not one sent twice
    assert roles == ["assistant", "assistant"]
    assert finishes == {0: "length", 1: "length"}
    assert usage is not None and usage.completion_tokens == 32
    assert usage.prompt_tokens == grpc.prompt_token_count


async def test_chat_logprobs_and_stop(oai: openai.AsyncOpenAI, sdk: AsyncClient) -> None:
    messages = [{"role": "user", "content": "Count"}]
    reply = await oai.chat.completions.create(
        model="tiny-llama", messages=messages, temperature=0, max_tokens=6, logprobs=True,
        top_logprobs=3, extra_body={"ignore_eos": True},
    )  # fmt: skip
    [choice] = reply.choices
    assert choice.logprobs is not None and choice.logprobs.content is not None
    grpc = await sdk.generate(
        messages=messages, model="tiny-llama", temperature=0, max_new_tokens=6, ignore_eos=True,
        logprobs=True, top_logprobs=3,
    )  # fmt: skip
    tokens = grpc.sequences[0].tokens
    assert [t.token for t in choice.logprobs.content] == [t.text for t in tokens]
    for ours, theirs in zip(choice.logprobs.content, tokens, strict=True):
        assert ours.logprob == pytest.approx(theirs.logprob, abs=1e-5)
        assert len(ours.top_logprobs) == 3
        assert ours.top_logprobs[0].logprob >= ours.top_logprobs[-1].logprob
    # A stop string cut from the greedy text: the answer ends before it.
    text = choice.message.content
    assert text
    stop = text[len(text) // 2 :][:2]
    stopped = await oai.chat.completions.create(
        model="tiny-llama", messages=messages, temperature=0, max_tokens=6, stop=[stop],
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


async def test_closing_a_stream_stops_the_generation(http_server, oai: openai.AsyncOpenAI) -> None:
    engine = http_server.runner("tiny-llama").engine
    generated_before = engine.stats().generated_tokens
    stream = await oai.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Keep going"}],
        temperature=0,
        max_tokens=400,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    stats = await engine_stats_once_idle(engine)  # the engine drops it within a step
    assert stats.running_rows == stats.waiting == stats.reserved_tokens == 0, stats
    # Nothing kept computing for the closed stream: far fewer than its 400 tokens ran.
    assert engine.stats().generated_tokens - generated_before < 100


# -- one-shot tasks ----------------------------------------------------------------------


async def test_embeddings_float_and_base64(oai: openai.AsyncOpenAI, sdk: AsyncClient) -> None:
    texts = ["a small red fox", "a little red fox"]
    floats = await oai.embeddings.create(model="tiny-embed", input=texts, encoding_format="float")
    # The client asks for base64 by default and decodes it itself.
    packed = await oai.embeddings.create(model="tiny-embed", input=texts)
    grpc = await sdk.embed(texts, model="tiny-embed")
    for i, reference in enumerate(grpc):
        # float32 vectors, as JSON numbers and as packed float32: the same values.
        np.testing.assert_allclose(floats.data[i].embedding, reference.values, rtol=1e-6)
        np.testing.assert_array_equal(
            np.asarray(packed.data[i].embedding, np.float32),
            np.asarray(reference.values, np.float32),
        )
        assert floats.data[i].index == i
    assert floats.usage.prompt_tokens == sum(r.token_count for r in grpc)


async def test_models_list(oai: openai.AsyncOpenAI) -> None:
    models = await oai.models.list()
    assert sorted(m.id for m in models.data) == sorted(MODELS)
    model = await oai.models.retrieve("tiny-embed")
    assert model.id == "tiny-embed" and model.owned_by == "modelwire"


async def test_transcription_equals_grpc(
    tmp_path: Path, oai: openai.AsyncOpenAI, sdk: AsyncClient
) -> None:
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, swelling_tone(2.0, 440.0), 16_000)
    with wav.open("rb") as file:
        result = await oai.audio.transcriptions.create(model="tiny-whisper", file=file)
    [reference] = await sdk.transcribe_audio(wav, model="tiny-whisper")
    assert result.text == reference.text
    with wav.open("rb") as file:
        text = await oai.audio.transcriptions.create(
            model="tiny-whisper", file=file, response_format="text"
        )
    assert text.strip() == reference.text.strip()
    with wav.open("rb") as file:
        verbose = await oai.audio.transcriptions.create(
            model="tiny-whisper", file=file, response_format="verbose_json"
        )
    [timed] = await sdk.transcribe_audio(wav, model="tiny-whisper", return_timestamps="segment")
    assert verbose.text == timed.text
    assert [(s.text, s.start, s.end) for s in verbose.segments or []] == [
        (c.text, pytest.approx(c.start_s), pytest.approx(c.end_s)) for c in timed.chunks
    ]


async def test_speech_equals_grpc(oai: openai.AsyncOpenAI, sdk: AsyncClient) -> None:
    speech = await oai.audio.speech.create(
        model="tiny-vits", voice="alloy", input="Hello there", response_format="wav",
        extra_body={"seed": 7},
    )  # fmt: skip
    reference = await sdk.synthesize_speech(
        "Hello there", model="tiny-vits", seed=7, format="wav_pcm16"
    )
    assert speech.content == reference.audio
    assert speech.response.headers["content-type"] == "audio/wav"


# -- errors, auth, ids, health -----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 10**7}, "max_tokens"),
        ({"max_completion_tokens": 10**12}, "max_completion_tokens"),
        ({"seed": -1}, "seed"),
        ({"n": 2**40}, "n"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"logit_bias": {"999999999": 1}}, "logit_bias"),
        ({"logit_bias": {"99999999999": 1}}, "logit_bias"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        ({"messages": []}, "messages"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": [{"role": "user", "content": {"a": 1}}]}, "messages[0].content"),
        ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages[0].role"),
        ({"n": 1.5}, "n"),
        ({"stop": 5}, "stop"),
        ({"temperature": "hot"}, "temperature"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": 3}, "stream_options"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"model": "tiny-embed"}, "model"),
    ],
)
async def test_bad_chat_fields_are_400_naming_them(
    oai: openai.AsyncOpenAI, extra: dict, param: str
) -> None:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(**body)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.code is None or isinstance(caught.value.code, str)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"].startswith(f"{param}: ")


async def test_bad_completion_fields_are_400_naming_them(oai: openai.AsyncOpenAI) -> None:
    for extra, param in [({"logprobs": 25}, "logprobs"), ({"echo": True}, "echo")]:
        with pytest.raises(openai.BadRequestError) as caught:
            await oai.completions.create(model="tiny-gpt2", prompt="Hi", **extra)
        assert caught.value.param == param
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.completions.create(model="tiny-gpt2", prompt=["a", "b"], stream=True)
    assert caught.value.param == "prompt"


async def test_response_format_text_is_accepted(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
        response_format={"type": "text"},
    )  # fmt: skip
    assert reply.choices[0].finish_reason in ("stop", "length")


async def test_unknown_model_is_404(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.embeddings.create(model="no-such-model", input="x")
    assert caught.value.status_code == 404
    assert caught.value.param == "model" and caught.value.code == "model_not_found"


async def test_wrong_key_is_401(http_server) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(http_server)}/v1", api_key="wrong", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


async def test_request_id_health_and_error_shape(http_server) -> None:
    async with httpx.AsyncClient(base_url=base_url(http_server)) as http:
        assert (await http.get("/health")).status_code == 200
        ready = await http.get("/health/ready")
        assert ready.status_code == 200, ready.text
        reply = await http.post(
            "/v1/embeddings",
            json={"model": "tiny-embed", "input": ["ok", 5]},
            headers={"authorization": f"Bearer {KEY}", "x-request-id": "my-id-1"},
        )
        assert reply.status_code == 400
        assert reply.headers["x-request-id"] == "my-id-1"
        assert reply.json() == {
            "error": {
                "message": "input: token id inputs are not supported; send text",
                "type": "invalid_request_error",
                "param": "input",
                "code": None,
            }
        }
        no_key = await http.get("/v1/models")
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"


async def test_image_parts_need_an_image_model(oai: openai.AsyncOpenAI) -> None:
    png = base64.b64encode(b"\x89PNG not really").decode()
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": content}]
        )
    assert caught.value.param == "messages[0].content[1].image_url"
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(
            model="tiny-llama",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}],
                }
            ],
        )
    assert caught.value.param == "messages[0].content[0].image_url"


# -- access log, metrics, capacity and drain ---------------------------------------------


async def test_calls_are_logged_and_counted_like_grpc_calls(
    http_server, oai: openai.AsyncOpenAI, access: AccessLines
) -> None:
    reply = await oai.chat.completions.with_raw_response.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hi"}], temperature=0,
        max_tokens=5, extra_body={"ignore_eos": True}, extra_headers={"x-request-id": "http-ok"},
    )  # fmt: skip
    assert reply.headers["x-request-id"] == "http-ok"
    line = access.line("http-ok").fields
    assert (line["rpc"], line["model"], line["code"]) == ("chat.completions", "tiny-llama", "OK")
    assert line["generated_tokens"] == 5 and line["prompt_tokens"] > 0
    assert line["peer"].startswith("ipv4:127.0.0.1:")

    with pytest.raises(openai.BadRequestError):
        await oai.embeddings.create(
            model="tiny-embed", input="", extra_headers={"x-request-id": "http-bad"},
            extra_body={"dimensions": 3},
        )  # fmt: skip
    line = access.line("http-bad").fields
    assert (line["rpc"], line["code"]) == ("embeddings", "INVALID_ARGUMENT")
    assert line["error"] == "dimensions: is not supported: vectors are full size"

    stream = await oai.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Go"}], temperature=0,
        max_tokens=300, stream=True, extra_body={"ignore_eos": True},
        extra_headers={"x-request-id": "http-left"},
    )  # fmt: skip
    async for _ in stream:
        break
    await stream.close()
    assert access.line("http-left").fields["code"] == "CANCELLED"

    async with httpx.AsyncClient() as http:
        scrape = await http.get(f"http://127.0.0.1:{http_server.server.metrics_port}/metrics")
    assert 'modelwire_requests_total{code="OK",model="tiny-llama",rpc="chat.completions"}' in (
        scrape.text
    )
    assert 'model="tiny-embed",rpc="embeddings"' in scrape.text


async def test_full_queue_is_429_and_draining_is_503(preset_cache: Path) -> None:
    from modelwire_server.config import ServerConfig

    # max_batch_tokens: room for one running request at a time, one more waiting.
    gpt2 = preset_variant(
        "gpt2", "text-generation", "tiny-gpt2", max_waiting=1, max_batch_tokens=300
    )
    running = start_server(ServerConfig(port=0, http_port=0, models=[gpt2]))
    try:
        async with openai.AsyncOpenAI(
            base_url=f"{base_url(running)}/v1", api_key="unused", max_retries=0
        ) as client:
            await _full_queue_is_429(client)
            await _draining_is_503(client, running)
    finally:
        running.stop()


async def _full_queue_is_429(client: openai.AsyncOpenAI) -> None:
    async def one() -> object:
        stream = await client.completions.create(
            model="gpt2", prompt="Go", max_tokens=200, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        return "".join([c.choices[0].text async for c in stream if c.choices])

    results = await asyncio.gather(*(one() for _ in range(4)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert refused, results
    assert all(isinstance(r, str | openai.RateLimitError) for r in results), results
    assert refused[0].status_code == 429 and refused[0].code == "rate_limit_exceeded"
    assert int(refused[0].response.headers["retry-after"]) >= 1


async def _draining_is_503(client: openai.AsyncOpenAI, running: RunningServer) -> None:
    held = await client.completions.create(
        model="gpt2", prompt="Go", max_tokens=250, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    async for _ in held:
        break  # a call in flight: the drain waits for it
    stopping = asyncio.run_coroutine_threadsafe(running.server.stop(grace=60), running.loop)
    async with httpx.AsyncClient(base_url=base_url(running)) as http:
        # Readiness follows gRPC health, which turns NOT_SERVING as the drain begins.
        for _ in range(1000):
            ready = await http.get("/health/ready")
            if ready.status_code == 503:
                break
        assert ready.status_code == 503
    with pytest.raises(openai.InternalServerError) as caught:
        await client.completions.create(model="gpt2", prompt="Go", max_tokens=2)
    assert caught.value.status_code == 503
    # The call in flight was let finish: all its tokens came.
    usage = [c.usage async for c in held if c.usage is not None]
    assert [u.completion_tokens for u in usage] == [250]
    await asyncio.wrap_future(stopping)


async def test_chat_with_an_image_equals_grpc(oai: openai.AsyncOpenAI, sdk: AsyncClient) -> None:
    from PIL import Image

    png = encode_image(Image.new("RGB", (40, 30), (200, 30, 90)))
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    content = [
        {"type": "image_url", "image_url": {"url": uri}},
        {"type": "text", "text": "What is in this picture?"},
    ]
    reply = await oai.chat.completions.create(
        model="tiny-llava", messages=[{"role": "user", "content": content}], temperature=0,
        max_tokens=8, extra_body={"ignore_eos": True},
    )  # fmt: skip
    grpc = await sdk.generate(
        messages=[{"role": "user", "content": [ImagePart(png), "What is in this picture?"]}],
        model="tiny-llava", temperature=0, max_new_tokens=8, ignore_eos=True,
    )  # fmt: skip
    assert reply.choices[0].message.content == grpc.text
    assert reply.usage is not None and reply.usage.prompt_tokens == grpc.prompt_token_count


async def test_a_client_leaving_a_plain_call_stops_its_generation(
    http_server, access: AccessLines
) -> None:
    """Not streamed: the call still watches for the client going away."""
    runner = http_server.runner("tiny-llama")
    engine = runner.engine
    before = engine.stats().generated_tokens
    gate = threading.Event()  # holds the device worker: the generation cannot end by itself

    async def hold_worker() -> None:
        runner.worker.submit(gate.wait)

    async def call() -> None:
        async with httpx.AsyncClient(base_url=base_url(http_server)) as http:
            await http.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {KEY}", "x-request-id": "http-plain-left"},
                json={
                    "model": "tiny-llama", "messages": [{"role": "user", "content": "Go"}],
                    "max_tokens": 400, "temperature": 0, "ignore_eos": True,
                },
            )  # fmt: skip

    http_server.call(hold_worker())
    try:
        task = asyncio.create_task(call())
        for _ in range(1000):  # until the request is in the engine (the worker is held)
            stats = engine.stats()
            if stats.waiting or stats.running_rows:
                break
            await asyncio.sleep(0.01)
        assert stats.waiting or stats.running_rows, stats
        task.cancel()  # the client goes away: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await task
        line = access.line("http-plain-left").fields
    finally:
        gate.set()
    assert line["code"] == "CANCELLED"
    stats = await engine_stats_once_idle(engine)
    assert stats.running_rows == stats.waiting == stats.reserved_tokens == 0, stats
    assert engine.stats().generated_tokens - before < 100
