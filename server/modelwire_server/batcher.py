"""Dynamic batching for one-shot tasks.

Requests that arrive within a short window (or while the worker is busy with the
previous batch) run as one forward pass; results are scattered back in order. At most
one batch per model is in flight, so under load the queue itself forms full batches
and an idle server adds at most ``max_wait_ms`` of latency.

A batch's cost is bounded (``max_batch_cost`` in the units of ``cost``, e.g. tokens),
so that one model's batch holds the shared device worker for about one forward pass
and the batches of other models interleave with its. The cost counted is the padded
one, the batch's size times its costliest item, and a batch gathers queued items of
similar cost around the oldest one (text-embeddings-inference's ``max_batch_tokens``
does the same with lengths), so short inputs stop paying for a long one's padding.

Work nobody waits for is not done: inputs whose caller has gone (cancelled, or past
its deadline) are dropped when the worker reaches their batch, and a batch function
that runs several forward passes calls ``check_abandoned()`` between them, which stops
the batch once all of its callers have gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
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
# What an item costs a forward pass (e.g. its tokens), for max_batch_cost.
CostFn = Callable[[ItemT], int]


class BatchAbandoned(BaseException):
    """Raised by ``check_abandoned`` inside a batch function: every caller has gone.

    A BaseException, like CancelledError, so that a task's ``except Exception`` around
    one input's work does not turn it into that input's result.
    """


_running = threading.local()  # the worker thread's batch: whether its callers are all gone


def check_abandoned() -> None:
    """Between the forward passes of a batch function: stop if nobody waits any more.

    Outside a batcher's batch (warmup, tests calling a batch function directly) it
    does nothing.
    """
    abandoned: Callable[[], bool] | None = getattr(_running, "abandoned", None)
    if abandoned is not None and abandoned():
        raise BatchAbandoned


@dataclass
class BatchStats:
    """What the batcher has done, for metrics and tests."""

    batches: int = 0
    items: int = 0
    # Inputs dropped unrun because their caller had gone (cancelled or past its
    # deadline) when the worker reached them, and batches stopped between passes.
    dropped: int = 0
    abandoned_batches: int = 0
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
    cost: int = 1
    taken: float | None = None  # when its batch was formed

    def wanted(self, now: float) -> bool:
        """Whether a caller still waits for this item (read on the worker thread too:
        ``done()`` is one attribute read)."""
        return not self.future.done() and (self.deadline is None or now < self.deadline)


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
        max_batch_cost: int | None = None,
        cost: CostFn[ItemT] | None = None,
        name: str = "",
    ) -> None:
        self._worker = worker
        self._run_batch = run_batch
        self._cost = cost
        self.max_batch_size = max_batch_size
        self.max_batch_cost = max_batch_cost
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
        cost = self._cost or (lambda _: 1)
        pending = [
            _Pending(item, loop.create_future(), deadline, now, cost(item)) for item in items
        ]
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
        """The oldest wanted item, and with it the queued items closest to it in cost
        (similar lengths pad least) while the batch's padded cost, its size times its
        costliest item, stays within ``max_batch_cost``. An item over the budget runs
        alone; the oldest item is always in the batch, so nothing waits for ever."""
        now = time.monotonic()
        while self._queue and not self._still_wanted(self._queue[0], now):
            self._queue.popleft()
        if not self._queue:
            return []
        anchor = self._queue[0]
        if self.max_batch_cost is None:
            chosen = list(itertools.islice(self._queue, self.max_batch_size))
        else:
            chosen, widest = [anchor], anchor.cost
            nearest = sorted(
                itertools.islice(self._queue, 1, None), key=lambda p: abs(p.cost - anchor.cost)
            )
            for p in nearest:
                if len(chosen) == self.max_batch_size:
                    break
                if (len(chosen) + 1) * max(widest, p.cost) <= self.max_batch_cost:
                    chosen.append(p)
                    widest = max(widest, p.cost)
        taken = {id(p) for p in chosen}
        self._queue = deque(p for p in self._queue if id(p) not in taken)
        batch = [p for p in chosen if self._still_wanted(p, now)]
        for p in batch:
            p.taken = now
        return batch

    @staticmethod
    def _still_wanted(p: _Pending[ItemT, ResultT], now: float) -> bool:
        """Whether to run ``p``; one whose deadline passed gets DeadlineExceeded."""
        if p.future.done():
            return False  # its request was cancelled
        if p.deadline is not None and now >= p.deadline:
            p.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            return False
        return True

    async def _run(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        try:
            live, results = await self._worker.run(lambda: self._run_live(batch))
        except BatchAbandoned:
            self.stats.abandoned_batches += 1
            live, results = [], []
        except Exception as exc:  # the whole batch failed: every request gets the error
            live, results = batch, [exc] * len(batch)
        if live:
            self.stats.record(len(live))
        ran = {id(p) for p in live}
        dropped = [p for p in batch if id(p) not in ran]
        self.stats.dropped += len(dropped)
        now = time.monotonic()
        for p in dropped:
            self._still_wanted(p, now)  # one dropped for its deadline gets DeadlineExceeded
        for p, result in zip(live, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)

    def _run_live(
        self, batch: list[_Pending[ItemT, ResultT]]
    ) -> tuple[list[_Pending[ItemT, ResultT]], Sequence[ResultT | BaseException]]:
        """On the worker: run the items someone still waits for (the batch may have
        waited behind other models' work since it was formed)."""
        now = time.monotonic()
        live = [p for p in batch if p.wanted(now)]
        if not live:
            return [], []
        _running.abandoned = lambda: not any(p.wanted(time.monotonic()) for p in live)
        try:
            return live, self._run_batch([p.item for p in live])
        finally:
            _running.abandoned = None
