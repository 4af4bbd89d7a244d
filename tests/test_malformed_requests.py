"""Bytes that are no valid request message, sent to every method of our services.

grpc decodes a request before any handler runs, and answered a bad one UNKNOWN with a
Python class name in the message, no request id, no access line, and an ERROR
traceback in the log per call. The request interceptor decodes it instead: every
method answers INVALID_ARGUMENT with a plain message, the request id and one access
line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

from modelwire.v1 import inference_service_pb2, model_service_pb2
from modelwire_server.config import ServerConfig
from tests.conftest import AccessLines, RunningServer, start_server

METHODS: list[MethodDescriptor] = [
    method
    for module, name in (
        (inference_service_pb2, "InferenceService"),
        (model_service_pb2, "ModelService"),
    )
    for method in module.DESCRIPTOR.services_by_name[name].methods
]
# Bodies no message type can decode: a length past the end, an invalid wire type, a
# varint that never ends, a field number of 0.
ANY_TYPE = [b"\x0a\x05ab", b"\x0f", b"\x08" + b"\xff" * 11, b"\x00\x01"]
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 as a string that is not UTF-8


@pytest.fixture(scope="module")
def bare_server() -> Iterator[RunningServer]:
    running = start_server(ServerConfig(port=0))  # no models: decoding comes first
    yield running
    running.stop()


def _bodies(method: MethodDescriptor) -> list[bytes]:
    first = method.input_type.fields_by_number.get(1)
    return ANY_TYPE + ([BAD_UTF8] if first and first.type == FieldDescriptor.TYPE_STRING else [])


def test_every_method_answers_garbage_with_invalid_argument(
    bare_server: RunningServer, access: AccessLines, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(METHODS) >= 20  # every RPC of both services
    with grpc.insecure_channel(bare_server.target) as channel:
        for method in METHODS:
            path = f"/{method.containing_service.full_name}/{method.name}"
            for n, body in enumerate(_bodies(method)):
                rid = f"garbage-{method.name}-{n}"
                send = channel.unary_stream if method.server_streaming else channel.unary_unary
                call = send(path)  # no serializers: the bytes go as they are
                with pytest.raises(grpc.RpcError) as caught:
                    reply = call(body, metadata=[("x-request-id", rid)], timeout=30)
                    if method.server_streaming:
                        list(reply)
                error = caught.value
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, body, error)
                assert "not a valid" in error.details() and "class" not in error.details()
                assert dict(error.trailing_metadata())["x-request-id"] == rid
                line = access.line(rid).fields  # type: ignore[attr-defined]
                assert (line["rpc"], line["code"]) == (method.name, "INVALID_ARGUMENT")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # and the server goes on serving
    with grpc.insecure_channel(bare_server.target) as channel:
        reply = channel.unary_unary("/modelwire.v1.ModelService/ListModels")(b"", timeout=30)
    assert reply == b""  # no models: an empty ListModelsResponse


LIBRARY_METHODS = [
    ("/grpc.health.v1.Health/Check", "unary"),
    ("/grpc.health.v1.Health/Watch", "stream"),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "bidi"),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "bidi"),
]


@pytest.mark.parametrize(("path", "kind"), LIBRARY_METHODS)
def test_health_and_reflection_answer_garbage_with_invalid_argument(
    bare_server: RunningServer, path: str, kind: str
) -> None:
    with grpc.insecure_channel(bare_server.target) as channel:
        for body in ANY_TYPE:
            with pytest.raises(grpc.RpcError) as caught:
                if kind == "unary":
                    channel.unary_unary(path)(body, timeout=30)
                elif kind == "stream":
                    list(channel.unary_stream(path)(body, timeout=30))
                else:
                    list(channel.stream_stream(path)(iter([body]), timeout=30))
            error = caught.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, body, error)
            assert "not a valid" in error.details() and "class" not in error.details()
        # and they still serve well-formed requests
        if kind == "unary":
            assert channel.unary_unary(path)(b"", timeout=30) is not None
