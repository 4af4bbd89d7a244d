"""Domain errors. The interceptor turns them into gRPC statuses in one place."""

from __future__ import annotations

from dataclasses import dataclass

# Messages often quote what the client sent (a model name, a label). Status messages
# and details travel in trailing metadata, which clients cap (gRPC: 16 KiB), so a
# giant value echoed back would turn a clean error into a transport failure
# (RESOURCE_EXHAUSTED: "received metadata size exceeds ...").
MAX_MESSAGE_CHARS = 500  # non-ASCII is percent-encoded: up to 12 bytes a character


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else f"{text[: limit - 15]}... [truncated]"


class ModelwireError(Exception):
    """Base of errors whose message is safe to show a client."""

    def __str__(self) -> str:
        return clip(super().__str__())


@dataclass
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


class InvalidArgument(ModelwireError):
    """The request is malformed or over a per-request limit (INVALID_ARGUMENT)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}" if field else description)
        self.violations = [FieldViolation(clip(field, 200), clip(description))]


class NotFound(ModelwireError):
    """An unknown model name (NOT_FOUND)."""


class Unavailable(ModelwireError):
    """Not ready, loading, unloading or draining (UNAVAILABLE)."""


class ResourceExhausted(ModelwireError):
    """Capacity: queue full or memory budget (RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unimplemented(ModelwireError):
    """A task this server does not implement (UNIMPLEMENTED)."""


class DeadlineExceeded(ModelwireError):
    """The call's deadline passed before the work was done (DEADLINE_EXCEEDED)."""


class PermissionDenied(ModelwireError):
    """The caller may not do this (PERMISSION_DENIED)."""


class Unauthenticated(ModelwireError):
    """Missing or wrong credentials (UNAUTHENTICATED)."""
