"""ClassifyText through the SDK against a real server, with the pipeline as reference."""

from __future__ import annotations

import asyncio
import threading

import pytest
import transformers

from modelwire import AsyncClient, BadRequestError, NotFoundError
from tests.helpers import bad_request_fields, raw_error
from tests.tolerances import TINY_SCORE_ATOL

TEXTS = [
    "I loved this film, the acting was wonderful.",
    "Terrible service and the food was cold.",
    "The weather is mild today.",
    "An absolute disaster from start to finish!!!",
    "12 apples, 3 oranges and a banana.",
]


def reference_scores(path: str, texts: list[str]) -> list[dict[str, float]]:
    classifier = transformers.pipeline("sentiment-analysis", model=path, top_k=None, device="cpu")
    return [{d["label"]: d["score"] for d in row} for row in classifier(texts)]


@pytest.mark.parametrize("model", ["tiny-sentiment", "tiny-multilabel"])
async def test_scores_match_the_pipeline(server, client: AsyncClient, model: str) -> None:
    path = server.runner(model).config.source
    expected = reference_scores(path, TEXTS)
    results = await client.classify_text(TEXTS, model=model, top_k=100)
    assert len(results) == len(TEXTS)
    for result, reference in zip(results, expected, strict=True):
        got = {ls.label: ls.score for ls in result.labels}
        assert got.keys() == reference.keys()
        for label, score in reference.items():
            assert got[label] == pytest.approx(score, abs=TINY_SCORE_ATOL)
        scores = [ls.score for ls in result.labels]
        assert scores == sorted(scores, reverse=True)
    # A constant answer must not pass: the tiny model reacts to its input.
    first_label = results[0].labels[0].label
    spread = [next(ls.score for ls in r.labels if ls.label == first_label) for r in results]
    assert max(spread) - min(spread) >= 0.05


async def test_multilabel_model_uses_sigmoid(server, client: AsyncClient) -> None:
    results = await client.classify_text(TEXTS[:2], model="tiny-multilabel", top_k=10)
    # Independent sigmoids need not sum to one; a softmax would.
    assert any(abs(sum(ls.score for ls in r.labels) - 1.0) > 1e-3 for r in results)
    softmaxed = await client.classify_text(
        TEXTS[:2], model="tiny-multilabel", top_k=10, function_to_apply="softmax"
    )
    for r in softmaxed:
        assert sum(ls.score for ls in r.labels) == pytest.approx(1.0, abs=1e-5)


async def test_top_k_defaults_to_one_and_caps_at_the_label_count(client: AsyncClient) -> None:
    (one,) = await client.classify_text("fine", model="tiny-sentiment")
    assert len(one.labels) == 1
    (all_labels,) = await client.classify_text("fine", model="tiny-sentiment", top_k=50)
    assert {ls.label for ls in all_labels.labels} == {"NEGATIVE", "POSITIVE"}
    assert one.labels[0] == all_labels.labels[0]


async def test_default_model_serves_an_empty_model_name(client: AsyncClient) -> None:
    named = await client.classify_text(TEXTS[:2], model="tiny-sentiment")
    default = await client.classify_text(TEXTS[:2])
    assert named == default


async def test_concurrent_requests_share_forward_passes(server, client: AsyncClient) -> None:
    runner = server.runner("tiny-sentiment")
    before = len(runner.batcher.stats.sizes)
    threads: set[str] = set()
    hook = runner.model.register_forward_pre_hook(
        lambda *_: threads.add(threading.current_thread().name)
    )
    try:
        results = await asyncio.gather(
            *(
                client.classify_text(f"request number {i}", model="tiny-sentiment")
                for i in range(24)
            )
        )
    finally:
        hook.remove()
    assert all(len(r) == 1 for r in results)
    new_sizes = list(runner.batcher.stats.sizes)[before:]
    assert sum(new_sizes) == 24
    assert max(new_sizes) >= 2, f"no forward pass carried two requests: {new_sizes}"
    assert threads and all(t.startswith("modelwire-worker") for t in threads)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": ["ok", "  "]}, "inputs[1]"),
        ({"inputs": ["ok"], "top_k": 0}, "top_k"),
        ({"inputs": ["ok"], "function_to_apply": 99}, "function_to_apply"),
        ({"inputs": ["x" * 100_001]}, "inputs[0]"),
    ],
)
async def test_server_refuses_bad_input_naming_the_field(
    server, client: AsyncClient, request_fields: dict, field: str
) -> None:
    # Through the raw stub: the SDK would refuse most of these before sending.
    from modelwire.v1 import inference_service_pb2 as pb

    error = await raw_error(server, "ClassifyText", pb.ClassifyTextRequest(**request_fields))
    assert error.code().name == "INVALID_ARGUMENT"
    assert field in error.details()
    assert bad_request_fields(error) == [field]
    # The server keeps serving.
    (result,) = await client.classify_text("still there?")
    assert result.labels


async def test_unknown_and_wrong_models(client: AsyncClient) -> None:
    with pytest.raises(NotFoundError) as unknown:
        await client.classify_text("hi", model="no-such-model")
    assert "no-such-model" in str(unknown.value)
    assert unknown.value.request_id
    with pytest.raises(BadRequestError) as wrong:
        await client.classify_text("hi", model="tiny-embed")
    assert wrong.value.field_violations[0].field == "model"
