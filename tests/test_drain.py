"""Graceful drain of a real server process on SIGTERM.

The operator's contract (ARCHITECTURE.md, Operations): health goes NOT_SERVING at once,
new calls get UNAVAILABLE, running calls finish within the grace period, and the
process exits 0.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from modelwire import APIError, AsyncClient, FinishReason, UnavailableError
from tests.processes import kill_if_running, read_port, running, spawn_server, wait_serving

GRACE_S = 60.0  # generous: the streams must finish inside it even on a loaded CI box
STREAMS = 3
TOKENS = 240  # tiny-gpt2's context is 256
SEQUENCES = 4


@pytest.fixture(params=[False, True], ids=["in-process", "engine-process"])
def engine_process(request: pytest.FixtureRequest) -> bool:
    """Each drain runs with the engine in the server's process and in a device process."""
    return bool(request.param)


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (its device processes, and multiprocessing's
    resource tracker beside them)."""
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        found |= {int(c) for c in children.read_text().split()}
    return found


async def _no_orphans(pids: set[int]) -> None:
    """Every one of ``pids`` ends once the server has exited (polled: other processes)."""
    deadline = time.monotonic() + 30
    while alive := {p for p in pids if running(p)}:
        assert time.monotonic() < deadline, f"still running after the server exited: {alive}"
        await asyncio.sleep(0.1)


@pytest.fixture
def drain_config(preset_cache: Path, tmp_path: Path, engine_process: bool) -> Path:
    from modelwire_server import preset

    source = str(preset.ensure_model("tiny-gpt2"))
    model = {"name": "gpt", "task": "text-generation", "source": source, "device": "cpu"}
    model["engine_process"] = engine_process
    config = {"grace_period_s": GRACE_S, "models": [model]}
    path = tmp_path / "drain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _inference_health(client: AsyncClient) -> str:
    """Its health, or the status code of a health check that got no answer."""
    try:
        return str(await client.health())
    except APIError as exc:
        return exc.code.name if exc.code is not None else "NO_STATUS"


async def test_sigterm_drains_running_streams_and_exits_0(
    drain_config: Path, preset_cache: Path, engine_process: bool
) -> None:
    proc = spawn_server("--config", str(drain_config), cache=preset_cache)
    log: list[str] = []
    try:
        target = f"127.0.0.1:{read_port(proc, log)}"
        await asyncio.to_thread(wait_serving, target, proc, log)
        children = _children(proc.pid)
        assert bool(children) == engine_process, children
        # No BDP probing: the stream window stays at 64 KiB, so streams larger than that
        # which the test has not read yet are still running in the server at SIGTERM.
        options = [("grpc.http2.bdp_probe", 0)]
        async with AsyncClient(
            target, timeout=GRACE_S, max_retries=0, channel_options=options
        ) as client:
            await _drain(client, proc, log)
        assert await asyncio.to_thread(proc.wait, GRACE_S + 30) == 0, "".join(log)
        await _no_orphans(children)
    finally:
        kill_if_running(proc)


async def _drain(client: AsyncClient, proc: subprocess.Popen[str], log: list[str]) -> None:
    streams = [
        client.generate_stream(
            f"stream {i}",
            model="gpt",
            max_new_tokens=TOKENS,
            ignore_eos=True,
            n=SEQUENCES,
            top_logprobs=20,  # big messages: ~300 KiB a stream, well over the window
        )
        for i in range(STREAMS)
    ]
    iterators = [aiter(s) for s in streams]
    firsts = [await anext(it) for it in iterators]  # each stream is running server-side
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    # Health flips first thing in stop(); poll it (an external process: no event to await).
    while (status := await _inference_health(client)) == "SERVING":
        assert time.monotonic() - signalled < 5, "health still SERVING 5 s after SIGTERM"
    # While the streams drain the server still answers, and says NOT_SERVING: load
    # balancers and probes see a status, not refused or cancelled connections.
    statuses = [status] + [await _inference_health(client) for _ in range(20)]
    assert set(statuses) == {"NOT_SERVING"}, statuses
    for _ in range(5):
        with pytest.raises(UnavailableError):
            await client.generate("new call", model="gpt", max_new_tokens=2)
    assert proc.poll() is None, "exited while streams were still running:\n" + "".join(log)
    for first, it in zip(firsts, iterators, strict=True):
        chunks = [first, *[chunk async for chunk in it]]
        finals = [c for c in chunks if c.finish_reason is not None]
        assert [c.finish_reason for c in finals] == [FinishReason.LENGTH] * SEQUENCES
        assert all(c.usage is not None and c.usage.generated_tokens == TOKENS for c in finals)
    assert time.monotonic() - signalled < GRACE_S


SHORT_GRACE_S = 2.0
QUEUED = 24  # streams of TOKENS tokens that the engine runs one at a time


@pytest.fixture
def short_grace_config(preset_cache: Path, tmp_path: Path, engine_process: bool) -> Path:
    from modelwire_server import preset

    source = str(preset.ensure_model("tiny-gpt2"))
    # A token budget of one sequence at a time: QUEUED streams are thousands of decode
    # steps in a row, far more than any machine makes in the grace period.
    model = {"name": "gpt", "task": "text-generation", "source": source, "device": "cpu"}
    model["max_batch_tokens"] = 256
    model["engine_process"] = engine_process
    config = {"grace_period_s": SHORT_GRACE_S, "metrics_port": 0, "models": [model]}
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _waiting_sequences(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(r'^modelwire_waiting_sequences\{model="gpt"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def _read_to_the_end(client: AsyncClient, prompt: str) -> str:
    """How a stream ended: OK, or its error's code and message."""
    try:
        async with client.generate_stream(
            prompt, model="gpt", max_new_tokens=TOKENS, ignore_eos=True
        ) as stream:
            async for _ in stream:  # read on: the server must not stall on us
                pass
    except UnavailableError as exc:
        assert exc.request_id, exc
        return f"UNAVAILABLE {exc}"
    return "OK"


