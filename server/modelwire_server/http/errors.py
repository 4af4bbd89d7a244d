"""Domain errors as OpenAI's error responses: ``{"error": {message, type, param, code}}``.

The status code comes from the same table the gRPC interceptor uses (``status_of``),
then the gRPC code becomes its HTTP status, so both fronts answer a failure alike.
Field names inside the server (``sampling.top_p``, ``stopping.max_new_tokens``,
``inputs[2]``) become the request's own (``top_p``, ``max_tokens``, ``input[2]``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import grpc
from starlette.responses import JSONResponse

from modelwire_server import errors
from modelwire_server.interceptors import status_of

# gRPC code → HTTP status and OpenAI error type.
_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}
_CODES = {
    grpc.StatusCode.UNAUTHENTICATED: "invalid_api_key",
    grpc.StatusCode.NOT_FOUND: "model_not_found",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limit_exceeded",
}
_PREFIXES = ("sampling.", "stopping.", "options.")
_INDEX = re.compile(r"^([a-z_]+)(.*)$")


@dataclass
class HttpError:
    """What one failure answers: the status, the gRPC code name (for logs and metrics),
    and the body's fields."""

    status: int
    code_name: str
    message: str
    type: str
    param: str | None
    code: str | None
    retry_after_s: float | None = None

    def response(self, request_id: str) -> JSONResponse:
        headers = {"x-request-id": request_id}
        if self.retry_after_s is not None:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=headers)


def http_error(exc: BaseException, request_id: str, renames: dict[str, str]) -> HttpError:
    """The answer to ``exc``; ``renames`` maps the server's field names to the route's."""
    code, message, _ = status_of(exc, request_id)
    status, kind = _HTTP.get(code, (500, "server_error"))
    param = None
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        inner = exc.violations[0].field
        param = openai_param(inner, renames)
        description = exc.violations[0].description
        message = f"{param}: {description}" if param else description
    elif isinstance(exc, errors.NotFound):
        param = "model"
    retry = exc.retry_after_s if isinstance(exc, errors.ResourceExhausted) else None
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and retry is None:
        retry = 1.0  # capacity frees up as running calls end: a short wait can help
    return HttpError(status, code.name, message, kind, param, _CODES.get(code), retry)


def openai_param(field: str, renames: dict[str, str]) -> str:
    """``sampling.top_p`` → ``top_p``; ``inputs[2]`` → ``input[2]`` with ``{"inputs": "input"}``."""
    for prefix in _PREFIXES:
        if field.startswith(prefix):
            field = field.removeprefix(prefix)
            break
    if field.startswith("messages[") and field.endswith(".image"):
        return f"{field}_url"  # a chat image part is an image_url part here
    if field in renames:
        return renames[field]
    match = _INDEX.match(field)
    if match and match.group(1) in renames:
        return renames[match.group(1)] + match.group(2)
    return field
