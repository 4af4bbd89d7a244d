"""The dynamic batcher: concurrent requests share forward passes, in order, bounded."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from modelwire_server.batcher import DynamicBatcher, check_abandoned
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


async def handed_to_worker(batcher: DynamicBatcher[int, int]) -> None:
    """Until the batcher has queued items and then formed them into a batch: both
    happen in loop steps, so a bounded number of yields reaches them."""
    for want_queued in (True, False):
        for _ in range(1000):
            if bool(batcher.queued) == want_queued:
                break
            await asyncio.sleep(0)
        else:
            raise AssertionError("the batcher never formed its batch")


async def test_batch_cancelled_while_queued_on_the_worker_is_not_run(
    worker: DeviceWorker,
) -> None:
    """A batch formed, then left waiting behind another model's work while its caller
    went away, never reaches the batch function."""
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    def busy(items: list[int]) -> list[int]:
        started.set()
        release.wait(10)
        return items

    def record(items: list[int]) -> list[int]:
        ran.extend(items)
        return items

    other = DynamicBatcher(worker, busy, max_wait_ms=0, name="other")
    batcher = DynamicBatcher(worker, record, max_wait_ms=0, name="this")
    blocker = asyncio.ensure_future(other.submit([0]))
    await asyncio.to_thread(started.wait, 10)
    gone = asyncio.ensure_future(batcher.submit([1, 2]))
    await handed_to_worker(batcher)
    gone.cancel()
    release.set()
    assert await blocker == [0]
    assert await batcher.submit([3]) == [3]
    assert ran == [3]
    assert batcher.stats.dropped == 2
    await other.close()
    await batcher.close()


async def test_expired_items_are_dropped_on_the_worker(worker: DeviceWorker) -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    def busy(items: list[int]) -> list[int]:
        started.set()
        release.wait(10)
        return items

    def record(items: list[int]) -> list[int]:
        ran.extend(items)
        return items

    other = DynamicBatcher(worker, busy, max_wait_ms=0)
    batcher = DynamicBatcher(worker, record, max_wait_ms=0)
    blocker = asyncio.ensure_future(other.submit([0]))
    await asyncio.to_thread(started.wait, 10)
    deadline = time.monotonic() + 0.05
    late = asyncio.ensure_future(batcher.submit([1], deadline=deadline))
    kept = asyncio.ensure_future(batcher.submit([2]))
    await handed_to_worker(batcher)
    # Past the deadline before the worker frees up (a condition, not a timing).
    await asyncio.to_thread(lambda: time.sleep(max(0.0, deadline - time.monotonic())))
    release.set()
    with pytest.raises(DeadlineExceeded):
        await late
    assert await kept == [2] and ran == [2]
    await blocker
    await other.close()
    await batcher.close()


async def test_batch_stops_between_passes_once_every_caller_has_gone(
    worker: DeviceWorker,
) -> None:
    """A batch function of several passes calls check_abandoned between them."""
    first_pass, release = threading.Event(), threading.Event()
    passes: list[int] = []

    def three_passes(items: list[int]) -> list[int]:
        for n in range(3):
            if n:
                check_abandoned()
            passes.append(n)
            if n == 0:
                first_pass.set()
                release.wait(10)
        return items

    batcher = DynamicBatcher(worker, three_passes, max_wait_ms=0)
    gone = asyncio.ensure_future(batcher.submit([1, 2]))
    await asyncio.to_thread(first_pass.wait, 10)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    release.set()
    assert await batcher.submit([3]) == [3]  # the worker is free again
    assert passes == [0, 0, 1, 2]  # the abandoned batch ran one pass, the next all three
    assert batcher.stats.abandoned_batches == 1
    await batcher.close()


async def test_a_partly_abandoned_batch_still_finishes(worker: DeviceWorker) -> None:
    first_pass, release = threading.Event(), threading.Event()

    def two_passes(items: list[int]) -> list[int]:
        first_pass.set()
        release.wait(10)
        check_abandoned()
        return items

    batcher = DynamicBatcher(worker, two_passes, max_batch_size=8, max_wait_ms=50)
    gone = asyncio.ensure_future(batcher.submit([1]))
    stays = asyncio.ensure_future(batcher.submit([2]))
    await asyncio.to_thread(first_pass.wait, 10)
    gone.cancel()
    release.set()
    assert await stays == [2]
    await batcher.close()


async def test_batches_respect_max_batch_cost(worker: DeviceWorker) -> None:
    batches: list[list[int]] = []

    def echo(items: list[int]) -> list[int]:
        batches.append(list(items))
        return items

    batcher = DynamicBatcher(
        worker, echo, max_batch_size=64, max_wait_ms=20, max_batch_cost=10, cost=lambda x: x
    )
    items = [4, 4, 4, 12, 1, 9, 3]
    assert await batcher.submit(items) == items
    # Padded cost (size x costliest) within 10, similar costs together, the oldest first;
    # an item over the budget runs alone.
    assert batches == [[4, 4], [4, 3], [12], [1], [9]]
    await batcher.close()


async def test_a_costly_model_does_not_starve_another_on_the_same_worker(
    worker: DeviceWorker,
) -> None:
    """With batches bounded by cost, the worker alternates between two models' batches
    rather than running one model's whole queue first."""
    order: list[str] = []
    first, release = threading.Event(), threading.Event()

    def costly(items: list[int]) -> list[int]:
        order.append("costly")
        first.set()
        release.wait(10)
        return items

    def cheap(items: list[int]) -> list[int]:
        order.append("cheap")
        return items

    big = DynamicBatcher(
        worker, costly, max_wait_ms=0, max_batch_cost=100, cost=lambda _: 100, name="big"
    )
    small = DynamicBatcher(worker, cheap, max_wait_ms=0, name="small")
    long_call = asyncio.ensure_future(big.submit(list(range(4))))
    await asyncio.to_thread(first.wait, 10)
    quick = asyncio.ensure_future(small.submit([0]))
    await handed_to_worker(small)
    release.set()
    assert await quick == [0]
    assert await long_call == [0, 1, 2, 3]
    assert order.index("cheap") == 1  # right after the one batch that was running
    await big.close()
    await small.close()
