"""One-shot batches formed by a token budget, with inputs of similar length together:
the padded cost (batch size x longest input) stays within ``max_batch_tokens``, and
short inputs are not padded to a long one's length."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from modelwire_server.batcher import DynamicBatcher
from modelwire_server.worker import DeviceWorker


@pytest.fixture
def worker() -> Iterator[DeviceWorker]:
    w = DeviceWorker("budget")
    yield w
    w.close()


def recording(batches: list[list[int]]):
    def echo(items: list[int]) -> list[int]:
        batches.append(list(items))
        return [x * 10 for x in items]

    return echo


async def test_similar_lengths_share_a_batch(worker: DeviceWorker) -> None:
    batches: list[list[int]] = []
    batcher = DynamicBatcher(
        worker, recording(batches), max_batch_size=64, max_wait_ms=20, max_batch_cost=64,
        cost=lambda x: x,
    )  # fmt: skip
    items = [2, 30] * 8  # arriving interleaved, as mixed traffic does
    assert await batcher.submit(items) == [x * 10 for x in items]
    # In arrival order by the sum of lengths, [2, 30, 2, 30] would pad to 4 x 30 = 120.
    assert batches == [[2] * 8] + [[30, 30]] * 4
    assert all(len(b) * max(b) <= 64 for b in batches)
    await batcher.close()


async def test_the_oldest_input_is_always_in_the_next_batch(worker: DeviceWorker) -> None:
    """Grouping by length never leaves a long input waiting behind short ones."""
    batches: list[list[int]] = []
    batcher = DynamicBatcher(
        worker, recording(batches), max_batch_size=4, max_wait_ms=20, max_batch_cost=100,
        cost=lambda x: x,
    )  # fmt: skip
    calls = [batcher.submit([50])] + [batcher.submit([1]) for _ in range(12)]
    results = await asyncio.gather(*calls)
    assert results == [[500]] + [[10]] * 12
    assert batches[0][0] == 50 and len(batches[0]) == 2  # 2 x 50 fills the budget
    assert sorted(x for b in batches for x in b) == sorted([50] + [1] * 12)
    await batcher.close()
