"""InferenceService: one servicer composed of RPC groups, one module per group.

Each group turns requests into runner calls and results into responses (no model code
here). A bad model name is NOT_FOUND or INVALID_ARGUMENT, through the registry.
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


# Every RPC of the service has its group's handler (tests/test_server.py checks it).
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
