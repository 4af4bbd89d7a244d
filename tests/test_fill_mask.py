"""FillMask through the SDK, with pipeline("fill-mask") as reference."""

from __future__ import annotations

import asyncio

import pytest
import transformers

from modelwire import AsyncClient, FillMaskResult
from modelwire.v1 import inference_service_pb2 as pb
from tests.forward_rows import forward_rows
from tests.helpers import bad_request_fields, raw_error
from tests.tolerances import TINY_SCORE_ATOL

TEXTS = [
    "Paris is the [MASK] of France.",
    "The cat sat on the [MASK].",
    "I would like a cup of [MASK], please.",
    "[MASK] is a programming language.",
]


def reference(path: str, texts: list[str], **kwargs: object) -> list:
    fill = transformers.pipeline("fill-mask", model=path, device="cpu")
    return [fill(text, **kwargs) for text in texts]


def assert_fill_matches(fill: object, expected: list[dict]) -> None:
    got = [(c.token_id, c.token, c.sequence) for c in fill.candidates]  # type: ignore[attr-defined]
    assert got == [(e["token"], e["token_str"], e["sequence"]) for e in expected]
    for candidate, e in zip(fill.candidates, expected, strict=True):  # type: ignore[attr-defined]
        assert candidate.score == pytest.approx(e["score"], abs=TINY_SCORE_ATOL)


@pytest.mark.parametrize("options", [{}, {"top_k": 3}, {"targets": ["the", "is", "and", "cat"]}])
async def test_single_masks_match_the_pipeline(server, client: AsyncClient, options: dict) -> None:
    path = server.runner("tiny-fill-mask").config.source
    expected = reference(path, TEXTS, **options)
    results = await client.fill_mask(TEXTS, model="tiny-fill-mask", **options)
    assert len(results) == len(TEXTS)
    for result, ref in zip(results, expected, strict=True):
        assert len(result.masks) == 1
        assert_fill_matches(result.masks[0], ref)
    # The tiny model reacts to its input: the best fill's probability moves across texts.
    top_scores = [r.masks[0].top.score for r in results]
    assert max(top_scores) - min(top_scores) >= 1e-3


async def test_every_mask_of_an_input_gets_its_own_candidates(server, client: AsyncClient) -> None:
    path = server.runner("tiny-fill-mask").config.source
    text = "The [MASK] sat on the [MASK] near [MASK]."
    [expected] = reference(path, [text], top_k=4)
    [result] = await client.fill_mask(text, top_k=4)  # the default fill-mask model
    assert len(result.masks) == 3
    for fill, ref in zip(result.masks, expected, strict=True):
        assert_fill_matches(fill, ref)
    # Each mask position has its own distribution.
    assert len({tuple(c.token_id for c in fill.candidates) for fill in result.masks}) >= 2


async def test_top_k_defaults_to_five_and_caps_at_the_targets(client: AsyncClient) -> None:
    [default] = await client.fill_mask(TEXTS[0])
    assert len(default.masks[0].candidates) == 5
    [capped] = await client.fill_mask(TEXTS[0], top_k=10, targets=["the", "cat", "the"])
    assert sorted(c.token for c in capped.masks[0].candidates) == ["cat", "the"]


async def test_inputs_share_forward_passes(server, client: AsyncClient) -> None:
    runner = server.runner("tiny-fill-mask")
    before = len(runner.batcher.stats.sizes)
    with forward_rows(runner.model) as rows:
        results: list[list[FillMaskResult]] = await asyncio.gather(
            *(client.fill_mask(f"request {i} is [MASK].", top_k=1) for i in range(16))
        )
    assert all(len(r) == 1 and len(r[0].masks) == 1 for r in results)
    assert sum(rows) == 16
    sizes = list(runner.batcher.stats.sizes)[before:]
    assert max(sizes) >= 2, f"no forward pass carried two requests: {sizes}"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": ["a [MASK]", ""]}, "inputs[1]"),
        ({"inputs": ["a [MASK]"] * 257}, "inputs"),
        ({"inputs": ["a [MASK]", "no mask at all"]}, "inputs[1]"),
        ({"inputs": ["[MASK] " + "word " * 200]}, "inputs[0]"),
        ({"inputs": ["a [MASK]"], "top_k": 0}, "top_k"),
        ({"inputs": ["a [MASK]"], "targets": ["the", ""]}, "targets[1]"),
        ({"inputs": ["a [MASK]"], "targets": ["the", "unbelievably long phrase"]}, "targets[1]"),
    ],
)
async def test_bad_requests_name_the_field(server, fields: dict, field: str) -> None:
    error = await raw_error(
        server, "FillMask", pb.FillMaskRequest(model="tiny-fill-mask", **fields)
    )
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == [field]
    if fields["inputs"] and "no mask" in fields["inputs"][-1]:
        assert "[MASK]" in error.details()
