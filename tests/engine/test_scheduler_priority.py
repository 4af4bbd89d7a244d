"""Admission by priority: the Scheduler alone, with requests reduced to what it reads
(rows, widths, priority), then the engine on a real tiny model.

Every request here is one row of the same width, so a batch's padded cost is simply
``rows x WIDTH`` and the budget says how many requests fit at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from engine_helpers import Bundle, make_engine, reference_greedy, run_until_idle

from modelwire_server.engine import (
    Delta,
    FinishReason,
    GenerationRequest,
    PromptInfo,
    SamplingParams,
    StoppingParams,
)
from modelwire_server.engine.errors import QueueFull
from modelwire_server.engine.scheduler import Scheduler
from modelwire_server.engine.sequence import RequestGroup

WIDTH = 10


@dataclass
class _Request:
    priority: int


@dataclass
class _Prepared:
    request: _Request
    rows: int
    encoder_width: int = 0
    decoder_width: int = WIDTH


@dataclass(eq=False)  # hashed by identity, as RequestGroup is
class Group:
    name: str
    prepared: _Prepared
    cancel_requested: bool = False
    released: bool = False
    log: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return self.name


def group(name: str, priority: int = 0, rows: int = 1) -> RequestGroup:
    return cast(RequestGroup, Group(name, _Prepared(_Request(priority), rows)))


def names(groups: list[RequestGroup]) -> list[str]:
    return [cast(Group, g).name for g in groups]


def admit_one_at_a_time(queue: Scheduler) -> list[str]:
    """Admit, then end what was admitted, until the queue is empty: the admission order."""
    order: list[str] = []
    while queue.pending():
        admitted = queue.admit()
        assert admitted, "the head fits an empty batch"
        order += names(admitted)
        for g in admitted:
            queue.release(g)
    return order


def cancelled(g: RequestGroup) -> FinishReason | None:
    return FinishReason.CANCELLED if g.cancel_requested else None


def test_higher_priorities_are_admitted_first_then_first_come_first_served() -> None:
    queue = Scheduler(max_waiting=16, max_batch_tokens=WIDTH)  # one request at a time
    arrivals = [("low1", 0), ("low2", 0), ("high1", 5), ("mid", 2), ("low3", 0), ("high2", 5)]
    arrivals += [("neg", -3), ("low4", 0)]
    for name, priority in arrivals:
        queue.push(group(name, priority))
    assert queue.waiting() == 8
    assert queue.waiting_by_priority() == {0: 4, 5: 2, 2: 1, -3: 1}

    order = admit_one_at_a_time(queue)
    assert order == ["high1", "high2", "mid", "low1", "low2", "low3", "low4", "neg"]
    assert queue.waiting() == 0 and queue.waiting_by_priority() == {}
    assert queue.reserved == 0


def test_a_batch_takes_the_head_of_the_queue_in_order() -> None:
    queue = Scheduler(max_waiting=16, max_batch_tokens=3 * WIDTH)
    for name, priority in [("a", 0), ("b", 1), ("c", 0), ("d", 1), ("e", 2)]:
        queue.push(group(name, priority))
    first = queue.admit()
    assert names(first) == ["e", "b", "d"]
    assert queue.reserved == 3 * WIDTH
    assert queue.admit() == []  # full
    queue.release(first[1])
    assert names(queue.admit()) == ["a"]
    assert queue.waiting_by_priority() == {0: 1}


def test_a_big_head_waits_for_room_and_nothing_overtakes_it() -> None:
    """Strict order: neither a smaller request of its own priority nor a lower one runs
    ahead of a head that does not fit yet, though each would fit now."""
    queue = Scheduler(max_waiting=16, max_batch_tokens=4 * WIDTH)
    running = group("running", 3, rows=2)
    queue.push(running)
    assert names(queue.admit()) == ["running"]
    queue.push(group("big", 3, rows=3))
    queue.push(group("small-same", 3))
    queue.push(group("small-lower", 0))
    assert queue.admit() == []  # 2 + 3 rows > 4; 2 + 1 would fit, but must wait
    assert queue.waiting() == 3
    queue.release(running)
    assert names(queue.admit()) == ["big", "small-same"]
    assert queue.admit() == []
    assert queue.waiting_by_priority() == {0: 1}


def test_a_higher_priority_is_not_starved_by_a_stream_of_lower_ones() -> None:
    """Two short low-priority requests run; a high one needs the whole budget. Each
    round one low request ends and another arrives. Filling freed room with whatever
    fits would keep the high one out forever; it must get in once the running ones end."""
    queue = Scheduler(max_waiting=64, max_batch_tokens=2 * WIDTH)
    running = [group("low0"), group("low1")]
    for g in running:
        queue.push(g)
    assert len(queue.admit()) == 2
    queue.push(group("high", 1, rows=2))
    admitted: list[str] = []
    for i in range(2, 12):
        queue.release(running.pop(0))
        queue.push(group(f"low{i}"))
        new = queue.admit()
        admitted += names(new)
        running += new
        if "high" in admitted:
            break
    assert admitted == ["high"], admitted
    assert queue.waiting() == 2  # the lows that arrived meanwhile wait behind it


def test_a_cancelled_waiting_request_leaves_the_queue_and_its_priority_count() -> None:
    queue = Scheduler(max_waiting=16, max_batch_tokens=WIDTH)
    blocker, high, low = group("blocker", 9), group("high", 5), group("low", 0)
    for g in (blocker, high, low):
        queue.push(g)
    assert names(queue.admit()) == ["blocker"]
    queue.cancel(high)
    assert queue.pending()
    ended = queue.reap(cancelled)
    assert [(cast(Group, g).name, verdict) for g, verdict in ended] == [
        ("high", FinishReason.CANCELLED)
    ]
    assert queue.waiting() == 1 and queue.waiting_by_priority() == {0: 1}
    assert queue.reap(cancelled) == []  # once
    queue.release(blocker)
    assert names(queue.admit()) == ["low"]
    assert not queue.pending()


def test_reaping_keeps_the_order_of_the_rest_and_reports_in_queue_order() -> None:
    queue = Scheduler(max_waiting=16, max_batch_tokens=WIDTH)
    groups = [group(f"p{p}-{i}", p) for i in range(3) for p in (0, 1, 2)]
    for g in groups:
        queue.push(g)
    for g in groups[::2]:
        queue.cancel(g)
    ended = queue.reap(cancelled)
    assert names([g for g, _ in ended]) == ["p2-0", "p2-2", "p1-1", "p0-0", "p0-2"]
    assert admit_one_at_a_time(queue) == ["p2-1", "p1-0", "p1-2", "p0-1"]


def test_the_waiting_bound_counts_every_priority() -> None:
    """A full queue refuses a high priority too (RESOURCE_EXHAUSTED, retry later): the
    bound caps memory and the wait of what is queued; nothing queued is displaced."""
    queue = Scheduler(max_waiting=2, max_batch_tokens=WIDTH)
    queue.push(group("low1"))
    queue.push(group("low2"))
    with pytest.raises(QueueFull):
        queue.push(group("high", 7))
    assert queue.waiting_by_priority() == {0: 2}
    assert names(queue.admit()) == ["low1"]
    queue.push(group("high", 7))  # room again
    assert queue.waiting_by_priority() == {0: 1, 7: 1}


# -- the engine -----------------------------------------------------------------------

NEW = 5


class Ordered:
    """A sink that logs ``name`` in ``log`` at the request's first event (its admission)."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        if not self.events:
            self.log.append(self.name)
        self.events.append(event)

    def tokens(self) -> list[int]:
        return [t.id for e in self.events if isinstance(e, Delta) for t in e.tokens]


