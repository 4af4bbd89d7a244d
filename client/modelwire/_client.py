"""AsyncClient: the typed asyncio client of a Modelwire server."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar, Unpack

import grpc

from modelwire import _health, _tasks
from modelwire import _validation as check
from modelwire._chat import ChatMessageLike
from modelwire._chat_window import ChatFit, fit_chat
from modelwire._errors import (
    REQUEST_ID_KEY,
    APITimeoutError,
    NotFoundError,
    UnavailableError,
    echoed_request_id,
    from_rpc_error,
)
from modelwire._generation import GenerateParams, generate_request
from modelwire._media_tasks import MediaTaskMethods
from modelwire._seq2seq_tasks import Seq2SeqTaskMethods
from modelwire._streaming import GenerateStream
from modelwire._structured import response_parser
from modelwire._tasks import PoolingName, ScoreFunctionName
from modelwire._text_tasks import TextTaskMethods
from modelwire._transport import Stubs, Transport
from modelwire._types import (
    Classification,
    Embedding,
    GenerationResult,
    HealthStatus,
    ModelInfo,
    ResultList,
    Tokenization,
)
from modelwire.v1 import model_service_pb2

_Response = TypeVar("_Response")
_PickRpc = Callable[[Stubs], grpc.aio.UnaryUnaryMultiCallable[Any, _Response]]

INFERENCE_SERVICE: Final = "modelwire.v1.InferenceService"


class NotGiven:
    """Marks a ``with_options`` argument that was not passed (None is a real value there)."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven()


