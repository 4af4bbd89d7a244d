"""examples/service_to_service: the HTTP service against the session server.

Needs aiohttp (in the dev extra, and the ``examples`` extra for running the example).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from modelwire import AsyncClient, RateLimitError
from tests.helpers import load_example
from tests.tolerances import TINY_UNIT_ATOL

APP_PATH = Path(__file__).parent.parent / "examples" / "service_to_service" / "app.py"


def _load_app() -> Any:
    return load_example(APP_PATH, "service_to_service_app")


app_module = _load_app()


async def _http(settings: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(app_module.create_app(settings))) as http:
        yield http


@pytest.fixture
async def http(server: Any) -> AsyncIterator[TestClient]:
    async for client in _http(app_module.Settings(target=server.target)):
        yield client


async def test_classify_embed_generate_match_the_sdk(http: TestClient, client: AsyncClient) -> None:
    expected = await client.classify_text(["great", "awful"], model="tiny-sentiment")
    response = await http.post(
        "/classify", json={"texts": ["great", "awful"], "model": "tiny-sentiment"}
    )
    assert response.status == 200
    body = await response.json()
    assert [r["label"] for r in body["results"]] == [r.top.label for r in expected]
    assert body["request_id"]

    vectors = await client.embed("a red fox", model="minilm", normalize=True)
    response = await http.post("/embed", json={"texts": ["a red fox"], "model": "minilm"})
    assert (await response.json())["vectors"][0] == pytest.approx(
        vectors[0].values, abs=TINY_UNIT_ATOL
    )

    reference = await client.generate("Hello", model="tiny-gpt2", temperature=0, max_new_tokens=8)
    payload = {"prompt": "Hello", "model": "tiny-gpt2", "temperature": 0, "max_new_tokens": 8}
    response = await http.post("/generate", json=payload, headers={"X-Request-Id": "svc-42"})
    body = await response.json()
    assert body == {"request_id": "svc-42", "text": reference.text, "finish_reason": "length"}


async def test_one_client_serves_every_request(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[AsyncClient] = []
    original = AsyncClient.__init__

    def counting_init(self: AsyncClient, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(AsyncClient, "__init__", counting_init)
    async for http in _http(app_module.Settings(target=server.target)):
        for text in ["one", "two", "three"]:
            response = await http.post("/classify", json={"texts": [text]})
            assert response.status == 200
    assert len(made) == 1


async def test_unknown_model_is_404_with_the_request_id(http: TestClient) -> None:
    response = await http.post("/classify", json={"texts": ["x"], "model": "no-such-model"})
    assert response.status == 404
    body = await response.json()
    assert body["code"] == "NOT_FOUND" and body["request_id"]


async def test_server_side_bad_request_is_400_with_field_violations(http: TestClient) -> None:
    # The sentiment model cannot generate: INVALID_ARGUMENT naming the `model` field.
    response = await http.post("/generate", json={"prompt": "hi", "model": "tiny-sentiment"})
    assert response.status == 400
    body = await response.json()
    assert body["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in body["field_violations"]] == ["model"], body


async def test_client_side_bad_argument_is_400(http: TestClient) -> None:
    response = await http.post("/classify", json={"texts": []})
    assert response.status == 400
    assert "inputs" in (await response.json())["error"]


@pytest.mark.parametrize("body", ["not json", "[1, 2]"])
async def test_a_body_that_is_not_a_json_object_is_a_json_400(http: TestClient, body: str) -> None:
    response = await http.post("/classify", data=body, headers={"X-Request-Id": "svc-7"})
    assert response.status == 400 and response.content_type == "application/json"
    assert await response.json() == {
        "error": "the body must be JSON"
        if body == "not json"
        else "the body must be a JSON object",
        "code": "INVALID_ARGUMENT",
        "request_id": "svc-7",
        "field_violations": [],
    }


async def test_every_error_has_a_request_id_without_one_sent(http: TestClient) -> None:
    refused_here = await http.post("/embed", data="{")
    refused_by_the_sdk = await http.post("/classify", json={"texts": []})
    refused_by_modelwire = await http.post("/classify", json={"texts": [""]})
    ids = []
    for response in (refused_here, refused_by_the_sdk, refused_by_modelwire):
        assert response.status == 400
        body = await response.json()
        assert body["code"] == "INVALID_ARGUMENT" and body["request_id"], body
        ids.append(body["request_id"])
    assert len(set(ids)) == 3


async def test_a_passed_deadline_is_504(server: Any) -> None:
    timeouts = {"classify": 2.0, "embed": 2.0, "generate": 0.001}
    async for http in _http(app_module.Settings(target=server.target, timeouts=timeouts)):
        payload = {"prompt": "Go", "model": "tiny-gpt2", "max_new_tokens": 200}
        response = await http.post("/generate", json=payload)
        body = await response.json()
        assert response.status == 504, body
        assert body["code"] == "DEADLINE_EXCEEDED"


async def test_an_unreachable_server_is_503() -> None:
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = app_module.Settings(target=f"127.0.0.1:{port}", max_retries=0)
    async for http in _http(settings):
        response = await http.post("/classify", json={"texts": ["x"]})
        assert response.status == 503
        assert (await response.json())["code"] == "UNAVAILABLE"


def test_rate_limit_is_429_with_retry_after() -> None:
    # A full queue needs a dedicated server (see test_generate); the mapping is checked here.
    error = RateLimitError("queue full", request_id="r1", code=None, retry_after=1.2)
    response = app_module.error_response(error)
    assert response.status == 429 and response.headers["Retry-After"] == "2"
