"""The dynamic batcher: concurrent requests share forward passes, in order, bounded."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from modelwire_server.batcher import DynamicBatcher
from modelwire_server.errors import DeadlineExceeded, ResourceExhausted
from modelwire_server.worker import DeviceWorker


@pytest.fixture
def worker() -> DeviceWorker:
    w = DeviceWorker("test")
    yield w
    w.close()


async def test_concurrent_requests_share_a_batch_and_keep_order(worker: DeviceWorker) -> None:
    seen: list[list[int]] = []
    threads: set[str] = set()

    def square(items: list[int]) -> list[int]:
        seen.append(list(items))
        threads.add(threading.current_thread().name)
        return [x * x for x in items]

    batcher = DynamicBatcher(worker, square, max_batch_size=64, max_wait_ms=50)
    results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(10)))
    assert results == [[i * i, (i + 100) ** 2] for i in range(10)]
    assert max(len(b) for b in seen) >= 4  # several requests in one call
    assert batcher.stats.max_batch_size_seen == max(len(b) for b in seen)
    assert threads == {"modelwire-worker-test"}  # never the event loop's thread
    await batcher.close()


async def test_batches_respect_max_batch_size(worker: DeviceWorker) -> None:
    sizes: list[int] = []

    def echo(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    batcher = DynamicBatcher(worker, echo, max_batch_size=4, max_wait_ms=20)
    assert await batcher.submit(list(range(10))) == list(range(10))
    assert max(sizes) == 4 and sum(sizes) == 10
    await batcher.close()


async def test_per_item_errors_fail_only_their_request(worker: DeviceWorker) -> None:
    def picky(items: list[int]) -> list[int | BaseException]:
        return [ValueError(f"bad {x}") if x < 0 else x for x in items]

    batcher = DynamicBatcher(worker, picky, max_wait_ms=30)
    good, bad = await asyncio.gather(
        batcher.submit([1]), batcher.submit([-1]), return_exceptions=True
    )
    assert good == [1]
    assert isinstance(bad, ValueError) and "bad -1" in str(bad)
    await batcher.close()


async def test_full_queue_is_refused_at_once(worker: DeviceWorker) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(items: list[int]) -> list[int]:
        started.set()
        release.wait(10)
        return items

    batcher = DynamicBatcher(worker, slow, max_batch_size=1, max_wait_ms=0, max_queue=2)
    first = asyncio.ensure_future(batcher.submit([0]))
    await asyncio.to_thread(started.wait, 10)  # item 0 is on the worker, out of the queue
    queued = asyncio.ensure_future(batcher.submit([1, 2]))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted) as refused:
        await batcher.submit([3])
    assert refused.value.retry_after_s is not None
    release.set()
    assert await first == [0] and await queued == [1, 2]
    await batcher.close()


async def test_expired_items_are_not_run(worker: DeviceWorker) -> None:
    ran: list[int] = []
    started, release = threading.Event(), threading.Event()

    def record(items: list[int]) -> list[int]:
        started.set()
        release.wait(10)
        ran.extend(items)
        return items

    batcher = DynamicBatcher(worker, record, max_batch_size=1, max_wait_ms=0)
    blocker = asyncio.ensure_future(batcher.submit([0]))
    await asyncio.to_thread(started.wait, 10)
    expired = asyncio.ensure_future(batcher.submit([1], deadline=time.monotonic() - 1))
    await asyncio.sleep(0)  # let submit enqueue it
    release.set()
    with pytest.raises(DeadlineExceeded):
        await expired
    await blocker
    assert ran == [0]
    await batcher.close()


async def test_cancelled_request_items_are_skipped(worker: DeviceWorker) -> None:
    ran: list[int] = []
    started, release = threading.Event(), threading.Event()

    def record(items: list[int]) -> list[int]:
        started.set()
        release.wait(10)
        ran.extend(items)
        return items

    batcher = DynamicBatcher(worker, record, max_batch_size=1, max_wait_ms=0)
    blocker = asyncio.ensure_future(batcher.submit([0]))
    await asyncio.to_thread(started.wait, 10)
    gone = asyncio.ensure_future(batcher.submit([1]))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    await blocker
    later = await batcher.submit([2])
    assert later == [2] and ran == [0, 2]
    await batcher.close()
