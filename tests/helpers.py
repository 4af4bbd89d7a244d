"""Raw-stub helpers for tests that must get past the SDK's own validation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
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


def load_example(path: Path, name: str) -> Any:
    """An example's app.py as a module (examples/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
