"""The waiting queue and the batch-token budget, shared between callers and the worker.

Callers (any thread) push requests and flag cancellations; the worker reaps ended
requests and admits the next ones, first come first served, while the admitted
requests fit in ``max_batch_tokens`` as the batch really holds them: rows are padded
to the widest one, so the batch costs its rows times the widest row's prompt plus
``max_new_tokens`` (per side, for an encoder-decoder), not the sum of each row's own
tokens. One long prompt among many short ones thus runs with only as many of them as
fit at its width, instead of padding them all in one giant prefill. Strict FIFO: a big
request at the head waits for room rather than being overtaken forever.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

from modelwire_server.engine.errors import QueueFull
from modelwire_server.engine.sequence import RequestGroup

Verdict = Callable[[RequestGroup], object | None]


class Scheduler:
    def __init__(self, max_waiting: int, max_batch_tokens: int) -> None:
        self.max_waiting = max_waiting
        self.max_batch_tokens = max_batch_tokens
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._waiting: deque[RequestGroup] = deque()
        self._cancel_pending = False
        self._admitted: dict[RequestGroup, None] = {}  # changed by the worker only

    @property
    def reserved(self) -> int:
        """Batch tokens the admitted requests hold, padding included."""
        with self._lock:
            return padded_cost(self._admitted)

    def push(self, group: RequestGroup) -> None:
        with self._lock:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(group)
            self._work.notify_all()

    def cancel(self, group: RequestGroup) -> None:
        with self._lock:
            group.cancel_requested = True
            self._cancel_pending = True
            self._work.notify_all()

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def pending(self) -> bool:
        """Whether the worker has queue work: requests to admit or cancellations."""
        with self._lock:
            return bool(self._waiting or self._cancel_pending)

    def wait(self, busy: Callable[[], bool], timeout: float | None) -> bool:
        with self._work:
            return self._work.wait_for(
                lambda: bool(self._waiting or self._cancel_pending or busy()), timeout
            )

    def reap(self, verdict: Verdict) -> list[tuple[RequestGroup, object]]:
        """Remove and return the waiting requests that ``verdict`` says have ended."""
        ended = []
        with self._lock:
            self._cancel_pending = False
            keep: deque[RequestGroup] = deque()
            for group in self._waiting:
                outcome = verdict(group)
                if outcome is None:
                    keep.append(group)
                else:
                    ended.append((group, outcome))
            self._waiting = keep
        return ended

    def admit(self) -> list[RequestGroup]:
        """Take requests off the head of the queue while their cost fits the budget."""
        admitted = []
        with self._lock:
            while self._waiting:
                head = self._waiting[0]
                if padded_cost([*self._admitted, head]) > self.max_batch_tokens:
                    break
                self._admitted[head] = None
                admitted.append(self._waiting.popleft())
        return admitted

    def release(self, group: RequestGroup) -> None:
        """Give back an admitted request's reservation (once)."""
        if not group.released:
            group.released = True
            with self._lock:
                self._admitted.pop(group, None)


def padded_cost(groups: Iterable[RequestGroup]) -> int:
    """What ``groups`` cost as one batch: all their rows, each padded to the widest
    encoder side and the widest decoder side among them."""
    rows = encoder = decoder = 0
    for group in groups:
        prepared = group.prepared
        rows += prepared.rows
        encoder = max(encoder, prepared.encoder_width)
        decoder = max(decoder, prepared.decoder_width)
    return rows * (encoder + decoder)
