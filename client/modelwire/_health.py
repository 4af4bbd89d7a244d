"""The two messages of ``grpc.health.v1.Health/Check``, built without grpcio-health-checking.

Why not import them: the SDK promises grpcio, protobuf and grpcio-status only, and the
health package is one more pinned dependency for two tiny messages. Why not generate
them into ``modelwire.v1``: that folder holds the contract's code only. So the file
descriptor is written out here and turned into classes at import time. It goes into a
private descriptor pool: registering ``grpc.health.v1`` in protobuf's default pool
would clash with grpcio-health-checking whenever both are imported in one process
(a test with an in-process server, or the server itself).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from modelwire._types import HealthStatus

CHECK_METHOD = "/grpc.health.v1.Health/Check"

# HealthCheckResponse.ServingStatus, by wire value (grpc/health/v1/health.proto).
STATUS_NAMES: tuple[HealthStatus, ...] = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


def _message_classes() -> tuple[type[Any], type[Any]]:
    fdp = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="modelwire/_health_check.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL)
    response = file.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(STATUS_NAMES):
        status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=fdp.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=fdp.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    request_class, response_class = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{file.package}.{m.name}"))
        for m in file.message_type
    )
    return request_class, response_class


HealthCheckRequest, HealthCheckResponse = _message_classes()


def status_name(response: Any) -> HealthStatus:
    """The serving status as its name; a value this SDK does not know reads as UNKNOWN."""
    value = response.status
    return STATUS_NAMES[value] if 0 <= value < len(STATUS_NAMES) else "UNKNOWN"
