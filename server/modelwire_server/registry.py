"""Model registry: model name → loaded model and its task runner, with load state."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download

from modelwire_server import tasks
from modelwire_server.config import ModelConfig
from modelwire_server.errors import InvalidArgument, NotFound, Unavailable, Unimplemented
from modelwire_server.progress import LoadProgress
from modelwire_server.quantize import QuantizationError, check_supported
from modelwire_server.tasks.base import TaskRunner, spread_over
from modelwire_server.worker import WorkerPool

log = logging.getLogger(__name__)

# transformers' from_pretrained swaps process-wide functions while it loads
# (`PreTrainedModel.tie_weights`, torch's init functions) and puts back what it found
# there: two loads in two threads can leave them swapped for good, and every model
# loaded after that has, say, a random LM head instead of its tied embeddings. Every
# load in this process holds this lock.
LOAD_LOCK = threading.RLock()


def _locked(fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with LOAD_LOCK:
            fn()

    return run


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"


@dataclass
class ModelEntry:
    """One configured model and where it is in its life."""

    config: ModelConfig
    state: ModelState = ModelState.LOADING
    failure: str = ""
    runner: TaskRunner | None = None
    device: str = ""
    dtype: str = ""
    quantization: str = ""
    load_seconds: float = 0.0
    rpcs: list[str] = field(default_factory=list)
    # The asyncio tasks (one per RPC) using the runner now: UnloadModel waits for them.
    calls: set[asyncio.Task[object]] = field(default_factory=set)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device, stored: str | None = None) -> torch.dtype:
    """The dtype a model runs in. ``auto``: bfloat16 on a GPU; on the CPU, bfloat16 where
    the CPU multiplies it natively (AMX or avx512_bf16) and the model was stored in 16
    bits (``stored``, its config's dtype, is bfloat16 or float16), else float32, so
    that a float32 checkpoint keeps its exact results unless bfloat16 is asked for."""
    if requested != "auto":
        return DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and stored in ("bfloat16", "float16") and cpu_has_fast_bfloat16():
        return torch.bfloat16
    return torch.float32


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or avx512_bf16)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def stored_dtype(source: str, revision: str | None = None) -> str | None:
    """The dtype a model's config says its weights were saved in, if it says: read from
    a local directory, or a hub model's config.json (fetched now if not cached, as the
    load would, so that the answer does not depend on what the cache holds)."""
    path: Path | str = Path(source).expanduser() / "config.json"
    if not Path(source).expanduser().is_dir():
        try:
            path = hf_hub_download(source, "config.json", revision=revision)
        except Exception:  # unreachable, or not a hub id: the load itself will say
            return None
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    found = raw.get("dtype") or raw.get("torch_dtype") if isinstance(raw, dict) else None
    return found if isinstance(found, str) else None


class Registry:
    """Loads configured models and finds the runner for each request."""

    def __init__(
        self,
        configs: list[ModelConfig],
        workers: WorkerPool,
        *,
        prepare_source: Callable[[ModelConfig], None] | None = None,
        preset: str | None = None,
        readiness_changed: Callable[[], None] | None = None,
    ) -> None:
        self.entries: dict[str, ModelEntry] = {c.name: ModelEntry(c) for c in configs}
        self.workers = workers
        self.preset = preset
        self._prepare_source = prepare_source
        self.loading_done = asyncio.Event()
        # Calls cut off by an unload, so the servicer can answer them UNAVAILABLE.
        self._evicted: weakref.WeakSet[asyncio.Task[object]] = weakref.WeakSet()
        self._loads: set[asyncio.Task[None]] = set()
        self.draining = False
        # Called on the loop when a served model stops or starts serving by itself.
        self.readiness_changed = readiness_changed

    # -- loading ---------------------------------------------------------------------

    async def load_all(self) -> None:
        """Load every model in order; a failure marks that model FAILED and goes on."""
        total = len(self.entries)
        progress = LoadProgress(total)
        for entry in list(self.entries.values()):
            progress.starting(entry.config.name)
            await self.load(entry)
            failed = entry.state is ModelState.FAILED
            progress.done(entry.config.name, _outcome(entry), failed=failed)
        progress.close()
        ready = sum(e.state is ModelState.READY for e in self.entries.values())
        log.info("loading done: %d of %d models ready", ready, total)
        self.loading_done.set()

    async def load(self, entry: ModelEntry) -> None:
        config, started = entry.config, time.monotonic()
        entry.state, entry.rpcs = ModelState.LOADING, tasks.rpcs_of(config.task)
        loaded: TaskRunner | None = None
        try:
            cls = tasks.runner_class(config.task)
            if cls is None:
                raise Unimplemented(f"the {config.task} task is not implemented by this server yet")
            device = resolve_device(config.device)
            entry.device, entry.quantization = str(device), config.quantization
            check_supported(config.quantization, device)
            _check_local_source(config.source)
            if self._prepare_source is not None:
                await asyncio.to_thread(_locked(lambda: self._prepare_source(config)))
            stored = None
            if config.dtype == "auto" and device.type == "cpu":
                stored = await asyncio.to_thread(stored_dtype, config.source, config.revision)
            dtype = resolve_dtype(config.dtype, device, stored)
            entry.dtype = str(dtype).removeprefix("torch.")
            runner = cls(config, device, dtype, self.workers.get(str(device)))
            loaded = runner
            await asyncio.to_thread(_locked(runner.load))
            if config.quantization != "none" and runner.quantized_layers == 0:
                raise QuantizationError(
                    f"quantization {config.quantization} found no linear layer of a shape "
                    f"it takes in this {runner.architecture}, so the model cannot be "
                    "quantized that way; serve it with quantization none"
                )
            await runner.start()
            try:
                await runner.worker.run(runner.warmup)
            except Exception as exc:
                raise WarmupFailed(
                    "it loaded, but its warm-up call failed, so this server cannot serve it "
                    f"({_describe(exc)})"
                ) from exc
        except Exception as exc:
            entry.state, entry.failure = ModelState.FAILED, _describe(exc)
            if loaded is not None:
                await asyncio.to_thread(loaded.discard)
            return
        entry.runner, entry.state = runner, ModelState.READY
        runner.availability = self._availability(entry)
        if config.device_map is not None:  # GetModel says where it was spread
            entry.device = ",".join(spread_over(runner.model))
        entry.load_seconds = time.monotonic() - started

    def _availability(self, entry: ModelEntry) -> Callable[[bool, str], None]:
        """The hook a served runner calls, from any thread, when it stops serving by
        itself (LOADING, saying why) or serves again (READY)."""
        loop = asyncio.get_running_loop()

        def changed(up: bool, why: str) -> None:
            if entry.state not in (ModelState.READY, ModelState.LOADING):
                return  # unloading: the unload decides
            entry.state = ModelState.READY if up else ModelState.LOADING
            entry.failure = "" if up else why
            if self.readiness_changed is not None:
                self.readiness_changed()

        def hook(up: bool, why: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the server too
                loop.call_soon_threadsafe(changed, up, why)

        return hook

    async def _load_logged(self, entry: ModelEntry) -> None:
        await self.load(entry)
        level = logging.ERROR if entry.state is ModelState.FAILED else logging.INFO
        log.log(level, "model %s: %s", entry.config.name, _outcome(entry))

    async def close(self) -> None:
        for entry in self.entries.values():
            if entry.runner is not None:
                await entry.runner.close()

    # -- run-time load and unload ------------------------------------------------------

    async def add(self, config: ModelConfig) -> ModelEntry:
        """Register and load one more model; returns once it is READY or FAILED."""
        if self.draining:
            raise Unavailable("the server is shutting down; load the model elsewhere")
        if config.name in self.entries:
            raise InvalidArgument("model", f"a model named {config.name!r} exists; unload it first")
        # It becomes its task's default only once READY, so calls that use the default
        # never meet a model that is still loading.
        wants_default, config.default = config.default, False
        entry = ModelEntry(config)
        self.entries[config.name] = entry
        # Its own task, shielded: a caller that goes away must not leave it half-loaded.
        task = asyncio.create_task(self._load_logged(entry), name=f"load-{config.name}")
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)
        await asyncio.shield(task)
        if wants_default and entry.state is ModelState.READY:
            for other in self.entries.values():
                if other.config.task == config.task:
                    other.config.default = other is entry
        return entry

    async def unload(self, name: str, grace_s: float) -> ModelEntry:
        """UNLOADING (new calls refused), wait up to ``grace_s`` for running calls, cut
        off the rest, close the runner and forget the model."""
        entry = self.get(name)
        if entry.state is ModelState.LOADING:
            raise Unavailable(f"model {name!r} is still loading; unload it once it is loaded")
        if entry.state is ModelState.UNLOADING:
            raise Unavailable(f"model {name!r} is already being unloaded")
        entry.state = ModelState.UNLOADING
        try:
            await self._end_calls(entry, grace_s)
            if entry.runner is not None:
                await entry.runner.close()
        finally:
            self.entries.pop(name, None)
        log.info("model %s unloaded", name)
        return entry

    async def _end_calls(self, entry: ModelEntry, grace_s: float) -> None:
        pending = set(entry.calls)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            self._evicted.add(task)
            task.cancel()
        if pending:  # a cancelled call ends at its next await; bounded all the same
            await asyncio.wait(pending, timeout=grace_s)

    async def drain(self, grace_s: float) -> None:
        """Refuse new calls (UNAVAILABLE) and wait up to ``grace_s`` for running ones.

        The server drains here rather than in grpc's own stop(grace), which cancels
        calls that arrive meanwhile (health checks included) instead of answering them.
        """
        self.draining = True
        running = {task for entry in self.entries.values() for task in entry.calls}
        if running:
            await asyncio.wait(running, timeout=grace_s)

    def evicted(self, task: asyncio.Task[object] | None) -> bool:
        """Whether ``task`` was cut off by an unload (not cancelled by its client)."""
        return task is not None and task in self._evicted

    def _track(self, entry: ModelEntry) -> None:
        task = asyncio.current_task()
        if task is not None and task not in entry.calls:
            entry.calls.add(task)
            task.add_done_callback(entry.calls.discard)

    # -- lookup ----------------------------------------------------------------------

    @property
    def any_ready(self) -> bool:
        return any(e.state is ModelState.READY for e in self.entries.values())

    def get(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(f"no model named {name!r} is loaded")
        return entry

    def default_for(self, task: str) -> ModelEntry | None:
        candidates = [e for e in self.entries.values() if e.config.task == task]
        for entry in candidates:
            if entry.config.default:
                return entry
        return candidates[0] if candidates else None

    def runner_for(self, rpc: str, model: str) -> TaskRunner:
        """The runner that serves ``rpc`` for ``model`` (empty: the task's default)."""
        serving = tasks.RPC_TASKS[rpc]
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        if model:
            entry = self.get(model)
            if entry.config.task not in serving:
                raise InvalidArgument(
                    "model",
                    f"model {model!r} serves {entry.config.task}; {rpc} needs a model of "
                    f"task {' or '.join(serving)}",
                )
        else:
            found = next((e for t in serving if (e := self.default_for(t)) is not None), None)
            if found is None:
                if all(tasks.runner_class(t) is None for t in serving):
                    raise Unimplemented(f"{rpc} is not implemented by this server yet")
                wanted = " or ".join(serving)
                if any(e.config.task in serving for e in self.entries.values()):
                    raise NotFound(f"no {wanted} model is the default; name one in 'model'")
                tasks_here = sorted({e.config.task for e in self.entries.values()})
                has = f"has models for {', '.join(tasks_here)}" if tasks_here else "has no models"
                raise NotFound(
                    f"this server has no {wanted} model loaded (it {has}); load one with "
                    "ModelService.LoadModel or list it in the server's config file"
                )
            entry = found
        runner = self._ready_runner(entry, rpc)
        self._track(entry)
        return runner

    @staticmethod
    def _ready_runner(entry: ModelEntry, rpc: str) -> TaskRunner:
        name = entry.config.name
        if entry.state is ModelState.LOADING:
            why = f" ({entry.failure})" if entry.failure else ""
            raise Unavailable(f"model {name!r} is still loading{why}")
        if entry.state is ModelState.UNLOADING:
            raise Unavailable(f"model {name!r} is being unloaded")
        if entry.state is ModelState.FAILED or entry.runner is None:
            if tasks.runner_class(entry.config.task) is None:
                raise Unimplemented(
                    f"{rpc} ({entry.config.task}) is not implemented by this server yet"
                )
            raise Unavailable(f"model {name!r} failed to load: {entry.failure}")
        return entry.runner


def _outcome(entry: ModelEntry) -> str:
    if entry.state is ModelState.READY:
        # The dtype in the one line per model; "auto" says which the rule chose.
        chosen = " (dtype auto)" if entry.config.dtype == "auto" else ""
        return f"ready on {entry.device} in {entry.load_seconds:.1f}s, {entry.dtype}{chosen}"
    return f"FAILED: {entry.failure}"


def _check_local_source(source: str) -> None:
    """A source written as a path must be a directory: transformers would take a
    missing one for a hub id and answer with a riddle about the form of repo ids."""
    if source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().is_dir():
        raise InvalidArgument("source", f"the local directory {source} does not exist")


class WarmupFailed(Exception):
    """A model loaded, but the server could not run it end to end."""


def _describe(exc: BaseException) -> str:
    """A one-line reason for a failed load, without a traceback."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
