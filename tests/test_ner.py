"""RecognizeEntities through the SDK: pipeline("ner") parity for every aggregation strategy
on short texts, and long texts read whole in windows (the pipeline would cut them)."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import torch
import transformers
from transformers import AutoModelForTokenClassification, AutoTokenizer

from modelwire import AsyncClient, Entity
from modelwire.v1 import inference_service_pb2 as pb
from tests.forward_rows import forward_rows
from tests.helpers import bad_request_fields, raw_error
from tests.tolerances import TINY_SCORE_ATOL

TEXTS = [
    "John Smithson works at Acme Corporation in Paris, unbelievably.",
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
    "Ärger über Zürich — naïve café ☕ and zzzqqq",
    "hello",
]
STRATEGIES = ["none", "simple", "first", "average", "max"]
LONG_TEXT = " ".join(
    f"{name} visited {city} with the {org} team in {month}."
    for name, city, org, month in zip(
        ["Maria", "Omar", "Chen", "Ingrid", "Pablo", "Aiko", "Sven", "Lena"] * 4,
        ["Berlin", "Cairo", "Lyon", "Oslo", "Lima", "Kyoto", "Riga", "Quito"] * 4,
        ["Siemens", "Nokia", "Airbus", "Lego", "Bayer", "Sony", "Volvo", "Ikea"] * 4,
        ["May", "June", "July", "March", "April", "October", "August", "January"] * 4,
        strict=True,
    )
)


def reference(path: str, text: str, strategy: str) -> list[tuple]:
    ner = transformers.pipeline("ner", model=path, device="cpu")
    key = "entity" if strategy == "none" else "entity_group"
    return [
        (e[key], float(e["score"]), e["word"], e["start"], e["end"], e.get("index"))
        for e in ner(text, aggregation_strategy=strategy)
    ]


def as_tuples(entities: list[Entity]) -> list[tuple]:
    return [(e.label, e.score, e.word, e.start, e.end, e.index) for e in entities]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_short_texts_match_the_pipeline(server, client: AsyncClient, strategy: str) -> None:
    path = server.runner("tiny-ner").config.source
    results = await client.recognize_entities(
        TEXTS, model="tiny-ner", aggregation_strategy=strategy
    )
    assert len(results) == len(TEXTS)
    for text, entities in zip(TEXTS, results, strict=True):
        expected = reference(path, text, strategy)
        got = as_tuples(entities)
        assert [g[:1] + g[2:] for g in got] == [e[:1] + e[2:] for e in expected]
        assert [g[1] for g in got] == pytest.approx([e[1] for e in expected], abs=TINY_SCORE_ATOL)
    # The tiny model reacts to its input: different texts, different entities.
    assert len({tuple(e.label for e in r) for r in results[:3]}) == 3


async def test_default_strategy_is_simple(client: AsyncClient) -> None:
    default = await client.recognize_entities(TEXTS[:2])
    simple = await client.recognize_entities(TEXTS[:2], aggregation_strategy="simple")
    assert default == simple
    assert all(e.index is None for r in default for e in r)


def window_predictions(path: str, text: str, width: int) -> dict[int, set[tuple[str, float]]]:
    """Token index → the (label, score) the model gives it in each full window holding it."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(path).eval()
    ids = tokenizer(text)["input_ids"]
    cls, content, sep = ids[:1], ids[1:-1], ids[-1:]
    rows = [cls + content[s : s + width] + sep for s in range(len(content) - width + 1)]
    with torch.inference_mode():
        probs = model(input_ids=torch.tensor(rows)).logits.softmax(-1)
    seen: dict[int, set[tuple[str, float]]] = {}
    for start, row in enumerate(probs):
        for offset in range(width):
            score, label = row[1 + offset].max(-1)
            seen.setdefault(1 + start + offset, set()).add(
                (model.config.id2label[int(label)], round(float(score), 5))
            )
    return seen


