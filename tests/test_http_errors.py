"""Domain errors as OpenAI error bodies: the status, type, param and code of each."""

from __future__ import annotations

import json

import pytest

from modelwire_server import errors
from modelwire_server.http.errors import http_error, openai_param


@pytest.mark.parametrize(
    ("exc", "status", "kind", "code"),
    [
        (errors.InvalidArgument("sampling.top_p", "bad"), 400, "invalid_request_error", None),
        (errors.Unauthenticated("no key"), 401, "authentication_error", "invalid_api_key"),
        (errors.PermissionDenied("admin only"), 403, "permission_error", None),
        (errors.NotFound("no model 'x'"), 404, "not_found_error", "model_not_found"),
        (errors.ResourceExhausted("full", 2.5), 429, "rate_limit_error", "rate_limit_exceeded"),
        (errors.Unimplemented("not yet"), 501, "not_implemented_error", None),
        (errors.Unavailable("draining"), 503, "service_unavailable_error", None),
        (errors.DeadlineExceeded("too slow"), 504, "timeout_error", None),
        (RuntimeError("secret detail"), 500, "server_error", None),
    ],
)  # fmt: skip
def test_each_error_has_its_status_and_shape(
    exc: Exception, status: int, kind: str, code: str | None
) -> None:
    response = http_error(exc, "rid-1", {}).response("rid-1")
    body = json.loads(response.body)
    assert response.status_code == status
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (kind, code)
    assert response.headers["x-request-id"] == "rid-1"
    if status == 500:  # never the exception's own text
        assert body["error"]["message"] == "internal error (request id rid-1)"
    if status == 429:
        assert response.headers["retry-after"] == "3"  # whole seconds, rounded up
    else:
        assert "retry-after" not in response.headers


def test_params_use_the_request_s_names() -> None:
    renames = {"max_new_tokens": "max_tokens", "inputs": "input", "prompt": "messages"}
    assert openai_param("sampling.top_p", renames) == "top_p"
    assert openai_param("stopping.max_new_tokens", renames) == "max_tokens"
    assert openai_param("inputs[3]", renames) == "input[3]"
    assert openai_param("prompt", renames) == "messages"
    assert (
        openai_param("messages[0].content[1].image", renames) == "messages[0].content[1].image_url"
    )
    error = http_error(errors.InvalidArgument("sampling.n", "must be >= 1"), "r", renames)
    assert (error.status, error.param, error.message) == (400, "n", "n: must be >= 1")
