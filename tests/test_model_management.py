"""ModelService.LoadModel / UnloadModel at run time, through the SDK.

In-flight calls are held deterministically by parking the device worker on a gate
(a job that waits on a threading.Event), so "a call is running while the model
unloads" is a fact of the test, not a race it hopes to win.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelwire import (
    AsyncClient,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from modelwire_server.config import ServerConfig
from modelwire_server.server import preset_configs
from tests.conftest import RunningServer, minilm_path, start_server

GRACE_S = 1.0


@pytest.fixture(scope="module")
def admin_server(preset_cache: Path) -> Iterator[RunningServer]:
    models = [m for m in preset_configs("tiny") if m.name == "tiny-sentiment"]
    allow = ["preset:tiny-*", str(minilm_path().parent)]
    config = ServerConfig(port=0, models=models, load_allow_list=allow, grace_period_s=GRACE_S)
    running = start_server(config)
    yield running
    running.stop()


@pytest.fixture
async def admin(admin_server: RunningServer) -> Any:
    # No retries: the statuses the server sends are what these tests check.
    async with AsyncClient(admin_server.target, timeout=120, max_retries=0) as c:
        yield c


def _held_worker(running: RunningServer) -> tuple[threading.Event, Any]:
    """Park the CPU device worker until the returned gate is set."""
    gate = threading.Event()
    worker = running.server.workers.get("cpu")
    held = asyncio.run_coroutine_threadsafe(worker.run(gate.wait), running.loop)
    return gate, held


def _signal_on_track(running: RunningServer, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once a call has taken a runner (so it is in flight)."""
    registry, tracked = running.server.registry, threading.Event()
    original = registry._track

    def track(entry: Any) -> None:
        original(entry)
        tracked.set()

    monkeypatch.setattr(registry, "_track", track)
    return tracked


async def test_load_model_serves_it_and_lists_it(admin: AsyncClient) -> None:
    info = await admin.load_model(
        "extra-embed", task="feature-extraction", source="preset:tiny-embed"
    )
    assert (info.name, info.state, info.task) == ("extra-embed", "ready", "feature-extraction")
    assert info.request_id
    vectors = await admin.embed(["hello"], model="extra-embed")
    assert len(vectors[0].values) > 0
    assert "extra-embed" in [m.name for m in await admin.list_models()]
    gone = await admin.unload_model("extra-embed")
    assert gone.state == "ready"  # as it was just before unloading
    with pytest.raises(NotFoundError):
        await admin.get_model("extra-embed")
    with pytest.raises(NotFoundError):
        await admin.embed(["hello"], model="extra-embed")


async def test_load_from_an_allowed_directory(admin: AsyncClient) -> None:
    info = await admin.load_model(
        "minilm-rt", task="feature-extraction", source=str(minilm_path()), device="cpu"
    )
    assert info.state == "ready", info.failure_message
    assert len((await admin.embed(["hi"], model="minilm-rt"))[0].values) == 384
    await admin.unload_model("minilm-rt")


async def test_load_model_quantized(admin: AsyncClient) -> None:
    """LoadModel's quantization reaches the loader: the model serves and reports it."""
    info = await admin.load_model(
        "gpt2-int8", task="text-generation", source="preset:tiny-gpt2", quantization="int8"
    )
    assert (info.state, info.quantization) == ("ready", "int8"), info.failure_message
    result = await admin.generate("Hello", model="gpt2-int8", max_new_tokens=3)
    assert result.sequences[0].usage.generated_tokens == 3
    plain = await admin.get_model("tiny-sentiment")
    assert plain.quantization == "none"
    await admin.unload_model("gpt2-int8")


async def test_load_model_new_default_takes_over_once_ready(admin: AsyncClient) -> None:
    await admin.load_model(
        "sentiment-2",
        task="sentiment-analysis",
        source="preset:tiny-sentiment",
        default_for_task=True,
    )
    by_name = {m.name: m for m in await admin.list_models()}
    assert by_name["sentiment-2"].default_for_task
    assert not by_name["tiny-sentiment"].default_for_task
    await admin.unload_model("sentiment-2")


@pytest.mark.parametrize(
    "source",
    ["other-org/model", "/etc", "/tmp", f"{minilm_path().parent}/../../etc", "./x", "~/x"],
)
async def test_sources_outside_the_allow_list_are_refused(admin: AsyncClient, source: str) -> None:
    with pytest.raises(PermissionDeniedError, match="load_allow_list"):
        await admin.load_model("x", task="feature-extraction", source=source)
    with pytest.raises(NotFoundError):
        await admin.get_model("x")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"task": "no-such-task"}, "task"),
        ({"device": "gpu7"}, "device"),
        ({"dtype": "int3"}, "dtype"),
        ({"quantization": "int3"}, "quantization"),
        ({"quantization": "int8\x00"}, "quantization"),
        ({"name": " "}, "model"),
        ({"name": "n" * 129}, "model"),
        ({"name": "\x00"}, "model"),
        ({"name": "a/b"}, "model"),
        ({"name": "../x"}, "model"),
        ({"name": "x y"}, "model"),
        ({"source": "/models/a\x00b"}, "source"),
        ({"source": "preset:tiny-sentiment\x00"}, "source"),
        ({"source": "/m" * 3000}, "source"),
        ({"task": "ner\x00"}, "task"),
        ({"revision": "main\x00"}, "revision"),
        ({"device": "cpu\n"}, "device"),
    ],
)
async def test_bad_entries_are_invalid_arguments(
    admin: AsyncClient, kwargs: dict[str, str], field: str
) -> None:
    args = {"name": "bad", "task": "sentiment-analysis", "source": "preset:tiny-sentiment"}
    args.update(kwargs)
    name = args.pop("name")
    with pytest.raises(BadRequestError) as caught:
        await admin.load_model(name, **args)
    assert [v.field for v in caught.value.field_violations] == [field]