class AsyncClient(TextTaskMethods, MediaTaskMethods, Seq2SeqTaskMethods):
    """A client of one Modelwire server, over one gRPC channel.

    Use it as an async context manager (or call ``close()``)::

        async with AsyncClient("127.0.0.1:50051") as client:
            await client.wait_until_ready(timeout=60)
            [result] = await client.classify_text("I love this!")
            print(result.top.label)

    ``timeout`` is each call's deadline in seconds (None: no deadline); a method's own
    ``timeout=`` replaces it for that call. Calls that fail with UNAVAILABLE before the
    server processed them are retried up to ``max_retries`` times by gRPC itself, with
    exponential backoff and jitter (gRPC honours at most 4 retries). The channel is TLS
    when any of ``root_certificates``, ``private_key`` or ``certificate_chain`` is given.
    ``channel_options`` go to gRPC as they are and win over the SDK's own.

    Replicas: ``target`` may be a list of ``host:port`` (e.g. ``["10.0.0.1:50051",
    "10.0.0.2:50051"]``) or a ``dns:///name:port`` whose name has several addresses;
    calls are then spread round-robin over the replicas that are up, by gRPC itself.
    Host names in a list are looked up once, when the client is made. With TLS over a
    list, the certificate must name the addresses, or pass
    ``("grpc.ssl_target_name_override", "host")`` in ``channel_options``.

    Every call sends an ``x-request-id`` (a fresh uuid4 hex unless the caller gives one
    with ``request_id=`` or in ``metadata``); results and errors carry the id the server
    echoed as ``request_id``.
    """

    def __init__(
        self,
        target: str | Sequence[str] = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        max_retries: int = 2,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        metadata: Mapping[str, str] | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        _check_timeout("timeout", timeout)
        check.integer("max_retries", max_retries, minimum=0)
        tls = (root_certificates, private_key, certificate_chain)
        credentials = grpc.ssl_channel_credentials(*tls) if any(tls) else None
        self._transport = Transport(
            target, credentials=credentials, channel_options=channel_options
        )
        self.timeout = timeout
        self.max_retries = max_retries
        self._metadata = _metadata(metadata)
        if api_key is not None:
            self._metadata["authorization"] = f"Bearer {api_key}"

    @property
    def target(self) -> str:
        """The server address this client talks to."""
        return self._transport.target

    def __repr__(self) -> str:
        return f"AsyncClient({self.target!r})"

    def with_options(
        self,
        *,
        timeout: float | NotGiven | None = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        metadata: Mapping[str, str] | NotGiven = NOT_GIVEN,
    ) -> Self:
        """A copy with other defaults, sharing this client's channels (closing either closes both).

        ``metadata`` is merged over this client's. A ``max_retries`` this client has not
        used yet opens one more channel (gRPC fixes the retry policy per channel); it is
        shared the same way and closed with the others.
        """
        clone = copy.copy(self)
        if not isinstance(timeout, NotGiven):
            _check_timeout("timeout", timeout)
            clone.timeout = timeout
        if not isinstance(max_retries, NotGiven):
            check.integer("max_retries", max_retries, minimum=0)
            clone.max_retries = max_retries
        clone._metadata = {**self._metadata}
        if not isinstance(metadata, NotGiven):
            clone._metadata.update(_metadata(metadata))
        return clone

    async def close(self) -> None:
        """Close the channels; calls in flight are cancelled."""
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- InferenceService -----------------------------------------------------------

    async def classify_text(
        self,
        inputs: str | Sequence[str],
        *,
        model: str | None = None,
        top_k: int | None = None,
        function_to_apply: ScoreFunctionName | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[Classification]:
        """Classify texts (sentiment-analysis / text-classification); one result per input.

        ``top_k`` labels per input (default 1); ``function_to_apply`` turns logits into
        scores (default: what the model's config implies).
        """
        request = _tasks.classify_text_request(
            inputs, model=model, top_k=top_k, function_to_apply=function_to_apply
        )
        response, rid = await self._unary(
            lambda s: s.inference.ClassifyText, request, timeout, request_id
        )
        return ResultList(_tasks.classify_text_results(response), request_id=rid)

    async def embed(
        self,
        inputs: str | Sequence[str],
        *,
        model: str | None = None,
        pooling: PoolingName | None = None,
        normalize: bool | None = None,
        truncate: bool | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[Embedding]:
        """Embed texts (feature-extraction); one embedding per input.

        ``pooling="none"`` returns per-token vectors; ``truncate=True`` cuts over-long
        inputs instead of refusing them.
        """
        request = _tasks.embed_request(
            inputs, model=model, pooling=pooling, normalize=normalize, truncate=truncate
        )
        response, rid = await self._unary(lambda s: s.inference.Embed, request, timeout, request_id)
        return ResultList(_tasks.embed_results(response), request_id=rid)

    async def tokenize(
        self,
        text: str | None = None,
        *,
        messages: Sequence[ChatMessageLike] | None = None,
        model: str | None = None,
        add_special_tokens: bool | None = None,
        add_generation_prompt: bool | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Tokenization:
        """Tokenize ``text``, or chat ``messages`` rendered with the model's chat template."""
        request = _tasks.tokenize_request(
            text,
            messages=messages,
            model=model,
            add_special_tokens=add_special_tokens,
            add_generation_prompt=add_generation_prompt,
        )
        response, rid = await self._unary(
            lambda s: s.inference.Tokenize, request, timeout, request_id
        )
        return _tasks.tokenize_result(response, rid)

    def generate_stream(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[ChatMessageLike] | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **params: Unpack[GenerateParams],
    ) -> GenerateStream:
        """Start generating from a raw ``prompt`` or chat ``messages`` (exactly one).

        Not a coroutine: the call starts at once and the returned stream is read with
        ``async for`` (best inside ``async with``). ``params`` are the sampling, stopping
        and output options of ``GenerateParams``; arguments are checked here, before
        anything is sent. Mind the client's ``timeout``: it bounds the whole stream.
        """
        request = generate_request(prompt, messages, model, params)
        metadata, sent_id = self._call_metadata(request_id)
        deadline = self._timeout(timeout)
        stubs = self._transport.stubs(self.max_retries)
        call = stubs.inference.Generate(request, timeout=deadline, metadata=metadata)
        parse = response_parser(params.get("response_format"))
        return GenerateStream(call, sent_request_id=sent_id, parse=parse)

    async def fit_chat(
        self,
        messages: Sequence[ChatMessageLike],
        *,
        model: str | None = None,
        max_new_tokens: int | None = None,
        timeout: float | None = None,
    ) -> ChatFit:
        """Make a conversation fit its model's context for the next answer.

        Leaves out the oldest turns (never the system message) until the prompt and
        ``max_new_tokens`` (default: up to a quarter of the context) fit; if the newest
        turn alone is too long, shrinks the answer's budget and sets
        ``truncate_prompt_tokens``. Counts with the server's ``Tokenize``.
        """
        check.integer("max_new_tokens", max_new_tokens, minimum=1)
        return await fit_chat(
            self, messages, model=model, max_new_tokens=max_new_tokens, timeout=timeout
        )

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[ChatMessageLike] | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **params: Unpack[GenerateParams],
    ) -> GenerationResult:
        """Generate and wait for the end: ``generate_stream`` collected into one result."""
        async with self.generate_stream(
            prompt, messages=messages, model=model, timeout=timeout, request_id=request_id, **params
        ) as stream:
            return await stream.final()

    # --- ModelService ---------------------------------------------------------------

    async def list_models(
        self,
        task: str | None = None,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[ModelInfo]:
        """The models the server knows, in configuration order; only ``task``'s if given."""
        request = model_service_pb2.ListModelsRequest(task=check.optional_str("task", task))
        response, rid = await self._unary(
            lambda s: s.models.ListModels, request, timeout, request_id
        )
        return ResultList((_tasks.model_info(m, rid) for m in response.models), request_id=rid)

    async def get_model(
        self, name: str, *, timeout: float | None = None, request_id: str | None = None
    ) -> ModelInfo:
        """One model by name; ``NotFoundError`` if the server has none of that name."""
        if not isinstance(name, str) or not name:
            raise ValueError("`name` must be a non-empty string")
        request = model_service_pb2.GetModelRequest(model=name)
        response, rid = await self._unary(lambda s: s.models.GetModel, request, timeout, request_id)
        return _tasks.model_info(response.info, rid)

    async def load_model(
        self,
        name: str,
        *,
        task: str,
        source: str,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        quantization: str | None = None,
        default_for_task: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ModelInfo:
        """Load a model at run time; returns once it is READY or FAILED (see ``state``).

        The server refuses sources outside its ``load_allow_list`` (``PermissionDeniedError``).
        Loading can take minutes: pass a ``timeout`` that allows for it.
        """
        for key, value in (("name", name), ("task", task), ("source", source)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{key}` must be a non-empty string")
        # Proto3 optional fields: only the ones given are set (unset = server default).
        options = {
            "revision": revision,
            "device": device,
            "dtype": dtype,
            "quantization": quantization,
        }
        given = {k: check.optional_str(k, v) for k, v in options.items() if v is not None}
        request = model_service_pb2.LoadModelRequest(
            model=name, task=task, source=source, default_for_task=bool(default_for_task), **given
        )
        response, rid = await self._unary(
            lambda s: s.models.LoadModel, request, timeout, request_id
        )
        return _tasks.model_info(response.info, rid)

    async def unload_model(
        self, name: str, *, timeout: float | None = None, request_id: str | None = None
    ) -> ModelInfo:
        """Unload a model: its running calls finish (within the server's grace period)
        first. Returns the model as it was just before unloading."""
        if not isinstance(name, str) or not name:
            raise ValueError("`name` must be a non-empty string")
        request = model_service_pb2.UnloadModelRequest(model=name)
        response, rid = await self._unary(
            lambda s: s.models.UnloadModel, request, timeout, request_id
        )
        return _tasks.model_info(response.info, rid)

    # --- health ---------------------------------------------------------------------

    async def health(
        self, service: str = INFERENCE_SERVICE, *, timeout: float | None = None
    ) -> HealthStatus:
        """The server's ``grpc.health.v1`` status of ``service`` ("" = the process is live).

        ``"modelwire.v1.InferenceService"`` is SERVING once loading has ended and at least
        one model is ready. A service the server does not know reads as SERVICE_UNKNOWN.
        """
        return await self._health(service, timeout, wait_for_ready=False)

    async def wait_until_ready(self, timeout: float, *, service: str = INFERENCE_SERVICE) -> None:
        """Poll ``health(service)`` with backoff until SERVING.

        Waits for the server to come up too (connection refused is not an error here).
        Raises ``APITimeoutError`` if it is not SERVING within ``timeout`` seconds.
        """
        _check_timeout("timeout", timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay, last = 0.05, "no answer"
        while (remaining := deadline - loop.time()) > 0:
            try:
                status = await self._health(service, remaining, wait_for_ready=True)
            except (UnavailableError, APITimeoutError) as error:
                last = f"{type(error).__name__}: {error}"
            else:
                if status == "SERVING":
                    return
                last = status
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 1.0)
        raise APITimeoutError(
            f"{service or 'the server'} at {self.target} not SERVING after {timeout} s ({last})",
            request_id=None,
            code=grpc.StatusCode.DEADLINE_EXCEEDED,
        )

    async def _health(
        self, service: str, timeout: float | None, *, wait_for_ready: bool
    ) -> HealthStatus:
        def pick(stubs: Stubs) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
            return stubs.channel.unary_unary(
                _health.CHECK_METHOD,
                request_serializer=_health.HealthCheckRequest.SerializeToString,
                response_deserializer=_health.HealthCheckResponse.FromString,
            )

        request = _health.HealthCheckRequest(service=service)
        try:
            response, _ = await self._unary(
                pick, request, timeout, None, wait_for_ready=wait_for_ready
            )
        except NotFoundError:
            return "SERVICE_UNKNOWN"
        return _health.status_name(response)

    # --- plumbing -------------------------------------------------------------------

    async def _unary(
        self,
        pick: _PickRpc[_Response],
        request: Any,
        timeout: float | None,
        request_id: str | None,
        *,
        wait_for_ready: bool = False,
    ) -> tuple[_Response, str]:
        """Run one unary call; return its response and the request id the server echoed."""
        metadata, sent_id = self._call_metadata(request_id)
        deadline = self._timeout(timeout)
        rpc = pick(self._transport.stubs(self.max_retries))
        call = rpc(
            request, timeout=deadline, metadata=metadata, wait_for_ready=wait_for_ready or None
        )
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, fallback_request_id=sent_id) from error
        echoed = echoed_request_id(await call.initial_metadata(), await call.trailing_metadata())
        return response, echoed or sent_id

    def _call_metadata(self, request_id: str | None) -> tuple[tuple[tuple[str, str], ...], str]:
        if request_id is not None and (not isinstance(request_id, str) or not request_id):
            raise ValueError("`request_id` must be a non-empty string")
        sent_id = request_id or self._metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        return tuple({**self._metadata, REQUEST_ID_KEY: sent_id}.items()), sent_id

    def _timeout(self, timeout: float | None) -> float | None:
        _check_timeout("timeout", timeout)
        return self.timeout if timeout is None else timeout


def _check_timeout(name: str, value: float | None) -> None:
    check.number(name, value, low=0, low_open=True)


def _metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    # gRPC refuses upper-case keys, so they are lowered here instead of failing per call.
    result: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"`metadata` keys and values must be strings, got {key!r}")
        result[key.lower()] = value
    return result
