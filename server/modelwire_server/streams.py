"""Per-call event buffers between the engine's thread and a Generate stream.

The engine calls the sink from its worker thread; the servicer awaits the buffer on the
event loop. A slow reader never stalls the engine or other streams: events pile up in
its own buffer and are taken all at once, and consecutive deltas of one sequence are
merged into one message.

A stream may also hold its deltas back on purpose (``take(not_before=...)``, the
model's ``stream_interval_ms``): every message costs the event loop, and the GIL it
shares with the engine, about the same whatever it carries, so when steps are fast
and streams many, a few tokens per message keep the loop from setting the pace. Any
other event (a sequence's end, a failure) is taken at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable

from modelwire_server.engine.types import Delta, Event, Finished


class WakeBatcher:
    """The event-loop wake-ups of many buffers, sent together once per engine step.

    Waking a loop from another thread is a write to its self-pipe: a system call during
    which the engine's thread lets go of the GIL, which the loop's thread, relaying
    tokens, takes. One wake-up per stream per step made that hand-over happen once per
    stream; the driver ``flush``es once per step instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[asyncio.AbstractEventLoop, list[Callable[[], object]]] = {}

    def defer(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], object]) -> None:
        with self._lock:
            self._due.setdefault(loop, []).append(wake)

    def flush(self) -> bool:
        """Send the deferred wake-ups; return whether there were any."""
        with self._lock:
            due, self._due = self._due, {}
        for loop, wakes in due.items():
            _call_soon(loop, functools.partial(_call_all, wakes))
        return bool(due)


def _call_all(callbacks: list[Callable[[], object]]) -> None:
    for callback in callbacks:
        callback()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """``callback`` on ``loop``, from any thread; nothing if the loop has closed (its
    calls are long gone)."""
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        pass


class EventBuffer:
    """A thread-safe sink (``__call__``) with an async ``take()`` for the loop.

    With a ``batcher``, its wake-ups wait for the batcher's next ``flush`` (the engine
    driver's, after each step): only an engine stepped by that driver may feed it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, batcher: WakeBatcher | None = None) -> None:
        self._loop = loop
        self._batcher = batcher
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self._urgent = False  # a pending event is not a delta: do not hold it back
        self._ready = asyncio.Event()

    def __call__(self, event: Event) -> None:
        urgent = not isinstance(event, Delta)
        with self._lock:
            self._pending.append(event)
            # Wake the loop for the first pending event, and again for the first one
            # that must not wait (the loop may be holding deltas back).
            wake = len(self._pending) == 1 or (urgent and not self._urgent)
            self._urgent = self._urgent or urgent
        if not wake:
            return
        if self._batcher is not None:
            self._batcher.defer(self._loop, self._ready.set)
        else:
            _call_soon(self._loop, self._ready.set)

    async def take(self, not_before: float | None = None) -> list[Event]:
        """Wait for events and return every one that is pending; with ``not_before`` (a
        loop time), deltas alone are held until then."""
        while True:
            await self._ready.wait()
            delay = 0.0 if not_before is None else not_before - self._loop.time()
            if delay > 0 and not self._urgent:
                # Sleep on the buffer: only an urgent event wakes it before the time.
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._ready.wait()
            with self._lock:
                events, self._pending = self._pending, []
                self._urgent = False
                self._ready.clear()
            if events:
                return events


def merge_deltas(events: list[Event]) -> list[Event]:
    """Fold each sequence's deltas into one delta (text and tokens joined, in order).

    Sequences of one request (``n`` > 1) interleave step by step; each keeps its own
    order and its deltas come before its ``Finished``, which is all a reader relies on.
    Any other event (the prompt's, a failure) is a barrier nothing moves across."""
    merged: list[Event] = []
    open_at: dict[int, int] = {}  # sequence index -> where its delta in ``merged`` is
    for event in events:
        if isinstance(event, Delta):
            at = open_at.get(event.index)
            if at is None:
                open_at[event.index] = len(merged)
                merged.append(event)
            else:
                last = merged[at]
                assert isinstance(last, Delta)
                merged[at] = Delta(
                    event.index, last.text + event.text, [*last.tokens, *event.tokens]
                )
            continue
        if isinstance(event, Finished):
            open_at.pop(event.index, None)
        else:
            open_at.clear()
        merged.append(event)
    return merged


def finished_all(events: list[Event], finished: set[int], expected: int) -> bool:
    """Record finished sequences; True once ``expected`` of them have finished."""
    finished.update(e.index for e in events if isinstance(e, Finished))
    return len(finished) >= expected
