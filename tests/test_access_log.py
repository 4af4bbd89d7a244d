"""The access log: one line per call, with its id, RPC, model, status, timings, tokens and trace."""

from __future__ import annotations

import json
import logging
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelwire import AsyncClient, InternalServerError, NotFoundError
from modelwire.v1 import inference_service_pb2 as pb
from modelwire.v1 import inference_service_pb2_grpc as pb_grpc
from modelwire.v1 import model_service_pb2, model_service_pb2_grpc
from modelwire_server.access_log import JsonFormatter, key_values
from modelwire_server.config import ServerConfig
from modelwire_server.preset import ensure_model
from modelwire_server.tracing import parse_traceparent
from tests.conftest import AccessLines, RunningServer, start_server

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return record.fields  # type: ignore[attr-defined, no-any-return]


async def test_a_call_is_one_line_naming_its_model_and_trace(
    server: RunningServer, access: AccessLines
) -> None:
    metadata = (("x-request-id", "log-classify"), ("traceparent", TRACEPARENT))
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        await stub.ClassifyText(pb.ClassifyTextRequest(inputs=["fine"]), metadata=metadata)
    record = access.line("log-classify")
    line = fields(record)
    assert record.levelno == logging.INFO
    assert {k: line[k] for k in ("rpc", "model", "code", "trace_id", "span_id")} == {
        "rpc": "ClassifyText",
        "model": "tiny-sentiment",  # the request named none: the task's default served it
        "code": "OK",
        "trace_id": TRACE_ID,
        "span_id": PARENT_ID,
    }
    assert line["total_ms"] >= line["queue_ms"] >= 0
    assert line["peer"].startswith("ipv4:127.0.0.1:")
    assert "prompt_tokens" not in line and "error" not in line
    assert record.getMessage() == key_values(line)
    assert record.getMessage().startswith("request_id=log-classify rpc=ClassifyText ")


async def test_generation_lines_count_tokens_and_time_the_first_one(
    client: AsyncClient, access: AccessLines
) -> None:
    result = await client.generate(
        "Once upon a time", model="tiny-gpt2", n=2, temperature=1.0, max_new_tokens=5,
        ignore_eos=True, request_id="log-generate",
    )  # fmt: skip
    line = fields(access.line("log-generate"))
    assert (line["rpc"], line["model"], line["code"]) == ("Generate", "tiny-gpt2", "OK")
    assert line["prompt_tokens"] == result.prompt_token_count  # one prompt, two samples
    assert line["generated_tokens"] == 10
    assert line["total_ms"] >= line["ttft_ms"] >= line["queue_ms"] >= 0


async def test_a_client_that_leaves_is_cancelled(
    server: RunningServer, client: AsyncClient, access: AccessLines
) -> None:
    gate = threading.Event()  # holds the device worker: the generation cannot end by itself

    async def hold_worker() -> None:
        server.runner("tiny-gpt2").worker.submit(gate.wait)

    try:
        async with client.generate_stream(
            "Hello", model="tiny-gpt2", max_new_tokens=200, ignore_eos=True, request_id="log-left"
        ) as stream:
            async for _ in stream:
                server.call(hold_worker())
                break  # leaving the block cancels the call
        line = fields(access.line("log-left"))
    finally:
        gate.set()
    assert line["code"] == "CANCELLED"


async def test_failures_say_why_and_internal_ones_keep_their_traceback(
    server: RunningServer, client: AsyncClient, access: AccessLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(NotFoundError):
        await client.classify_text("x", model="no-such-model", request_id="log-missing")
    missing = fields(access.line("log-missing"))
    assert (missing["code"], missing["model"]) == ("NOT_FOUND", "no-such-model")
    assert missing["error"] == "no model named 'no-such-model' is loaded"

    def broken(rpc: str, model: str) -> Any:
        raise RuntimeError("a detail only the log may see")

    monkeypatch.setattr(server.server.registry, "runner_for", broken)
    with pytest.raises(InternalServerError) as caught:
        await client.classify_text("x", request_id="log-broken")
    assert "a detail only the log may see" not in str(caught.value)
    record = access.line("log-broken")
    assert record.levelno == logging.ERROR and fields(record)["code"] == "INTERNAL"
    assert record.exc_info is not None and "a detail only" in str(record.exc_info[1])
    as_json = json.loads(JsonFormatter().format(record))
    assert as_json["request_id"] == "log-broken" and as_json["level"] == "ERROR"
    assert "RuntimeError: a detail only the log may see" in as_json["exception"]


def test_json_lines_carry_the_fields_or_the_message() -> None:
    access = logging.LogRecord("modelwire_server.access", logging.INFO, "", 0, "%s", ("x",), None)
    access.fields = {"request_id": "r1", "rpc": "Embed", "code": "OK", "total_ms": 1.5}
    assert json.loads(JsonFormatter().format(access)) == {
        "time": json.loads(JsonFormatter().format(access))["time"],
        "level": "INFO",
        "logger": "modelwire_server.access",
        "request_id": "r1",
        "rpc": "Embed",
        "code": "OK",
        "total_ms": 1.5,
    }
    plain = logging.LogRecord("modelwire_server", logging.WARNING, "", 0, "a %s", ("b",), None)
    assert json.loads(JsonFormatter().format(plain))["message"] == "a b"


def test_key_values_quote_what_would_split() -> None:
    line = {"request_id": "r 1", "error": 'bad "x" = y', "empty": "", "n": 3}
    text = key_values(line)
    assert text.startswith('request_id="r 1" ')
    parsed = dict(pair.split("=", 1) for pair in shlex.split(text))
    assert parsed == {"request_id": "r 1", "error": 'bad "x" = y', "empty": "", "n": "3"}


def test_traceparent_is_read_only_when_valid() -> None:
    assert parse_traceparent(TRACEPARENT) == (TRACE_ID, PARENT_ID)
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-01-later") == (TRACE_ID, PARENT_ID)
    for bad in (
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has exactly four fields
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
        "00-abc-def-01",
        "",
    ):
        assert parse_traceparent(bad) is None, bad


def test_serve_logs_json_lines(tmp_path: Path, preset_cache: Path) -> None:
    """The console script with --log-format json: every stderr line is a JSON object, while
    one model loads (no progress bars) and one fails."""
    source = ensure_model("tiny-sentiment")
    config = tmp_path / "two.yaml"
    config.write_text(
        f"models:\n  - {{name: sst, task: sentiment-analysis, source: {source}}}\n"
        "  - {name: gone, task: sentiment-analysis, source: /nonexistent/model}\n"
    )
    serve = [sys.executable, "-m", "modelwire_server", "serve", "--config", str(config)]
    proc = subprocess.Popen(
        [*serve, "--port", "0", "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None and proc.stderr is not None
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        logged = _json_lines_until(lines, lambda line: "loading done" in line.get("message", ""))
        assert any(line.get("level") == "ERROR" and "gone" in line["message"] for line in logged)
        assert any("model sst: ready" in line.get("message", "") for line in logged)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            stub.ListModels(
                model_service_pb2.ListModelsRequest(), metadata=(("x-request-id", "cli-json"),)
            )
        logged = _json_lines_until(lines, lambda line: line.get("request_id") == "cli-json")
        assert logged[-1]["logger"] == "modelwire_server.access"
        assert (logged[-1]["rpc"], logged[-1]["code"]) == ("ListModels", "OK")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _json_lines_until(lines: queue.Queue[str], done: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while not seen or not done(seen[-1]):
        text = lines.get(timeout=120)
        try:
            seen.append(json.loads(text))
        except ValueError:
            raise AssertionError(f"not a JSON line: {text!r}") from None
    return seen


async def test_with_opentelemetry_the_line_names_the_server_span(access: AccessLines) -> None:
    """Only where opentelemetry-instrumentation-grpc and the SDK are installed (optional)."""
    pytest.importorskip("opentelemetry.instrumentation.grpc")
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if not isinstance(trace.get_tracer_provider(), sdk.TracerProvider):
        trace.set_tracer_provider(sdk.TracerProvider())
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    running = start_server(ServerConfig(port=0))
    try:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            metadata = (("x-request-id", "log-otel"), ("traceparent", TRACEPARENT))
            await stub.ListModels(model_service_pb2.ListModelsRequest(), metadata=metadata)
        line = fields(access.line("log-otel"))
    finally:
        running.stop()
    [span] = [s for s in exporter.get_finished_spans() if s.name.endswith("/ListModels")]
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == format(span.get_span_context().span_id, "016x") != PARENT_ID
