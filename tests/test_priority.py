"""Request priorities end to end: the SDK's and the HTTP door's ``priority`` reach the
engine, and with the batch full a high-priority request sent after low ones is admitted
before them. The device worker is held while the requests queue (no engine step runs),
so every request is waiting when admission starts; the budget admits one at a time.

Admission order is read from ``Usage.queue_time`` (and the access log's ``queue_ms``):
the high request came after every low one, so it has the shortest wait exactly when it
was admitted first. That holds by construction, whatever the timing of the steps.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelwire import AsyncClient
from modelwire.cli import main
from tests.conftest import (
    AccessLines,
    RunningServer,
    engine_stats_once_idle,
    preset_variant,
    start_server,
)

MODEL = "gpt2"
NEW = 40  # "Go" + 40 new tokens: two requests (2 x 41) do not fit a budget of 60
PROMPT = "Go"


@pytest.fixture(scope="module")
def prio_server(preset_cache: Path) -> Iterator[RunningServer]:
    from modelwire_server.config import ServerConfig

    gpt2 = preset_variant(MODEL, "text-generation", "tiny-gpt2", max_waiting=8, max_batch_tokens=60)
    running = start_server(ServerConfig(port=0, http_port=0, metrics_port=0, models=[gpt2]))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def priorities(prio_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The priority of each generation request the runner hands its engine."""
    engine = prio_server.runner(MODEL).engine
    seen: list[int] = []
    submit = engine.submit

    def recording(request: Any, sink: Any) -> Any:
        seen.append(request.priority)
        return submit(request, sink)

    monkeypatch.setattr(engine, "submit", recording)
    return seen


@asynccontextmanager
async def worker_held(running: RunningServer) -> AsyncIterator[threading.Event]:
    """No engine step runs until the yielded gate is set (or the block ends)."""
    runner = running.runner(MODEL)
    stats = await engine_stats_once_idle(runner.engine)
    assert stats.running_rows == stats.waiting == 0, stats
    holding, gate = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        gate.wait()

    async def submit_hold() -> None:
        runner.worker.submit(hold)

    running.call(submit_hold())
    try:
        assert await asyncio.to_thread(holding.wait, 60)
        yield gate
    finally:
        gate.set()


async def until_waiting(running: RunningServer, count: int) -> None:
    """Poll the engine's state (not a guess of time) until ``count`` requests wait."""
    engine = running.runner(MODEL).engine
    for _ in range(6000):
        if engine.stats().waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} requests never waited: {engine.stats()}")


