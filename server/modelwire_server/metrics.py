"""Prometheus metrics: one registry per server, served over HTTP on a port of its own.

Per-call series (requests, durations, queue time, time to first token, inter-token
latency) are observed from each call's record as it ends. Gauges of state (models,
running and waiting sequences, KV cache, queued inputs) and the batch-size histograms
are read from the model registry at scrape time, so serving pays nothing for them.
Waiting generation requests are also counted by priority.
Scrapes are answered on the server's event loop, where that state lives.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from modelwire_server.calls import CallRecord
from modelwire_server.registry import ModelState, Registry

log = logging.getLogger(__name__)

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_GAPS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# The text format generate_latest writes, as every Prometheus version reads it (newer
# prometheus_client names 1.0.0 "latest", which only matters for UTF-8 metric names).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The series of one server; ``observe`` is a call observer of the interceptor."""

    def __init__(self, models: Registry) -> None:
        self.models = models
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "modelwire_requests",
            "RPCs answered, by status code",
            ["rpc", "model", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "modelwire_request_duration_seconds",
            "Time from a call's arrival to its status",
            ["rpc", "model"],
            buckets=SECONDS,
            registry=r,
        )
        self.queue = Histogram(
            "modelwire_queue_time_seconds",
            "Time a call's inputs waited before running (the longest of them)",
            ["model"],
            buckets=SECONDS,
            registry=r,
        )
        self.first_token = Histogram(
            "modelwire_time_to_first_token_seconds",
            "Time from a generation call's arrival at the engine to its first token",
            ["model"],
            buckets=SECONDS,
            registry=r,
        )
        self.token_gap = Histogram(
            "modelwire_inter_token_latency_seconds",
            "Mean time between the tokens of a generated sequence (one per sequence)",
            ["model"],
            buckets=TOKEN_GAPS,
            registry=r,
        )
        r.register(ModelStateCollector(models))

    def observe(self, call: CallRecord) -> None:
        # Only configured names become labels: clients must not mint series at will.
        model = call.model if call.model in self.models.entries else ""
        self.requests.labels(call.rpc, model, call.code).inc()
        self.duration.labels(call.rpc, model).observe(call.duration_s)
        if call.queue_s is not None:
            self.queue.labels(model).observe(call.queue_s)
        if call.time_to_first_token_s is not None:
            self.first_token.labels(model).observe(call.time_to_first_token_s)
        for gap in call.inter_token_s:
            self.token_gap.labels(model).observe(gap)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelStateCollector:
    """Scrape-time series read from the model registry's entries and their runners."""

    def __init__(self, models: Registry) -> None:
        self.models = models

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "modelwire_model_state", "1 for the state each model is in", labels=["model", "state"]
        )
        running = GaugeMetricFamily(
            "modelwire_running_sequences", "Sequences in the running batch", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "modelwire_waiting_sequences", "Generation requests waiting", labels=["model"]
        )
        by_priority = GaugeMetricFamily(
            "modelwire_waiting_requests",
            "Generation requests waiting, by priority (the priorities some wait at, and 0)",
            labels=["model", "priority"],
        )
        cache = GaugeMetricFamily(
            "modelwire_kv_cache_tokens", "Tokens held in the KV cache", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "modelwire_queued_inputs", "Inputs waiting in a batcher's queue", labels=["model"]
        )
        batches = HistogramMetricFamily(
            "modelwire_batch_size",
            "Inputs per forward pass (kind=oneshot) or rows per decode step (kind=decode)",
            labels=["model", "kind"],
        )
        prefix = PrefixCacheFamilies()
        budget = KVBudgetFamilies()
        engines: set[int] = set()
        for name, entry in list(self.models.entries.items()):
            for s in ModelState:
                state.add_metric([name, s.value], float(entry.state is s))
            runner = entry.runner
            batcher = getattr(runner, "batcher", None)
            if batcher is not None:
                queued.add_metric([name], batcher.queued)
                batches.add_metric([name, "oneshot"], *_histogram(batcher.stats.size_counts))
            engine = getattr(runner, "engine", None)
            if engine is not None and id(engine) not in engines:
                engines.add(id(engine))  # runners of one model can share an engine
                stats = engine.stats()
                running.add_metric([name], stats.running_rows)
                waiting.add_metric([name], stats.waiting)
                # Priorities are the clients' numbers, but only those waiting now are
                # series (at most max_waiting of them); 0 always, so idle reads 0.
                for priority, count in sorted({0: 0, **stats.waiting_by_priority}.items()):
                    by_priority.add_metric([name, str(priority)], count)
                cache.add_metric([name], stats.cache_tokens)
                batches.add_metric([name, "decode"], *_histogram(stats.decode_batch_sizes))
                prefix.add(name, stats)
                budget.add(name, stats)
        yield from (state, running, waiting, by_priority, cache, queued, batches)
        yield from prefix.families()
        yield from budget.families()


