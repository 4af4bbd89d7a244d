"""Raw-stub helpers for tests that must get past the SDK's own validation."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from modelwire.v1 import inference_service_pb2_grpc


async def raw_error(server: Any, rpc: str, request: Any) -> grpc.aio.AioRpcError:
    """Call ``rpc`` with a raw protobuf request and return the error it must end with."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        call = getattr(stub, rpc)(request, timeout=60)
        try:
            if hasattr(call, "__aiter__"):
                async for _ in call:
                    pass
            else:
                await call
        except grpc.aio.AioRpcError as error:
            return error
    raise AssertionError(f"{rpc} succeeded but should have failed")


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest detail of an error."""
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status details"
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields
