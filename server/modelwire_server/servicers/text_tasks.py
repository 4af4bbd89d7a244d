"""The one-shot text RPCs: ClassifyText, ClassifyZeroShot, FillMask, RecognizeEntities,
AnswerQuestion, Embed."""

from __future__ import annotations

import grpc

from modelwire.v1 import inference_service_pb2 as pb
from modelwire_server.servicers.common import (
    RpcGroup,
    classification,
    deadline_of,
    enum_value,
    optional,
)
from modelwire_server.tasks.embedding import EmbeddingTask
from modelwire_server.tasks.entity_grouping import Entity
from modelwire_server.tasks.fill_mask import FillMaskTask, MaskFills
from modelwire_server.tasks.ner import NerTask
from modelwire_server.tasks.question_answering import QuestionAnsweringTask
from modelwire_server.tasks.text_classification import TextClassificationTask
from modelwire_server.tasks.zero_shot import ZeroShotTask

_SCORE_FUNCTIONS = {
    pb.SCORE_FUNCTION_UNSPECIFIED: "default",
    pb.SCORE_FUNCTION_SOFTMAX: "softmax",
    pb.SCORE_FUNCTION_SIGMOID: "sigmoid",
    pb.SCORE_FUNCTION_NONE: "none",
}
_POOLINGS = {
    pb.POOLING_UNSPECIFIED: "default",
    pb.POOLING_MEAN: "mean",
    pb.POOLING_CLS: "cls",
    pb.POOLING_NONE: "none",
}
_AGGREGATIONS = {
    pb.AGGREGATION_STRATEGY_UNSPECIFIED: "simple",
    pb.AGGREGATION_STRATEGY_NONE: "none",
    pb.AGGREGATION_STRATEGY_SIMPLE: "simple",
    pb.AGGREGATION_STRATEGY_FIRST: "first",
    pb.AGGREGATION_STRATEGY_AVERAGE: "average",
    pb.AGGREGATION_STRATEGY_MAX: "max",
}


class TextTaskRpcs(RpcGroup):
    async def ClassifyText(
        self, request: pb.ClassifyTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyTextResponse:
        runner = self.runner("ClassifyText", request.model, TextClassificationTask)
        top_k = optional(request, "top_k")
        function = enum_value(_SCORE_FUNCTIONS, request.function_to_apply, "function_to_apply")
        results = await runner.classify(
            list(request.inputs),
            1 if top_k is None else top_k,
            function,  # type: ignore[arg-type]
            deadline=deadline_of(context),
        )
        return pb.ClassifyTextResponse(results=[classification(r) for r in results])

    async def ClassifyZeroShot(
        self, request: pb.ClassifyZeroShotRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyZeroShotResponse:
        runner = self.runner("ClassifyZeroShot", request.model, ZeroShotTask)
        results = await runner.classify(
            list(request.inputs),
            list(request.candidate_labels),
            optional(request, "hypothesis_template"),
            request.multi_label,
            deadline=deadline_of(context),
        )
        return pb.ClassifyZeroShotResponse(results=[classification(r) for r in results])

    async def FillMask(
        self, request: pb.FillMaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.FillMaskResponse:
        runner = self.runner("FillMask", request.model, FillMaskTask)
        results = await runner.fill(
            list(request.inputs),
            optional(request, "top_k"),
            list(request.targets),
            deadline=deadline_of(context),
        )
        return pb.FillMaskResponse(results=[_fill_mask_result(r) for r in results])

    async def RecognizeEntities(
        self, request: pb.RecognizeEntitiesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecognizeEntitiesResponse:
        runner = self.runner("RecognizeEntities", request.model, NerTask)
        strategy = enum_value(_AGGREGATIONS, request.aggregation_strategy, "aggregation_strategy")
        results = await runner.recognize(
            list(request.inputs),
            strategy,  # type: ignore[arg-type]
            deadline=deadline_of(context),
        )
        return pb.RecognizeEntitiesResponse(
            results=[pb.EntityList(entities=[_entity(e) for e in r]) for r in results]
        )

    async def AnswerQuestion(
        self, request: pb.AnswerQuestionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AnswerQuestionResponse:
        runner = self.runner("AnswerQuestion", request.model, QuestionAnsweringTask)
        answers = await runner.answer(
            request.question,
            request.context,
            top_k=optional(request, "top_k"),
            max_answer_length=optional(request, "max_answer_length"),
            handle_impossible_answer=request.handle_impossible_answer,
            doc_stride=optional(request, "doc_stride"),
            deadline=deadline_of(context),
        )
        return pb.AnswerQuestionResponse(
            answers=[
                pb.Answer(text=a.text, score=a.score, start=a.start, end=a.end) for a in answers
            ]
        )

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        runner = self.runner("Embed", request.model, EmbeddingTask)
        pooling = enum_value(_POOLINGS, request.pooling, "pooling")
        results = await runner.embed(
            list(request.inputs),
            pooling,  # type: ignore[arg-type]
            optional(request, "normalize"),
            bool(optional(request, "truncate")),
            deadline=deadline_of(context),
        )
        return pb.EmbedResponse(
            embeddings=[
                pb.Embedding(
                    values=r.values,
                    token_vectors=[pb.Vector(values=v) for v in r.token_vectors],
                    token_count=r.token_count,
                    truncated=r.truncated,
                )
                for r in results
            ]
        )


def _fill_mask_result(fills: MaskFills) -> pb.FillMaskResult:
    return pb.FillMaskResult(
        masks=[
            pb.MaskFill(
                candidates=[
                    pb.MaskCandidate(
                        token_id=c.token_id, token=c.token, sequence=c.sequence, score=c.score
                    )
                    for c in candidates
                ]
            )
            for candidates in fills
        ]
    )


def _entity(entity: Entity) -> pb.Entity:
    message = pb.Entity(
        label=entity.label,
        score=entity.score,
        word=entity.word,
        start=entity.start,
        end=entity.end,
    )
    if entity.index is not None:
        message.index = entity.index
    return message