def test_the_engine_admits_by_priority_and_outputs_are_unchanged(gpt2: Bundle) -> None:
    prompts = {name: gpt2.encode(text) for name, text in [
        ("low1", "Hello world"), ("low2", "Once"), ("high", "The quick brown fox"),
        ("mid", "def main():"), ("low3", "Streaming tokens"),
    ]}  # fmt: skip
    priorities = {"low1": 0, "low2": 0, "high": 3, "mid": 1, "low3": 0}
    widest = max(len(p) for p in prompts.values()) + NEW
    engine = make_engine(gpt2, max_batch_tokens=widest)  # one request at a time
    greedy, stopping = SamplingParams(temperature=0), StoppingParams(NEW, min_new_tokens=NEW)
    log: list[str] = []
    sinks = {}
    for name, prompt in prompts.items():
        sinks[name] = Ordered(name, log)
        request = GenerationRequest(
            prompt_ids=prompt, sampling=greedy, stopping=stopping, priority=priorities[name]
        )
        engine.submit(request, sinks[name])
    assert engine.stats().waiting == 5
    assert engine.stats().waiting_by_priority == {0: 3, 3: 1, 1: 1}
    run_until_idle(engine)

    assert log == ["high", "mid", "low1", "low2", "low3"]
    for name, sink in sinks.items():
        assert isinstance(sink.events[0], PromptInfo)
        assert sink.tokens() == reference_greedy(gpt2, prompts[name], NEW), name
    assert engine.stats().waiting_by_priority == {}


def test_seq2seq_requests_share_priority_zero(t5: Bundle) -> None:
    """Encoder-decoders go through the same queue; their requests never set a priority."""
    engine = make_engine(t5)
    sink = Ordered("t5", [])
    engine.submit(GenerationRequest(prompt_ids=t5.encode("hello")), sink)
    assert engine.stats().waiting_by_priority == {0: 1}
    run_until_idle(engine)
    assert sink.tokens()
