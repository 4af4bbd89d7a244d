"""Generate through the SDK against a real server, with model.generate as reference.

The engine's own tests (tests/engine/) cover token selection and stopping in depth;
these prove the whole path: servicer, engine driver, streaming, cancellation, errors.
"""

from __future__ import annotations

import asyncio
from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelwire import AsyncClient, BadRequestError, FinishReason, RateLimitError
from modelwire.v1 import generate_pb2
from tests.conftest import (
    cancel_after_first_token,
    engine_stats_once_idle,
    preset_server,
    staggered_token_ids,
)
from tests.helpers import bad_request_fields, raw_error

PROMPTS = [
    "The quick brown fox",
    "Once upon a time there was",
    "In 1999, the city of Paris",
    "Hello",
    "A long, long prompt that goes on and on about the weather and the sea and ships",
]


def reference_greedy(path: str, prompt: str, max_new_tokens: int) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **encoded, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens
        )
    return out[0, encoded["input_ids"].shape[1] :].tolist()


def ids(result) -> list[int]:
    return [t.id for t in result.sequences[0].tokens]


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
async def test_greedy_matches_generate_alone_and_under_staggered_load(
    server, client: AsyncClient, model: str
) -> None:
    path = server.runner(model).config.source
    lengths = [30, 24, 20, 16, 12]
    expected = [reference_greedy(path, p, n) for p, n in zip(PROMPTS, lengths, strict=True)]
    alone = await client.generate(
        PROMPTS[0], model=model, temperature=0, max_new_tokens=30, ignore_eos=True
    )
    assert ids(alone) == expected[0]

    engine = server.runner(model).engine
    sizes_before = dict(engine.stats().decode_batch_sizes)
    # Each request arrives once the previous one has streamed its first token, so it
    # joins a batch that is already decoding.
    greedy = partial(client.generate_stream, model=model, temperature=0, ignore_eos=True)
    got = await staggered_token_ids(
        [partial(greedy, p, max_new_tokens=n) for p, n in zip(PROMPTS, lengths, strict=True)]
    )
    assert got == expected
    for tokens in got:  # not degenerate: the tiny model reacts to its context
        assert len(set(tokens)) >= len(tokens) / 2
    assert len({tuple(t[:8]) for t in got}) == len(got)
    sizes = engine.stats().decode_batch_sizes
    wide_steps = sum(n - sizes_before.get(rows, 0) for rows, n in sizes.items() if rows >= 3)
    assert wide_steps > 0, f"no decode step ran 3 or more rows: {sizes}"


async def test_stream_deltas_concatenate_to_the_text(client: AsyncClient) -> None:
    chunks = []
    async with client.generate_stream(
        "Emoji 😀 and 漢字 mixed",
        model="tiny-gpt2",
        temperature=0,
        max_new_tokens=20,
        ignore_eos=True,
        logprobs=True,
        top_logprobs=3,
    ) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    assert chunks[0].prompt_token_count and chunks[0].prompt_token_count > 0
    body = [c for c in chunks if c.prompt_token_count is None]
    assert len(body) >= 2, "tokens should stream in several messages"
    final = body[-1]
    assert final.finish_reason == FinishReason.LENGTH
    assert final.usage is not None and final.usage.generated_tokens == 20
    assert final.usage.time_to_first_token is not None
    tokens = [t for c in body for t in c.tokens]
    assert len(tokens) == 20
    assert all(
        t.logprob is not None and t.logprob <= 0 and len(t.top_logprobs) == 3 for t in tokens
    )
    tokenizer = AutoTokenizer.from_pretrained((await client.get_model("tiny-gpt2")).source)
    prompt_ids = tokenizer("Emoji 😀 and 漢字 mixed")["input_ids"]
    full = tokenizer.decode(prompt_ids + [t.id for t in tokens], skip_special_tokens=True)
    assert "".join(c.text for c in body) == full[len(tokenizer.decode(prompt_ids)) :]


async def test_seeded_sampling_is_reproducible(client: AsyncClient) -> None:
    async def sample(seed: int) -> list[int]:
        result = await client.generate(
            "The weather",
            model="tiny-llama",
            temperature=1.0,
            top_k=0,
            seed=seed,
            max_new_tokens=16,
            ignore_eos=True,
        )
        assert result.sequences[0].seed == seed
        return ids(result)

    first, again, other = await asyncio.gather(sample(7), sample(7), sample(8))
    assert first == again
    assert first != other


async def test_n_samples_and_beams(server, client: AsyncClient) -> None:
    sampled = await client.generate(
        "The sea",
        model="tiny-gpt2",
        temperature=1.0,
        n=3,
        seed=1,
        max_new_tokens=8,
        ignore_eos=True,
    )
    assert sorted(s.index for s in sampled.sequences) == [0, 1, 2]
    assert len({tuple(t.id for t in s.tokens) for s in sampled.sequences}) > 1

    path = server.runner("tiny-gpt2").config.source
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    encoded = tokenizer("The sea", return_tensors="pt")
    with torch.inference_mode():
        reference = model.generate(
            **encoded, num_beams=3, num_return_sequences=2, do_sample=False, max_new_tokens=10
        )
    beams = await client.generate("The sea", model="tiny-gpt2", num_beams=3, n=2, max_new_tokens=10)
    prompt_len = encoded["input_ids"].shape[1]
    expected = [
        [t for t in row[prompt_len:].tolist() if t != tokenizer.pad_token_id] for row in reference
    ]
    got = [[t.id for t in s.tokens] for s in sorted(beams.sequences, key=lambda s: s.index)]
    assert [g[: len(e)] for g, e in zip(got, expected, strict=True)] == expected


