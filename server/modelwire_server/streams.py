"""Per-call event buffers between the engine's thread and a Generate stream.

The engine calls the sink from its worker thread; the servicer awaits the buffer on the
event loop. A slow reader never stalls the engine or other streams: events pile up in
its own buffer and are taken all at once, and consecutive deltas of one sequence are
merged into one message.
"""

from __future__ import annotations

import asyncio
import threading

from modelwire_server.engine.types import Delta, Event, Finished


class EventBuffer:
    """A thread-safe sink (``__call__``) with an async ``take()`` for the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self._ready = asyncio.Event()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._pending.append(event)
            wake = len(self._pending) == 1
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the loop is closed: the call is long gone
                pass

    async def take(self) -> list[Event]:
        """Wait for events and return every one that is pending."""
        while True:
            await self._ready.wait()
            with self._lock:
                events, self._pending = self._pending, []
                self._ready.clear()
            if events:
                return events


def merge_deltas(events: list[Event]) -> list[Event]:
    """Fold runs of deltas of the same sequence into one delta (text and tokens joined)."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, Delta) and isinstance(last, Delta) and last.index == event.index:
            merged[-1] = Delta(event.index, last.text + event.text, [*last.tokens, *event.tokens])
        else:
            merged.append(event)
    return merged


def finished_all(events: list[Event], finished: set[int], expected: int) -> bool:
    """Record finished sequences; True once ``expected`` of them have finished."""
    finished.update(e.index for e in events if isinstance(e, Finished))
    return len(finished) >= expected
