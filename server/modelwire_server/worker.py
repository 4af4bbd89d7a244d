"""One worker thread per device: the only place model code runs.

The asyncio event loop hands work to the worker and awaits the result; it never runs
a forward pass itself. One thread per device keeps forward passes on a device
serialised (they would only contend for the same cores or GPU queue otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_STOP = object()


class DeviceWorker:
    """A single thread that runs submitted callables in order."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._loop, name=f"modelwire-worker-{device}", daemon=True
        )
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn`` on the worker; the returned future resolves on the calling loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, loop, future))
        return future

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker and return its result."""
        return await self.submit(fn)

    def has_waiting_jobs(self) -> bool:
        """Whether other work is queued behind the running job (any thread)."""
        return not self._jobs.empty()

    def close(self) -> None:
        self._jobs.put(_STOP)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, loop, future = job
            try:
                result, error = fn(), None
            except BaseException as exc:  # delivered to the awaiting coroutine
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the caller's loop has closed: nobody waits for it
                pass


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class WorkerPool:
    """The workers of a process, one per device name."""

    def __init__(self) -> None:
        self._workers: dict[str, DeviceWorker] = {}
        self._lock = threading.Lock()

    def get(self, device: str) -> DeviceWorker:
        with self._lock:
            if device not in self._workers:
                self._workers[device] = DeviceWorker(device)
            return self._workers[device]

    def close(self) -> None:
        with self._lock:
            for worker in self._workers.values():
                worker.close()
            self._workers.clear()
