"""The grpc.aio server: services, health, reflection, loading, graceful stop, and the
operations around them: auth, TLS, the access log and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from modelwire.v1 import inference_service_pb2, model_service_pb2
from modelwire.v1 import inference_service_pb2_grpc as inference_grpc
from modelwire.v1 import model_service_pb2_grpc as model_grpc
from modelwire_server import preset as preset_models
from modelwire_server import tasks
from modelwire_server.access_log import write_access_line
from modelwire_server.auth import AuthInterceptor, Keys
from modelwire_server.config import ModelConfig, ServerConfig
from modelwire_server.interceptors import Observer, RequestInterceptor
from modelwire_server.memory import Trimmer, limit_arenas
from modelwire_server.metrics import Metrics, MetricsEndpoint
from modelwire_server.registry import Registry
from modelwire_server.servicers.inference import InferenceServicer
from modelwire_server.servicers.models import ModelServicer
from modelwire_server.tls import server_credentials
from modelwire_server.tracing import otel_interceptors
from modelwire_server.worker import WorkerPool

log = logging.getLogger(__name__)

INFERENCE_SERVICE = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
# After the grace period: how long cut-off calls get to send their status (a stream
# whose client reads nothing never does: grpc's stop then resets it), and how long a
# device worker gets to finish its running job (a forward pass, a burst of steps).
CUT_OFF_WAIT_S = 3.0
WORKER_WAIT_S = 60.0
PRESET_WARNING = (
    "serving the built-in offline 'tiny' preset: random-weight models whose outputs are "
    "MEANINGLESS; pass --config FILE to serve real models"
)


def preset_configs(name: str) -> list[ModelConfig]:
    """ModelConfigs for every model of a built-in preset (built on first load)."""
    return [
        ModelConfig(
            name=m.name,
            task=m.task,
            source=f"preset:{m.name}",
            default=m.default,
            preset=True,
            **m.settings,  # type: ignore[arg-type]
        )
        for m in preset_models.all_models()
    ]


# grpcurl and current tools ask for reflection's v1 service first, older ones for
# v1alpha; grpcio-reflection ships only v1alpha. The two protocols are the same messages
# in another package, so one servicer answers both names.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def enable_reflection(services: tuple[str, ...], server: grpc.aio.Server) -> None:
    names = (*services, reflection.SERVICE_NAME, REFLECTION_V1)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


def _check_free(host: str, port: int) -> None:
    """Refuse a port that is taken with a sentence, before grpc tries it: grpc's own
    failure is a core log line plus a RuntimeError."""
    if port == 0:
        return
    name = host.strip("[]")  # "[::1]" as grpc writes it
    try:
        # The address's own family: an IPv6 host ("::", "::1") is no AF_INET address.
        family = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((name, port), family=family):
            pass
    except OSError as exc:
        why = os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 else exc
        raise OSError(
            f"cannot listen on {host}:{port}: {why} "
            "(pick another port with --port, or --port 0 for a free one)"
        ) from None


def prepare_source(config: ModelConfig) -> None:
    """Build a preset model into the cache (seconds, offline) and point at it."""
    if config.preset and config.source.startswith("preset:"):
        config.source = str(preset_models.ensure_model(config.source.removeprefix("preset:")))


class ModelwireServer:
    """One server process: start(), then wait(); stop() drains and ends it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        models = list(config.models)
        if config.preset:
            models += preset_configs(config.preset)
        self.workers = WorkerPool()
        self.registry = Registry(
            [dataclasses.replace(m) for m in models],
            self.workers,
            prepare_source=prepare_source,
            preset=config.preset,
            readiness_changed=self._readiness_changed,
        )
        self.health = health.aio.HealthServicer()
        self._health_updates: set[asyncio.Future[None]] = set()
        # Read before binding, so a bad key or certificate file stops the start.
        self.keys = Keys.from_config(config)
        self.credentials = server_credentials(config)
        self.metrics = Metrics(self.registry) if config.metrics_port is not None else None
        self._metrics_endpoint = MetricsEndpoint(self.metrics) if self.metrics else None
        self.metrics_port: int | None = None
        limit = config.max_message_bytes
        limit_arenas()  # before grpc's threads start allocating
        self.server = grpc.aio.server(
            interceptors=self._interceptors(),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        inference_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(self.registry), self.server
        )
        self.models_servicer = ModelServicer(
            self.registry,
            load_allow_list=config.load_allow_list,
            unload_grace_s=config.grace_period_s,
            auth=self.keys.enabled,
        )
        model_grpc.add_ModelServiceServicer_to_server(self.models_servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection((INFERENCE_SERVICE, MODEL_SERVICE, health.SERVICE_NAME), self.server)
        self.port = 0
        # What the process should exit with once stopped: 1 when no model could load.
        self.exit_code = 0
        self._stopping: asyncio.Task[None] | None = None
        self.http = self._http_front()
        self.http_port: int | None = None
        self._loading: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Auth first (a refused call runs nothing), OpenTelemetry's spans if installed,
        then request ids, statuses, and each call's record for the log and metrics."""
        observers: list[Observer] = [write_access_line]
        if self.metrics is not None:
            observers.append(self.metrics.observe)
        self.trimmer = Trimmer()
        self.requests = RequestInterceptor(observers, model_of=self.model_of, trimmer=self.trimmer)
        auth = [AuthInterceptor(self.keys, self.requests.wrap)] if self.keys.enabled else []
        return [*auth, *otel_interceptors(), self.requests]

    def _http_front(self) -> Any:
        """The OpenAI-compatible HTTP API over the same registry, keys and observers."""
        if self.config.http_port is None:
            return None
        from modelwire_server.http import HttpFront, OpenAIApp

        observers: list[Observer] = [write_access_line]
        if self.metrics is not None:
            observers.append(self.metrics.observe)
        api = OpenAIApp(
            self.registry,
            self.keys,
            observers=observers,
            model_of=self.model_of,
            ready=self._inference_serving,
            max_body_bytes=self.config.max_message_bytes,
        )
        return HttpFront(api)

    def _http_tls(self) -> Any:
        """TLS for HTTP with the gRPC port's files (keys never cross plaintext HTTP)."""
        from modelwire_server.http import TlsFiles

        config = self.config
        if self.credentials is None or not config.tls_cert_file or not config.tls_key_file:
            return None
        return TlsFiles(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)

    async def _inference_serving(self) -> bool:
        """What gRPC health says of InferenceService (the HTTP readiness route)."""
        request = health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE)
        reply = await self.health.Check(request, None)  # type: ignore[arg-type]
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def model_of(self, rpc: str, requested: str) -> str:
        """The model a call is for: the one it names, else its RPC's default (if any)."""
        if requested or rpc not in tasks.RPC_TASKS:
            return requested
        found = (self.registry.default_for(task) for task in tasks.RPC_TASKS[rpc])
        entry = next((e for e in found if e is not None), None)
        return entry.config.name if entry is not None else ""

    async def start(self) -> int:
        """Bind, start answering (health NOT_SERVING), and load models in the background."""
        address = f"{self.config.host}:{self.config.port}"
        _check_free(self.config.host, self.config.port)
        try:
            if self.credentials is not None:
                self.port = self.server.add_secure_port(address, self.credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc: "Failed to bind to address ..."
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"cannot listen on {address}: the port is in use or the address is not "
                "one of this machine's (pick another with --port, or --port 0 for a free one)"
            )
        if self._metrics_endpoint is not None:
            assert self.config.metrics_port is not None
            self.metrics_port = await self._metrics_endpoint.start(
                self.config.host, self.config.metrics_port
            )
        if self.http is not None:
            assert self.config.http_port is not None
            self.http_port = await self.http.start(
                self.config.host, self.config.http_port, self._http_tls()
            )
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._set_inference_health(serving=False)
        await self.server.start()
        if self.config.preset:
            log.warning(PRESET_WARNING)
        log.info("listening on %s:%d", self.config.host, self.port)
        self._log_operations()
        self._loading = asyncio.create_task(self._load())
        return self.port

    def _log_operations(self) -> None:
        """Say which protections are on (key counts only, never keys)."""
        if self.credentials is not None:
            mutual = self.config.tls_client_ca_file is not None
            log.info("TLS on%s", " (mutual: client certificates required)" if mutual else "")
        if self.keys.enabled:
            log.info(
                "auth on: %d API keys, %d admin keys", len(self.keys.api), len(self.keys.admin)
            )
        if self.http_port is not None:
            log.info(
                "OpenAI-compatible HTTP API on http://%s:%d/v1", self.config.host, self.http_port
            )
        if self.metrics_port is not None:
            log.info("metrics on http://%s:%d/metrics", self.config.host, self.metrics_port)

    async def _load(self) -> None:
        await self.registry.load_all()
        await self._set_inference_health(serving=self.registry.any_ready)
        if self.registry.any_ready:
            return
        if self.config.serve_without_models or not self.registry.entries:
            # Asked to, or nothing was configured to load: models come with LoadModel.
            log.error("no model is loaded: health stays NOT_SERVING until LoadModel")
            return
        for entry in self.registry.entries.values():
            log.error("model %s: %s", entry.config.name, entry.failure or entry.state.value)
        log.error(
            "no model could be loaded, so the server stops (serve_without_models: true, "
            "or --serve-without-models, keeps it up for LoadModel)"
        )
        self.exit_code = 1
        # Its own task: stop() cancels this loading task.
        self._stopping = asyncio.create_task(self.stop(grace=0))

    def _readiness_changed(self) -> None:
        """A model stopped or started serving by itself: health follows (not while
        draining, when it says NOT_SERVING for good)."""
        if not self.registry.draining and self.registry.loading_done.is_set():
            task = asyncio.ensure_future(
                self._set_inference_health(serving=self.registry.any_ready)
            )
            self._health_updates.add(task)
            task.add_done_callback(self._health_updates.discard)

    async def _set_inference_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        await self.health.set(INFERENCE_SERVICE, status)

    async def wait_until_loaded(self) -> None:
        await self.registry.loading_done.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING at once, refuse new calls, let running ones finish within
        the grace period, end the rest with UNAVAILABLE, then stop."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_period_s if grace is None else grace
        await self._set_inference_health(serving=False)
        await self.health.enter_graceful_shutdown()
        # Drain first, while still answering: new calls get UNAVAILABLE, health checks
        # NOT_SERVING; grpc's stop(grace) would cancel them instead.
        loop = asyncio.get_running_loop()
        until = loop.time() + grace
        await self.registry.drain(grace)
        if self.http is not None:  # the HTTP door drains within the same grace period
            await self.http.stop(max(0.0, until - loop.time()))
        running = self.requests.running()  # ModelService calls too
        if running and (left := until - loop.time()) > 0:
            await asyncio.wait(running, timeout=left)
        cut = self.requests.cut_off()
        if cut:
            log.warning("grace period over: ending %d running calls with UNAVAILABLE", len(cut))
            await asyncio.wait(cut, timeout=CUT_OFF_WAIT_S)
        await self.server.stop(0)
        if self._metrics_endpoint is not None:  # last, so a drain can still be watched
            await self._metrics_endpoint.close()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        await self.registry.close()
        await self._workers_idle()
        self.workers.close()
        self.trimmer.close()
        self._stopped.set()

    async def _workers_idle(self) -> None:
        """Wait for each device worker to finish the job it is running (an engine's burst
        of steps outlives the task that awaited it): a thread still inside torch when
        the interpreter exits aborts the process."""
        workers = {e.runner.worker for e in self.registry.entries.values() if e.runner}
        idle = [asyncio.ensure_future(w.run(lambda: None)) for w in workers]
        if idle:
            await asyncio.wait(idle, timeout=WORKER_WAIT_S)

    async def wait(self) -> None:
        await self._stopped.wait()
