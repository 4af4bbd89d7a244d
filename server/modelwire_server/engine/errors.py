"""Domain errors of the generation engine; the servicer maps them to gRPC statuses."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises or reports."""


class InvalidRequest(EngineError):
    """A request parameter is out of range or inconsistent (INVALID_ARGUMENT).

    ``field`` names the offending request field with the proto's dotted path
    (``"sampling.top_p"``, ``"stopping.max_new_tokens"``, ``"prompt"``) so that the
    servicer can build a ``google.rpc.BadRequest`` field violation from it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class QueueFull(EngineError):
    """The waiting queue is at ``max_waiting``; retrying later can help (RESOURCE_EXHAUSTED)."""


class ResourceExhausted(EngineError):
    """The device ran out of memory while serving this request (RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(EngineError):
    """The request's deadline passed before it finished (DEADLINE_EXCEEDED)."""
