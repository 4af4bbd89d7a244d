"""The waiting queue and the batch-token budget, shared between callers and the worker.

Callers (any thread) push requests and flag cancellations; the worker reaps ended
requests and admits the next ones while the admitted requests fit in
``max_batch_tokens`` as the batch really holds them: rows are padded to the widest one,
so the batch costs its rows times the widest row's prompt plus ``max_new_tokens`` (per
side, for an encoder-decoder), not the sum of each row's own tokens. One long prompt
among many short ones thus runs with only as many of them as fit at its width, instead
of padding them all in one giant prefill.

Order: higher ``priority`` first, then first come, first served. The order is strict
across priorities too: the head (the oldest request of the highest priority waiting) is
admitted first or nothing is, so a request that would fit never runs ahead of one that
does not fit yet, whatever their priorities. A big request at the head thus waits only
for room, never overtaken forever; and a request waits at most for those running when
it came (each ends within its own bounded length), those of a higher priority, and the
earlier ones of its own: never behind a stream of lower-priority arrivals. The cost is
budget left idle while the head waits for room, as under plain FIFO. vLLM's V1 scheduler
chooses the same (it stops at the first waiting request it cannot place; its priority
policy orders the queue). A lower priority waits as long as higher ones keep coming:
that is what it asks for. Seq2seq and Whisper requests never set one: priority 0.

Under a KV budget in bytes (``kv_cache_memory``) the engine passes ``admit`` its own
test of room instead: nothing is reserved for ``max_new_tokens``, and a request the
engine preempts comes back with ``requeue`` under its first arrival number, so it is
ahead of every later arrival of its priority.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterable

from modelwire_server.engine.errors import QueueFull
from modelwire_server.engine.sequence import RequestGroup

Verdict = Callable[[RequestGroup], object | None]
# Whether ``head`` has room beside the running batch and the requests admitted with it.
Fits = Callable[[list[RequestGroup], RequestGroup], bool]
# A waiting request in the heap: (-priority, arrival number, group). Arrival numbers are
# unique, so the heap never compares two groups.
_Entry = tuple[int, int, RequestGroup]


def priority_of(group: RequestGroup) -> int:
    return group.prepared.request.priority


class Scheduler:
    def __init__(self, max_waiting: int, max_batch_tokens: int) -> None:
        self.max_waiting = max_waiting
        self.max_batch_tokens = max_batch_tokens
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._waiting: list[_Entry] = []  # a heap: the head is the next to admit
        self._arrivals = itertools.count()
        self._by_priority: Counter[int] = Counter()
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
            group.arrival = next(self._arrivals)
            self._enqueue(group)

    def requeue(self, group: RequestGroup) -> None:
        """Put a preempted request back, in its first place (past ``max_waiting``: it
        was admitted once)."""
        with self._lock:
            self._admitted.pop(group, None)
            self._enqueue(group)

    def _enqueue(self, group: RequestGroup) -> None:
        priority = priority_of(group)
        heapq.heappush(self._waiting, (-priority, group.arrival, group))
        self._by_priority[priority] += 1
        self._work.notify_all()

    def cancel(self, group: RequestGroup) -> None:
        with self._lock:
            group.cancel_requested = True
            self._cancel_pending = True
            self._work.notify_all()

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def waiting_by_priority(self) -> dict[int, int]:
        """How many requests wait at each priority (only those with some)."""
        with self._lock:
            return dict(self._by_priority)

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
        """Remove and return the waiting requests that ``verdict`` says have ended,
        in queue order."""
        ended: list[tuple[_Entry, object]] = []
        with self._lock:
            self._cancel_pending = False
            keep: list[_Entry] = []
            for entry in self._waiting:
                outcome = verdict(entry[2])
                if outcome is None:
                    keep.append(entry)
                else:
                    ended.append((entry, outcome))
                    self._forget(-entry[0])
            if ended:
                heapq.heapify(keep)
                self._waiting = keep
        ended.sort(key=lambda item: item[0][:2])
        return [(entry[2], outcome) for entry, outcome in ended]

    def admit(self, fits: Fits | None = None) -> list[RequestGroup]:
        """Take requests off the head of the queue while they fit: in the batch-token
        budget with their worst case reserved, or where ``fits`` says."""
        admitted: list[RequestGroup] = []
        with self._lock:
            while self._waiting:
                neg_priority, _, head = self._waiting[0]
                if fits is not None:
                    if not fits(admitted, head):
                        break
                elif padded_cost([*self._admitted, head]) > self.max_batch_tokens:
                    break
                heapq.heappop(self._waiting)
                self._forget(-neg_priority)
                self._admitted[head] = None
                admitted.append(head)
        return admitted

    def release(self, group: RequestGroup) -> None:
        """Give back an admitted request's reservation (once)."""
        if not group.released:
            group.released = True
            with self._lock:
                self._admitted.pop(group, None)

    def _forget(self, priority: int) -> None:
        self._by_priority[priority] -= 1
        if not self._by_priority[priority]:
            del self._by_priority[priority]


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