class KVBudgetFamilies:
    """The KV budget's series, per model: bytes held (padding and spare columns
    included), the budget (0: none, admission reserves max_new_tokens instead), and the
    requests preempted to stay within it."""

    def __init__(self) -> None:
        labels = ["model"]
        self.held = GaugeMetricFamily(
            "modelwire_kv_cache_bytes",
            "Bytes of KV held by the running batch and the prompts prefilling in parts",
            labels=labels,
        )
        self.budget = GaugeMetricFamily(
            "modelwire_kv_cache_budget_bytes",
            "The KV budget, kv_cache_memory (0: none)",
            labels=labels,
        )
        self.preemptions = CounterMetricFamily(
            "modelwire_preemptions",
            "Requests preempted to stay within the KV budget (resumed by recomputation)",
            labels=labels,
        )

    def add(self, name: str, stats: object) -> None:
        self.held.add_metric([name], float(getattr(stats, "kv_bytes", 0)))
        self.budget.add_metric([name], float(getattr(stats, "kv_budget", 0)))
        self.preemptions.add_metric([name], float(getattr(stats, "preemptions", 0)))

    def families(self) -> tuple[Metric, ...]:
        return (self.held, self.budget, self.preemptions)


class PrefixCacheFamilies:
    """The prefix cache's series, per model (engines without one export zeros)."""

    def __init__(self) -> None:
        labels = ["model"]
        self.hit_rate = GaugeMetricFamily(
            "modelwire_prefix_cache_hit_rate",
            "Prompt tokens whose KV came from the prefix cache, over prompt tokens looked up",
            labels=labels,
        )
        self.hit_tokens = CounterMetricFamily(
            "modelwire_prefix_cache_hit_tokens",
            "Prompt tokens whose KV came from the prefix cache",
            labels=labels,
        )
        self.prompt_tokens = CounterMetricFamily(
            "modelwire_prefix_cache_prompt_tokens",
            "Prompt tokens looked up in the prefix cache",
            labels=labels,
        )
        self.blocks = GaugeMetricFamily(
            "modelwire_prefix_cache_blocks", "Blocks held in the prefix cache", labels=labels
        )
        self.bytes = GaugeMetricFamily(
            "modelwire_prefix_cache_bytes", "Bytes of KV held in the prefix cache", labels=labels
        )
        self.evicted = CounterMetricFamily(
            "modelwire_prefix_cache_evicted_blocks",
            "Blocks evicted from the prefix cache",
            labels=labels,
        )

    def add(self, name: str, stats: object) -> None:
        get = functools.partial(getattr, stats)
        self.hit_rate.add_metric([name], float(get("prefix_hit_rate", 0.0)))
        self.hit_tokens.add_metric([name], float(get("prefix_hit_tokens", 0)))
        self.prompt_tokens.add_metric([name], float(get("prefix_prompt_tokens", 0)))
        self.blocks.add_metric([name], float(get("prefix_blocks", 0)))
        self.bytes.add_metric([name], float(get("prefix_bytes", 0)))
        self.evicted.add_metric([name], float(get("prefix_evicted_blocks", 0)))

    def families(self) -> tuple[Metric, ...]:
        return (
            self.hit_rate,
            self.hit_tokens,
            self.prompt_tokens,
            self.blocks,
            self.bytes,
            self.evicted,
        )


def _histogram(counts: Mapping[int, int]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets and the sum, from how many batches had each size."""
    counts = dict(counts)  # one copy: the worker thread may add to the original
    buckets = [
        (floatToGoString(bound), float(sum(n for size, n in counts.items() if size <= bound)))
        for bound in BATCH_SIZES
    ]
    buckets.append(("+Inf", float(sum(counts.values()))))
    return buckets, float(sum(size * n for size, n in counts.items()))


class MetricsEndpoint:
    """``GET /metrics`` over plain HTTP/1.x, answered on the server's event loop."""

    READ_TIMEOUT_S = 10.0

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        self._server = await asyncio.start_server(self._answer, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target = head.decode("latin-1").split(" ", 2)[:2]
            writer.write(self._response(method, target.split("?", 1)[0]))
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError, EOFError, asyncio.LimitOverrunError):
            pass  # no request we can answer: too slow, malformed, too long, or gone
        finally:
            writer.close()

    def _response(self, method: str, path: str) -> bytes:
        if path != "/metrics":
            return _http(404, "Not Found", b"try /metrics\n")
        if method not in ("GET", "HEAD"):
            return _http(405, "Method Not Allowed", b"GET only\n")
        body = self.metrics.exposition()
        return _http(200, "OK", body, TEXT_FORMAT, head_only=method == "HEAD")


def _http(
    status: int,
    reason: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)