async def test_long_text_is_read_whole_in_windows(server, client: AsyncClient) -> None:
    runner = server.runner("tiny-ner")
    path, limit = runner.config.source, runner.context_length
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoding = tokenizer(LONG_TEXT, return_offsets_mapping=True)
    assert len(encoding["input_ids"]) > 4 * limit  # the pipeline would cut this text

    [entities] = await client.recognize_entities(LONG_TEXT, aggregation_strategy="none")

    # Nothing was cut: entities reach the text's last tokens.
    last_window_start = encoding["offset_mapping"][-limit][0]
    assert max(e.end for e in entities) > last_window_start
    indices = [e.index for e in entities]
    assert indices == sorted(set(indices)), "a token was reported twice"
    # Each index is the token's place in the whole text's encoding.
    for e in entities:
        assert tuple(encoding["offset_mapping"][e.index]) == (e.start, e.end)
    # Every token's prediction (or its absence: "O") is the model's in some window of
    # full width that holds the token: merged, not invented.
    seen = window_predictions(path, LONG_TEXT, limit - 2)
    reported = {e.index: (e.label, round(e.score, 5)) for e in entities}
    for index, options in seen.items():
        if index in reported:
            assert reported[index] in options, index
        else:
            assert any(label == "O" for label, _ in options), index


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
async def test_long_text_groups_across_windows(client: AsyncClient, strategy: str) -> None:
    [entities] = await client.recognize_entities(LONG_TEXT, aggregation_strategy=strategy)
    assert entities
    ends = [(e.start, e.end) for e in entities]
    # In text order, never overlapping: one merged token sequence was grouped once.
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends))
    assert ends[-1][1] > len(LONG_TEXT) * 3 // 4
    if strategy != "simple":
        text = f" {LONG_TEXT} "  # padded, so both neighbours of any span exist
        for e in entities:  # word-level strategies never cut a word
            start, end = e.start + 1, e.end + 1
            assert not (text[start - 1].isalnum() and text[start].isalnum()), e
            assert not (text[end - 1].isalnum() and text[end].isalnum()), e


async def test_windows_of_all_inputs_share_forward_passes(server, client: AsyncClient) -> None:
    runner = server.runner("tiny-ner")
    with forward_rows(runner.model) as rows:
        await client.recognize_entities([TEXTS[0], LONG_TEXT, TEXTS[1]])
    assert len(rows) == 1 and rows[0] > 3  # the long text's windows and both short texts

    before = len(runner.batcher.stats.sizes)
    with forward_rows(runner.model) as rows:
        results = await asyncio.gather(
            *(client.recognize_entities(f"Request {i} from Anna in Rome") for i in range(16))
        )
    assert len(results) == 16 and sum(rows) == 16
    sizes = list(runner.batcher.stats.sizes)[before:]
    assert max(sizes) >= 2, f"no forward pass carried two requests: {sizes}"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": ["ok", "\n"]}, "inputs[1]"),
        ({"inputs": ["ok"] * 257}, "inputs"),
        ({"inputs": ["x" * 100_001]}, "inputs[0]"),
        ({"inputs": ["ok"], "aggregation_strategy": 42}, "aggregation_strategy"),
    ],
)
async def test_bad_requests_name_the_field(server, fields: dict, field: str) -> None:
    request = pb.RecognizeEntitiesRequest(model="tiny-ner", **fields)
    error = await raw_error(server, "RecognizeEntities", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == [field]


def test_windows_overlap_and_each_token_takes_its_most_central_window() -> None:
    from modelwire_server.tasks import windows
    from modelwire_server.tasks.rows import Row

    layout = windows.Layout(prefix=1, suffix=1)
    ids = [101, *range(20), 102]  # [CLS], 20 content tokens, [SEP]
    split = windows.split(Row(ids), layout, max_length=10)
    # 8 content tokens per window, a quarter (2) of overlap, the last window flush with the end.
    assert [(w.start, w.length) for w in split] == [(0, 8), (6, 8), (12, 8)]
    assert split[1].row.input_ids == [101, *range(6, 14), 102]
    # Each window's output says which window it is; the merge shows who owns each token.
    outputs = [torch.full((10, 1), float(k)) for k in range(len(split))]
    owner = windows.merge(split, outputs, layout)[:, 0].tolist()
    content_owner = owner[1:-1]
    # Tokens 6, 7 sit in windows 0 and 1: 6 is nearer the middle of window 0, 7 of window 1.
    assert content_owner == [0] * 7 + [1] * 6 + [2] * 7
    assert windows.split(Row(ids[:10]), layout, max_length=10)[0].row.input_ids == ids[:10]
