"""The interceptor chain: request ids, and domain errors → gRPC statuses in one place.

Every call gets an ``x-request-id`` (the client's, or a new one) in its initial
metadata when it answers, and in its trailing metadata always. Domain errors become
their status code with ``google.rpc`` rich details; anything else becomes INTERNAL with
the request id and no traceback (the traceback goes to the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from modelwire_server import errors

log = logging.getLogger("modelwire_server.access")

REQUEST_ID = "x-request-id"
# The current call's request id, for handlers that pass it on (e.g. to the engine's logs).
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_CODES: list[tuple[type[errors.ModelwireError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
]


def status_of(exc: BaseException, request_id: str) -> tuple[grpc.StatusCode, str, list[Any]]:
    """The code, message and rich details for an exception raised by a handler."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, str(exc), _details(exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})", []


def _details(exc: BaseException) -> list[Any]:
    if isinstance(exc, errors.InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in exc.violations
        ]
        return [error_details_pb2.BadRequest(field_violations=violations)]
    if isinstance(exc, errors.ResourceExhausted) and exc.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=exc.retry_after_s))
        return [error_details_pb2.RetryInfo(retry_delay=delay)]
    return []


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, request_id: str) -> None:
    """End the call with the status for ``exc`` (raises, as context.abort does)."""
    code, message, details = status_of(exc, request_id)
    trailers: list[tuple[str, str | bytes]] = [(REQUEST_ID, request_id)]
    if details:
        status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
        for detail in details:
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        trailers.append(("grpc-status-details-bin", status.SerializeToString()))
    await context.abort(code, message, trailing_metadata=tuple(trailers))


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == REQUEST_ID and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Request ids and error statuses for every RPC of our own services."""

    def __init__(self, prefixes: tuple[str, ...] = ("/modelwire.",)) -> None:
        self.prefixes = prefixes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self.prefixes):
            return handler
        rid = _request_id(handler_call_details)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, rid, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, rid, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(behavior: Callable[..., Any], rid: str, method: str) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.monotonic()
        current_request_id.set(rid)
        context.set_trailing_metadata(((REQUEST_ID, rid),))
        try:
            response = await behavior(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            _log_failure(method, rid, exc, started)
            await abort(context, exc, rid)
            raise  # unreachable: abort raises
        await context.send_initial_metadata(((REQUEST_ID, rid),))
        _log_ok(method, rid, started)
        return response

    return wrapper


def _wrap_stream(behavior: Callable[..., Any], rid: str, method: str) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.monotonic()
        current_request_id.set(rid)
        context.set_trailing_metadata(((REQUEST_ID, rid),))
        sent_headers = False
        try:
            # aclosing: a client that goes away closes our generator, and that must
            # reach the servicer's generator at once so its `finally` frees the work.
            async with contextlib.aclosing(behavior(request, context)) as stream:
                async for response in stream:
                    if not sent_headers:
                        await context.send_initial_metadata(((REQUEST_ID, rid),))
                        sent_headers = True
                    yield response
        except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
            raise
        except Exception as exc:
            _log_failure(method, rid, exc, started)
            await abort(context, exc, rid)
        _log_ok(method, rid, started)

    return wrapper


def _log_ok(method: str, rid: str, started: float) -> None:
    log.info("%s OK request_id=%s %.1fms", method, rid, (time.monotonic() - started) * 1000)


def _log_failure(method: str, rid: str, exc: Exception, started: float) -> None:
    code, message, _ = status_of(exc, rid)
    elapsed = (time.monotonic() - started) * 1000
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s INTERNAL request_id=%s %.1fms", method, rid, elapsed, exc_info=exc)
    else:
        log.info("%s %s request_id=%s %.1fms: %s", method, code.name, rid, elapsed, message)
