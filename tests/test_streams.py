"""Event buffers between the engine and Generate streams.

``stream_interval_ms``: a Generate stream holds its deltas back for the interval after
each message with tokens, so a message carries every token made meanwhile; a sequence's
end (or a failure) is never held; the tokens and text are the same either way.
``WakeBatcher``: buffers fed by an engine driver wake the loop once per step."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from transformers import AutoTokenizer

from modelwire import AsyncClient, FinishReason
from modelwire_server.engine.types import (
    Delta,
    Event,
    Failed,
    Finished,
    PromptInfo,
    TokenInfo,
    Usage,
)
from modelwire_server.engine.types import FinishReason as EngineReason
from modelwire_server.streams import EventBuffer, WakeBatcher, merge_deltas
from tests.conftest import RunningServer, preset_server
from tests.test_generate import reference_greedy

NEW_TOKENS = 48


def delta(text: str, index: int = 0) -> Delta:
    return Delta(index, text, [TokenInfo(id=1, text=text, logprob=None, top=[], special=False)])


def finished(index: int = 0) -> Finished:
    return Finished(index, EngineReason.LENGTH, "", [], Usage(1, 1, 0.0, 0.0, 0.0), None)


def test_each_sequences_deltas_merge_in_order_before_its_end() -> None:
    prompt = PromptInfo(prompt_tokens=3, tokens=None)
    events: list[Event] = [
        prompt,
        delta("a", 0),
        delta("x", 1),
        delta("b", 0),
        delta("y", 1),
        finished(1),
        delta("c", 0),
        finished(0),
    ]
    merged = merge_deltas(events)
    assert merged[0] is prompt
    shown = [
        (type(e).__name__, e.index, e.text if isinstance(e, Delta) else "") for e in merged[1:]
    ]
    assert shown == [
        ("Delta", 0, "abc"),
        ("Delta", 1, "xy"),
        ("Finished", 1, ""),
        ("Finished", 0, ""),
    ]
    assert [len(e.tokens) for e in merged[1:3]] == [3, 2]  # type: ignore[union-attr]
    # A delta after the sequence's end would start afresh; a failure is a barrier.
    failed = Failed(RuntimeError("boom"))
    merged = merge_deltas([delta("a"), failed, delta("b")])
    assert [type(e).__name__ for e in merged] == ["Delta", "Failed", "Delta"]


def push_later(buffer: EventBuffer, events: list[Event], after_s: float) -> threading.Thread:
    """Push ``events`` from another thread (as the engine's worker does) after a pause."""

    def run() -> None:
        threading.Event().wait(after_s)
        for event in events:
            buffer(event)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def test_held_deltas_go_out_together() -> None:
    loop = asyncio.get_running_loop()
    buffer = EventBuffer(loop)
    buffer(delta("a"))
    pusher = push_later(buffer, [delta("b")], after_s=0.05)
    # Held for 0.5 s: "b", pushed meanwhile, comes in the same take as "a".
    events = await asyncio.wait_for(buffer.take(not_before=loop.time() + 0.5), 10)
    pusher.join()
    assert [e.text for e in events if isinstance(e, Delta)] == ["a", "b"]
    # Without a hold, a take returns what is pending at once.
    buffer(delta("c"))
    assert [e.text for e in await asyncio.wait_for(buffer.take(), 10)] == ["c"]


async def test_a_sequence_end_is_never_held() -> None:
    loop = asyncio.get_running_loop()
    buffer = EventBuffer(loop)
    buffer(delta("a"))
    pusher = push_later(buffer, [finished()], after_s=0.05)
    # A 60 s hold: the Finished event must cut it short (well inside wait_for's 10 s).
    events = await asyncio.wait_for(buffer.take(not_before=loop.time() + 60), 10)
    pusher.join()
    assert isinstance(events[-1], Finished)
    # Also when the end is already pending as the hold begins.
    buffer(delta("b"))
    buffer(finished())
    await asyncio.sleep(0)  # let the buffer's wake-up run
    events = await asyncio.wait_for(buffer.take(not_before=loop.time() + 60), 10)
    assert isinstance(events[-1], Finished)


async def test_batched_wake_ups_wait_for_the_flush() -> None:
    loop = asyncio.get_running_loop()
    batcher = WakeBatcher()
    buffers = [EventBuffer(loop, batcher) for _ in range(3)]
    pusher = push_later(buffers[0], [delta("a")], after_s=0.0)
    pusher.join()
    # Pushed, but the loop was not woken: nothing comes until the batcher flushes.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(buffers[0].take(), 0.3)
    for i, buffer in enumerate(buffers[1:], 1):
        buffer(delta(str(i)))
    batcher.flush()  # one wake-up call for all three
    takes = [await asyncio.wait_for(b.take(), 10) for b in buffers]
    assert [[e.text for e in events] for events in takes] == [["a"], ["1"], ["2"]]


@pytest.fixture(scope="module")
def held_server(preset_cache) -> Iterator[RunningServer]:
    with preset_server(["tiny-gpt2"], stream_interval_ms=200) as running:
        yield running


async def test_streams_carry_several_tokens_per_message(held_server: RunningServer) -> None:
    source = held_server.runner("tiny-gpt2").config.source
    prompt = "The quick brown fox"
    async with AsyncClient(held_server.target, timeout=120) as client:
        chunks = []
        async with client.generate_stream(
            prompt, model="tiny-gpt2", temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True
        ) as stream:
            async for chunk in stream:
                chunks.append(chunk)
            final = await stream.final()
    with_tokens = [c for c in chunks if c.tokens]
    ids = [t.id for c in with_tokens for t in c.tokens]
    assert ids == reference_greedy(source, prompt, NEW_TOKENS)  # same tokens as ever
    tokenizer = AutoTokenizer.from_pretrained(source)
    text = "".join(c.text for c in chunks)
    assert text == final.sequences[0].text == tokenizer.decode(ids, skip_special_tokens=True)
    assert final.sequences[0].finish_reason == FinishReason.LENGTH
    # The tiny model makes tokens far faster than one per 200 ms: they come in bunches.
    assert len(with_tokens) <= NEW_TOKENS // 3, [len(c.tokens) for c in with_tokens]
