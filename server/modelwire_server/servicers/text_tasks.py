"""The one-shot text RPCs: ClassifyText, Embed (and the other text tasks as they land)."""

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
from modelwire_server.tasks.text_classification import TextClassificationTask

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
