"""What every InferenceService RPC group shares: the registry and proto helpers."""

from __future__ import annotations

import time
from typing import Any, TypeVar, cast

import grpc

from modelwire.v1 import common_pb2
from modelwire_server.errors import InvalidArgument
from modelwire_server.registry import Registry
from modelwire_server.tasks.base import TaskRunner

R = TypeVar("R", bound=TaskRunner)


class RpcGroup:
    """Base of the servicer's RPC groups (text tasks, generation, media tasks)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def runner(self, rpc: str, model: str, kind: type[R]) -> R:
        """The runner serving ``rpc`` for ``model`` (empty: the task's default model)."""
        return cast(R, self.registry.runner_for(rpc, model))


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a time.monotonic() instant, if the client set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def optional(message: Any, name: str) -> Any | None:
    """A proto3 ``optional`` field's value, or None when unset."""
    return getattr(message, name) if message.HasField(name) else None


def enum_value(table: dict[int, str], value: int, field: str) -> str:
    if value not in table:
        raise InvalidArgument(field, f"unknown value {value}")
    return table[value]


def classification(labels: list[tuple[str, float]]) -> common_pb2.Classification:
    return common_pb2.Classification(
        labels=[common_pb2.LabelScore(label=label, score=score) for label, score in labels]
    )