def scrape(running: RunningServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = f"http://127.0.0.1:{running.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as reply:
        body = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


class Lows:
    """Low-priority streams through the SDK, each logging its name at its first message."""

    def __init__(self, client: AsyncClient, first: list[str]) -> None:
        self.client, self.first = client, first

    async def call(self, name: str, **params: Any) -> tuple[str, Any]:
        seen = False
        async with self.client.generate_stream(
            PROMPT, model=MODEL, max_new_tokens=NEW, temperature=0, ignore_eos=True, **params
        ) as stream:
            async for _ in stream:
                if not seen:
                    self.first.append(name)
                    seen = True
            result = await stream.final()
        assert len(result.sequences[0].tokens) == NEW
        return name, result.sequences[0].usage


async def test_a_high_priority_sent_last_is_admitted_first(
    prio_server: RunningServer, priorities: list[int]
) -> None:
    first: list[str] = []
    async with AsyncClient(prio_server.target, timeout=120) as client:
        lows = Lows(client, first)
        calls = [("low1", {}), ("low2", {"priority": 0}), ("low3", {}), ("high", {"priority": 7})]
        async with worker_held(prio_server) as gate:
            tasks = []
            for i, (name, params) in enumerate(calls):
                tasks.append(asyncio.create_task(lows.call(name, **params)))
                await until_waiting(prio_server, i + 1)  # arrivals in this order
            held = await asyncio.to_thread(scrape, prio_server)
            gate.set()
            usage = dict(await asyncio.gather(*tasks))

    assert priorities == [0, 0, 0, 7]
    # Admitted first, though it arrived last: the shortest wait of all.
    for low in ("low1", "low2", "low3"):
        assert usage["high"].queue_time < usage[low].queue_time, usage
    # The first messages follow admission: each low starts only once the one before it
    # has finished all its tokens (one request fits the budget at a time).
    assert first == ["high", "low1", "low2", "low3"]

    waiting = {"model": MODEL}
    assert held[("modelwire_waiting_sequences", frozenset(waiting.items()))] == 4
    by_priority = {
        dict(labels)["priority"]: value
        for (name, labels), value in held.items()
        if name == "modelwire_waiting_requests" and dict(labels)["model"] == MODEL
    }
    assert by_priority == {"0": 3, "7": 1}
    idle = await asyncio.to_thread(scrape, prio_server)
    assert (
        idle[("modelwire_waiting_requests", frozenset({**waiting, "priority": "0"}.items()))] == 0
    )


async def test_the_http_door_passes_priority(
    prio_server: RunningServer, priorities: list[int], access: AccessLines
) -> None:
    base = f"http://127.0.0.1:{prio_server.server.http_port}"
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": NEW, "temperature": 0}
    first: list[str] = []

    async def high(http: httpx.AsyncClient) -> None:
        reply = await http.post(
            "/v1/completions",
            json=body | {"ignore_eos": True, "priority": -7},  # vLLM's way: lower is sooner
            headers={"x-request-id": "prio-http-high"},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == NEW

    async with (
        AsyncClient(prio_server.target, timeout=120) as client,
        httpx.AsyncClient(base_url=base, timeout=120) as http,
    ):
        lows = Lows(client, first)
        async with worker_held(prio_server) as gate:
            tasks = []
            for i in range(2):
                tasks.append(asyncio.create_task(lows.call(f"low{i}")))
                await until_waiting(prio_server, i + 1)
            tasks.append(asyncio.create_task(high(http)))
            await until_waiting(prio_server, 3)
            gate.set()
            results = await asyncio.gather(*tasks)
    usage = dict(r for r in results if r is not None)

    assert priorities == [0, 0, 7]
    queue_s = access.line("prio-http-high").fields["queue_ms"] / 1000  # type: ignore[attr-defined]
    assert all(queue_s < u.queue_time for u in usage.values()), (queue_s, usage)


@pytest.mark.parametrize("bad", ["high", 1.5, True, [1], 2**31, -(2**31) - 1])
async def test_the_http_door_refuses_a_priority_that_is_not_an_int32(
    prio_server: RunningServer, priorities: list[int], bad: Any
) -> None:
    base = f"http://127.0.0.1:{prio_server.server.http_port}"
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2, "priority": bad}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        reply = await http.post("/v1/completions", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "priority" and "priority" in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert priorities == []


async def test_the_http_door_takes_the_int32_range(
    prio_server: RunningServer, priorities: list[int]
) -> None:
    base = f"http://127.0.0.1:{prio_server.server.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for priority in (-(2**31), 2**31 - 1, None):
            body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2, "priority": priority}
            reply = await http.post("/v1/completions", json=body)
            assert reply.status_code == 200, reply.text
    # Negated, as vLLM's lower-is-sooner becomes GenerateRequest's higher-is-sooner.
    assert priorities == [2**31 - 1, -(2**31 - 1), 0]


def test_the_cli_passes_priority(prio_server: RunningServer, priorities: list[int]) -> None:
    argv = ["--target", prio_server.target, "--json", "generate", PROMPT, "--model", MODEL]
    argv += ["--max-new-tokens", "2"]
    assert main([*argv, "--priority", "-4"]) == 0
    assert main(argv) == 0
    assert priorities == [-4, 0]
    assert main([*argv, "--priority", "soon"]) == 2  # argparse: not an integer
    assert main([*argv, "--priority", str(2**31)]) == 2  # the SDK: not an int32
    assert priorities == [-4, 0]
