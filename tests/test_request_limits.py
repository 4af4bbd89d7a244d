"""Per-request limits of the one-shot text tasks: each request is costed by what it
will hold (tokens, candidates, answers) and refused before the work when over a
limit, and work nobody waits for any more frees the device worker at the next pass.

Memory is the server's (this process's) peak resident size while the call runs,
against what the same request cost before it was limited.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelwire import APITimeoutError, AsyncClient
from modelwire.v1 import generate_pb2
from modelwire.v1 import inference_service_pb2 as pb
from tests.conftest import RunningServer, client_fixture, preset_server, preset_server_fixture
from tests.helpers import bad_request_fields, raw_error
from tests.memory import MB, peak_growth

limited = preset_server_fixture("tiny-fill-mask", "tiny-qa", "tiny-gpt2", "tiny-nli")
client = client_fixture("limited", timeout=120)

MAX_TOP_K = 2**31 - 1


async def test_fill_mask_top_k_bomb_is_refused_naming_top_k(limited: RunningServer) -> None:
    """4 inputs x 120 masks with the largest top_k: 50 s of CPU and 1.7 GB before."""
    inputs = [" ".join(["[MASK]"] * 120)] * 4
    request = pb.FillMaskRequest(model="tiny-fill-mask", inputs=inputs, top_k=MAX_TOP_K)
    with peak_growth() as growth:
        error = await raw_error(limited, "FillMask", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["top_k"]
    assert "480 masks" in error.details()
    assert growth.bytes < 300 * MB


async def test_fill_mask_top_k_counts_up_to_the_vocabulary(
    limited: RunningServer, client: AsyncClient
) -> None:
    """A top_k beyond the vocabulary asks for nothing more than the whole vocabulary:
    it is clamped, and allowed while masks x vocabulary fit max_results."""
    vocab = len(limited.runner("tiny-fill-mask").vocab)
    assert vocab <= 1024  # the preset's vocabulary fits the default max_results once
    [result] = await client.fill_mask("a [MASK] b", model="tiny-fill-mask", top_k=MAX_TOP_K)
    assert len(result.masks[0].candidates) == vocab
    with pytest.raises(Exception) as refused:
        await client.fill_mask("[MASK] [MASK]", model="tiny-fill-mask", top_k=MAX_TOP_K)
    assert refused.value.field_violations[0].field == "top_k"  # type: ignore[attr-defined]


async def test_fill_mask_targets_bound_top_k(client: AsyncClient) -> None:
    masks = " ".join(["[MASK]"] * 120)
    [result] = await client.fill_mask(
        masks, model="tiny-fill-mask", top_k=MAX_TOP_K, targets=["the", "cat", "the"]
    )  # 120 masks x 2 distinct targets = 240 candidates, within 1024
    assert {len(m.candidates) for m in result.masks} == {2}


async def test_question_answering_top_k_is_bounded(limited: RunningServer) -> None:
    """A 30 KB context with the largest top_k answered 10.5 MB before."""
    context = "Ada Lovelace was born in London in 1815 and wrote notes. " * 520
    request = pb.AnswerQuestionRequest(
        model="tiny-qa", question="Where was Ada born?", context=context, top_k=MAX_TOP_K
    )
    error = await raw_error(limited, "AnswerQuestion", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["top_k"]


async def test_question_answering_answer_length_past_a_window_means_a_window(
    client: AsyncClient,
) -> None:
    context = "Ada Lovelace was born in London in 1815 and wrote notes on engines."
    whole = await client.answer_question(
        "Where?", context, model="tiny-qa", top_k=20, max_answer_length=MAX_TOP_K
    )
    window = await client.answer_question(
        "Where?", context, model="tiny-qa", top_k=20, max_answer_length=384
    )
    assert [(a.start, a.end) for a in whole] == [(a.start, a.end) for a in window]


async def test_zero_shot_pairs_are_bounded(limited: RunningServer) -> None:
    """Every input is read once per label: inputs x labels is the request's cost."""
    request = pb.ClassifyZeroShotRequest(
        model="tiny-nli", inputs=["a text"] * 64, candidate_labels=[f"l{i}" for i in range(64)]
    )
    error = await raw_error(limited, "ClassifyZeroShot", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["candidate_labels"]
    assert "4096 scores" in error.details()


async def test_tokenize_keeps_the_character_limit(limited: RunningServer) -> None:
    """1,000,000 characters took 0.5 to 2.4 GB (with the text) and a 63 MB response."""
    request = generate_pb2.TokenizeRequest(model="tiny-gpt2", text="word " * 200_000)
    with peak_growth() as growth:
        error = await raw_error(limited, "Tokenize", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["text"]
    assert growth.bytes < 150 * MB  # 490 MB or more before


class _CallEnded(logging.Handler):
    """Set once the server has logged the end of an ``rpc`` call (after its handler's
    cleanup, so its queued inputs are marked as nobody's)."""

    def __init__(self, rpc: str) -> None:
        super().__init__()
        self.rpc, self.event = rpc, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "fields", {}).get("rpc") == self.rpc:
            self.event.set()


@pytest.fixture
def fill_mask_ended() -> Iterator[_CallEnded]:
    handler = _CallEnded("FillMask")
    logger = logging.getLogger("modelwire_server.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _record_passes(model: Any, name: str, passes: list[str], hold: threading.Event | None) -> Any:
    first = threading.Event()

    def hook(module: Any, args: Any, kwargs: Any) -> None:
        passes.append(name)
        if hold is not None and not first.is_set():
            first.set()
            hold.wait(60)

    return model.register_forward_pre_hook(hook, with_kwargs=True), first


@pytest.mark.parametrize("ending", ["deadline", "cancel"])
async def test_a_call_that_ends_frees_the_worker_for_another_model_within_a_pass(
    preset_cache: Path, fill_mask_ended: _CallEnded, ending: str
) -> None:
    """A long FillMask call whose deadline passes (or whose caller cancels) during its
    first forward pass runs no further pass, so a ClassifyText on another model,
    queued behind it, runs next.

    Before, the call's inputs formed one batch of many passes that ran to the end for
    nobody while the other model waited (20.8 s instead of 0.01 s)."""
    with preset_server(["tiny-fill-mask", "tiny-sentiment"], max_batch_tokens=64) as running:
        passes: list[str] = []
        release = threading.Event()
        fill = running.runner("tiny-fill-mask")
        fill_hook, first_pass = _record_passes(fill.model, "fill", passes, release)
        sentiment = running.runner("tiny-sentiment")
        sentiment_hook, _ = _record_passes(sentiment.model, "sentiment", passes, None)
        # 8 inputs of about 60 tokens: with 64 tokens a pass, one input per pass.
        inputs = [" ".join(["word"] * 58) + f" {i} [MASK]" for i in range(8)]
        timeout = 5.0 if ending == "deadline" else 120.0
        try:
            async with AsyncClient(running.target) as client:
                long_call = asyncio.ensure_future(
                    client.fill_mask(inputs, model="tiny-fill-mask", timeout=timeout)
                )
                assert await asyncio.to_thread(first_pass.wait, 60), "no pass began"
                other = asyncio.ensure_future(client.classify_text("fine", model="tiny-sentiment"))
                await _until(fill.worker.has_waiting_jobs)  # queued behind the held pass
                if ending == "deadline":
                    with pytest.raises(APITimeoutError):
                        await long_call
                else:
                    long_call.cancel()
                assert await asyncio.to_thread(fill_mask_ended.event.wait, 60)
                release.set()
                [label] = await other
        finally:
            release.set()
            fill_hook.remove()
            sentiment_hook.remove()
        assert label.labels
        assert passes == ["fill", "sentiment"]  # no pass for the inputs nobody awaited


async def _until(condition: Any) -> None:
    """Wait for a condition another thread makes true (bounded; not a timing)."""
    for _ in range(60_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")
