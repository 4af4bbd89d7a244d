"""Host cost of the waiting queue per engine step: the priority Scheduler against the
first-come-first-served queue it replaced (a deque, rebuilt here as the baseline).

Each step does what the engine's step does to the queue: reap (a verdict per waiting
request), admit what fits, and later release it. ``--waiting`` requests stay queued
(one arrives per step as one is admitted), one request fits the budget at a time, so
every step admits one. Contenders run interleaved, ``--rounds`` times; the median of
the per-round ratios is printed beside the raw numbers.

    python bench/scheduler.py [--waiting 1000] [--steps 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from modelwire_server.engine.scheduler import Scheduler, padded_cost


@dataclass
class _Request:
    priority: int


@dataclass
class _Prepared:
    request: _Request
    rows: int = 1
    encoder_width: int = 0
    decoder_width: int = 10


@dataclass(eq=False)
class Group:
    prepared: _Prepared
    cancel_requested: bool = False
    released: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Fifo:
    """The queue before priorities: a deque, head first, the same budget rule and lock."""

    def __init__(self, max_waiting: int, max_batch_tokens: int) -> None:
        self.max_batch_tokens = max_batch_tokens
        self._lock = threading.Lock()
        self._waiting: deque[Any] = deque()
        self._admitted: dict[Any, None] = {}

    def push(self, group: Any) -> None:
        with self._lock:
            self._waiting.append(group)

    def reap(self, verdict: Any) -> list[Any]:
        ended, keep = [], deque()
        with self._lock:
            for group in self._waiting:
                outcome = verdict(group)
                if outcome is None:
                    keep.append(group)
                else:
                    ended.append((group, outcome))
            self._waiting = keep
        return ended

    def admit(self) -> list[Any]:
        admitted = []
        with self._lock:
            while self._waiting:
                head = self._waiting[0]
                if padded_cost([*self._admitted, head]) > self.max_batch_tokens:
                    break
                self._admitted[head] = None
                admitted.append(self._waiting.popleft())
        return admitted

    def release(self, group: Any) -> None:
        if not group.released:
            group.released = True
            with self._lock:
                self._admitted.pop(group, None)


def run(kind: str, waiting: int, steps: int, priorities: int) -> float:
    """Seconds per step."""
    queue: Any = Fifo(waiting + 1, 10) if kind == "fifo" else Scheduler(waiting + 1, 10)
    made = 0

    def arrive() -> None:
        nonlocal made
        queue.push(Group(_Prepared(_Request(made % priorities))))
        made += 1

    for _ in range(waiting):
        arrive()
    running: list[Any] = []

    def verdict(group: Any) -> None:
        return None

    start = time.perf_counter()
    for _ in range(steps):
        queue.reap(verdict)
        for group in running:
            queue.release(group)
        running = queue.admit()
        arrive()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    contenders = {
        "fifo (before)": ("fifo", 1),
        "priority, all 0": ("prio", 1),
        "priority, 8 levels": ("prio", 8),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (kind, levels) in contenders.items():
            times[name].append(run(kind, args.waiting, args.steps, levels))
    base = times["fifo (before)"]
    print(f"{args.waiting} waiting, {args.steps} steps x {args.rounds} rounds (median)")
    for name, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        print(f"  {name:20s} {statistics.median(values) * 1e6:8.1f} us/step  x{ratio:.2f}")


if __name__ == "__main__":
    main()
