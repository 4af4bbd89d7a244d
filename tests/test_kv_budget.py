"""A model served with a small ``kv_cache_memory``: 16 concurrent long streams all
complete with their full outputs (transformers' ``generate`` is the reference), some of
them preempted and resumed, and the metrics endpoint shows it; a request that cannot
fit even alone is INVALID_ARGUMENT naming the limit; bad settings fail at load."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelwire import AsyncClient, BadRequestError, FinishReason
from modelwire_server.config import ConfigError, ModelConfig, ServerConfig, validate_model
from modelwire_server.server import preset_configs
from tests.conftest import RunningServer, start_server
from tests.test_metrics import scrape, value

# tiny-gpt2: 2 layers x 2 heads x 32 dims, keys and values, float32.
COLUMN = 2 * 2 * 2 * 32 * 4
NEW = 60
# About four rows of a 12-token prompt and 60 new tokens, with a buffer's spare room.
BUDGET = 4 * (72 + 32) * COLUMN
WORDS = "river stone cloud lamp orchard violin harbor meadow candle silver winter".split()


@pytest.fixture(scope="module")
def budgeted(preset_cache: Path) -> Iterator[RunningServer]:
    gpt2 = next(m for m in preset_configs("tiny") if m.name == "tiny-gpt2")
    model = dataclasses.replace(gpt2, kv_cache_memory=BUDGET, prefix_caching=False)
    running = start_server(ServerConfig(port=0, metrics_port=0, models=[model]))
    yield running
    running.stop()


@pytest.fixture
async def client(budgeted: RunningServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(budgeted.target, timeout=120) as client:
        yield client


def prompts() -> list[str]:
    return [" ".join(WORDS[i % 11 :] + WORDS[: i % 11])[: 20 + i] for i in range(16)]


def references(path: str, texts: list[str]) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt")
            ids = model.generate(**encoded, do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW)
            out.append(ids[0, encoded["input_ids"].shape[1] :].tolist())
    return out


async def stream(client: AsyncClient, text: str) -> tuple[list[int], FinishReason | None]:
    tokens: list[int] = []
    reason = None
    async with client.generate_stream(
        text, model="tiny-gpt2", temperature=0, max_new_tokens=NEW, min_new_tokens=NEW
    ) as chunks:
        async for chunk in chunks:
            tokens += [t.id for t in chunk.tokens]
            reason = chunk.finish_reason or reason
    return tokens, reason


async def test_sixteen_long_streams_complete_with_preemptions_in_the_metrics(
    budgeted: RunningServer, client: AsyncClient
) -> None:
    engine = budgeted.runner("tiny-gpt2").engine
    assert engine.limits.kv_column_bytes == COLUMN  # else BUDGET is not what it says
    texts = prompts()
    before = await scrape(budgeted)
    results = await asyncio.gather(*(stream(client, t) for t in texts))
    after = await scrape(budgeted)

    expected = references(budgeted.runner("tiny-gpt2").config.source, texts)
    for (tokens, reason), want in zip(results, expected, strict=True):
        assert reason is FinishReason.LENGTH
        assert tokens == want
    model = {"model": "tiny-gpt2"}
    preempted = value(after, "modelwire_preemptions_total", **model) - value(
        before, "modelwire_preemptions_total", **model
    )
    assert preempted > 0
    assert value(after, "modelwire_kv_cache_budget_bytes", **model) == BUDGET
    assert 0 <= value(after, "modelwire_kv_cache_bytes", **model) <= BUDGET


async def test_a_request_too_big_for_the_budget_alone_names_the_limit(
    client: AsyncClient,
) -> None:
    with pytest.raises(BadRequestError) as caught:
        # Two rows of 200 tokens: 2 x (1 + 200 + 50 spare) columns, more than 4 x 104.
        await client.generate("Hello", model="tiny-gpt2", max_new_tokens=200, n=2, temperature=1)
    assert "kv_cache_memory" in str(caught.value)
    assert [v.field for v in caught.value.field_violations] == ["stopping.max_new_tokens"]


@pytest.mark.parametrize("bad", [0, -5, 1.5, 0.0, True])
def test_kv_cache_memory_must_be_bytes_or_a_share(bad: object) -> None:
    model = ModelConfig(name="m", task="text-generation", source="x", kv_cache_memory=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kv_cache_memory"):
        validate_model(model, "models[0]")


@pytest.mark.parametrize("good", [None, 1 << 30, 0.5, 1.0])
def test_kv_cache_memory_takes_bytes_or_a_share(good: object) -> None:
    model = ModelConfig(name="m", task="text-generation", source="x", kv_cache_memory=good)  # type: ignore[arg-type]
    validate_model(model, "models[0]")
