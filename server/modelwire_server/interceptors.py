"""The interceptor chain: request ids, domain errors → gRPC statuses, and call records.

Every call gets an ``x-request-id`` (the client's, or a new one) in its initial
metadata when it answers, and in its trailing metadata always. Requests are decoded
here, inside the call, so bytes that are no valid message answer INVALID_ARGUMENT like
any other bad request (grpc would answer UNKNOWN with a Python class name). Domain
errors become their status code with ``google.rpc`` rich details; anything else becomes
INTERNAL with the request id and no traceback (the traceback goes to the log). Each
call's ``CallRecord`` (rpc, model, status, timings, trace) goes to the observers when
it ends: the access log and the metrics. The interceptor knows the running calls: once
a drain's grace period is over, ``cut_off`` ends them with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2

from modelwire_server import errors
from modelwire_server.calls import CallRecord, current_call
from modelwire_server.memory import Trimmer
from modelwire_server.tracing import trace_of

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


Observer = Callable[[CallRecord], None]
# The model a call is for, from the rpc and the request's `model` (empty: the default).
ModelOf = Callable[[str, str], str]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
Deserializer = Callable[[bytes], Any]
CUT_OFF_MESSAGE = "the server is shutting down and its grace period is over; retry elsewhere"


def decoded_inside(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A library's handler (health, reflection) whose requests are decoded inside the
    call: garbage answers INVALID_ARGUMENT, not grpc's UNKNOWN with a class name."""
    decode = handler.request_deserializer
    if decode is None:
        return handler
    codecs = {"response_serializer": handler.response_serializer}

    async def message(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return decode(raw)
        except DecodeError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request body is not a valid request message: {exc}",
            )

    async def responses(result: Any) -> AsyncIterator[Any]:
        if hasattr(result, "__aiter__"):
            async for response in result:
                yield response
        else:  # a handler that writes with context.write and returns
            await result

    if handler.unary_unary is not None:
        behavior = handler.unary_unary

        async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await behavior(await message(raw, context), context)

        return grpc.unary_unary_rpc_method_handler(unary, **codecs)
    if handler.unary_stream is not None:
        one_to_many = handler.unary_stream

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in responses(one_to_many(await message(raw, context), context)):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codecs)
    if handler.stream_stream is not None:
        many_to_many = handler.stream_stream

        async def stream(raws: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async def requests() -> AsyncIterator[Any]:
                async for raw in raws:
                    yield await message(raw, context)

            async for response in responses(many_to_many(requests(), context)):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream, **codecs)
    return handler


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Request ids, error statuses and a call record for every RPC of our own services.

    ``observers`` get each call's record once it has ended (the access log, metrics).
    """

    def __init__(
        self,
        observers: Sequence[Observer] = (),
        *,
        model_of: ModelOf | None = None,
        prefixes: tuple[str, ...] = ("/modelwire.",),
        trimmer: Trimmer | None = None,
    ) -> None:
        self.observers = list(observers)
        self.model_of = model_of
        self.prefixes = prefixes
        self.trimmer = trimmer  # told of each call's request size and end
        self._large: set[int] = set()  # ids of the calls the trimmer counts as large
        # The running calls' tasks by id(record); the ids of those cut off, and of the
        # streams whose last response grpc is writing (cancelling the task there would
        # leave no way to send a status).
        self._running: dict[int, asyncio.Task[Any]] = {}
        self._cut_off: set[int] = set()
        self._writing: set[int] = set()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if not handler_call_details.method.startswith(self.prefixes):
            return decoded_inside(handler)  # health, reflection: no record, as before
        return self.wrap(handler, handler_call_details)

    def wrap(
        self,
        handler: grpc.RpcMethodHandler,
        details: grpc.HandlerCallDetails,
        refusal: Exception | None = None,
    ) -> grpc.RpcMethodHandler:
        """``handler`` with ids, statuses and records; with a ``refusal`` (an interceptor's
        earlier verdict, e.g. auth) the call ends with its status and the handler never runs.
        """
        if refusal is not None:
            return self._refusing(handler, details, refusal)
        # grpc gets the raw bytes; the wrapper decodes them, inside the call.
        decode = handler.request_deserializer or (lambda raw: raw)
        codecs = {"response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            unary = self._unary(handler.unary_unary, details, decode)
            return grpc.unary_unary_rpc_method_handler(unary, **codecs)
        if handler.unary_stream is not None:
            stream = self._stream(handler.unary_stream, details, decode)
            return grpc.unary_stream_rpc_method_handler(stream, **codecs)
        return handler

    def _refusing(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails, refusal: Exception
    ) -> grpc.RpcMethodHandler:
        """A handler that answers ``refusal`` without reading the request: as a
        client-streaming handler, grpc hands it the call before any message is read, so a
        refused caller's megabytes are never buffered or decoded."""

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
            call = self._open(details, context)
            await self._fail(call, context, refusal)

        serializer = handler.response_serializer
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse, response_serializer=serializer)
        return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=serializer)

    def _unary(
        self, behavior: Callable[..., Any], details: grpc.HandlerCallDetails, decode: Deserializer
    ) -> Callable[..., Any]:
        async def wrapper(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            call = self._open(details, context)
            request = None
            try:
                request = self._decode(call, decode, raw)
                response = await behavior(request, context)
            except asyncio.CancelledError:
                if not self._was_cut_off(call):
                    self._close(call, _ended_early(context))
                    raise
                await self._fail(call, context, errors.Unavailable(CUT_OFF_MESSAGE))
            except grpc.aio.AbortError:
                self._close(call, _code_name(context.code()))
                raise
            except Exception as exc:
                await self._fail(call, context, exc)
                raise  # unreachable: _fail aborts
            finally:
                del raw, request  # see _fail
            await context.send_initial_metadata(((REQUEST_ID, call.request_id),))
            self._close(call, "OK")
            return response

        return wrapper

    def _stream(
        self, behavior: Callable[..., Any], details: grpc.HandlerCallDetails, decode: Deserializer
    ) -> Callable[..., Any]:
        async def wrapper(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = self._open(details, context)
            sent_headers, request = False, None
            try:
                request = self._decode(call, decode, raw)
                # aclosing: a client that goes away closes our generator, and that must
                # reach the servicer's generator at once so its `finally` frees the work.
                async with contextlib.aclosing(behavior(request, context)) as stream:
                    async for response in stream:
                        if not sent_headers:
                            await context.send_initial_metadata(((REQUEST_ID, call.request_id),))
                            sent_headers = True
                        self._writing.add(id(call))
                        try:
                            yield response
                        finally:
                            self._writing.discard(id(call))
                        if self._was_cut_off(call):
                            raise errors.Unavailable(CUT_OFF_MESSAGE)
            except GeneratorExit:
                # Closed while grpc was sending: no status can go out from here any more.
                cut_off = self._was_cut_off(call)
                self._close(call, "UNAVAILABLE" if cut_off else _ended_early(context))
                raise
            except asyncio.CancelledError:
                if not self._was_cut_off(call):
                    self._close(call, _ended_early(context))
                    raise
                await self._fail(call, context, errors.Unavailable(CUT_OFF_MESSAGE))
            except grpc.aio.AbortError:
                self._close(call, _code_name(context.code()))
                raise
            except Exception as exc:
                await self._fail(call, context, exc)
            finally:
                del raw, request  # see _fail
            self._close(call, "OK")

        return wrapper

    def _open(
        self, details: grpc.HandlerCallDetails, context: grpc.aio.ServicerContext
    ) -> CallRecord:
        """Start a call's record and make it (and its request id) current."""
        rid = _request_id(details)
        rpc = details.method.rsplit("/", 1)[-1]
        trace_id, span_id = trace_of(details.invocation_metadata)
        call = CallRecord(rid, rpc, peer=context.peer() or "", trace_id=trace_id, span_id=span_id)
        current_call.set(call)
        current_request_id.set(rid)
        context.set_trailing_metadata(((REQUEST_ID, rid),))
        task = asyncio.current_task()
        if task is not None:
            self._running[id(call)] = task
        return call

    def _decode(self, call: CallRecord, decode: Deserializer, raw: bytes) -> Any:
        """The request message, and the model it names on the call's record."""
        if self.trimmer is not None and self.trimmer.started(len(raw)):
            self._large.add(id(call))
        try:
            request = decode(raw)
        except DecodeError as exc:
            raise errors.InvalidArgument(
                "", f"the request body is not a valid {call.rpc} request message: {exc}"
            ) from None
        requested = getattr(request, "model", "")
        requested = requested[:128] if isinstance(requested, str) else ""
        call.model = self.model_of(call.rpc, requested) if self.model_of else requested
        return request

    def running(self) -> set[asyncio.Task[Any]]:
        """The tasks of the calls now running."""
        return set(self._running.values())

    def cut_off(self) -> set[asyncio.Task[Any]]:
        """End every running call with UNAVAILABLE (a drain whose grace period is over);
        returns their tasks, to wait for."""
        for key, task in self._running.items():
            self._cut_off.add(key)
            if key not in self._writing:  # else the stream ends after that write
                task.cancel()
        return self.running()

    def _was_cut_off(self, call: CallRecord) -> bool:
        return id(call) in self._cut_off

    async def _fail(
        self, call: CallRecord, context: grpc.aio.ServicerContext, exc: Exception
    ) -> None:
        code, message, _ = status_of(exc, call.request_id)
        self._close(call, code.name, message, exc)  # the log shows the traceback
        # The abort's traceback holds the handlers' frames, and through them the request,
        # in a cycle with the call's context that only the garbage collector's rare full
        # passes free: after a burst of large bad requests, gigabytes. Frames go now
        # (the wrappers drop their own locals as they exit).
        call.error = None
        _forget_tracebacks(exc)
        await abort(context, exc, call.request_id)

    def _close(
        self, call: CallRecord, code: str, message: str = "", error: Exception | None = None
    ) -> None:
        self._running.pop(id(call), None)
        self._cut_off.discard(id(call))
        if self.trimmer is not None:
            self.trimmer.ended(large=id(call) in self._large)
            self._large.discard(id(call))
        call.finish(code, message, error)
        call.report(self.observers)


def _forget_tracebacks(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc`` and of every exception it chains."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]


def _ended_early(context: grpc.aio.ServicerContext) -> str:
    """Why a call ended before its handler did: its deadline, or the client left."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


def _code_name(code: Any) -> str:
    """The name of the code a handler aborted with (grpc hands back an enum or an int)."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    by_value = {c.value[0]: c.name for c in grpc.StatusCode}
    return by_value.get(code, "UNKNOWN")
