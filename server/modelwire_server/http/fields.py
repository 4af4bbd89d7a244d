"""Reading an OpenAI request's JSON: each bad field is a 400 naming it (as ``param``)."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request

from modelwire_server.errors import InvalidArgument

# OpenAI features this server does not have: a request using them is refused, naming
# the field, rather than answered as if they had been honoured.
REFUSED = {
    "functions": "the deprecated functions are not supported: use tools",
    "audio": "audio output is not supported; use /v1/audio/speech",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:  # refused before it is read
        raise InvalidArgument("", f"the request body is {declared} bytes; the limit is {limit}")
    body = await request.body()
    if len(body) > limit:
        raise InvalidArgument("", f"the request body is {len(body)} bytes; the limit is {limit}")
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument("", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument("", "the request body must be a JSON object")
    return value


def refuse_unsupported(body: dict[str, Any]) -> None:
    for key, why in REFUSED.items():
        if body.get(key) not in (None, [], {}):
            raise InvalidArgument(key, why)


def string(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidArgument(key, "is required")
        return None
    if not isinstance(value, str):
        raise InvalidArgument(key, f"must be a string, got {type(value).__name__}")
    return value


def boolean(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidArgument(key, f"must be true or false, got {value!r}")
    return value


def integer(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(key, f"must be an integer, got {value!r}")
    return value


def number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(key, f"must be a number, got {value!r}")
    return float(value)


def strings(body: dict[str, Any], key: str) -> list[str] | None:
    """A string or a list of strings (as ``stop`` and ``input`` take them)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidArgument(key, "must be a string or a list of strings")
