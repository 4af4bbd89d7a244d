"""A text-generation model's engine in a process of its own (``engine_process: true``).

The front (the gRPC process) keeps the tokenizer, chat templates and validation; the
device process loads the model and runs nothing but engine steps. They share one pipe:

    front -> device   ("submit", key, request) | ("cancel", key) | ("stop",)
    device -> front   ("ready", EngineInfo) | ("failed", message)
                      | ("step", [(key, event), ...], EngineStats)   one per engine step

One message per step carries every event of that step, whatever the number of
streams; a reader thread in the front hands them to the requests' buffers and wakes
the event loop once. The point is the GIL: the engine's host code and the front's
relay of tokens to gRPC streams no longer take turns on one.

A device process that exits (killed, crashed) fails every open request of its model
with UNAVAILABLE at once and is started again, with backoff; its requests meanwhile
get UNAVAILABLE. It also exits by itself when the front goes away (its pipe closes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import multiprocessing
import pickle
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from modelwire_server import errors
from modelwire_server.config import ModelConfig
from modelwire_server.engine import errors as engine_errors
from modelwire_server.engine.engine import EngineStats
from modelwire_server.engine.types import Event, Failed, Finished, GenerationRequest
from modelwire_server.engine.validation import Limits, prepare
from modelwire_server.engine_client import Rename, RequestStream, domain_error
from modelwire_server.streams import EventBuffer, WakeBatcher

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 1800.0  # loading a big model from disk
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class EngineInfo:
    """What the front needs of an engine it does not hold."""

    limits: Limits
    generation_config: Any
    architecture: str
    quantized_layers: int


def _idle_stats() -> EngineStats:
    return EngineStats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


class RemoteEngine:
    """The engine as the front sees it: its limits, and its stats as of the last step."""

    def __init__(self, info: EngineInfo) -> None:
        self.limits = info.limits
        self.generation_config = info.generation_config
        self.last_stats = _idle_stats()

    def stats(self) -> EngineStats:
        return self.last_stats


# ---- the device process -------------------------------------------------------------


def _wire_request(request: GenerationRequest) -> GenerationRequest:
    """What crosses the pipe: a compiled response format goes as its format (the device
    process compiles it again, from its own cache)."""
    constraint = request.constraint
    if constraint is None:
        return request
    return dataclasses.replace(request, constraint=constraint.format)


def _sendable(events: list[tuple[int, Event]]) -> list[tuple[int, Event]]:
    """Events whose errors pickle; any other error goes as its message."""
    out = []
    for key, event in events:
        if isinstance(event, Failed):
            try:
                pickle.dumps(event.error)
            except Exception:
                why = f"{type(event.error).__name__}: {event.error}"
                event = Failed(engine_errors.EngineError(why))
        out.append((key, event))
    return out


def serve_engine(config: ModelConfig, device: str, dtype: str, conn: Any) -> None:
    """The device process: load, warm up, then step the engine while the pipe lives."""
    # The front owns this process's life: Ctrl-C in a terminal (the whole process group)
    # and SIGTERM are the front's to act on, by draining and then sending "stop".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from modelwire_server.tasks.text_generation import TextGenerationTask

    try:
        local = dataclasses.replace(config, engine_process=False)
        runner = TextGenerationTask(local, torch.device(device), getattr(torch, dtype), None)  # type: ignore[arg-type]
        runner.load()
        runner.warmup()
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    engine = runner.engine
    info = EngineInfo(
        engine.limits, engine.generation_config, runner.architecture, runner.quantized_layers
    )
    conn.send(("ready", info))
    outbox: list[tuple[int, Event]] = []
    handles: dict[int, Any] = {}

    def sink(key: int) -> Callable[[Event], None]:
        """Queues ``key``'s events for the step's message; forgets its handle once the
        request has ended (a failure, or its last sequence's end)."""

        finished = 0

        def put(event: Event) -> None:
            nonlocal finished
            outbox.append((key, event))
            handle = handles.get(key)
            if handle is None:
                return
            finished += isinstance(event, Finished)
            if isinstance(event, Failed) or finished == handle.group.prepared.sampling.n:
                handles.pop(key, None)

        return put

    while True:
        wait = 0.0 if engine.has_work() else None
        try:
            while conn.poll(wait):
                wait = 0.0
                message = conn.recv()
                if message[0] == "submit":
                    _, key, request = message
                    try:
                        if request.constraint is not None:
                            request.constraint = runner.constraints.compile(request.constraint)
                        handles[key] = engine.submit(request, sink(key))
                    except engine_errors.EngineError as exc:
                        outbox.append((key, Failed(exc)))
                elif message[0] == "cancel":
                    handle = handles.get(message[1])
                    if handle is not None:
                        engine.cancel(handle)
                elif message[0] == "stop":
                    return
        except (EOFError, OSError):
            return  # the front has gone: so does this process
        if engine.has_work():
            engine.step()
        if outbox:
            try:
                conn.send(("step", _sendable(outbox), engine.stats()))
            except (BrokenPipeError, OSError):
                return
            outbox = []


# ---- the front --------------------------------------------------------------------


class ProcessEngineDriver:
    """The front's side: starts and watches the device process, and opens requests on it
    (the same ``open`` as ``EngineDriver``)."""

    def __init__(self, config: ModelConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.name = config.name
        self._device = str(device)
        self._dtype = str(dtype).removeprefix("torch.")
        self._context = multiprocessing.get_context("spawn")
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._open: dict[int, list[Any]] = {}  # key -> [buffer, sequences left]
        self._keys = itertools.count()
        self.wakes = WakeBatcher()
        self._closing = False
        self._alive = False
        self._process: Any = None
        self._conn: Any = None
        self._reader: threading.Thread | None = None
        self.restarts = 0
        # Told (from the reader thread) when the process died (False, why) and when its
        # replacement is ready (True).
        self.notify: Callable[[bool, str], None] = lambda up, why: None
        self.engine: RemoteEngine | None = None
        self.info: EngineInfo | None = None

    # -- life cycle (load runs on a loader thread; start/close on the loop) -----------

    def launch(self) -> EngineInfo:
        """Start the device process and wait until its model is loaded (blocking)."""
        info = self._spawn()
        self.info = info
        self.engine = RemoteEngine(info)
        self._reader = threading.Thread(
            target=self._read, name=f"modelwire-engine-{self.name}", daemon=True
        )
        self._reader.start()
        return info

    def _spawn(self) -> EngineInfo:
        front, device = self._context.Pipe()
        process = self._context.Process(
            target=serve_engine,
            args=(self.config, self._device, self._dtype, device),
            name=f"modelwire-engine-{self.name}",
            daemon=True,
        )
        process.start()
        device.close()
        if not front.poll(READY_TIMEOUT_S):
            process.kill()
            raise RuntimeError("the engine process did not load in time")
        try:
            message = front.recv()
        except EOFError:
            process.join(5)
            raise RuntimeError(
                f"the engine process exited while loading (exit code {process.exitcode})"
            ) from None
        if message[0] == "failed":
            process.join(5)
            raise RuntimeError(message[1])
        self._process, self._conn, self._alive = process, front, True
        return message[1]

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._closing = True
        await asyncio.to_thread(self.stop)

    def stop(self) -> None:
        """End the device process (blocking): ask, then kill after a grace."""
        self._closing = True
        process = self._process
        if process is None:
            return
        try:
            self._send(("stop",))
        except OSError:
            pass
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)

    @property
    def running(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- requests ----------------------------------------------------------------------

    def open(
        self, request: GenerationRequest, *, rename: Rename | None = None, interval_s: float = 0.0
    ) -> RequestStream:
        assert self.engine is not None
        if not self._alive:
            raise errors.Unavailable(f"model {self.name}'s engine process is restarting")
        try:
            prepared = prepare(request, self.engine.limits, self.engine.generation_config)
        except engine_errors.InvalidRequest as exc:
            raise (rename or domain_error)(exc) from None
        key = next(self._keys)
        buffer = EventBuffer(asyncio.get_running_loop(), self.wakes)
        with self._lock:
            self._open[key] = [buffer, prepared.sampling.n]
        try:
            self._send(("submit", key, _wire_request(request)))
        except OSError:
            with self._lock:
                self._open.pop(key, None)
            raise errors.Unavailable(f"model {self.name}'s engine process is restarting") from None
        return RequestStream(prepared, buffer, lambda: self._cancel(key), interval_s)

    def _cancel(self, key: int) -> None:
        with self._lock:
            if self._open.pop(key, None) is None:
                return
        try:
            self._send(("cancel", key))
        except OSError:
            pass  # the process is gone, and the request with it

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

    # -- the reader thread ----------------------------------------------------------------

    def _read(self) -> None:
        backoff = iter(RESTART_BACKOFF_S)
        while True:
            self._relay()
            self._alive = False
            if self._closing:
                self._fail_open()
                return
            self._process.join(1)
            why = f"its engine process exited (code {self._process.exitcode}); restarting"
            log.error("model %s: %s", self.name, why)
            # The model reads LOADING before its streams hear why they ended (both reach
            # the loop in this order).
            self.notify(False, why)
            self._fail_open()
            while not self._closing:
                time.sleep(next(backoff, RESTART_BACKOFF_S[-1]))
                try:
                    self._spawn()
                except Exception:
                    log.exception("model %s: engine process failed to start", self.name)
                    continue
                if self._closing:  # the server stopped while this one loaded
                    self.stop()
                    return
                self.restarts += 1
                backoff = iter(RESTART_BACKOFF_S)
                log.warning("model %s: engine process restarted", self.name)
                self.notify(True, "")
                break

    def _relay(self) -> None:
        """Hand each step's events to their requests until the pipe closes."""
        assert self.engine is not None
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                return
            if message[0] != "step":
                continue
            _, events, stats = message
            self.engine.last_stats = stats
            with self._lock:
                for key, event in events:
                    entry = self._open.get(key)
                    if entry is None:
                        continue  # cancelled: nobody reads it
                    entry[0](event)
                    if isinstance(event, Finished):
                        entry[1] -= 1
                    if isinstance(event, Failed) or entry[1] == 0:
                        del self._open[key]
            self.wakes.flush()

    def _fail_open(self) -> None:
        with self._lock:
            entries, self._open = list(self._open.values()), {}
        error = errors.Unavailable(f"model {self.name}'s engine process exited; retry")
        for buffer, _ in entries:
            buffer(Failed(error))
        self.wakes.flush()
        if self.engine is not None:
            self.engine.last_stats = _idle_stats()
