"""Dynamic batching for one-shot tasks.

Requests that arrive within a short window (or while the worker is busy with the
previous batch) run as one forward pass; results are scattered back in order. At most
one batch per model is in flight, so under load the queue itself forms full batches
and an idle server adds at most ``max_wait_ms`` of latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from modelwire_server.calls import note_queue_time
from modelwire_server.errors import DeadlineExceeded, ResourceExhausted
from modelwire_server.worker import DeviceWorker

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# A batch function returns one result per item: a value, or the exception for that item.
BatchFn = Callable[[list[ItemT]], Sequence[ResultT | BaseException]]


@dataclass
class BatchStats:
    """What the batcher has done, for metrics and tests."""

    batches: int = 0
    items: int = 0
    max_batch_size_seen: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1024))
    # Batches of each size since start: cumulative, so metrics export an exact histogram.
    size_counts: Counter[int] = field(default_factory=Counter)

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.max_batch_size_seen = max(self.max_batch_size_seen, size)
        self.sizes.append(size)
        self.size_counts[size] += 1


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    deadline: float | None
    enqueued: float
    taken: float | None = None  # when its batch was formed


class DynamicBatcher(Generic[ItemT, ResultT]):
    """Collects items from concurrent requests into batches run on a device worker."""

    def __init__(
        self,
        worker: DeviceWorker,
        run_batch: BatchFn[ItemT, ResultT],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        name: str = "",
    ) -> None:
        self._worker = worker
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.name = name
        self.stats = BatchStats()
        self._queue: deque[_Pending[ItemT, ResultT]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(
        self, items: Sequence[ItemT], *, deadline: float | None = None
    ) -> list[ResultT]:
        """Run ``items`` (one request's inputs) and return their results in order.

        ``deadline`` is a ``time.monotonic()`` instant: items still queued past it are
        dropped with DeadlineExceeded instead of being run.
        """
        if len(self._queue) + len(items) > self.max_queue:
            raise ResourceExhausted(
                f"model {self.name!r} has {len(self._queue)} inputs queued (limit "
                f"{self.max_queue}); retry later",
                retry_after_s=0.5,
            )
        self._ensure_running()
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        pending = [_Pending(item, loop.create_future(), deadline, now) for item in items]
        self._queue.extend(pending)
        self._wakeup.set()
        try:
            results = list(await asyncio.gather(*(p.future for p in pending)))
            waits = [p.taken - p.enqueued for p in pending if p.taken is not None]
            note_queue_time(max(waits, default=0.0))
            return results
        finally:
            # A cancelled request leaves its not-yet-run items behind: mark them so the
            # loop skips them rather than spending a forward pass on nobody.
            for p in pending:
                if not p.future.done():
                    p.future.cancel()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for p in self._queue:
            p.future.cancel()
        self._queue.clear()

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._fill_window()
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    async def _fill_window(self) -> None:
        """Wait up to max_wait for more items, unless a full batch is already here."""
        oldest = self._queue[0].enqueued if self._queue else time.monotonic()
        while len(self._queue) < self.max_batch_size:
            remaining = oldest + self.max_wait_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take_batch(self) -> list[_Pending[ItemT, ResultT]]:
        batch: list[_Pending[ItemT, ResultT]] = []
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch_size:
            p = self._queue.popleft()
            if p.future.done():
                continue  # its request was cancelled
            if p.deadline is not None and now >= p.deadline:
                p.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            p.taken = now
            batch.append(p)
        return batch

    async def _run(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        items = [p.item for p in batch]
        self.stats.record(len(items))
        try:
            results = await self._worker.run(lambda: self._run_batch(items))
        except Exception as exc:  # the whole batch failed: every request gets the error
            results = [exc] * len(batch)
        for p, result in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