async def test_stop_string_spanning_tokens(client: AsyncClient) -> None:
    free = await client.generate(
        "Once upon a time", model="tiny-gpt2", temperature=0, max_new_tokens=24, ignore_eos=True
    )
    text = free.text
    tokens = free.sequences[0].tokens
    # A stop string made of the end of token 3 and the start of token 4.
    boundary = len("".join(t.text for t in tokens[:4]))
    stop = text[boundary - 2 : boundary + 2]
    assume_unique = text.find(stop)
    stopped = await client.generate(
        "Once upon a time",
        model="tiny-gpt2",
        temperature=0,
        max_new_tokens=24,
        ignore_eos=True,
        stop=[stop],
    )
    assert stopped.sequences[0].finish_reason == FinishReason.STOP_SEQUENCE
    assert stopped.text == text[:assume_unique]
    kept = await client.generate(
        "Once upon a time",
        model="tiny-gpt2",
        temperature=0,
        max_new_tokens=24,
        ignore_eos=True,
        stop=[stop],
        include_stop_in_output=True,
    )
    assert kept.text == text[: assume_unique + len(stop)]


async def test_cancelling_a_stream_frees_its_row(server, client: AsyncClient) -> None:
    engine = server.runner("tiny-llama").engine
    generated_before = engine.stats().generated_tokens
    stream = client.generate_stream(
        "Keep going", model="tiny-llama", temperature=0, max_new_tokens=400, ignore_eos=True
    )
    await cancel_after_first_token(stream)
    stats = await engine_stats_once_idle(engine)  # the engine drops it within a step
    assert stats.running_rows == stats.waiting == stats.reserved_tokens == 0, stats
    # Nothing kept computing for the cancelled call: far fewer than its 400 tokens ran.
    assert engine.stats().generated_tokens - generated_before < 100


async def test_queue_overflow_is_resource_exhausted(preset_cache) -> None:
    # max_batch_tokens: room for one running request at a time.
    with preset_server(["tiny-gpt2"], max_waiting=1, max_batch_tokens=300) as running:
        async with AsyncClient(running.target, max_retries=0) as client:
            streams = [
                client.generate_stream("Go", max_new_tokens=200, ignore_eos=True, temperature=0)
                for _ in range(4)
            ]
            results = await asyncio.gather(*(s.final() for s in streams), return_exceptions=True)
            refused = [r for r in results if isinstance(r, RateLimitError)]
            assert refused, results
            assert any(not isinstance(r, Exception) for r in results)
            for stream in streams:
                await stream.close()


async def test_chat_messages_use_the_template(client: AsyncClient) -> None:
    messages = [{"role": "user", "content": "Say hi"}]
    tokenized = await client.tokenize(messages=messages, model="tiny-llama")
    result = await client.generate(
        messages=messages, model="tiny-llama", temperature=0, max_new_tokens=4, ignore_eos=True
    )
    assert result.prompt_token_count == len(tokenized.token_ids)
    assert "Say hi" in tokenized.text


async def test_tokenize_offsets_slice_the_text(client: AsyncClient) -> None:
    text = "Hello wide world"
    tokenized = await client.tokenize(text, model="tiny-gpt2")
    assert tokenized.token_ids and len(tokenized.tokens) == len(tokenized.token_ids)
    pieces = [text[s:e] for s, e in tokenized.offsets]
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "sampling": {"top_p": 1.5}}, "sampling.top_p"),
        ({"prompt": "x", "stopping": {"max_new_tokens": 10**6}}, "stopping.max_new_tokens"),
        ({"prompt": "x", "options": {"top_logprobs": 21}}, "options.top_logprobs"),
        ({"prompt": "x " * 5000}, "prompt"),
    ],
)
async def test_bad_generate_requests_name_the_field(
    server, client: AsyncClient, fields: dict, field: str
) -> None:
    request = generate_pb2.GenerateRequest(model="tiny-gpt2", **fields)
    error = await raw_error(server, "Generate", request)
    assert error.code().name == "INVALID_ARGUMENT", error.details()
    assert bad_request_fields(error) == [field]
    assert await client.generate("still ok", model="tiny-gpt2", max_new_tokens=2)


async def test_truncate_prompt_tokens_keeps_the_tail(client: AsyncClient) -> None:
    long_prompt = "word " * 5000
    with pytest.raises(BadRequestError):
        await client.generate(long_prompt, model="tiny-gpt2", max_new_tokens=2)
    result = await client.generate(
        long_prompt, model="tiny-gpt2", max_new_tokens=2, truncate_prompt_tokens=16
    )
    assert result.prompt_token_count == 16


async def test_chat_text_counts_against_the_character_limit(server, client: AsyncClient) -> None:
    """A chat's text is held to max_input_chars like a raw prompt, for Generate and
    Tokenize alike, before the template renders or the tokenizer runs."""
    limit = server.runner("tiny-llama").config.max_input_chars
    half = "x" * (limit // 2 + 1)
    turns = [{"role": "user", "content": half}, {"role": "assistant", "content": half}]
    with pytest.raises(BadRequestError) as generating:
        await client.generate(messages=turns, model="tiny-llama", max_new_tokens=1)
    assert [v.field for v in generating.value.field_violations] == ["messages"]
    with pytest.raises(BadRequestError) as tokenizing:
        await client.tokenize(messages=turns, model="tiny-llama")
    assert [v.field for v in tokenizing.value.field_violations] == ["messages"]
    assert await client.tokenize(messages=turns[:1], model="tiny-llama")
