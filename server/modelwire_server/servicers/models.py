"""ModelService: what is loaded. Loading/unloading at run time comes with auth."""

from __future__ import annotations

import grpc

from modelwire.v1 import model_service_pb2 as pb
from modelwire.v1 import model_service_pb2_grpc as pb_grpc
from modelwire_server.errors import InvalidArgument, Unimplemented
from modelwire_server.registry import ModelEntry, ModelState, Registry

_STATES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
    ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING,
}


def model_info(entry: ModelEntry, registry: Registry) -> pb.ModelInfo:
    config, runner = entry.config, entry.runner
    default = registry.default_for(config.task)
    info = pb.ModelInfo(
        name=config.name,
        task=config.task,
        architecture=runner.architecture if runner else "",
        source=config.source,
        device=entry.device,
        dtype=entry.dtype,
        state=_STATES[entry.state],
        failure_message=entry.failure,
        default_for_task=default is entry,
        rpcs=entry.rpcs,
        preset=config.preset,
    )
    if runner is not None and runner.context_length is not None:
        info.context_length = runner.context_length
    return info


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        entries = [
            e
            for e in self.registry.entries.values()
            if not request.task or e.config.task == request.task
        ]
        return pb.ListModelsResponse(
            models=[model_info(e, self.registry) for e in entries],
            preset=self.registry.preset or "",
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:
        if not request.model:
            raise InvalidArgument("model", "must name a model")
        return pb.GetModelResponse(info=model_info(self.registry.get(request.model), self.registry))

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadModelResponse:
        raise Unimplemented("LoadModel is not implemented by this server yet")

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        raise Unimplemented("UnloadModel is not implemented by this server yet")
