"""InferenceService: one servicer composed of RPC groups, one module per group.

Each group turns requests into runner calls and results into responses (no model code
here). An RPC whose group has no method yet answers UNIMPLEMENTED, or NOT_FOUND /
INVALID_ARGUMENT for a bad model name, through the registry.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

from modelwire.v1 import inference_service_pb2 as pb
from modelwire.v1 import inference_service_pb2_grpc as pb_grpc
from modelwire_server.errors import Unavailable
from modelwire_server.servicers.generation import GenerationRpcs
from modelwire_server.servicers.media_tasks import MediaTaskRpcs
from modelwire_server.servicers.text_tasks import TextTaskRpcs

GROUPS = (TextTaskRpcs, GenerationRpcs, MediaTaskRpcs)


class InferenceServicer(*GROUPS, pb_grpc.InferenceServiceServicer):  # type: ignore[misc]
    """Every RPC of modelwire.v1.InferenceService."""


def _not_yet(rpc: str) -> Any:
    async def method(self: InferenceServicer, request: Any, context: Any) -> Any:
        self.registry.runner_for(rpc, request.model)
        raise AssertionError(f"{rpc}: a model was found but no handler exists")

    method.__name__ = rpc
    return method


for _method in pb.DESCRIPTOR.services_by_name["InferenceService"].methods:
    if not any(_method.name in vars(group) for group in GROUPS):
        setattr(InferenceServicer, _method.name, _not_yet(_method.name))


def _unload_aware(method: Any) -> Any:
    """Answer UNAVAILABLE, not CANCELLED, to a call an UnloadModel cut off."""

    def cut_off() -> Unavailable:
        return Unavailable("the model was unloaded while this call was running")

    if inspect.isasyncgenfunction(method):

        async def stream(self: InferenceServicer, request: Any, context: Any) -> Any:
            try:
                async for response in method(self, request, context):
                    yield response
            except asyncio.CancelledError:
                if self.registry.evicted(asyncio.current_task()):
                    raise cut_off() from None
                raise

        return functools.wraps(method)(stream)

    async def unary(self: InferenceServicer, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            if self.registry.evicted(asyncio.current_task()):
                raise cut_off() from None
            raise

    return functools.wraps(method)(unary)


for _method in pb.DESCRIPTOR.services_by_name["InferenceService"].methods:
    setattr(
        InferenceServicer, _method.name, _unload_aware(getattr(InferenceServicer, _method.name))
    )
