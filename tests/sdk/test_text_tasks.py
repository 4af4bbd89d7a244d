"""The zero-shot, fill-mask, NER and QA methods against fakes: wire requests, typed results,
and argument checks that fail before anything is sent."""

from __future__ import annotations

from typing import Any

import pytest

from modelwire import (
    Answer,
    AsyncClient,
    BadRequestError,
    Classification,
    Entity,
    FillMaskResult,
    LabelScore,
    MaskCandidate,
    MaskFill,
)
from modelwire.v1 import common_pb2
from modelwire.v1 import inference_service_pb2 as pb
from tests.sdk.fakes import Fakes, rich_status


async def test_classify_zero_shot(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.responses["ClassifyZeroShot"] = pb.ClassifyZeroShotResponse(
        results=[
            common_pb2.Classification(
                labels=[
                    common_pb2.LabelScore(label="sports", score=0.75),
                    common_pb2.LabelScore(label="money", score=0.25),
                ]
            )
        ]
    )

    results = await client.classify_zero_shot("I like football", ["sports", "money"])
    await client.classify_zero_shot(
        ["a", "b"], "one label", hypothesis_template="About {}.", multi_label=True, model="nli"
    )

    assert results == [Classification([LabelScore("sports", 0.75), LabelScore("money", 0.25)])]
    assert results.request_id == fakes.recorder.calls[0].metadata["x-request-id"]
    bare, full = fakes.recorder.requests("ClassifyZeroShot")
    assert list(bare.inputs) == ["I like football"]
    assert list(bare.candidate_labels) == ["sports", "money"]
    assert not bare.HasField("hypothesis_template") and not bare.multi_label
    assert list(full.candidate_labels) == ["one label"]
    assert full.hypothesis_template == "About {}."
    assert full.multi_label and full.model == "nli"


async def test_fill_mask(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.responses["FillMask"] = pb.FillMaskResponse(
        results=[
            pb.FillMaskResult(
                masks=[
                    pb.MaskFill(
                        candidates=[
                            pb.MaskCandidate(
                                token_id=7, token="capital", sequence="the capital.", score=0.5
                            ),
                            pb.MaskCandidate(
                                token_id=9, token="city", sequence="the city.", score=0.25
                            ),
                        ]
                    ),
                    pb.MaskFill(),
                ]
            )
        ]
    )

    [result] = await client.fill_mask("the [MASK]. [MASK]", top_k=2, targets=["capital", "city"])
    await client.fill_mask(["x [MASK]"])

    assert result == FillMaskResult(
        masks=[
            MaskFill(
                [
                    MaskCandidate(7, "capital", "the capital.", 0.5),
                    MaskCandidate(9, "city", "the city.", 0.25),
                ]
            ),
            MaskFill([]),
        ]
    )
    assert result.masks[0].top.token == "capital"
    full, bare = fakes.recorder.requests("FillMask")
    assert full.top_k == 2 and list(full.targets) == ["capital", "city"]
    assert not bare.HasField("top_k") and list(bare.targets) == []


async def test_recognize_entities(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.responses["RecognizeEntities"] = pb.RecognizeEntitiesResponse(
        results=[
            pb.EntityList(
                entities=[
                    pb.Entity(label="B-PER", score=0.9, word="john", start=0, end=4, index=1),
                    pb.Entity(label="LOC", score=0.5, word="paris", start=14, end=19),
                ]
            ),
            pb.EntityList(),
        ]
    )

    results = await client.recognize_entities(["John lives in Paris", "nothing"])
    await client.recognize_entities("x", aggregation_strategy="none")

    assert results == [
        [
            Entity("B-PER", pytest.approx(0.9), "john", 0, 4, index=1),
            Entity("LOC", 0.5, "paris", 14, 19, index=None),
        ],
        [],
    ]
    default, none = fakes.recorder.requests("RecognizeEntities")
    # Unset stays unset: the server's default (SIMPLE) applies.
    assert default.aggregation_strategy == pb.AGGREGATION_STRATEGY_UNSPECIFIED
    assert none.aggregation_strategy == pb.AGGREGATION_STRATEGY_NONE


async def test_answer_question(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.responses["AnswerQuestion"] = pb.AnswerQuestionResponse(
        answers=[
            pb.Answer(text="", score=0.5, start=0, end=0),
            pb.Answer(text="Paris", score=0.25, start=14, end=19),
        ]
    )

    answers = await client.answer_question(
        "Where?", "John lives in Paris", top_k=2, handle_impossible_answer=True, doc_stride=0
    )
    await client.answer_question("Where?", "John lives in Paris")

    assert answers == [Answer("", 0.5, 0, 0), Answer("Paris", 0.25, 14, 19)]
    assert answers[0].is_impossible and not answers[1].is_impossible
    assert answers.request_id
    full, bare = fakes.recorder.requests("AnswerQuestion")
    assert (full.question, full.context) == ("Where?", "John lives in Paris")
    assert full.top_k == 2 and full.handle_impossible_answer
    # doc_stride 0 (windows that do not overlap) differs from unset (the server's default).
    assert full.HasField("doc_stride") and full.doc_stride == 0
    for name in ("top_k", "max_answer_length", "doc_stride"):
        assert not bare.HasField(name)
    assert not bare.handle_impossible_answer


async def test_server_field_violations_reach_the_caller(client: AsyncClient, fakes: Fakes) -> None:
    from google.rpc import error_details_pb2
    from grpc import StatusCode

    violation = error_details_pb2.BadRequest.FieldViolation(
        field="inputs[0]", description="contains no [MASK] token"
    )
    fakes.recorder.failures.append(
        rich_status(
            StatusCode.INVALID_ARGUMENT,
            "inputs[0]: contains no [MASK] token",
            error_details_pb2.BadRequest(field_violations=[violation]),
        )
    )
    with pytest.raises(BadRequestError) as caught:
        await client.fill_mask("no mask here")
    assert caught.value.field_violations[0].field == "inputs[0]"


BAD_ARGUMENTS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("classify_zero_shot", ([], ["a"]), {}, "inputs"),
    ("classify_zero_shot", (["x"], []), {}, "candidate_labels"),
    ("classify_zero_shot", (["x"], [3]), {}, r"candidate_labels\[0\]"),
    ("classify_zero_shot", (["x"], ["a"]), {"hypothesis_template": 1}, "hypothesis_template"),
    ("classify_zero_shot", (["x"], ["a"]), {"multi_label": "yes"}, "multi_label"),
    ("fill_mask", ("[MASK]",), {"top_k": 0}, "top_k"),
    ("fill_mask", ("[MASK]",), {"targets": []}, "targets"),
    ("fill_mask", ("[MASK]",), {"targets": [b"x"]}, r"targets\[0\]"),
    ("recognize_entities", ([],), {}, "inputs"),
    ("recognize_entities", ("x",), {"aggregation_strategy": "mean"}, "aggregation_strategy"),
    ("answer_question", ("", "ctx"), {}, "question"),
    ("answer_question", ("q", "  "), {}, "context"),
    ("answer_question", ("q", None), {}, "context"),
    ("answer_question", ("q", "ctx"), {"top_k": 0}, "top_k"),
    ("answer_question", ("q", "ctx"), {"max_answer_length": 0}, "max_answer_length"),
    ("answer_question", ("q", "ctx"), {"doc_stride": -1}, "doc_stride"),
    ("answer_question", ("q", "ctx"), {"handle_impossible_answer": 1}, "handle_impossible_answer"),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "name"), BAD_ARGUMENTS)
async def test_bad_arguments_fail_before_sending(
    client: AsyncClient,
    fakes: Fakes,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: str,
) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        await getattr(client, method)(*args, **kwargs)
    assert fakes.recorder.calls == []