async def test_sigterm_past_the_grace_period_ends_streams_unavailable_and_exits_0(
    short_grace_config: Path, preset_cache: Path
) -> None:
    """Streams still running when the grace period is over end UNAVAILABLE with a
    message and their request id, and the process exits 0 (it used to abort: a device
    thread was still inside torch when the interpreter exited)."""
    proc = spawn_server("--config", str(short_grace_config), cache=preset_cache)
    log: list[str] = []
    try:
        target = f"127.0.0.1:{read_port(proc, log)}"
        metrics = re.search(r"metrics on (http://\S+)", "".join(log))
        assert metrics, log
        await asyncio.to_thread(wait_serving, target, proc, log)
        children = _children(proc.pid)
        async with AsyncClient(target, timeout=120, max_retries=0) as client:
            streams = [
                asyncio.create_task(_read_to_the_end(client, f"stream {i}")) for i in range(QUEUED)
            ]
            # Polling an external process's metrics: there is no event to wait on.
            while await asyncio.to_thread(_waiting_sequences, metrics.group(1)) < QUEUED - 4:
                assert not any(s.done() for s in streams), [s.result() for s in streams if s.done()]
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            endings = await asyncio.gather(*streams)
        assert await asyncio.to_thread(proc.wait, 60) == 0, "".join(log)
        await _no_orphans(children)
    finally:
        kill_if_running(proc)
    # Streams that were not in the server at SIGTERM are refused, those that finished
    # in time are OK; the rest, most of them, are cut off.
    assert all(e == "OK" or e.startswith("UNAVAILABLE") for e in endings), endings
    cut_off = [e for e in endings if "grace period is over" in e]
    assert len(cut_off) >= QUEUED // 2, endings
    lines = [line for line in log if "rpc=Generate" in line]
    assert sum("code=UNAVAILABLE" in line for line in lines) >= len(cut_off), lines
    assert "terminate called" not in "".join(log)
