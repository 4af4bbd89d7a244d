"""``engine_process: true``: a text-generation model's engine in a device process.

The same answers as the engine in the server's own process (greedy ids equal
``generate()``'s), cancellation frees its rows over there, and a device process that is
killed ends its streams with UNAVAILABLE at once, shows the model LOADING, and is
replaced: the model serves again, and the old process is gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from modelwire import AsyncClient, BadRequestError, Choice, UnavailableError
from modelwire_server.config import ConfigError, ModelConfig, validate_model
from modelwire_server.engine_process import ProcessEngineDriver
from modelwire_server.server import preset_configs
from tests.conftest import RunningServer, cancel_after_first_token, engine_stats_once_idle
from tests.conftest import start_server as start
from tests.processes import running as process_running
from tests.test_generate import PROMPTS, ids, reference_greedy

REMOTE = "gpt2-proc"


@pytest.fixture(scope="module")
def proc_server(preset_cache: Path) -> Iterator[RunningServer]:
    from modelwire_server.config import ServerConfig

    [gpt2] = [m for m in preset_configs("tiny") if m.name == "tiny-gpt2"]
    remote = dataclasses.replace(gpt2, name=REMOTE, default=False, engine_process=True)
    running = start(ServerConfig(port=0, models=[gpt2, remote]))
    yield running
    running.stop()


@pytest.fixture
async def client(proc_server: RunningServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(proc_server.target, timeout=120, max_retries=0) as c:
        yield c


def _driver(server: RunningServer) -> ProcessEngineDriver:
    driver = server.runner(REMOTE).driver
    assert isinstance(driver, ProcessEngineDriver)
    return driver


async def test_greedy_matches_generate_and_the_in_process_engine(
    proc_server: RunningServer, client: AsyncClient
) -> None:
    driver = _driver(proc_server)
    assert driver.pid is not None and driver.pid != os.getpid() and process_running(driver.pid)
    path = proc_server.runner(REMOTE).config.source
    lengths = [30, 24, 20, 16, 12]
    results = await asyncio.gather(
        *(
            client.generate(p, model=REMOTE, temperature=0, max_new_tokens=n, ignore_eos=True)
            for p, n in zip(PROMPTS, lengths, strict=True)
        )
    )
    expected = [reference_greedy(path, p, n) for p, n in zip(PROMPTS, lengths, strict=True)]
    assert [ids(r) for r in results] == expected
    local = await client.generate(
        PROMPTS[0], model="tiny-gpt2", temperature=0, max_new_tokens=30, ignore_eos=True
    )
    assert results[0].text == local.text
    info = await client.get_model(REMOTE)
    assert (info.state, info.architecture) == ("ready", "GPT2LMHeadModel")


async def test_sampling_options_and_formats_cross_the_pipe(
    proc_server: RunningServer, client: AsyncClient
) -> None:
    seeded = [
        await client.generate(PROMPTS[1], model=m, max_new_tokens=12, temperature=0.9, seed=5, n=2)
        for m in (REMOTE, "tiny-gpt2")
    ]
    assert [s.text for s in seeded[0].sequences] == [s.text for s in seeded[1].sequences]
    chosen = await client.generate(
        "Pick one:", model=REMOTE, max_new_tokens=8, response_format=Choice(["yes", "no"])
    )
    assert chosen.text in {"yes", "no"}
    # Refused in the front, before anything crosses: the same status and field.
    with pytest.raises(BadRequestError) as caught:
        await client.generate("x", model=REMOTE, stop_token_ids=[10**9])
    assert [v.field for v in caught.value.field_violations] == ["stopping.stop_token_ids"]


async def test_cancelling_frees_the_rows_in_the_device_process(
    proc_server: RunningServer, client: AsyncClient
) -> None:
    stream = client.generate_stream(PROMPTS[4], model=REMOTE, max_new_tokens=200, ignore_eos=True)
    await cancel_after_first_token(stream)
    stats = await engine_stats_once_idle(proc_server.runner(REMOTE).engine)
    assert (stats.running_rows, stats.waiting, stats.reserved_tokens) == (0, 0, 0)
    assert stats.steps > 0  # these are the device process's own counts, sent per step


async def test_a_killed_device_process_is_replaced(
    proc_server: RunningServer, client: AsyncClient
) -> None:
    driver = _driver(proc_server)
    old = driver.pid
    assert old is not None
    stream = client.generate_stream(PROMPTS[0], model=REMOTE, max_new_tokens=200, ignore_eos=True)
    it = aiter(stream)
    while not (await anext(it)).tokens:
        pass
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    with pytest.raises(UnavailableError, match="engine process exited"):
        async for _ in it:
            pass
    ended_s = time.monotonic() - killed
    print(f"stream ended {ended_s * 1000:.0f} ms after the kill")
    assert ended_s < 10, ended_s  # at once, not at a timeout (generous for a busy box)
    # Until the new process is up (seconds: it imports torch and loads) the model says
    # why it does not serve...
    info = await client.get_model(REMOTE)
    assert info.state == "loading", info
    assert "engine process exited" in (info.failure_message or ""), info
    with pytest.raises(UnavailableError, match="engine process exited"):
        await client.generate("x", model=REMOTE, max_new_tokens=2)
    assert (await client.get_model("tiny-gpt2")).state == "ready"  # the others serve on
    assert str(await client.health()) == "SERVING"
    # ...then it serves again, from a new process; the old one is gone.
    deadline = time.monotonic() + 120
    while (info := await client.get_model(REMOTE)).state != "ready":
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.2)  # an external process: no event to wait on
    assert driver.restarts == 1 and driver.pid not in (None, old)
    assert not process_running(old)
    again = await client.generate(PROMPTS[3], model=REMOTE, temperature=0, max_new_tokens=6)
    assert again.sequences[0].usage is not None
    assert again.sequences[0].usage.generated_tokens == 6


async def test_stopping_the_server_ends_the_device_process(preset_cache: Path) -> None:
    from modelwire_server.config import ServerConfig

    [gpt2] = [m for m in preset_configs("tiny") if m.name == "tiny-gpt2"]
    running = start(ServerConfig(port=0, models=[dataclasses.replace(gpt2, engine_process=True)]))
    pid = _driver_of(running)
    assert process_running(pid)
    running.stop()
    assert not process_running(pid)


def _driver_of(running: RunningServer) -> int:
    driver = running.runner("tiny-gpt2").driver
    assert isinstance(driver, ProcessEngineDriver) and driver.pid is not None
    return driver.pid


def test_only_text_generation_models_take_a_device_process() -> None:
    model = ModelConfig(name="s", task="sentiment-analysis", source="/x", engine_process=True)
    with pytest.raises(ConfigError, match="engine_process"):
        validate_model(model, "models[0]")
    validate_model(dataclasses.replace(model, task="text-generation"), "models[0]")
