"""The Prometheus endpoint: scraped over HTTP around real calls, its series move as they should."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelwire import AsyncClient, NotFoundError
from modelwire_server.config import ConfigError, ServerConfig, resolve
from modelwire_server.server import preset_configs
from tests.conftest import RunningServer, start_server

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def metered(preset_cache: Path) -> Iterator[RunningServer]:
    models = [m for m in preset_configs("tiny") if m.name in {"tiny-sentiment", "tiny-gpt2"}]
    running = start_server(ServerConfig(port=0, metrics_port=0, models=models))
    yield running
    running.stop()


@pytest.fixture
async def metered_client(metered: RunningServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(metered.target, timeout=60) as client:
        yield client


def http_get(server: RunningServer, path: str) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{server.server.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def scrape(server: RunningServer) -> Scrape:
    status, content_type, body = await asyncio.to_thread(http_get, server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(scraped: Scrape, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not exported yet (a counter that never moved)."""
    return scraped.get((name, frozenset(labels.items())), 0.0)


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_classify_text_counts_requests_batches_and_queue_time(
    metered: RunningServer, metered_client: AsyncClient
) -> None:
    before = await scrape(metered)
    await metered_client.classify_text(["good", "bad", "so so"])  # the task's default model
    with pytest.raises(NotFoundError):
        await metered_client.classify_text("good", model="no-such-model")
    after = await scrape(metered)

    ok = {"rpc": "ClassifyText", "model": "tiny-sentiment"}
    assert moved(before, after, "modelwire_requests_total", **ok, code="OK") == 1
    # An unknown name is no label: clients must not be able to mint series.
    assert moved(before, after, "modelwire_requests_total", **ok | {"model": ""}, code="NOT_FOUND")
    assert not any(dict(labels).get("model") == "no-such-model" for _, labels in after)
    assert moved(before, after, "modelwire_request_duration_seconds_count", **ok) == 1
    assert moved(before, after, "modelwire_request_duration_seconds_sum", **ok) > 0
    assert moved(before, after, "modelwire_queue_time_seconds_count", model="tiny-sentiment") == 1
    batch = {"model": "tiny-sentiment", "kind": "oneshot"}
    assert moved(before, after, "modelwire_batch_size_sum", **batch) == 3  # three inputs ran
    assert 1 <= moved(before, after, "modelwire_batch_size_count", **batch) <= 3
    assert value(after, "modelwire_batch_size_bucket", **batch, le="+Inf") == value(
        after, "modelwire_batch_size_count", **batch
    )
    assert value(after, "modelwire_queued_inputs", model="tiny-sentiment") == 0
    assert value(after, "modelwire_model_state", model="tiny-sentiment", state="ready") == 1
    assert value(after, "modelwire_model_state", model="tiny-sentiment", state="loading") == 0


async def test_generate_times_tokens_and_counts_decode_steps(
    metered: RunningServer, metered_client: AsyncClient
) -> None:
    before = await scrape(metered)
    result = await metered_client.generate(
        "Hello there", model="tiny-gpt2", n=2, temperature=1.0, seed=3, max_new_tokens=6,
        ignore_eos=True,
    )  # fmt: skip
    after = await scrape(metered)

    assert [len(s.tokens) for s in result.sequences] == [6, 6]
    gen = {"model": "tiny-gpt2"}
    assert moved(before, after, "modelwire_requests_total", rpc="Generate", **gen, code="OK") == 1
    assert moved(before, after, "modelwire_time_to_first_token_seconds_count", **gen) == 1
    assert moved(before, after, "modelwire_queue_time_seconds_count", **gen) == 1
    # One mean gap per sequence: both sequences made more than one token.
    assert moved(before, after, "modelwire_inter_token_latency_seconds_count", **gen) == 2
    assert moved(before, after, "modelwire_inter_token_latency_seconds_sum", **gen) > 0
    decode = {"model": "tiny-gpt2", "kind": "decode"}
    steps = moved(before, after, "modelwire_batch_size_count", **decode)
    assert steps >= 1  # and every one of them ran both sequences together:
    assert moved(before, after, "modelwire_batch_size_sum", **decode) == 2 * steps


async def test_running_sequences_and_kv_cache_while_a_generation_is_held(
    metered: RunningServer, metered_client: AsyncClient
) -> None:
    worker = metered.runner("tiny-gpt2").worker
    holding, gate = threading.Event(), threading.Event()

    def hold() -> None:  # a job on the device worker: no engine step runs until the gate opens
        holding.set()
        gate.wait()

    async def submit_hold() -> None:
        worker.submit(hold)

    metered.call(worker.run(lambda: None))  # any step still finishing earlier work is done
    idle = await scrape(metered)
    try:
        async with metered_client.generate_stream(
            "Hello", model="tiny-gpt2", max_new_tokens=64, ignore_eos=True
        ) as stream:
            async for _ in stream:  # the first message: the prompt has been prefilled
                metered.call(submit_hold())
                break
            assert await asyncio.to_thread(holding.wait, 60)
            held = await scrape(metered)
    finally:
        gate.set()
    assert value(idle, "modelwire_running_sequences", model="tiny-gpt2") == 0
    assert value(idle, "modelwire_kv_cache_tokens", model="tiny-gpt2") == 0
    assert value(held, "modelwire_running_sequences", model="tiny-gpt2") == 1
    assert value(held, "modelwire_kv_cache_tokens", model="tiny-gpt2") > 0
    assert value(held, "modelwire_waiting_sequences", model="tiny-gpt2") == 0


async def test_only_the_metrics_path_is_served(metered: RunningServer) -> None:
    status, _, body = await asyncio.to_thread(http_get, metered, "/")
    assert status == 404 and "/metrics" in body


def test_metrics_are_off_unless_a_port_is_given() -> None:
    assert resolve(environ={}).metrics_port is None
    assert resolve(environ={"MODELWIRE_METRICS_PORT": "9464"}).metrics_port == 9464
    assert (
        resolve(environ={"MODELWIRE_METRICS_PORT": "9464"}, metrics_port=9000).metrics_port == 9000
    )
    with pytest.raises(ConfigError, match="metrics_port"):
        resolve(environ={}, metrics_port=70000)
    with pytest.raises(ConfigError, match="gRPC port"):
        resolve(environ={}, port=9464, metrics_port=9464)