async def test_a_taken_name_is_refused(admin: AsyncClient) -> None:
    with pytest.raises(BadRequestError, match="unload it first"):
        await admin.load_model("tiny-sentiment", task="ner", source="preset:tiny-ner")
    assert (await admin.get_model("tiny-sentiment")).task == "sentiment-analysis"


async def test_unload_lets_running_calls_finish_and_refuses_new_ones(
    admin: AsyncClient, admin_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await admin.load_model("held", task="sentiment-analysis", source="preset:tiny-sentiment")
    # A long grace, so the running call is waited for (not cut off) here.
    monkeypatch.setattr(admin_server.server.models_servicer, "unload_grace_s", 60.0)
    tracked = _signal_on_track(admin_server, monkeypatch)
    gate, held = _held_worker(admin_server)
    try:
        running = asyncio.create_task(admin.classify_text(["good"], model="held"))
        assert await asyncio.to_thread(tracked.wait, 30)
        unloading = asyncio.create_task(admin.unload_model("held"))
        while (await admin.get_model("held")).state != "unloading":
            pass  # polls over RPC: the unload has begun once the state says so
        with pytest.raises(UnavailableError, match="unloaded"):
            await admin.classify_text(["new"], model="held")
        assert not unloading.done() and not running.done()
        # Other models' control plane keeps answering during the unload.
        assert (await admin.get_model("tiny-sentiment")).state == "ready"
    finally:
        gate.set()
    assert len(await running) == 1  # the in-flight call finished normally
    assert (await unloading).name == "held"
    held.result(30)
    with pytest.raises(NotFoundError):
        await admin.get_model("held")
    assert len(await admin.classify_text(["still here"], model="tiny-sentiment")) == 1


async def test_unload_cuts_off_calls_past_the_grace_with_unavailable(
    admin: AsyncClient, admin_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await admin.load_model("stuck", task="sentiment-analysis", source="preset:tiny-sentiment")
    tracked = _signal_on_track(admin_server, monkeypatch)
    gate, held = _held_worker(admin_server)
    try:
        running = asyncio.create_task(admin.classify_text(["good"], model="stuck"))
        assert await asyncio.to_thread(tracked.wait, 30)
        # The worker stays parked, so the call cannot finish: the grace bound ends it.
        gone = await asyncio.wait_for(admin.unload_model("stuck"), 10 * GRACE_S)
        assert gone.name == "stuck"
        with pytest.raises(UnavailableError, match="unloaded while this call was running"):
            await running
    finally:
        gate.set()
    held.result(30)
    with pytest.raises(NotFoundError):
        await admin.get_model("stuck")
    assert len(await admin.classify_text(["still here"], model="tiny-sentiment")) == 1


async def test_unload_unknown_model_is_not_found(admin: AsyncClient) -> None:
    with pytest.raises(NotFoundError):
        await admin.unload_model("never-was")


def test_load_model_is_disabled_without_an_allow_list(preset_cache: Path) -> None:
    running = start_server(ServerConfig(port=0, models=[]))

    async def attempt() -> None:
        async with AsyncClient(running.target, timeout=30) as c:
            with pytest.raises(PermissionDeniedError, match="disabled"):
                await c.load_model("x", task="fill-mask", source="preset:tiny-fill-mask")
            assert len(await c.list_models()) == 0

    try:
        asyncio.run(attempt())
    finally:
        running.stop()


def test_allow_list_matching(tmp_path: Path) -> None:
    from modelwire_server.allow_list import allowed

    models = tmp_path / "models"
    (models / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (models / "link").symlink_to(tmp_path / "outside")
    allow = [str(models), "my-org/*", "preset:tiny-*"]
    assert allowed(str(models / "a"), allow)
    assert allowed("my-org/bert", allow) and allowed("preset:tiny-gpt2", allow)
    assert not allowed("other/bert", allow)
    assert not allowed(str(models / "link"), allow)  # a symlink out of the directory
    assert not allowed(f"{models}/../outside", allow)
    assert not allowed(str(tmp_path / "models-evil"), allow)  # a prefix, not a directory
    assert not allowed("my-org/../../etc", allow)  # path-like: never matched by a glob
    assert not allowed(str(models / "a"), ["*"])  # "*" matches hub ids, not paths


def test_load_allow_list_in_the_config_file() -> None:
    from modelwire_server.config import ConfigError, parse_config

    assert parse_config({"load_allow_list": ["/srv/models", "org/*"]}).load_allow_list == [
        "/srv/models",
        "org/*",
    ]
    for bad in ("/srv/models", [""], [3]):
        with pytest.raises(ConfigError, match="load_allow_list"):
            parse_config({"load_allow_list": bad})


def test_model_names_are_plain_words_in_the_config_file_too() -> None:
    from modelwire_server.config import ConfigError, parse_config

    for name in ("tiny-gpt2", "sst2", "llama3:8b", "bert_base.v2"):
        model = {"name": name, "task": "ner", "source": "x"}
        assert parse_config({"models": [model]}).models[0].name == name
    for name in ("a/b", "\x00", "-x", "x y", "é", "n" * 129):
        with pytest.raises(ConfigError, match=r"models\[0\]\.name .* must be letters, digits"):
            parse_config({"models": [{"name": name, "task": "ner", "source": "x"}]})


async def test_without_auth_sources_are_shown_whole(
    admin: AsyncClient, admin_server: RunningServer
) -> None:
    path = admin_server.runner("tiny-sentiment").config.source
    assert path.startswith("/")
    assert (await admin.get_model("tiny-sentiment")).source == path
    assert {m.name: m.source for m in await admin.list_models()}["tiny-sentiment"] == path
