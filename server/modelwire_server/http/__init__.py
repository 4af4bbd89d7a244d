"""The OpenAI-compatible HTTP front: the ``app`` module's Starlette app under uvicorn.

Why Starlette and uvicorn: both are widely used and well kept (FastAPI is built on
them); Starlette gives routing, requests, multipart forms (python-multipart) and
streaming responses that watch for the client going away, without FastAPI's
validation layer, which would answer bad fields with its own 422 shape instead of
OpenAI's 400 naming the field. uvicorn serves it as a task on the gRPC server's own
event loop (``Server.serve`` on a socket bound here), so both fronts share one loop,
one registry and one set of engines: no second copy of any model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from modelwire_server.http.app import OpenAIApp

log = logging.getLogger(__name__)


class _LoopServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process's own drain owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class TlsFiles:
    """The gRPC port's PEM files: HTTP serves TLS with them too (mutual with a CA)."""

    cert: str
    key: str
    client_ca: str | None = None

    def uvicorn_options(self) -> dict[str, object]:
        options: dict[str, object] = {"ssl_certfile": self.cert, "ssl_keyfile": self.key}
        if self.client_ca:
            options |= {"ssl_ca_certs": self.client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options


class HttpFront:
    """Binds at ``start`` (so a taken port fails the start), serves until ``stop``."""

    def __init__(self, api: OpenAIApp) -> None:
        self.api = api
        self.port = 0
        self._server: _LoopServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, tls: TlsFiles | None = None) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot bind the HTTP port {host}:{port}: {exc.strerror}") from None
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.api.app,
            lifespan="off",
            log_config=None,  # the process's logging as configured; no second setup
            access_log=False,  # calls are logged by the access log, as gRPC calls are
            timeout_graceful_shutdown=30,
            **(tls.uvicorn_options() if tls is not None else {}),  # type: ignore[arg-type]
        )
        self._server = _LoopServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-front")
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, let open requests end within ``grace`` seconds, then cut them."""
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(grace, 0.1)
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


__all__ = ["HttpFront", "OpenAIApp", "TlsFiles"]
