"""ClassifyZeroShot through the SDK, with pipeline("zero-shot-classification") as reference."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import transformers

from modelwire import AsyncClient
from modelwire.v1 import inference_service_pb2 as pb
from modelwire_server.config import ModelConfig, ServerConfig
from tests.conftest import RunningServer, start_server
from tests.forward_rows import forward_rows
from tests.helpers import bad_request_fields, raw_error
from tests.tolerances import TINY_SCORE_ATOL

TEXTS = [
    "The striker scored twice in the final minutes of the match.",
    "Shares fell sharply after the quarterly earnings report.",
    "Parliament voted on the new budget late last night.",
    "Mix the flour and eggs, then bake for twenty minutes.",
]
LABELS = ["sports", "finance", "politics", "cooking"]


def reference(path: str, texts: list[str], labels: list[str], **kwargs: object) -> list[dict]:
    classifier = transformers.pipeline("zero-shot-classification", model=path, device="cpu")
    out = classifier(texts, candidate_labels=labels, **kwargs)
    return [dict(zip(r["labels"], r["scores"], strict=True)) for r in out]


def assert_matches(results: list, expected: list[dict]) -> None:
    assert len(results) == len(expected)
    for result, ref in zip(results, expected, strict=True):
        got = {ls.label: ls.score for ls in result.labels}
        assert got.keys() == ref.keys()
        for label, score in ref.items():
            assert got[label] == pytest.approx(score, abs=TINY_SCORE_ATOL)
        scores = [ls.score for ls in result.labels]
        assert scores == sorted(scores, reverse=True)


def spread(results: list, label: str) -> float:
    scores = [next(ls.score for ls in r.labels if ls.label == label) for r in results]
    return max(scores) - min(scores)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"multi_label": True},
        {"hypothesis_template": "The topic of this text is {}."},
    ],
)
async def test_scores_match_the_pipeline(server, client: AsyncClient, options: dict) -> None:
    path = server.runner("tiny-nli").config.source
    expected = reference(path, TEXTS, LABELS, **options)
    results = await client.classify_zero_shot(TEXTS, LABELS, model="tiny-nli", **options)
    assert_matches(results, expected)
    if not options.get("multi_label"):
        for result in results:
            assert sum(ls.score for ls in result.labels) == pytest.approx(1.0, abs=1e-5)
    # The tiny model reacts to its input: one label's score moves across texts.
    assert spread(results, "sports") >= 0.02


async def test_one_label_is_scored_entailment_against_contradiction(
    server, client: AsyncClient
) -> None:
    path = server.runner("tiny-nli").config.source
    expected = reference(path, TEXTS, ["sports"])
    results = await client.classify_zero_shot(TEXTS, ["sports"])  # the default NLI model
    assert_matches(results, expected)
    # Not a softmax over one label (always 1.0): the score depends on the text.
    assert spread(results, "sports") >= 0.02


async def test_long_input_is_cut_like_the_pipeline(server, client: AsyncClient) -> None:
    # The premise is cut to the window (as the pipeline does); the hypothesis stays whole.
    path = server.runner("tiny-nli").config.source
    long_text = " ".join(TEXTS * 20)
    expected = reference(path, [long_text], LABELS)
    assert_matches(await client.classify_zero_shot(long_text, LABELS), expected)


async def test_multi_label_scores_do_not_sum_to_one(client: AsyncClient) -> None:
    results = await client.classify_zero_shot(TEXTS[:2], LABELS, multi_label=True)
    assert any(abs(sum(ls.score for ls in r.labels) - 1.0) > 0.05 for r in results)


async def test_all_pairs_of_a_batch_share_one_forward_pass(server, client: AsyncClient) -> None:
    runner = server.runner("tiny-nli")
    with forward_rows(runner.model) as rows:
        await client.classify_zero_shot(TEXTS[:3], LABELS, model="tiny-nli")
    assert rows == [3 * len(LABELS)]

    before = len(runner.batcher.stats.sizes)
    with forward_rows(runner.model) as rows:
        results = await asyncio.gather(
            *(client.classify_zero_shot(f"request {i}", LABELS[:2]) for i in range(16))
        )
    assert all(len(r) == 1 and len(r[0].labels) == 2 for r in results)
    assert sum(rows) == 16 * 2
    sizes = list(runner.batcher.stats.sizes)[before:]
    assert max(sizes) >= 2, f"no forward pass carried two requests: {sizes}"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"inputs": [], "candidate_labels": ["a"]}, "inputs"),
        ({"inputs": ["ok", " "], "candidate_labels": ["a"]}, "inputs[1]"),
        ({"inputs": ["ok"] * 257, "candidate_labels": ["a"]}, "inputs"),
        ({"inputs": ["ok"]}, "candidate_labels"),
        ({"inputs": ["ok"], "candidate_labels": ["a", ""]}, "candidate_labels[1]"),
        ({"inputs": ["ok"], "candidate_labels": ["a"] * 257}, "candidate_labels"),
        # A hypothesis longer than the model's window: only the premise may be cut.
        ({"inputs": ["ok"], "candidate_labels": ["a", "word " * 200]}, "candidate_labels"),
        ({"inputs": ["ok"], "candidate_labels": ["a"], "hypothesis_template": "no slot"}, None),
        ({"inputs": ["ok"], "candidate_labels": ["a"], "hypothesis_template": "{x}"}, None),
        ({"inputs": ["ok"], "candidate_labels": ["a"], "hypothesis_template": ""}, None),
    ],
)
async def test_bad_requests_name_the_field(server, fields: dict, field: str | None) -> None:
    field = field or "hypothesis_template"
    request = pb.ClassifyZeroShotRequest(model="tiny-nli", **fields)
    error = await raw_error(server, "ClassifyZeroShot", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == [field]


@pytest.fixture(scope="module")
def nli_variants(server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """An NLI model whose entailment label comes first, and a classifier that is not NLI."""
    from modelwire_server.preset.text import build_nli

    path = Path(tmp_path_factory.mktemp("nli")) / "entailment-first"
    names = ["entailment", "neutral", "contradiction"]
    build_nli(
        path,
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )
    sentiment = server.runner("tiny-sentiment").config.source
    models = [
        ModelConfig(name="entailment-first", task="zero-shot-classification", source=str(path)),
        ModelConfig(name="not-nli", task="zero-shot-classification", source=sentiment),
    ]
    running = start_server(ServerConfig(port=0, models=models))
    yield running
    running.stop()


async def test_entailment_index_comes_from_the_config(nli_variants: RunningServer) -> None:
    path = nli_variants.runner("entailment-first").config.source
    async with AsyncClient(nli_variants.target, timeout=60) as client:
        for options in ({}, {"multi_label": True}):
            expected = reference(path, TEXTS, LABELS, **options)
            results = await client.classify_zero_shot(TEXTS, LABELS, **options)
            assert_matches(results, expected)
        info = await client.get_model("not-nli")
    assert info.state == "failed"
    assert "entail" in info.failure_message
