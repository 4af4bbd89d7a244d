"""gRPC statuses become the SDK's exceptions, with rich details and the request id."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from modelwire import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    FieldViolation,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestCancelledError,
    UnavailableError,
    UnimplementedError,
)
from modelwire._errors import from_rpc_error
from modelwire.v1 import inference_service_pb2 as pb
from tests.sdk.fakes import Fakes, plain_status, rich_status

Code = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (Code.INVALID_ARGUMENT, BadRequestError),
        (Code.NOT_FOUND, NotFoundError),
        (Code.RESOURCE_EXHAUSTED, RateLimitError),
        (Code.UNAUTHENTICATED, AuthenticationError),
        (Code.PERMISSION_DENIED, PermissionDeniedError),
        (Code.UNAVAILABLE, UnavailableError),
        (Code.CANCELLED, RequestCancelledError),
        (Code.UNIMPLEMENTED, UnimplementedError),
        (Code.INTERNAL, InternalServerError),
        (Code.UNKNOWN, InternalServerError),
        (Code.DATA_LOSS, InternalServerError),
        (Code.DEADLINE_EXCEEDED, APITimeoutError),
        (Code.FAILED_PRECONDITION, APIStatusError),
    ],
)
async def test_each_status_maps_to_its_exception(
    client: AsyncClient, fakes: Fakes, code: grpc.StatusCode, error_class: type[APIError]
) -> None:
    fakes.recorder.failures = [plain_status(code, "it went wrong")]

    with pytest.raises(error_class) as caught:
        await client.with_options(max_retries=0).classify_text("x")

    error = caught.value
    assert type(error) is error_class
    assert error.code is code
    assert error.message == "it went wrong"
    assert error.request_id == fakes.recorder.calls[0].metadata["x-request-id"]
    assert code.name in str(error) and error.request_id in str(error)


def test_exception_hierarchy() -> None:
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APIConnectionError, APIError)
    assert not issubclass(APIConnectionError, APIStatusError)
    for status_error in (BadRequestError, RateLimitError, UnavailableError, InternalServerError):
        assert issubclass(status_error, APIStatusError)


async def test_bad_request_carries_field_violations(client: AsyncClient, fakes: Fakes) -> None:
    fakes.recorder.failures = [
        rich_status(
            Code.INVALID_ARGUMENT,
            "2 problems",
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="inputs[1]", description="longer than 512 tokens"
                    ),
                    error_details_pb2.BadRequest.FieldViolation(
                        field="top_k", description="must be positive"
                    ),
                ]
            ),
        )
    ]

    with pytest.raises(BadRequestError) as caught:
        await client.classify_text(["a", "b"])

    assert caught.value.field_violations == [
        FieldViolation("inputs[1]", "longer than 512 tokens"),
        FieldViolation("top_k", "must be positive"),
    ]


async def test_rate_limit_carries_retry_after(client: AsyncClient, fakes: Fakes) -> None:
    fakes.recorder.failures = [
        rich_status(
            Code.RESOURCE_EXHAUSTED,
            "queue full",
            error_details_pb2.RetryInfo(retry_delay=Duration(seconds=1, nanos=500_000_000)),
        )
    ]

    with pytest.raises(RateLimitError) as caught:
        await client.classify_text("x")

    assert caught.value.retry_after == 1.5


async def test_rate_limit_without_retry_info(client: AsyncClient, fakes: Fakes) -> None:
    fakes.recorder.failures = [plain_status(Code.RESOURCE_EXHAUSTED, "memory budget")]

    with pytest.raises(RateLimitError) as caught:
        await client.classify_text("x")

    assert caught.value.retry_after is None


def test_inconsistent_rich_status_keeps_the_plain_one() -> None:
    # A rich status whose code disagrees with the call's is a server bug; the call's own
    # status still says what happened.
    rich = status_pb2.Status(code=Code.NOT_FOUND.value[0], message="other")
    error = grpc.aio.AioRpcError(
        Code.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", rich.SerializeToString())),
        details="bad",
    )

    mapped = from_rpc_error(error, fallback_request_id="sent")

    assert isinstance(mapped, BadRequestError)
    assert mapped.field_violations == []
    assert mapped.request_id == "sent"  # nothing echoed: the id this client sent


async def test_deadline_is_a_timeout_error(client: AsyncClient, fakes: Fakes) -> None:
    fakes.inference.responses["ClassifyText"] = pb.ClassifyTextResponse()
    fakes.recorder.hold = True

    with pytest.raises(APITimeoutError) as caught:
        await client.classify_text("x", timeout=0.2)

    assert caught.value.code is Code.DEADLINE_EXCEEDED
    assert caught.value.request_id == fakes.recorder.calls[0].metadata["x-request-id"]
    # The deadline travels with the call, so the server stops waiting too.
    await asyncio.wait_for(fakes.recorder.cancelled.wait(), timeout=10)
