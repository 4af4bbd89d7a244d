"""The OpenAI-compatible HTTP API: a Starlette app over the server's registry.

Each route turns OpenAI's JSON into the same runner calls the gRPC servicers make and
answers in OpenAI's shapes. What the gRPC interceptors do for a call happens here too,
in ``_endpoint``: the bearer key (the same keys), the ``x-request-id`` (the client's or
a new one), one ``CallRecord`` for the access log and metrics, and domain errors as
OpenAI's error body with the matching status. A client that closes a stream ends the
generator under it, whose ``finally`` cancels the engine rows, as a gRPC cancel does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from modelwire_server import errors
from modelwire_server.auth import Keys
from modelwire_server.calls import CallRecord, current_call
from modelwire_server.http import fields
from modelwire_server.http import generation as gen
from modelwire_server.http.errors import http_error
from modelwire_server.interceptors import REQUEST_ID, current_request_id
from modelwire_server.registry import ModelState, Registry
from modelwire_server.tracing import trace_of

T = TypeVar("T")

Observer = Callable[[CallRecord], None]
ModelOf = Callable[[str, str], str]
Handler = Callable[[Request, CallRecord], Awaitable[Response]]
# OpenAI's voice names mean nothing to our models: they ask for the model's own voice.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer"}
    | {"verse", "marin", "cedar", "default"}
)
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class OpenAIApp:
    """The routes, bound to one server's registry, keys and call observers."""

    def __init__(
        self,
        registry: Registry,
        keys: Keys,
        *,
        observers: Sequence[Observer] = (),
        model_of: ModelOf | None = None,
        ready: Callable[[], Awaitable[bool]] | None = None,
        max_body_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.observers = list(observers)
        self.model_of = model_of
        self.ready = ready
        self.max_body_bytes = max_body_bytes
        endpoint = self._endpoint
        self.app = Starlette(
            routes=[
                Route(
                    "/v1/chat/completions",
                    endpoint("chat.completions", "Generate", self.chat, gen.CHAT_RENAMES),
                    methods=["POST"],
                ),
                Route(
                    "/v1/completions",
                    endpoint("completions", "Generate", self.completions, gen.COMPLETION_RENAMES),
                    methods=["POST"],
                ),
                Route(
                    "/v1/embeddings",
                    endpoint("embeddings", "Embed", self.embeddings, {"inputs": "input"}),
                    methods=["POST"],
                ),
                Route(
                    "/v1/audio/transcriptions",
                    endpoint(
                        "audio.transcriptions",
                        "TranscribeAudio",
                        self.transcriptions,
                        {"clips": "file"},
                    ),
                    methods=["POST"],
                ),
                Route(
                    "/v1/audio/speech",
                    endpoint("audio.speech", "SynthesizeSpeech", self.speech, {"text": "input"}),
                    methods=["POST"],
                ),
                Route("/v1/models", endpoint("models.list", "", self.models), methods=["GET"]),
                Route(
                    "/v1/models/{model:path}",
                    endpoint("models.retrieve", "", self.model),
                    methods=["GET"],
                ),
                Route("/health", self.health, methods=["GET"]),
                Route("/health/ready", self.health_ready, methods=["GET"]),
            ]
        )

    # -- what every call goes through -------------------------------------------------

    def _endpoint(
        self, rpc: str, grpc_rpc: str, handler: Handler, renames: dict[str, str] | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            call = self._open(request, rpc)
            try:
                self._authorize(request)
                response = await handler(request, call)
            except asyncio.CancelledError:
                if not self.registry.evicted(asyncio.current_task()):
                    self._close(call, "CANCELLED")
                    raise
                # An UnloadModel cut it off: UNAVAILABLE, as the gRPC servicer answers.
                exc = errors.Unavailable("the model was unloaded while this call was running")
                error = http_error(exc, call.request_id, {})
                self._close(call, error.code_name, error.message, exc)
                return error.response(call.request_id)
            except Exception as exc:
                if not call.model and self.model_of is not None and grpc_rpc:
                    call.model = self.model_of(grpc_rpc, "")
                error = http_error(exc, call.request_id, renames or {})
                self._close(call, error.code_name, error.message, exc)
                return error.response(call.request_id)
            response.headers[REQUEST_ID] = call.request_id
            if not isinstance(response, StreamingResponse):  # a stream closes its own call
                self._close(call, "OK")
            return response

        return endpoint

    def _open(self, request: Request, rpc: str) -> CallRecord:
        given = request.headers.get(REQUEST_ID, "")
        rid = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        trace_id, span_id = trace_of(list(request.headers.items()))
        client = request.client
        peer = f"ipv4:{client.host}:{client.port}" if client is not None else ""
        call = CallRecord(rid, rpc, peer=peer, trace_id=trace_id, span_id=span_id)
        current_call.set(call)
        current_request_id.set(rid)
        return call

    def _close(
        self, call: CallRecord, code: str, message: str = "", error: BaseException | None = None
    ) -> None:
        call.finish(code, message, error)
        call.report(self.observers)

    def _authorize(self, request: Request) -> None:
        if not self.keys.enabled:
            return
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthenticated(
                "this server needs an API key: send 'Authorization: Bearer <key>'"
            )
        if self.keys.role_of(token.strip()) is None:
            raise errors.Unauthenticated("the API key is not valid")

    def _runner(self, call: CallRecord, grpc_rpc: str, model: str) -> Any:
        call.model = self.model_of(grpc_rpc, model[:128]) if self.model_of else model[:128]
        return self.registry.runner_for(grpc_rpc, model)

    def _sse(
        self,
        call: CallRecord,
        events: gen.Primed,
        chunks: AsyncIterator[dict[str, Any]],
        renames: dict[str, str],
    ) -> StreamingResponse:
        """``chunks`` (made from ``events``) as SSE ``data:`` lines and a final ``[DONE]``.

        An error mid-stream (the status is sent already) is one ``data:`` error object,
        as OpenAI sends it. A client that goes away cancels the stream at an await, and
        the generation's own ``finally`` stops its engine rows; if it goes away before
        the stream even started, the response's end closes the generation all the same.
        Either way the call's record is closed once."""
        closed = False

        def close(code: str, message: str = "", failure: BaseException | None = None) -> None:
            nonlocal closed
            if not closed:
                closed = True
                self._close(call, code, message, failure)

        async def framed() -> AsyncIterator[bytes]:
            code, message, failure = "OK", "", None
            try:
                async for chunk in chunks:
                    yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            except Exception as exc:
                error = http_error(exc, call.request_id, renames)
                code, message, failure = error.code_name, error.message, exc
                body = json.loads(error.response(call.request_id).body)
                yield b"data: " + json.dumps(body).encode() + b"\n\n"
            finally:
                await events.aclose()
                close(code, message, failure)
            yield b"data: [DONE]\n\n"

        async def end() -> None:
            await events.aclose()
            close("CANCELLED")

        return _EventStream(framed(), end)

    # -- generation -------------------------------------------------------------------

    async def chat(self, request: Request, call: CallRecord) -> Response:
        body = await fields.json_body(request, self.max_body_bytes)
        generate = gen.generate_request(body, chat=True)
        generate.messages.CopyFrom(gen.chat_messages(body))
        return await self._generation(request, call, body, [generate], chat=True)

    async def completions(self, request: Request, call: CallRecord) -> Response:
        body = await fields.json_body(request, self.max_body_bytes)
        template = gen.generate_request(body, chat=False)
        requests = []
        for prompt in gen.prompts(body):
            one = type(template)()
            one.CopyFrom(template)
            one.prompt = prompt
            requests.append(one)
        return await self._generation(request, call, body, requests, chat=False)

    async def _generation(
        self,
        request: Request,
        call: CallRecord,
        body: dict[str, Any],
        requests: list[Any],
        *,
        chat: bool,
    ) -> Response:
        stream = fields.boolean(body, "stream")
        include_usage = gen.stream_usage(body)
        runner = self._runner(call, "Generate", requests[0].model)
        prefix = "chatcmpl" if chat else "cmpl"
        logprobs = requests[0].options.logprobs
        reply = gen.Reply(f"{prefix}-{call.request_id}", runner.config.name, chat, logprobs)
        if stream:
            if len(requests) > 1:
                raise errors.InvalidArgument("prompt", "a stream takes one prompt")
            # Watched while it waits for its first event (queued behind others, say).
            events = await until_disconnected(
                request, gen.primed(runner, requests[0], call.request_id)
            )
            chunks = gen.chunks(reply, events, include_usage)
            return self._sse(
                call, events, chunks, gen.CHAT_RENAMES if chat else gen.COMPLETION_RENAMES
            )
        n = requests[0].sampling.n if requests[0].sampling.HasField("n") else 1
        choices, usage = await until_disconnected(
            request, _run_all(runner, requests, call.request_id, n)
        )
        return JSONResponse(reply.body(choices, usage))

    # -- one-shot tasks ---------------------------------------------------------------

    async def embeddings(self, request: Request, call: CallRecord) -> Response:
        body = await fields.json_body(request, self.max_body_bytes)
        model = fields.string(body, "model", required=True) or ""
        inputs = body.get("input")
        if isinstance(inputs, list) and inputs and not all(isinstance(i, str) for i in inputs):
            raise errors.InvalidArgument("input", "token id inputs are not supported; send text")
        texts = fields.strings(body, "input")
        if not texts:
            raise errors.InvalidArgument("input", "must be a string or a non-empty list of them")
        encoding = fields.string(body, "encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise errors.InvalidArgument("encoding_format", "must be float or base64")
        if body.get("dimensions") is not None:
            raise errors.InvalidArgument("dimensions", "is not supported: vectors are full size")
        runner = self._runner(call, "Embed", model)
        results = await runner.embed(texts, "default", None, False)
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(r.values, encoding)}
            for i, r in enumerate(results)
        ]
        tokens = sum(r.token_count for r in results)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": runner.config.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def transcriptions(self, request: Request, call: CallRecord) -> Response:
        async with request.form(max_part_size=self.max_body_bytes) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise errors.InvalidArgument("file", "must be an uploaded audio file")
            audio = await upload.read()
            values = {k: v for k, v in form.items() if isinstance(v, str)}
        fmt = values.get("response_format") or "json"
        if fmt not in TRANSCRIPTION_FORMATS:
            raise errors.InvalidArgument(
                "response_format", f"must be one of {', '.join(TRANSCRIPTION_FORMATS)}"
            )
        if values.get("prompt"):
            raise errors.InvalidArgument("prompt", "is not supported")
        temperature = values.get("temperature")
        if temperature not in (None, "", "0", "0.0"):
            raise errors.InvalidArgument("temperature", "only 0 (greedy decoding) is supported")
        runner = self._runner(call, "TranscribeAudio", values.get("model", ""))
        timestamps = "segment" if fmt == "verbose_json" else None
        [result] = await runner.transcribe([audio], None, timestamps, values.get("language"))
        if fmt == "text":
            return PlainTextResponse(result.text)
        if fmt == "json":
            return JSONResponse({"text": result.text})
        segments = [
            {"id": i, "start": c.start_s, "end": c.end_s, "text": c.text}
            for i, c in enumerate(result.chunks)
        ]
        return JSONResponse(
            {"task": "transcribe", "text": result.text, "segments": segments}
            | ({"language": values["language"]} if values.get("language") else {})
        )

    async def speech(self, request: Request, call: CallRecord) -> Response:
        body = await fields.json_body(request, self.max_body_bytes)
        text = fields.string(body, "input", required=True) or ""
        fmt = fields.string(body, "response_format") or "wav"
        if fmt != "wav":
            raise errors.InvalidArgument("response_format", "only wav is supported")
        speed = fields.number(body, "speed")
        if speed is not None and speed != 1.0:
            raise errors.InvalidArgument("speed", "only 1.0 is supported")
        voice = fields.string(body, "voice")
        if voice in OPENAI_VOICES:
            voice = None
        seed = fields.integer(body, "seed")  # an extension: seeded voices repeat exactly
        runner = self._runner(call, "SynthesizeSpeech", fields.string(body, "model") or "")
        speech = await runner.synthesize(text, voice, seed, "wav_pcm16")
        return Response(speech.audio, media_type="audio/wav")

    # -- models and health ------------------------------------------------------------

    async def models(self, request: Request, call: CallRecord) -> Response:
        entries = list(self.registry.entries.values())
        return JSONResponse({"object": "list", "data": [_model_json(e) for e in entries]})

    async def model(self, request: Request, call: CallRecord) -> Response:
        call.model = request.path_params["model"][:128]
        return JSONResponse(_model_json(self.registry.get(request.path_params["model"])))

    async def health(self, request: Request) -> Response:
        """Liveness: the process answers."""
        return JSONResponse({"status": "ok"})

    async def health_ready(self, request: Request) -> Response:
        """Readiness, as gRPC health reports ``modelwire.v1.InferenceService``."""
        serving = await self.ready() if self.ready is not None else True
        return JSONResponse(
            {"status": "ready" if serving else "not ready"}, status_code=200 if serving else 503
        )


async def _run_all(
    runner: Any, requests: list[Any], request_id: str, n: int
) -> tuple[dict[int, gen.Choice], gen.Usage]:
    """Every request's Generate stream to its end (a plain, not streamed, answer); a
    failure or a client gone ends them all."""
    streams: list[gen.Primed] = []
    try:
        for one in requests:
            streams.append(await gen.primed(runner, one, request_id))
        return await gen.gather(streams, n)
    finally:
        for stream in streams:
            await stream.aclose()


class _EventStream(StreamingResponse):
    """A streaming response whose ``end`` runs however it ends, started or not."""

    def __init__(self, content: AsyncIterator[bytes], end: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self._end = end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._end()


def _model_json(entry: Any) -> dict[str, Any]:
    return {
        "id": entry.config.name,
        "object": "model",
        "created": 0,
        "owned_by": "modelwire",
        "task": entry.config.task,
        "ready": entry.state is ModelState.READY,
    }


def _vector(values: Sequence[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return list(values)
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; cancelled when the client goes away first (as a stream is)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # its generators' `finally` cancel the engine rows
    if task.cancelled():
        raise asyncio.CancelledError("the client went away")
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
