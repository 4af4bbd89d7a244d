"""An HTTP service that calls Modelwire: one shared AsyncClient, deadlines, mapped errors.

    pip install 'modelwire[examples]'
    MODELWIRE_TARGET=127.0.0.1:50051 python examples/service_to_service/app.py --port 8080

Routes (JSON in, JSON out): ``POST /classify {"texts": [...]}``, ``POST /embed
{"texts": [...]}``, ``POST /generate {"prompt": "...", "max_new_tokens": 40}``; each
takes an optional ``"model"``. An incoming ``X-Request-Id`` is passed on to Modelwire,
so one id names the call in both services' logs; a request without one gets a fresh id.
Every error is JSON: ``{"error", "code", "request_id"}`` (and ``field_violations`` on 400).
"""

from __future__ import annotations

import argparse
import math
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from modelwire import (
    APIError,
    APITimeoutError,
    AsyncClient,
    BadRequestError,
    NotFoundError,
    RateLimitError,
    UnavailableError,
)


@dataclass(frozen=True)
class Settings:
    """Where Modelwire is, and each route's deadline in seconds (sent to the server, which
    stops working on a call whose deadline passed)."""

    target: str = "127.0.0.1:50051"
    api_key: str | None = None
    timeouts: Mapping[str, float] = field(
        default_factory=lambda: {"classify": 2.0, "embed": 2.0, "generate": 30.0}
    )
    max_retries: int = 2


CLIENT = web.AppKey("client", AsyncClient)
SETTINGS = web.AppKey("settings", Settings)
REQUEST_ID_HEADER = "X-Request-Id"


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[modelwire_errors])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_shared_client)
    app.add_routes(
        [
            web.post("/classify", classify),
            web.post("/embed", embed),
            web.post("/generate", generate),
        ]
    )
    return app


async def _shared_client(app: web.Application) -> AsyncIterator[None]:
    # One client (one HTTP/2 channel) for the whole process: a client per request would
    # pay a connection setup on every call and defeat the server's batching.
    settings = app[SETTINGS]
    app[CLIENT] = AsyncClient(
        settings.target, api_key=settings.api_key, max_retries=settings.max_retries
    )
    yield
    await app[CLIENT].close()


# --- routes -------------------------------------------------------------------------


async def classify(request: web.Request) -> web.Response:
    body = await _json(request)
    results = await request.app[CLIENT].classify_text(
        body.get("texts"), model=body.get("model"), **_call_options(request, "classify")
    )
    return web.json_response(
        {
            "request_id": results.request_id,
            "results": [{"label": r.top.label, "score": r.top.score} for r in results],
        }
    )


async def embed(request: web.Request) -> web.Response:
    body = await _json(request)
    results = await request.app[CLIENT].embed(
        body.get("texts"),
        model=body.get("model"),
        normalize=True,
        **_call_options(request, "embed"),
    )
    return web.json_response(
        {"request_id": results.request_id, "vectors": [e.values for e in results]}
    )


async def generate(request: web.Request) -> web.Response:
    body = await _json(request)
    result = await request.app[CLIENT].generate(
        body.get("prompt"),
        model=body.get("model"),
        max_new_tokens=body.get("max_new_tokens", 64),
        temperature=body.get("temperature"),
        **_call_options(request, "generate"),
    )
    finish = result.sequences[0].finish_reason if result.sequences else None
    return web.json_response(
        {
            "request_id": result.request_id,
            "text": result.text,
            "finish_reason": finish.value if finish else None,
        }
    )


def _call_options(request: web.Request, route: str) -> dict[str, Any]:
    return {
        "timeout": request.app[SETTINGS].timeouts[route],
        "request_id": request.headers[REQUEST_ID_HEADER],  # always set by the middleware
    }


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ValueError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


# --- errors -------------------------------------------------------------------------

_STATUS: list[tuple[type[APIError], int]] = [
    (BadRequestError, 400),
    (NotFoundError, 404),
    (RateLimitError, 429),
    (UnavailableError, 503),
    (APITimeoutError, 504),
]


def bad_request(message: str, request_id: str) -> web.Response:
    """400 for what this service refuses before calling Modelwire (a body that is not a
    JSON object, an argument the SDK rejects), in the shape of Modelwire's own 400."""
    body = {
        "error": message,
        "code": "INVALID_ARGUMENT",
        "request_id": request_id,
        "field_violations": [],
    }
    return web.json_response(body, status=400)


def error_response(error: APIError) -> web.Response:
    """The HTTP answer for a failed Modelwire call, as the SDK's error classes suggest."""
    status = next((code for cls, code in _STATUS if isinstance(error, cls)), 502)
    body: dict[str, Any] = {
        "error": error.message,
        "code": error.code.name if error.code else None,
        "request_id": error.request_id,
    }
    headers: dict[str, str] = {}
    if isinstance(error, BadRequestError):
        body["field_violations"] = [
            {"field": v.field, "description": v.description} for v in error.field_violations
        ]
    if isinstance(error, RateLimitError) and error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return web.json_response(body, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def modelwire_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Every request has an id before anything can fail, so every error body names one.
    request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
    headers = request.headers.copy()
    headers[REQUEST_ID_HEADER] = request_id
    request = request.clone(headers=headers)
    try:
        return await handler(request)
    except APIError as error:
        return error_response(error)
    except ValueError as error:  # a bad body, or an argument the SDK checks before sending
        return bad_request(str(error), request_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--target", default=os.environ.get("MODELWIRE_TARGET", "127.0.0.1:50051"))
    args = parser.parse_args()
    settings = Settings(target=args.target, api_key=os.environ.get("MODELWIRE_API_KEY"))
    web.run_app(create_app(settings), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
