"""Server memory after bursts of large requests: a real server process, RSS from /proc.

Bad large requests used to stay in memory: each failed call's request sat in a
reference cycle until a rare full garbage collection, and glibc kept what was freed.
Refused callers' requests were read in full before the refusal. Bounds come from the
bytes sent, generous against the fix (which keeps tens of MB) and far below the
gigabytes held before it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from modelwire.v1 import inference_service_pb2 as pb
from modelwire.v1 import inference_service_pb2_grpc as pb_grpc
from tests.processes import kill_if_running, read_port, spawn_server, wait_serving

MB = 1024 * 1024
SIZE = 32 * MB  # each request: one over-long input, refused INVALID_ARGUMENT
AT_ONCE = 8
BURSTS = 2
API_KEY = "memory-test-key"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """Samples a process's RSS on a thread until stopped; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.fixture(scope="module")
def server(
    preset_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, str]]:
    """A server process with auth on (a key file) and one small model: (pid, target)."""
    from modelwire_server import preset

    source = str(preset.ensure_model("tiny-sentiment"))
    model = {"name": "s", "task": "sentiment-analysis", "source": source, "device": "cpu"}
    folder = tmp_path_factory.mktemp("memory")
    (folder / "keys").write_text(API_KEY + "\n")
    config = {"models": [model], "api_keys_file": str(folder / "keys")}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    proc = spawn_server("--config", str(folder / "config.yaml"), cache=preset_cache)
    log: list[str] = []
    try:
        target = f"127.0.0.1:{read_port(proc, log)}"
        wait_serving(target, proc, log)
        yield proc.pid, target
    finally:
        kill_if_running(proc)


def _request() -> bytes:
    return pb.ClassifyTextRequest(model="s", inputs=["x" * SIZE]).SerializeToString()


async def _burst(target: str, body: bytes, count: int, key: str | None) -> list[grpc.StatusCode]:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    options = [("grpc.max_send_message_length", 128 * MB)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary("/modelwire.v1.InferenceService/ClassifyText")

        async def one() -> grpc.StatusCode:
            try:
                await call(body, metadata=metadata, timeout=120)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        return await asyncio.gather(*(one() for _ in range(count)))


def test_memory_goes_back_after_bursts_of_large_bad_requests(server: tuple[int, str]) -> None:
    pid, target = server
    body = _request()
    asyncio.run(_burst(target, body, 1, API_KEY))  # first-call allocations, not growth
    before = rss_bytes(pid)
    for _ in range(BURSTS):
        codes = asyncio.run(_burst(target, body, AT_ONCE, API_KEY))
        assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}, codes
    # Held before the fix: gigabytes (each burst's requests, several copies of each).
    # Allowed: one request's worth. Polling an external process: no event to wait on.
    bound = before + SIZE
    deadline = time.monotonic() + 60
    while (now := rss_bytes(pid)) > bound and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now <= bound, f"RSS {now / MB:.0f} MB after the bursts, {before / MB:.0f} MB before"


def test_refused_callers_requests_are_not_read(server: tuple[int, str]) -> None:
    """A call without a key is refused before its message is read: a burst of large
    ones costs the server next to nothing (it held them all, +1.4 GB for 12 x 60 MB)."""
    pid, target = server
    body = _request()
    before = rss_bytes(pid)
    sampler = PeakRss(pid)
    try:
        codes = asyncio.run(_burst(target, body, 12, None))
    finally:
        peak = sampler.stop()
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}, codes
    assert peak - before < 2 * SIZE, f"peak +{(peak - before) / MB:.0f} MB"


def test_calls_past_max_concurrent_rpcs_are_refused_unread(preset_cache: Path) -> None:
    """``max_concurrent_rpcs``: what requests in memory can add up to is bounded."""
    from modelwire_server.config import ServerConfig
    from modelwire_server.server import preset_configs
    from tests.conftest import start_server

    models = [m for m in preset_configs("tiny") if m.name == "tiny-sentiment"]
    running = start_server(ServerConfig(port=0, models=models, max_concurrent_rpcs=2))
    registry, tracked = running.server.registry, threading.Semaphore(0)
    original = registry._track

    def track(entry: object) -> None:
        original(entry)
        tracked.release()

    registry._track = track  # type: ignore[method-assign]
    gate = threading.Event()  # the device worker waits on it: calls stay running
    worker = running.server.workers.get("cpu")
    held = asyncio.run_coroutine_threadsafe(worker.run(gate.wait), running.loop)
    request = pb.ClassifyTextRequest(model="tiny-sentiment", inputs=["fine"])
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            first = [stub.ClassifyText.future(request, timeout=60) for _ in range(2)]
            for _ in first:
                assert tracked.acquire(timeout=30)  # both are running
            with pytest.raises(grpc.RpcError) as caught:
                stub.ClassifyText(request, timeout=60)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.set()
            assert all(len(f.result().results) == 1 for f in first)
            assert len(stub.ClassifyText(request, timeout=60).results) == 1
    finally:
        gate.set()
        held.result(30)
        running.stop()


async def test_trimmer_trims_after_a_bursts_last_large_call_and_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelwire_server import memory

    loop = asyncio.get_running_loop()
    trims: asyncio.Queue[int] = asyncio.Queue()
    monkeypatch.setattr(memory, "trim", lambda: loop.call_soon_threadsafe(trims.put_nowait, 1))
    burst = memory.Trimmer(large_bytes=1000, idle_s=3600)
    if not burst.enabled:
        pytest.skip("not glibc: there is no malloc_trim to call")
    assert burst.started(5000) and burst.started(5000) and not burst.started(10)
    burst.ended(large=False)
    burst.ended(large=True)
    assert burst._trimming is None  # one large call still runs: its memory is in use
    burst.ended(large=True)
    assert await asyncio.wait_for(trims.get(), 30) == 1
    burst.close()
    idle = memory.Trimmer(large_bytes=1000, idle_s=0.01)
    assert not idle.started(10)
    idle.ended(large=False)
    assert await asyncio.wait_for(trims.get(), 30) == 1  # after the quiet spell
    idle.close()
