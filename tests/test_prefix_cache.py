"""Prefix caching through the RPC: a chat's second turn reuses the first turn's prompt
blocks and says so in its usage, outputs equal a server entry with the cache off, and
the cache's series show on the metrics endpoint."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch

from modelwire import AsyncClient
from modelwire_server.config import ServerConfig
from modelwire_server.server import preset_configs
from tests.conftest import RunningServer, preset_variant, start_server
from tests.test_metrics import scrape, value

SYSTEM = (
    "You are a careful assistant for a model server. You answer questions about "
    "streaming tokens, batching requests, caching prompt prefixes and the weather at sea. "
    "Keep every answer short, polite and correct, and never invent facts about ships."
)


@pytest.fixture(scope="module")
def cached_server(preset_cache: Path) -> Iterator[RunningServer]:
    on = [m for m in preset_configs("tiny") if m.name in {"tiny-llama", "tiny-gpt2"}]
    off = [
        preset_variant(
            f"{m.name}-nocache", m.task, m.name, prefix_caching=False, prefill_chunk_tokens=7
        )
        for m in on
    ]
    small_chunks = [dataclasses.replace(m, prefill_chunk_tokens=16) for m in on]
    running = start_server(ServerConfig(port=0, metrics_port=0, models=[*small_chunks, *off]))
    yield running
    running.stop()


@pytest.fixture
async def client(cached_server: RunningServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(cached_server.target, timeout=60) as c:
        yield c


def shared_full_blocks(first: list[int], second: list[int], block: int) -> int:
    """What the second prompt may reuse: its common prefix with the first prompt's full
    blocks (the cache keeps whole blocks of prompts), in whole blocks, its last token
    left to compute."""
    stored = first[: len(first) // block * block]
    shared = 0
    while shared < min(len(stored), len(second)) and stored[shared] == second[shared]:
        shared += 1
    return min(shared, len(second) - 1) // block * block


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
async def test_second_chat_turn_reports_the_shared_blocks(
    cached_server: RunningServer, client: AsyncClient, model: str
) -> None:
    engine = cached_server.runner(model).engine
    assert engine.prefix_cache is not None
    block = engine.prefix_cache.block_tokens
    before = engine.stats().prefix_hit_tokens
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello there"}]
    params = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
    outputs: dict[str, list[list[int]]] = {}
    cached: dict[str, list[int]] = {}
    prompts: list[list[int]] = []
    for name in (model, f"{model}-nocache"):
        chat = list(turns)
        for follow_up in ("And the sea?", "Thanks, bye"):
            if name == model:
                tokenized = await client.tokenize(
                    messages=chat, model=model, add_generation_prompt=True
                )
                prompts.append(list(tokenized.token_ids))
            result = await client.generate(messages=chat, model=name, **params)
            usage = result.sequences[0].usage
            assert usage is not None
            assert usage.prompt_tokens == len(prompts[len(outputs.get(name, []))])
            outputs.setdefault(name, []).append([t.id for t in result.sequences[0].tokens])
            cached.setdefault(name, []).append(usage.cached_prompt_tokens)
            chat += [
                {"role": "assistant", "content": result.text},
                {"role": "user", "content": follow_up},
            ]
    expected = [shared_full_blocks(a, b, block) for a, b in itertools.pairwise(prompts)]
    assert expected[0] >= 3 * block, "the turns share too little for the test to prove much"
    assert cached[model][1:] == expected
    assert cached[f"{model}-nocache"] == [0, 0]
    assert outputs[model] == outputs[f"{model}-nocache"]  # the same tokens, cache or not
    assert engine.stats().prefix_hit_tokens - before == sum(cached[model])


async def test_metrics_show_the_prefix_cache(
    cached_server: RunningServer, client: AsyncClient
) -> None:
    prompt = SYSTEM + " And one more question about the tide."
    for _ in range(2):
        await client.generate(
            prompt, model="tiny-gpt2", temperature=0, max_new_tokens=2, ignore_eos=True
        )
    stats = cached_server.runner("tiny-gpt2").engine.stats()
    scraped = await scrape(cached_server)
    labels = {"model": "tiny-gpt2"}
    assert value(scraped, "modelwire_prefix_cache_hit_tokens_total", **labels) == (
        stats.prefix_hit_tokens
    )
    assert stats.prefix_hit_tokens > 0
    assert value(scraped, "modelwire_prefix_cache_prompt_tokens_total", **labels) == (
        stats.prefix_prompt_tokens
    )
    assert value(scraped, "modelwire_prefix_cache_hit_rate", **labels) == pytest.approx(
        stats.prefix_hit_tokens / stats.prefix_prompt_tokens
    )
    assert value(scraped, "modelwire_prefix_cache_blocks", **labels) == stats.prefix_blocks > 0
    assert value(scraped, "modelwire_prefix_cache_bytes", **labels) == stats.prefix_bytes > 0
    off = {"model": "tiny-gpt2-nocache"}
    assert value(scraped, "modelwire_prefix_cache_blocks", **off) == 0


def test_the_chunk_defaults_to_the_device(cached_server: RunningServer) -> None:
    """Unset, a prompt is prefilled 64 tokens a step on the CPU (512 on a GPU); a set
    value is used as it is, and is what the engine prefills by."""
    assert cached_server.runner("tiny-gpt2-nocache").engine._chunk == 7
    from modelwire_server.tasks.text_generation import TextGenerationTask
    from modelwire_server.worker import DeviceWorker

    [gpt2] = [m for m in preset_configs("tiny") if m.name == "tiny-gpt2"]
    worker = DeviceWorker("test-chunk")
    try:
        for device, chunk, expected in (("cpu", None, 64), ("cuda", None, 512), ("cpu", 9, 9)):
            config = dataclasses.replace(gpt2, prefill_chunk_tokens=chunk)
            runner = TextGenerationTask(config, torch.device(device), torch.float32, worker)
            assert runner.prefill_chunk_tokens == expected
    finally:
        worker.close()
