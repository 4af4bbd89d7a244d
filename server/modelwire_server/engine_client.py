"""The event loop's side of a generation engine: one driver per engine, one owner per request.

``EngineDriver`` steps its engine on the device worker while it has work. ``open``
submits a request and returns its ``RequestStream``, the one object that owns the
request on the loop: it buffers the engine's events, is woken once per step, yields
them in batches, turns the engine's failures into the statuses callers get (here, and
nowhere else), and cancels the request in the engine when its reader leaves before the
end (a client gone, a deadline, an error). Generate, Summarize and Translate, captions,
image chat and Whisper all read their requests through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from modelwire_server import errors
from modelwire_server.calls import note_usage
from modelwire_server.engine import errors as engine_errors
from modelwire_server.engine.engine import GenerationEngine, Handle
from modelwire_server.engine.types import Event, Failed, Finished, GenerationRequest
from modelwire_server.engine.validation import Prepared
from modelwire_server.streams import EventBuffer, WakeBatcher, merge_deltas
from modelwire_server.worker import DeviceWorker

# How a caller names the part of its own request that the engine refused: the
# engine's field names are Generate's (``prompt``, ``sampling.top_p``...).
Rename = Callable[[engine_errors.InvalidRequest], errors.InvalidArgument]


def domain_error(exc: engine_errors.EngineError) -> errors.ModelwireError:
    """The engine's errors as the interceptor knows them."""
    if isinstance(exc, engine_errors.InvalidRequest):
        return errors.InvalidArgument(exc.field, exc.message)
    if isinstance(exc, engine_errors.QueueFull):
        return errors.ResourceExhausted(f"generation queue is full: {exc}", retry_after_s=1.0)
    if isinstance(exc, engine_errors.ResourceExhausted):
        return errors.ResourceExhausted(str(exc))
    if isinstance(exc, engine_errors.DeadlineExceeded):
        return errors.DeadlineExceeded(str(exc))
    return errors.ModelwireError(str(exc))


class RequestStream:
    """One request in the engine, read on the event loop (``async with`` it).

    Iterating yields the request's events a batch at a time, each sequence's deltas of
    a batch merged into one; it ends after the last sequence's ``Finished``. A
    ``Failed`` is raised as the status it stands for. Leaving the ``async with`` before
    the end cancels the request, and the engine frees its rows at its next step.
    """

    def __init__(
        self,
        prepared: Prepared,
        buffer: EventBuffer,
        cancel: Callable[[], None],
        interval_s: float,
    ) -> None:
        self._buffer = buffer
        self._cancel = cancel
        self._interval_s = interval_s
        self.sequences = prepared.sampling.n  # Finished events to expect
        self.beam = prepared.is_beam
        self.finished: set[int] = set()  # sequence indexes that have ended
        self._failed = False

    @property
    def done(self) -> bool:
        return self._failed or len(self.finished) >= self.sequences

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the request unless it has ended (idempotent)."""
        if not self.done:
            self._failed = True  # nothing more will be read
            self._cancel()

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Event]]:
        loop = asyncio.get_running_loop()
        not_before: float | None = None  # deltas wait until then (stream interval)
        while not self.done:
            events = merge_deltas(await self._buffer.take(not_before))
            if self._interval_s and any(getattr(e, "tokens", None) for e in events):
                not_before = loop.time() + self._interval_s
            for i, event in enumerate(events):
                if isinstance(event, Failed):
                    self._failed = True
                    error = event.error
                    if isinstance(error, engine_errors.EngineError):
                        raise domain_error(error)
                    raise error
                if isinstance(event, Finished):
                    self.finished.add(event.index)
                    # Every sequence of a request shares its prompt: count it once.
                    note_usage(event.usage, count_prompt=len(self.finished) == 1)
                    if self.done:
                        events = events[: i + 1]  # nothing follows a request's end
                        break
            yield events

    async def final(self) -> list[Finished]:
        """Read to the end; every sequence's ``Finished``, by index."""
        ends: dict[int, Finished] = {}
        async for events in self:
            ends.update((e.index, e) for e in events if isinstance(e, Finished))
        return [ends[i] for i in sorted(ends)]


class EngineDriver:
    """Steps one engine on its device worker while it has work, and opens its requests.

    A worker job runs steps back to back for as long as the engine has work and
    nothing else waits for the worker (one-shot batches, other models' engines), up to
    ``burst_s``: the next step starts at once instead of after a round trip through
    the event loop, which is busy relaying the step's tokens to the streams; and any
    other job still gets the device after the current step.

    Runners that share an engine share its driver: it runs from the first ``start``
    to the last ``close``.
    """

    def __init__(
        self, engine: GenerationEngine, worker: DeviceWorker, name: str, burst_s: float = 0.25
    ) -> None:
        self.engine = engine
        self.worker = worker
        self.name = name
        self.burst_s = burst_s
        self._users = 0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.wakes = WakeBatcher()  # the step's stream wake-ups, flushed after it

    def open(
        self,
        request: GenerationRequest,
        *,
        rename: Rename | None = None,
        interval_s: float = 0.0,
    ) -> RequestStream:
        """Submit ``request``; a refusal (a bad request, a full queue) raises its status
        at once, an invalid request's field named by ``rename`` where given. Deltas are
        held up to ``interval_s`` after a batch with tokens (0: sent as they come)."""
        buffer = EventBuffer(asyncio.get_running_loop(), self.wakes)
        try:
            handle = self.engine.submit(request, buffer)
        except engine_errors.InvalidRequest as exc:
            raise (rename or domain_error)(exc) from None
        except engine_errors.EngineError as exc:
            raise domain_error(exc) from None
        self.wake()
        cancel = functools.partial(self.cancel, handle)
        return RequestStream(handle.group.prepared, buffer, cancel, interval_s)

    def cancel(self, handle: Handle) -> None:
        self.engine.cancel(handle)
        self.wake()

    async def start(self) -> None:
        self._users += 1
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._drive(), name=f"engine-{self.name}")

    async def close(self) -> None:
        self._users -= 1
        if self._users > 0 or self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def running(self) -> bool:
        return self._task is not None

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _drive(self) -> None:
        assert self._wake is not None
        while True:
            if not self.engine.has_work():
                self._wake.clear()
                if not self.engine.has_work():
                    await self._wake.wait()
            await self.worker.run(self._steps)

    def _steps(self) -> None:
        """On the worker: steps while there is work, nobody else waits, and time is left."""
        until = time.monotonic() + self.burst_s
        while True:
            try:
                self.engine.step()
            finally:
                if self.wakes.flush():
                    # Let the woken loop take the GIL now, once per step, and relay the
                    # step's tokens before the next step makes more (else they merge).
                    time.sleep(0)
            if (
                not self.engine.has_work()
                or self.worker.has_waiting_jobs()
                or time.monotonic() >= until
            ):
                return
