"""The SDK over several replicas: gRPC round_robin across a list of addresses.

Two servers serve the same tiny model under different names, so which replica answered
a ListModels is visible in its reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelwire import AsyncClient, NotFoundError
from modelwire._transport import channel_target, service_config
from modelwire_server.config import ServerConfig
from modelwire_server.server import preset_configs
from tests.conftest import RunningServer, start_server


@pytest.fixture(scope="module")
def replicas(preset_cache: Path) -> Iterator[list[RunningServer]]:
    [sentiment] = [m for m in preset_configs("tiny") if m.name == "tiny-sentiment"]
    running: list[RunningServer] = []
    try:
        for name in ("on-a", "on-b"):
            model = dataclasses.replace(sentiment, name=name)
            running.append(start_server(ServerConfig(port=0, models=[model])))
        yield running
    finally:
        for server in running:
            server.stop()


async def test_calls_spread_over_every_listed_replica(replicas: list[RunningServer]) -> None:
    targets = [r.target for r in replicas]
    async with AsyncClient(targets, timeout=30) as client:
        await client.wait_until_ready(timeout=30)
        seen: list[str] = []
        # round_robin uses the replicas that are connected; both are within a few calls.
        for _ in range(40):
            seen += [m.name for m in await client.list_models()]
        assert seen.count("on-a") >= 10 and seen.count("on-b") >= 10, seen
        # Inference calls are balanced too, and each replica serves its own model.
        for name in ("on-a", "on-b"):
            answered = 0
            for _ in range(10):
                try:
                    await client.classify_text("fine", model=name)
                    answered += 1
                except NotFoundError:  # the other replica has no such model
                    pass
            assert 0 < answered < 10


def test_targets_become_one_balanced_grpc_target() -> None:
    assert channel_target("127.0.0.1:1") == ("127.0.0.1:1", False)
    assert channel_target("dns:///models.internal:50051") == ("dns:///models.internal:50051", True)
    assert channel_target(["127.0.0.1:1", "10.0.0.2:2"]) == ("ipv4:127.0.0.1:1,10.0.0.2:2", True)
    assert channel_target(["[::1]:1", "[::2]:2"]) == ("ipv6:[::1]:1,[::2]:2", True)
    assert channel_target(["localhost:7"])[0] in ("127.0.0.1:7", "[::1]:7")
    with pytest.raises(ValueError, match="mix"):
        channel_target(["127.0.0.1:1", "[::1]:2"])
    with pytest.raises(ValueError, match="host:port"):
        channel_target(["no-port"])
    assert '"round_robin"' in service_config(0, round_robin=True)
    assert "loadBalancingConfig" not in service_config(0)
