"""Graceful drain of a real server process on SIGTERM.

The operator's contract (ARCHITECTURE.md, Operations): health goes NOT_SERVING at once,
new calls get UNAVAILABLE, running calls finish within the grace period, and the
process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from modelwire import APIError, AsyncClient, FinishReason, UnavailableError
from tests.processes import kill_if_running, read_port, spawn_server, wait_serving

GRACE_S = 60.0  # generous: the streams must finish inside it even on a loaded CI box
STREAMS = 3
TOKENS = 240  # tiny-gpt2's context is 256
SEQUENCES = 4


@pytest.fixture
def drain_config(preset_cache: Path, tmp_path: Path) -> Path:
    from modelwire_server import preset

    source = str(preset.ensure_model("tiny-gpt2"))
    model = {"name": "gpt", "task": "text-generation", "source": source, "device": "cpu"}
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
    drain_config: Path, preset_cache: Path
) -> None:
    proc = spawn_server("--config", str(drain_config), cache=preset_cache)
    log: list[str] = []
    try:
        target = f"127.0.0.1:{read_port(proc, log)}"
        await asyncio.to_thread(wait_serving, target, proc, log)
        # No BDP probing: the stream window stays at 64 KiB, so streams larger than that
        # which the test has not read yet are still running in the server at SIGTERM.
        options = [("grpc.http2.bdp_probe", 0)]
        async with AsyncClient(
            target, timeout=GRACE_S, max_retries=0, channel_options=options
        ) as client:
            await _drain(client, proc, log)
        assert await asyncio.to_thread(proc.wait, GRACE_S + 30) == 0, "".join(log)
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
