"""health() and wait_until_ready() against grpcio-health-checking's servicer."""

from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health_pb2

from modelwire import APITimeoutError, AsyncClient
from tests.sdk.fakes import Fakes

SERVICE = "modelwire.v1.InferenceService"
Status = health_pb2.HealthCheckResponse


async def test_health_reads_each_status(client: AsyncClient, fakes: Fakes) -> None:
    assert await client.health() == "SERVING"
    assert await client.health("") == "SERVING"
    await fakes.health.set(SERVICE, Status.NOT_SERVING)
    assert await client.health() == "NOT_SERVING"
    await fakes.health.set(SERVICE, Status.UNKNOWN)
    assert await client.health() == "UNKNOWN"
    assert await client.health("no.such.Service") == "SERVICE_UNKNOWN"


async def test_wait_until_ready_returns_once_serving(client: AsyncClient, fakes: Fakes) -> None:
    await fakes.health.set(SERVICE, Status.NOT_SERVING)
    waiter = asyncio.create_task(client.wait_until_ready(timeout=30))

    await fakes.health.checked.wait()  # it asked at least once and heard NOT_SERVING
    assert not waiter.done()
    await fakes.health.set(SERVICE, Status.SERVING)

    await asyncio.wait_for(waiter, timeout=30)
    assert fakes.health.checks >= 2


async def test_wait_until_ready_times_out(client: AsyncClient, fakes: Fakes) -> None:
    await fakes.health.set(SERVICE, Status.NOT_SERVING)

    with pytest.raises(APITimeoutError, match="NOT_SERVING"):
        await client.wait_until_ready(timeout=0.3)
