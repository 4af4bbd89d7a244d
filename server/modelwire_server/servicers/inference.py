"""InferenceService: turns requests into runner calls and results into responses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar, cast

import grpc
from modelwire.v1 import common_pb2, generate_pb2
from modelwire.v1 import inference_service_pb2 as pb
from modelwire.v1 import inference_service_pb2_grpc as pb_grpc

from modelwire_server.errors import InvalidArgument
from modelwire_server.interceptors import current_request_id
from modelwire_server.registry import Registry
from modelwire_server.servicers import generation
from modelwire_server.tasks.base import TaskRunner
from modelwire_server.tasks.embedding import EmbeddingTask
from modelwire_server.tasks.text_classification import TextClassificationTask
from modelwire_server.tasks.text_generation import TextGenerationTask

R = TypeVar("R", bound=TaskRunner)

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


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a time.monotonic() instant, if the client set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def optional(message: Any, name: str) -> Any | None:
    return getattr(message, name) if message.HasField(name) else None


def enum_value(table: dict[int, str], value: int, field: str) -> str:
    if value not in table:
        raise InvalidArgument(field, f"unknown value {value}")
    return table[value]


def classification(labels: list[tuple[str, float]]) -> common_pb2.Classification:
    return common_pb2.Classification(
        labels=[common_pb2.LabelScore(label=label, score=score) for label, score in labels]
    )


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """One method per RPC; the registry picks the runner."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _runner(self, rpc: str, model: str, kind: type[R]) -> R:
        return cast(R, self.registry.runner_for(rpc, model))

    async def ClassifyText(
        self, request: pb.ClassifyTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyTextResponse:
        runner = self._runner("ClassifyText", request.model, TextClassificationTask)
        top_k = optional(request, "top_k")
        function = enum_value(_SCORE_FUNCTIONS, request.function_to_apply, "function_to_apply")
        results = await runner.classify(
            list(request.inputs),
            1 if top_k is None else top_k,
            function,  # type: ignore[arg-type]
        )
        return pb.ClassifyTextResponse(results=[classification(r) for r in results])

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        runner = self._runner("Embed", request.model, EmbeddingTask)
        pooling = enum_value(_POOLINGS, request.pooling, "pooling")
        results = await runner.embed(
            list(request.inputs),
            pooling,  # type: ignore[arg-type]
            optional(request, "normalize"),
            bool(optional(request, "truncate")),
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

    async def Generate(
        self, request: generate_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generate_pb2.GenerateResponse]:
        runner = self._runner("Generate", request.model, TextGenerationTask)
        async for message in generation.generate(
            runner, request, context, current_request_id.get()
        ):
            yield message

    async def Tokenize(
        self, request: generate_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> generate_pb2.TokenizeResponse:
        runner = self._runner("Tokenize", request.model, TextGenerationTask)
        return await asyncio.to_thread(generation.tokenize_pb, runner, request)


def _not_yet(rpc: str) -> Any:
    """A method for an RPC whose task is not built yet: the registry answers for it."""

    async def method(self: InferenceServicer, request: Any, context: Any) -> Any:
        self.registry.runner_for(rpc, request.model)
        raise AssertionError(f"{rpc}: a model was found but no handler exists")

    method.__name__ = rpc
    return method


for _rpc in (
    "ClassifyZeroShot", "FillMask", "RecognizeEntities", "AnswerQuestion",
    "Summarize", "Translate", "ClassifyImage", "DetectObjects", "CaptionImage",
    "TranscribeAudio", "ClassifyAudio", "SynthesizeSpeech",
):  # fmt: skip
    if _rpc not in InferenceServicer.__dict__:
        setattr(InferenceServicer, _rpc, _not_yet(_rpc))
