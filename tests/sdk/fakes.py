"""Fake servicers for the SDK's unit tests, served in process by conftest.py.

The fakes record every request and its metadata, answer with canned responses, and
can be told to fail the next calls with a (rich) status. They never send anything
before failing, so a failure is "not processed" in gRPC's eyes and may be retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from grpc_health.v1._async import HealthServicer
from grpc_status import rpc_status

from modelwire.v1 import (
    generate_pb2,
    inference_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
)


def rich_status(code: grpc.StatusCode, message: str, *details: Message) -> grpc.Status:
    """A status with google.rpc details, as a server would abort with."""
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)


def plain_status(code: grpc.StatusCode, message: str = "failed") -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message))


@dataclass
class Call:
    """One call a fake received."""

    rpc: str
    request: Any
    metadata: dict[str, str]


@dataclass
class Recorder:
    """What the fakes share: the calls seen, failures to come, request ids to echo."""

    calls: list[Call] = field(default_factory=list)
    failures: list[grpc.Status] = field(default_factory=list)
    echo_request_id: str | None = None  # None: echo the client's, as the contract says
    hold: bool = False  # unary calls wait until the client gives up
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def requests(self, rpc: str) -> list[Any]:
        return [c.request for c in self.calls if c.rpc == rpc]

    async def enter(self, rpc: str, request: Any, context: grpc.aio.ServicerContext) -> str:
        """Record the call; abort it if a failure is queued; return the id to echo."""
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.calls.append(Call(rpc, request, metadata))
        request_id = self.echo_request_id or metadata.get("x-request-id", "")
        if self.failures:
            status = self.failures.pop(0)
            trailers = (*status.trailing_metadata, ("x-request-id", request_id))
            await context.abort(status.code, status.details, trailing_metadata=trailers)
        await context.send_initial_metadata((("x-request-id", request_id),))
        return request_id

    async def wait_for_cancellation(self) -> None:
        """Block until the client cancels the call (or its deadline passes)."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class FakeInference(inference_service_pb2_grpc.InferenceServiceServicer):
    """Answers each unary RPC with ``responses[rpc]``; Generate streams ``stream``."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.responses: dict[str, Message] = {}
        self.stream: list[generate_pb2.GenerateResponse] = []
        self.stream_error: grpc.Status | None = None  # raised after `stream` is sent
        self.hold_stream = False  # after `stream`, wait until the client cancels

    async def _unary(self, rpc: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.recorder.enter(rpc, request, context)
        if self.recorder.hold:
            await self.recorder.wait_for_cancellation()
        return self.responses[rpc]

    async def ClassifyText(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("ClassifyText", request, context)

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("Embed", request, context)

    async def Tokenize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("Tokenize", request, context)

    async def ClassifyZeroShot(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("ClassifyZeroShot", request, context)

    async def FillMask(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("FillMask", request, context)

    async def RecognizeEntities(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("RecognizeEntities", request, context)

    async def AnswerQuestion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("AnswerQuestion", request, context)

    async def Generate(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generate_pb2.GenerateResponse]:
        await self.recorder.enter("Generate", request, context)
        for message in self.stream:
            yield message
        if self.stream_error is not None:
            status = self.stream_error
            await context.abort(
                status.code, status.details, trailing_metadata=status.trailing_metadata
            )
        if self.hold_stream:
            await self.recorder.wait_for_cancellation()


class FakeModels(model_service_pb2_grpc.ModelServiceServicer):
    """Knows the models in ``models``; GetModel of any other name is NOT_FOUND."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.models: list[model_service_pb2.ModelInfo] = []

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.recorder.enter("ListModels", request, context)
        models = [m for m in self.models if not request.task or m.task == request.task]
        return model_service_pb2.ListModelsResponse(models=models)

    async def GetModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.recorder.enter("GetModel", request, context)
        for model in self.models:
            if model.name == request.model:
                return model_service_pb2.GetModelResponse(info=model)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no model named {request.model!r}")


class CountingHealth(HealthServicer):
    """grpcio-health-checking's servicer, counting Check calls so tests can wait on them."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0
        self.checked = asyncio.Event()

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.checks += 1
        self.checked.set()
        return await super().Check(request, context)


@dataclass
class Fakes:
    recorder: Recorder
    inference: FakeInference
    models: FakeModels
    health: CountingHealth
    target: str
