"""The serving spine: health, reflection, ModelService, request ids, load failures."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from modelwire import AsyncClient, NotFoundError
from modelwire.v1 import inference_service_pb2 as pb
from modelwire.v1 import inference_service_pb2_grpc as pb_grpc
from modelwire_server.config import ModelConfig, ServerConfig
from tests.conftest import start_server
from tests.helpers import raw_error


async def health_of(target: str, service: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_health_is_serving_once_loaded(server) -> None:
    assert await health_of(server.target, "") == "SERVING"
    assert await health_of(server.target, "modelwire.v1.InferenceService") == "SERVING"


async def test_reflection_lists_the_three_services(server) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request])):
            names = {s.name for s in reply.list_services_response.service}
            break
    assert {
        "modelwire.v1.InferenceService",
        "modelwire.v1.ModelService",
        "grpc.health.v1.Health",
    } <= names


async def test_reflection_v1_answers_as_v1alpha_does(server) -> None:
    """grpcurl asks grpc.reflection.v1 first: the same protocol under the new name."""
    method = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        symbol = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="modelwire.v1.InferenceService"
        )
        replies = [reply async for reply in call(iter([listing, symbol]))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"modelwire.v1.InferenceService", "grpc.reflection.v1.ServerReflection"} <= names
    files = replies[1].file_descriptor_response.file_descriptor_proto
    assert files and not replies[1].HasField("error_response")


async def test_list_and_get_models(client: AsyncClient) -> None:
    models = {m.name: m for m in await client.list_models()}
    sentiment = models["tiny-sentiment"]
    assert sentiment.state == "ready" and sentiment.preset
    assert sentiment.architecture == "BertForSequenceClassification"
    assert sentiment.default_for_task and "ClassifyText" in sentiment.rpcs
    assert sentiment.device == "cpu" and sentiment.dtype == "float32"
    assert sentiment.context_length and sentiment.context_length > 0
    assert models["minilm"].source.endswith("model") and not models["minilm"].preset
    embedders = await client.list_models(task="feature-extraction")
    assert {m.name for m in embedders} == {"tiny-embed", "minilm"}
    assert (await client.get_model("minilm")).context_length == 256
    with pytest.raises(NotFoundError):
        await client.get_model("nope")


async def test_request_id_is_kept_or_made(server) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        request = pb.ClassifyTextRequest(inputs=["hello"])
        call = stub.ClassifyText(request, metadata=(("x-request-id", "req-123"),))
        await call
        assert ("x-request-id", "req-123") in tuple(await call.initial_metadata())
        assert ("x-request-id", "req-123") in tuple(await call.trailing_metadata())
        fresh = stub.ClassifyText(request)
        await fresh
        made = dict(await fresh.initial_metadata())["x-request-id"]
        assert len(made) == 32
    error = await raw_error(server, "ClassifyText", pb.ClassifyTextRequest())
    assert dict(error.trailing_metadata())["x-request-id"]
    assert "x-request-id" not in dict(error.initial_metadata() or ())


def test_every_rpc_has_a_handler_and_every_task_a_runner() -> None:
    from modelwire_server import tasks
    from modelwire_server.servicers.inference import GROUPS

    for method in pb.DESCRIPTOR.services_by_name["InferenceService"].methods:
        assert any(method.name in vars(group) for group in GROUPS), method.name
    for rpc, served in tasks.RPC_TASKS.items():
        for task in served:
            assert tasks.runner_class(task) is not None, (rpc, task)
            assert rpc in tasks.runner_class(task).rpcs, (rpc, task)  # type: ignore[union-attr]


async def test_failed_model_is_reported_and_others_serve(server, tmp_path: Path) -> None:
    good = server.runner("tiny-sentiment").config.source
    config = ServerConfig(
        port=0,
        models=[
            ModelConfig(name="broken", task="sentiment-analysis", source=str(tmp_path / "none")),
            ModelConfig(name="good", task="sentiment-analysis", source=good),
        ],
    )
    other = start_server(config)
    try:
        async with AsyncClient(other.target) as client:
            broken = await client.get_model("broken")
            assert broken.state == "failed" and broken.failure_message
            assert "Traceback" not in broken.failure_message
            assert (await client.get_model("good")).state == "ready"
            assert await client.classify_text("works", model="good")
            assert await health_of(other.target, "modelwire.v1.InferenceService") == "SERVING"
    finally:
        other.stop()


async def test_not_serving_while_loading(server, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelwire_server import server as server_module

    release = threading.Event()
    monkeypatch.setattr(server_module, "prepare_source", lambda config: release.wait(60))
    source = server.runner("tiny-sentiment").config.source
    config = ServerConfig(
        port=0, models=[ModelConfig(name="slow", task="sentiment-analysis", source=source)]
    )
    other = start_server(config, wait_loaded=False)
    try:
        assert await health_of(other.target, "") == "SERVING"
        assert await health_of(other.target, "modelwire.v1.InferenceService") == "NOT_SERVING"
        async with AsyncClient(other.target, max_retries=0) as client:
            assert (await client.get_model("slow")).state == "loading"
        release.set()
        other.call(other.server.wait_until_loaded())
        assert await health_of(other.target, "modelwire.v1.InferenceService") == "SERVING"
    finally:
        release.set()
        other.stop()
