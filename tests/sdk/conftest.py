"""An in-process gRPC server with the fake servicers of fakes.py, on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelwire import AsyncClient
from modelwire.v1 import inference_service_pb2_grpc, model_service_pb2_grpc
from tests.sdk.fakes import CountingHealth, FakeInference, FakeModels, Fakes, Recorder


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    recorder = Recorder()
    inference, models, health = FakeInference(recorder), FakeModels(recorder), CountingHealth()
    await health.set("modelwire.v1.InferenceService", health_pb2.HealthCheckResponse.SERVING)
    server = grpc.aio.server()
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(inference, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Fakes(recorder, inference, models, health, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


@pytest.fixture
async def client(fakes: Fakes) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(fakes.target, timeout=10) as client:
        yield client
