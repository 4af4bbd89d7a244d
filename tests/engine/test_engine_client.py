"""RequestStream, the one owner of a request on the event loop: it streams the engine's
events, ends with the last sequence, maps failures to statuses, and cancels the request
when its reader leaves early (the engine then frees its rows)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from engine_helpers import Bundle, make_engine, reference_greedy

from modelwire_server import errors
from modelwire_server.engine import errors as engine_errors
from modelwire_server.engine.types import (
    Delta,
    Finished,
    FinishReason,
    GenerationRequest,
    PromptInfo,
    SamplingParams,
    StoppingParams,
)
from modelwire_server.engine_client import EngineDriver
from modelwire_server.worker import DeviceWorker


@pytest.fixture
async def driver(gpt2: Bundle) -> AsyncIterator[EngineDriver]:
    worker = DeviceWorker("test-engine-client")
    driver = EngineDriver(make_engine(gpt2, max_waiting=2), worker, "gpt2")
    await driver.start()
    yield driver
    await driver.close()
    worker.close()


def _request(prompt: list[int], new: int, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        prompt_ids=prompt,
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
        stopping=StoppingParams(max_new_tokens=new, ignore_eos=True),
    )


async def test_reads_every_event_to_the_end(driver: EngineDriver, gpt2: Bundle) -> None:
    prompt = gpt2.encode("The engine client streams")
    batches = []
    async with driver.open(_request(prompt, 12)) as stream:
        async for events in stream:
            batches.append(events)
        assert stream.done and stream.finished == {0}
    events = [e for batch in batches for e in batch]
    assert isinstance(events[0], PromptInfo)
    assert isinstance(events[-1], Finished) and events[-1].reason is FinishReason.LENGTH
    ids = [t.id for e in events if isinstance(e, Delta) for t in e.tokens]
    assert ids == reference_greedy(gpt2, prompt, 12)
    # A batch holds at most one delta per sequence: a slow reader's deltas are merged.
    assert all(sum(isinstance(e, Delta) for e in batch) <= 1 for batch in batches)
    assert not driver.engine.has_work()


async def test_every_sequence_ends_the_stream(driver: EngineDriver, gpt2: Bundle) -> None:
    request = _request(gpt2.encode("Several samples"), 5, n=3, temperature=1.0, seed=7)
    async with driver.open(request) as stream:
        ends = await stream.final()
    assert [e.index for e in ends] == [0, 1, 2]
    assert all(e.usage.generated_tokens == 5 for e in ends)


async def test_leaving_early_cancels_and_frees_the_rows(driver: EngineDriver, gpt2: Bundle) -> None:
    async with driver.open(_request(gpt2.encode("A long one"), 150)) as stream:
        async for events in stream:
            if any(isinstance(e, Delta) for e in events):
                break  # the reader goes away mid-stream
    assert stream.finished == set()
    # The engine ends it at its next step: the next request runs alone, from empty rows.
    async with driver.open(_request(gpt2.encode("Next"), 2)) as after:
        await after.final()
    stats = driver.engine.stats()
    assert (stats.running_rows, stats.waiting, stats.reserved_tokens) == (0, 0, 0)


async def test_refusals_are_statuses_named_by_the_caller(driver: EngineDriver) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        driver.open(_request([], 2))
    assert [v.field for v in caught.value.violations] == ["prompt"]

    def rename(exc: engine_errors.InvalidRequest) -> errors.InvalidArgument:
        return errors.InvalidArgument(f"inputs[3].{exc.field}", exc.message)

    with pytest.raises(errors.InvalidArgument) as caught:
        driver.open(_request([], 2), rename=rename)
    assert [v.field for v in caught.value.violations] == ["inputs[3].prompt"]


async def test_a_failure_in_the_engine_is_raised_as_its_status(
    driver: EngineDriver, gpt2: Bundle
) -> None:
    def hook(ids: object, scores: object) -> object:
        raise engine_errors.ResourceExhausted("no room for this one")

    request = _request(gpt2.encode("Doomed"), 4)
    request.logits_hook = hook  # type: ignore[assignment]
    async with driver.open(request) as stream:
        with pytest.raises(errors.ResourceExhausted, match="no room"):
            await stream.final()
        assert stream.done  # failed: nothing to cancel on the way out
