"""ModelService: what is loaded, and loading/unloading at run time (the admin key guards
those when auth is on; the config's ``load_allow_list`` limits what may be loaded).

A model's ``source`` can be a path on the server's file system. With auth on, only
admin keys see it whole; other keys see a local path as its last directory name (hub
ids as they are), in the failure message too. With auth off there are no keys to tell
callers apart, and every caller can load models anyway: sources are shown whole.
"""

from __future__ import annotations

import re

import grpc

from modelwire.v1 import model_service_pb2 as pb
from modelwire.v1 import model_service_pb2_grpc as pb_grpc
from modelwire_server.allow_list import allowed, looks_like_path
from modelwire_server.auth import Role, caller_role
from modelwire_server.config import ConfigError, ModelConfig, validate_model
from modelwire_server.errors import InvalidArgument, PermissionDenied
from modelwire_server.registry import ModelEntry, ModelState, Registry

# Longer than any path a file system takes (PATH_MAX) or any hub id.
MAX_SOURCE_CHARS = 4096
# validate_model's messages name "request.<key>": the request field behind each key.
_FIELDS = {"name": "model", "default": "default_for_task"}
_TEXT_FIELDS = ("model", "task", "source", "revision", "device", "dtype", "quantization")

_STATES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
    ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING,
}


def shown_source(source: str) -> str:
    """A source as callers who may not see the server's paths see it: a local path as
    its last directory name, anything else (a hub id) as it is."""
    if not looks_like_path(source):
        return source
    return source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "(a local directory)"


def model_info(entry: ModelEntry, registry: Registry, *, paths: bool = True) -> pb.ModelInfo:
    """``paths``: show a local source whole (else as ``shown_source`` does)."""
    config, runner = entry.config, entry.runner
    default = registry.default_for(config.task)
    source, failure = config.source, entry.failure
    if not paths and (shown := shown_source(source)) != source:
        source, failure = shown, failure.replace(config.source, shown)
    info = pb.ModelInfo(
        name=config.name,
        task=config.task,
        architecture=runner.architecture if runner else "",
        source=source,
        device=entry.device,
        dtype=entry.dtype,
        quantization=entry.quantization,
        state=_STATES[entry.state],
        failure_message=failure,
        default_for_task=default is entry,
        rpcs=entry.rpcs,
        preset=config.preset,
    )
    if runner is not None and runner.context_length is not None:
        info.context_length = runner.context_length
    return info


def requested_config(request: pb.LoadModelRequest) -> ModelConfig:
    """The ModelConfig a LoadModel asks for, checked like a config file entry.

    trust_remote_code stays off: code from a hub repository must never run because of
    a request; an operator who wants it puts the model in the config file.
    """
    for name in _TEXT_FIELDS:
        if not getattr(request, name).isprintable():
            raise InvalidArgument(name, "must not contain control characters (NUL, newlines...)")
    if len(request.source) > MAX_SOURCE_CHARS:
        raise InvalidArgument("source", f"must be at most {MAX_SOURCE_CHARS} characters")
    config = ModelConfig(
        name=request.model,
        task=request.task,
        source=request.source,
        revision=request.revision if request.HasField("revision") else None,
        device=request.device if request.HasField("device") else "auto",
        dtype=request.dtype if request.HasField("dtype") else "auto",
        quantization=request.quantization if request.HasField("quantization") else "none",
        default=request.default_for_task,
        preset=request.source.startswith("preset:"),
    )
    try:
        validate_model(config, "request")
    except ConfigError as exc:
        found = re.match(r"request\.(\w+)", str(exc))
        key = found.group(1) if found else ""
        raise InvalidArgument(_FIELDS.get(key, key), str(exc).removeprefix("request.")) from None
    return config


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(
        self,
        registry: Registry,
        *,
        load_allow_list: list[str] | None = None,
        unload_grace_s: float = 30.0,
        auth: bool = False,
    ) -> None:
        self.registry = registry
        self.load_allow_list = list(load_allow_list or [])
        self.unload_grace_s = unload_grace_s
        self.auth = auth

    def _caller_sees_paths(self) -> bool:
        return not self.auth or caller_role.get() is Role.ADMIN

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        entries = [
            e
            for e in self.registry.entries.values()
            if not request.task or e.config.task == request.task
        ]
        paths = self._caller_sees_paths()
        return pb.ListModelsResponse(
            models=[model_info(e, self.registry, paths=paths) for e in entries],
            preset=self.registry.preset or "",
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:
        if not request.model:
            raise InvalidArgument("model", "must name a model")
        entry = self.registry.get(request.model)
        return pb.GetModelResponse(
            info=model_info(entry, self.registry, paths=self._caller_sees_paths())
        )

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadModelResponse:
        if not self.load_allow_list:
            raise PermissionDenied("LoadModel is disabled: the server's load_allow_list is empty")
        config = requested_config(request)
        if not allowed(config.source, self.load_allow_list):
            raise PermissionDenied(f"source {config.source!r} is not in the load_allow_list")
        entry = await self.registry.add(config)
        return pb.LoadModelResponse(info=model_info(entry, self.registry))

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        if not request.model:
            raise InvalidArgument("model", "must name a model")
        entry = self.registry.get(request.model)
        info = model_info(entry, self.registry)  # as it was, before UNLOADING
        await self.registry.unload(request.model, self.unload_grace_s)
        return pb.UnloadModelResponse(info=info)
