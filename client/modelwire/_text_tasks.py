"""AsyncClient methods of the remaining text tasks (zero-shot, fill-mask, NER, QA,
summarization, translation): each a request builder, a result converter and a method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from modelwire import _validation as check
from modelwire._mixin import TaskMethods
from modelwire._tasks import classifications
from modelwire._text_types import (
    AggregationStrategyName,
    Answer,
    Entity,
    FillMaskResult,
    MaskCandidate,
    MaskFill,
)
from modelwire._types import Classification, ResultList
from modelwire.v1 import inference_service_pb2 as pb

if TYPE_CHECKING:
    pass

_AGGREGATIONS: dict[str, pb.AggregationStrategy] = {
    "none": pb.AGGREGATION_STRATEGY_NONE,
    "simple": pb.AGGREGATION_STRATEGY_SIMPLE,
    "first": pb.AGGREGATION_STRATEGY_FIRST,
    "average": pb.AGGREGATION_STRATEGY_AVERAGE,
    "max": pb.AGGREGATION_STRATEGY_MAX,
}


def _text(name: str, value: str) -> str:
    """A non-empty string argument (a question, a context)."""
    if not isinstance(value, str):
        raise ValueError(f"`{name}` must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"`{name}` must not be empty")
    return value


# --- ClassifyZeroShot ---------------------------------------------------------------


def classify_zero_shot_request(
    inputs: str | Sequence[str],
    candidate_labels: str | Sequence[str],
    *,
    model: str | None,
    hypothesis_template: str | None,
    multi_label: bool | None,
) -> pb.ClassifyZeroShotRequest:
    check.boolean("multi_label", multi_label)
    request = pb.ClassifyZeroShotRequest(
        model=check.optional_str("model", model),
        inputs=check.texts("inputs", inputs),
        candidate_labels=check.texts("candidate_labels", candidate_labels),
        multi_label=bool(multi_label),
    )
    if hypothesis_template is not None:
        request.hypothesis_template = check.optional_str("hypothesis_template", hypothesis_template)
    return request


# --- FillMask -----------------------------------------------------------------------


def fill_mask_request(
    inputs: str | Sequence[str],
    *,
    model: str | None,
    top_k: int | None,
    targets: str | Sequence[str] | None,
) -> pb.FillMaskRequest:
    check.integer("top_k", top_k, minimum=1)
    request = pb.FillMaskRequest(
        model=check.optional_str("model", model), inputs=check.texts("inputs", inputs)
    )
    if top_k is not None:
        request.top_k = top_k
    if targets is not None:
        request.targets.extend(check.texts("targets", targets))
    return request


def fill_mask_results(response: pb.FillMaskResponse) -> list[FillMaskResult]:
    return [
        FillMaskResult(
            masks=[
                MaskFill(
                    candidates=[
                        MaskCandidate(c.token_id, c.token, c.sequence, c.score)
                        for c in fill.candidates
                    ]
                )
                for fill in result.masks
            ]
        )
        for result in response.results
    ]


# --- RecognizeEntities --------------------------------------------------------------


def recognize_entities_request(
    inputs: str | Sequence[str],
    *,
    model: str | None,
    aggregation_strategy: AggregationStrategyName | None,
) -> pb.RecognizeEntitiesRequest:
    check.choice("aggregation_strategy", aggregation_strategy, _AGGREGATIONS)
    request = pb.RecognizeEntitiesRequest(
        model=check.optional_str("model", model), inputs=check.texts("inputs", inputs)
    )
    if aggregation_strategy is not None:
        request.aggregation_strategy = _AGGREGATIONS[aggregation_strategy]
    return request


def recognize_entities_results(response: pb.RecognizeEntitiesResponse) -> list[list[Entity]]:
    return [
        [
            Entity(
                label=e.label,
                score=e.score,
                word=e.word,
                start=e.start,
                end=e.end,
                index=e.index if e.HasField("index") else None,
            )
            for e in result.entities
        ]
        for result in response.results
    ]


# --- AnswerQuestion -----------------------------------------------------------------


def answer_question_request(
    question: str,
    context: str,
    *,
    model: str | None,
    top_k: int | None,
    max_answer_length: int | None,
    handle_impossible_answer: bool | None,
    doc_stride: int | None,
) -> pb.AnswerQuestionRequest:
    check.integer("top_k", top_k, minimum=1)
    check.integer("max_answer_length", max_answer_length, minimum=1)
    check.integer("doc_stride", doc_stride, minimum=0)
    check.boolean("handle_impossible_answer", handle_impossible_answer)
    request = pb.AnswerQuestionRequest(
        model=check.optional_str("model", model),
        question=_text("question", question),
        context=_text("context", context),
        handle_impossible_answer=bool(handle_impossible_answer),
    )
    if top_k is not None:
        request.top_k = top_k
    if max_answer_length is not None:
        request.max_answer_length = max_answer_length
    if doc_stride is not None:
        request.doc_stride = doc_stride
    return request


def answer_question_results(response: pb.AnswerQuestionResponse) -> list[Answer]:
    return [Answer(a.text, a.score, a.start, a.end) for a in response.answers]


class TextTaskMethods(TaskMethods):
    """Mixed into AsyncClient."""

    async def classify_zero_shot(
        self,
        inputs: str | Sequence[str],
        candidate_labels: str | Sequence[str],
        *,
        hypothesis_template: str | None = None,
        multi_label: bool | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[Classification]:
        """Score texts against labels chosen now, with an NLI model; one result per input.

        Each result holds every candidate label, best first. ``hypothesis_template`` turns
        a label into the hypothesis (default ``"This example is {}."``); with
        ``multi_label=True`` each label is scored on its own (entailment against
        contradiction) instead of the scores summing to one. A lone string is one label.
        """
        request = classify_zero_shot_request(
            inputs,
            candidate_labels,
            model=model,
            hypothesis_template=hypothesis_template,
            multi_label=multi_label,
        )
        response, rid = await self._unary(
            lambda s: s.inference.ClassifyZeroShot, request, timeout, request_id
        )
        return ResultList(classifications(response.results), request_id=rid)

    async def fill_mask(
        self,
        inputs: str | Sequence[str],
        *,
        top_k: int | None = None,
        targets: str | Sequence[str] | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[FillMaskResult]:
        """Fill the mask token(s) of texts (fill-mask); one result per input.

        Every input must contain the model's mask token (e.g. ``[MASK]``); each mask gets
        ``top_k`` candidates (default 5), restricted to ``targets`` (words that are one
        token of the vocabulary) when given.
        """
        request = fill_mask_request(inputs, model=model, top_k=top_k, targets=targets)
        response, rid = await self._unary(
            lambda s: s.inference.FillMask, request, timeout, request_id
        )
        return ResultList(fill_mask_results(response), request_id=rid)

    async def recognize_entities(
        self,
        inputs: str | Sequence[str],
        *,
        aggregation_strategy: AggregationStrategyName | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[list[Entity]]:
        """Find named entities (ner); one list of entities per input, in text order.

        ``aggregation_strategy`` (default ``"simple"``) says how tokens group into
        entities, as in transformers' NER pipeline. Texts longer than the model's window
        are read whole, in overlapping windows.
        """
        request = recognize_entities_request(
            inputs, model=model, aggregation_strategy=aggregation_strategy
        )
        response, rid = await self._unary(
            lambda s: s.inference.RecognizeEntities, request, timeout, request_id
        )
        return ResultList(recognize_entities_results(response), request_id=rid)

    async def answer_question(
        self,
        question: str,
        context: str,
        *,
        top_k: int | None = None,
        max_answer_length: int | None = None,
        handle_impossible_answer: bool | None = None,
        doc_stride: int | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[Answer]:
        """Extract answers to ``question`` from ``context``, best first (``top_k``, default 1).

        Answers are at most ``max_answer_length`` tokens (default 15). With
        ``handle_impossible_answer=True`` the "no answer" candidate competes too. Long
        contexts are read in windows overlapping by ``doc_stride`` tokens.
        """
        request = answer_question_request(
            question,
            context,
            model=model,
            top_k=top_k,
            max_answer_length=max_answer_length,
            handle_impossible_answer=handle_impossible_answer,
            doc_stride=doc_stride,
        )
        response, rid = await self._unary(
            lambda s: s.inference.AnswerQuestion, request, timeout, request_id
        )
        return ResultList(answer_question_results(response), request_id=rid)
