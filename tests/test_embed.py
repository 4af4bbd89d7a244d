"""Embed through the SDK: pooling, normalisation and truncation against AutoModel."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from modelwire import AsyncClient, BadRequestError
from modelwire.v1 import inference_service_pb2 as pb
from tests.helpers import bad_request_fields, raw_error
from tests.tolerances import TINY_UNIT_ATOL

TEXTS = ["a small red fox", "quarterly earnings rose sharply", "the fox is small and red"]


def reference_hidden(path: str, texts: list[str]) -> list[torch.Tensor]:
    """Each text's token embeddings from AutoModel, one text at a time (no padding)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt")
            out.append(model(**encoded).last_hidden_state[0])
    return out


def close(a: list[float], b: torch.Tensor, tol: float = TINY_UNIT_ATOL) -> bool:
    return torch.allclose(torch.tensor(a), b, atol=tol)


async def test_mean_cls_and_token_pooling_match_automodel(server, client: AsyncClient) -> None:
    path = server.runner("tiny-embed").config.source
    hidden = reference_hidden(path, TEXTS)
    mean = await client.embed(TEXTS, model="tiny-embed", pooling="mean", normalize=False)
    cls = await client.embed(TEXTS, model="tiny-embed", pooling="cls", normalize=False)
    tokens = await client.embed(TEXTS, model="tiny-embed", pooling="none", normalize=False)
    for i, h in enumerate(hidden):
        assert close(mean[i].values, h.mean(dim=0))
        assert close(cls[i].values, h[0])
        assert len(tokens[i].token_vectors) == h.shape[0] == tokens[i].token_count
        assert all(close(v, h[j]) for j, v in enumerate(tokens[i].token_vectors))
        assert tokens[i].values == []
    # The model reacts to its input: different texts, different vectors.
    diff = torch.tensor(mean[0].values) - torch.tensor(mean[1].values)
    assert diff.abs().max() >= 0.05


async def test_default_pooling_follows_the_sentence_transformers_config(
    client: AsyncClient,
) -> None:
    default = await client.embed(TEXTS, model="tiny-embed")
    mean = await client.embed(TEXTS, model="tiny-embed", pooling="mean")
    assert [d.values for d in default] == [m.values for m in mean]


async def test_normalize_gives_unit_vectors(client: AsyncClient) -> None:
    raw = await client.embed(TEXTS[0], model="tiny-embed", normalize=False)
    unit = await client.embed(TEXTS[0], model="tiny-embed", normalize=True)
    norm = math.sqrt(sum(x * x for x in raw[0].values))
    assert norm != pytest.approx(1.0, abs=1e-3)
    assert math.sqrt(sum(x * x for x in unit[0].values)) == pytest.approx(1.0, abs=1e-5)
    assert unit[0].values == pytest.approx([x / norm for x in raw[0].values], abs=1e-5)


async def test_long_input_is_refused_unless_truncate(server, client: AsyncClient) -> None:
    limit = server.runner("tiny-embed").context_length
    long_text = " ".join(["fox"] * (limit * 2))
    with pytest.raises(BadRequestError) as refused:
        await client.embed(["short", long_text], model="tiny-embed")
    assert refused.value.field_violations[0].field == "inputs[1]"
    assert str(limit) in str(refused.value)
    short, cut = await client.embed(["short", long_text], model="tiny-embed", truncate=True)
    assert cut.truncated and cut.token_count == limit
    assert not short.truncated


async def test_raw_request_with_no_inputs_is_refused(server) -> None:
    error = await raw_error(server, "Embed", pb.EmbedRequest(model="tiny-embed"))
    assert bad_request_fields(error) == ["inputs"]


async def test_real_minilm_matches_sentence_transformers_pooling(
    server, client: AsyncClient
) -> None:
    """all-MiniLM-L6-v2 with real weights: mean pooling + L2 norm, as sentence-transformers."""
    path = server.runner("minilm").config.source
    sentences = [
        "A man is playing a guitar.",
        "Someone is playing an acoustic guitar.",
        "The stock market fell sharply on Monday.",
        "A chef is cooking pasta in the kitchen.",
        "Somebody prepares spaghetti at the stove.",
    ]
    got = await client.embed(sentences, model="minilm")  # defaults from its own config
    for vector, h in zip(got, reference_hidden(path, sentences), strict=True):
        expected = torch.nn.functional.normalize(h.mean(dim=0), dim=-1)
        assert close(vector.values, expected)

    def cos(a: int, b: int) -> float:
        return sum(x * y for x, y in zip(got[a].values, got[b].values, strict=True))

    assert cos(0, 1) > cos(0, 2) + 0.2 and cos(0, 1) > cos(0, 3)
    assert cos(3, 4) > cos(3, 2) + 0.2 and cos(3, 4) > cos(3, 0)


async def test_per_token_vectors_are_counted_before_the_work(server) -> None:
    """256 texts of 256 tokens as per-token MiniLM vectors are 25 M floats (about 1 GB
    as Python floats, then past the message limit): refused, naming pooling."""
    from modelwire_server.tasks.embedding import MAX_TOKEN_FLOATS

    text = "the quick brown fox jumps over the lazy dog " * 40
    request = pb.EmbedRequest(
        model="minilm", inputs=[text] * 256, pooling=pb.POOLING_NONE, truncate=True
    )
    error = await raw_error(server, "Embed", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["pooling"]
    assert f"the limit is {MAX_TOKEN_FLOATS}" in error.details()


async def test_per_token_vectors_within_the_limit_are_served(client: AsyncClient) -> None:
    [result] = await client.embed("a small red fox", model="minilm", pooling="none")
    assert len(result.token_vectors) == result.token_count > 0
