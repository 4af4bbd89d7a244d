"""AsyncClient plumbing: request ids, credentials, metadata, retries, options, closing."""

from __future__ import annotations

import json
import re

import grpc
import pytest

from modelwire import AsyncClient, InternalServerError, UnavailableError
from modelwire._transport import service_config
from modelwire.v1 import inference_service_pb2 as pb
from tests.sdk.fakes import Fakes, plain_status


@pytest.fixture(autouse=True)
def _canned(fakes: Fakes) -> None:
    fakes.inference.responses["ClassifyText"] = pb.ClassifyTextResponse()


async def test_each_call_sends_a_fresh_request_id(client: AsyncClient, fakes: Fakes) -> None:
    first = await client.classify_text("a")
    second = await client.classify_text("b")

    sent = [c.metadata["x-request-id"] for c in fakes.recorder.calls]
    assert all(re.fullmatch(r"[0-9a-f]{32}", s) for s in sent)
    assert sent[0] != sent[1]
    assert [first.request_id, second.request_id] == sent


async def test_result_carries_the_id_the_server_echoed(client: AsyncClient, fakes: Fakes) -> None:
    fakes.recorder.echo_request_id = "chosen-by-server"

    results = await client.classify_text("a")

    assert results.request_id == "chosen-by-server"


async def test_caller_supplied_request_id_is_sent(fakes: Fakes) -> None:
    async with AsyncClient(fakes.target, metadata={"X-Request-Id": "from-metadata"}) as client:
        by_metadata = await client.classify_text("a")
        by_argument = await client.classify_text("b", request_id="from-argument")

    assert [c.metadata["x-request-id"] for c in fakes.recorder.calls] == [
        "from-metadata",
        "from-argument",
    ]
    assert (by_metadata.request_id, by_argument.request_id) == ("from-metadata", "from-argument")


async def test_api_key_is_a_bearer_token(fakes: Fakes) -> None:
    async with AsyncClient(fakes.target, api_key="s3cret") as client:
        await client.classify_text("a")
    async with AsyncClient(fakes.target) as client:
        await client.classify_text("a")

    with_key, without_key = fakes.recorder.calls
    assert with_key.metadata["authorization"] == "Bearer s3cret"
    assert "authorization" not in without_key.metadata


async def test_metadata_is_sent_and_with_options_merges_it(fakes: Fakes) -> None:
    async with AsyncClient(fakes.target, metadata={"x-tenant": "a", "x-team": "t"}) as client:
        await client.with_options(metadata={"x-tenant": "b"}).classify_text("a")
        await client.classify_text("a")

    copy_call, base_call = fakes.recorder.calls
    assert (copy_call.metadata["x-tenant"], copy_call.metadata["x-team"]) == ("b", "t")
    assert base_call.metadata["x-tenant"] == "a"


RETRIED_CALLS = {
    "ClassifyText": lambda c: c.classify_text("a"),
    "ListModels": lambda c: c.list_models(),
    "Generate": lambda c: c.generate("a"),
}


@pytest.mark.parametrize("rpc", RETRIED_CALLS)
async def test_unavailable_is_retried_by_grpc(fakes: Fakes, rpc: str) -> None:
    fakes.recorder.failures = [plain_status(grpc.StatusCode.UNAVAILABLE)] * 2

    async with AsyncClient(fakes.target, max_retries=2) as client:
        result = await RETRIED_CALLS[rpc](client)

    attempts = fakes.recorder.calls
    assert [a.rpc for a in attempts] == [rpc] * 3
    # Every attempt is the same call: one request id, which the result reports.
    assert {a.metadata["x-request-id"] for a in attempts} == {result.request_id}


async def test_retries_give_up_after_max_retries(fakes: Fakes) -> None:
    fakes.recorder.failures = [plain_status(grpc.StatusCode.UNAVAILABLE)] * 5

    async with AsyncClient(fakes.target, max_retries=1) as client:
        with pytest.raises(UnavailableError):
            await client.classify_text("a")

    assert len(fakes.recorder.calls) == 2


async def test_no_retry_with_max_retries_zero(fakes: Fakes) -> None:
    fakes.recorder.failures = [plain_status(grpc.StatusCode.UNAVAILABLE)]

    async with AsyncClient(fakes.target, max_retries=0) as client:
        with pytest.raises(UnavailableError):
            await client.classify_text("a")

    assert len(fakes.recorder.calls) == 1


async def test_with_options_max_retries_gets_its_own_policy(fakes: Fakes) -> None:
    async with AsyncClient(fakes.target, max_retries=2) as client:
        fakes.recorder.failures = [plain_status(grpc.StatusCode.UNAVAILABLE)]
        with pytest.raises(UnavailableError):
            await client.with_options(max_retries=0).classify_text("a")
        fakes.recorder.failures = [plain_status(grpc.StatusCode.UNAVAILABLE)]
        await client.classify_text("a")  # the original still retries

    assert len(fakes.recorder.calls) == 3


async def test_other_errors_are_not_retried(fakes: Fakes) -> None:
    fakes.recorder.failures = [plain_status(grpc.StatusCode.INTERNAL)]

    async with AsyncClient(fakes.target, max_retries=2) as client:
        with pytest.raises(InternalServerError):
            await client.classify_text("a")

    assert len(fakes.recorder.calls) == 1


def test_service_config_covers_both_services() -> None:
    [config] = json.loads(service_config(3))["methodConfig"]
    assert config["name"] == [
        {"service": "modelwire.v1.InferenceService"},
        {"service": "modelwire.v1.ModelService"},
    ]
    assert config["retryPolicy"]["maxAttempts"] == 4
    assert config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "retryPolicy" not in json.loads(service_config(0))["methodConfig"][0]


async def test_with_options_is_a_copy(fakes: Fakes) -> None:
    async with AsyncClient(fakes.target, timeout=30, max_retries=2) as client:
        quick = client.with_options(timeout=None, max_retries=0)

        assert (quick.timeout, quick.max_retries) == (None, 0)
        assert (client.timeout, client.max_retries) == (30, 2)
        await quick.classify_text("a")

    with pytest.raises(RuntimeError, match="closed"):
        await quick.classify_text("a")  # closing the original closed the shared channels


async def test_closed_client_refuses_calls(fakes: Fakes) -> None:
    client = AsyncClient(fakes.target)
    await client.classify_text("a")
    await client.close()

    with pytest.raises(RuntimeError, match="closed"):
        await client.classify_text("a")


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"timeout": -1}, {"max_retries": -1}])
def test_client_options_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AsyncClient(**kwargs)
