"""The SDK's exceptions, and the one place a gRPC error becomes one of them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

REQUEST_ID_KEY = "x-request-id"

_Detail = TypeVar("_Detail", error_details_pb2.BadRequest, error_details_pb2.RetryInfo)


class ModelwireError(Exception):
    """Base class of every error the SDK raises (besides ``ValueError`` for bad arguments)."""


class APIError(ModelwireError):
    """A call failed. ``code`` is the gRPC status; ``request_id`` names the call in server logs."""

    message: str
    request_id: str | None
    code: grpc.StatusCode | None

    def __init__(
        self, message: str, *, request_id: str | None, code: grpc.StatusCode | None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.code = code

    def __str__(self) -> str:
        code = self.code.name if self.code is not None else "ERROR"
        suffix = f" (request id {self.request_id})" if self.request_id else ""
        return f"{code}: {self.message}{suffix}"


class APIStatusError(APIError):
    """The server answered the call with an error status."""


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field, as the server's ``google.rpc.BadRequest`` names it."""

    field: str
    description: str


class BadRequestError(APIStatusError):
    """INVALID_ARGUMENT: the request was wrong; ``field_violations`` say which fields."""

    field_violations: list[FieldViolation]

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None,
        code: grpc.StatusCode | None,
        field_violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id, code=code)
        self.field_violations = field_violations or []


class NotFoundError(APIStatusError):
    """NOT_FOUND: no model of that name (or no such resource)."""


class RateLimitError(APIStatusError):
    """RESOURCE_EXHAUSTED: the server is at capacity. ``retry_after`` (seconds) when it helps."""

    retry_after: float | None

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None,
        code: grpc.StatusCode | None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id, code=code)
        self.retry_after = retry_after


class AuthenticationError(APIStatusError):
    """UNAUTHENTICATED: a missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """PERMISSION_DENIED: the key may not do this (e.g. load models without the admin token)."""


class UnavailableError(APIStatusError):
    """UNAVAILABLE (after the channel's retries): the server is unreachable, loading or draining."""


class RequestCancelledError(APIStatusError):
    """CANCELLED: the server cancelled the call (named so it does not shadow asyncio's)."""


class UnimplementedError(APIStatusError):
    """UNIMPLEMENTED: the server does not offer this RPC."""


class InternalServerError(APIStatusError):
    """INTERNAL, UNKNOWN or DATA_LOSS: a fault on the server's side."""


class APIConnectionError(APIError):
    """The call did not get an answer from the server."""


class APITimeoutError(APIConnectionError):
    """DEADLINE_EXCEEDED: the call's timeout passed before the server answered."""


_BY_CODE: dict[grpc.StatusCode, type[APIError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalServerError,
    grpc.StatusCode.UNKNOWN: InternalServerError,
    grpc.StatusCode.DATA_LOSS: InternalServerError,
    grpc.StatusCode.DEADLINE_EXCEEDED: APITimeoutError,
}


def echoed_request_id(*metadatas: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The ``x-request-id`` of the first metadata (initial, then trailing) that has one."""
    for metadata in metadatas:
        for key, value in metadata or ():
            if key == REQUEST_ID_KEY:
                return value.decode() if isinstance(value, bytes) else str(value)
    return None


def from_rpc_error(error: grpc.aio.AioRpcError, *, fallback_request_id: str | None) -> APIError:
    """Map a failed call to the SDK exception for its status.

    The request id is the one the server echoed; a call that never reached the server
    has none, and then ``fallback_request_id`` (the id sent, or one echoed earlier on a
    stream) is the best name for it.
    """
    code = error.code()
    message = error.details() or code.name
    request_id = (
        echoed_request_id(error.initial_metadata(), error.trailing_metadata())
        or fallback_request_id
    )
    cls = _BY_CODE.get(code, APIStatusError)
    if cls is BadRequestError:
        return BadRequestError(
            message,
            request_id=request_id,
            code=code,
            field_violations=_field_violations(_rich_status(error)),
        )
    if cls is RateLimitError:
        return RateLimitError(
            message, request_id=request_id, code=code, retry_after=_retry_after(_rich_status(error))
        )
    return cls(message, request_id=request_id, code=code)


def _rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    # AioRpcError answers code()/details()/trailing_metadata() synchronously, so the sync
    # helper works on it. A status whose rich copy disagrees with the plain one is a server
    # bug; the plain status still says what happened, so the details are dropped.
    try:
        return rpc_status.from_call(error)  # type: ignore[arg-type]  # duck-typed grpc.Call
    except ValueError:
        return None


def _unpacked(status: status_pb2.Status | None, kind: type[_Detail]) -> _Detail | None:
    for detail in status.details if status is not None else ():
        message = kind()
        if detail.Unpack(message):
            return message
    return None


def _field_violations(status: status_pb2.Status | None) -> list[FieldViolation]:
    bad_request = _unpacked(status, error_details_pb2.BadRequest)
    if bad_request is None:
        return []
    return [FieldViolation(v.field, v.description) for v in bad_request.field_violations]


def _retry_after(status: status_pb2.Status | None) -> float | None:
    retry_info = _unpacked(status, error_details_pb2.RetryInfo)
    if retry_info is None or not retry_info.HasField("retry_delay"):
        return None
    return float(retry_info.retry_delay.ToTimedelta().total_seconds())
