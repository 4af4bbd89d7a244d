"""EngineDriver: steps run back to back on the worker, yet other jobs get the device."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from modelwire_server.engine_client import EngineDriver
from modelwire_server.worker import DeviceWorker


class FakeEngine:
    """Has work for ``steps`` steps of ``step_s`` each; records what ran, in order."""

    def __init__(self, steps: int, step_s: float = 0.005) -> None:
        self.left = steps
        self.step_s = step_s
        self.log: list[str] = []
        self.threads: set[str] = set()
        self.changed = threading.Condition()

    def has_work(self) -> bool:
        return self.left > 0

    def step(self) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.step_s)
        with self.changed:
            self.left -= 1
            self.log.append("step")
            self.changed.notify_all()

    async def until(self, done: Any) -> None:
        """Wait (off the loop) until ``done()`` holds after some step."""
        ok = await asyncio.to_thread(self._wait, done)
        assert ok, "the engine did not get there in time"

    def _wait(self, done: Any) -> bool:
        with self.changed:
            return self.changed.wait_for(done, timeout=30)


async def _run(engine: FakeEngine, worker: DeviceWorker, **kwargs: Any) -> EngineDriver:
    driver = EngineDriver(engine, worker, "fake", **kwargs)  # type: ignore[arg-type]
    await driver.start()
    driver.wake()
    return driver


async def test_a_job_queued_mid_burst_runs_after_the_current_step() -> None:
    worker = DeviceWorker("test-burst")
    engine = FakeEngine(steps=400)
    driver = await _run(engine, worker, burst_s=60.0)
    try:
        await engine.until(lambda: len(engine.log) >= 5)
        queued_at = len(engine.log)
        await worker.run(lambda: engine.log.append("job"))
        # The burst saw the waiting job and handed the worker over within a step or two.
        assert engine.log.index("job") <= queued_at + 2, engine.log[:20]
        await engine.until(lambda: not engine.has_work())
        assert engine.log.count("step") == 400
        assert engine.threads == {"modelwire-worker-test-burst"}
    finally:
        await driver.close()
        worker.close()


async def test_steps_run_without_a_loop_round_trip_between_them() -> None:
    """With nothing else queued, one worker job runs many steps (the loop is not
    needed between them); the burst still ends so the loop hears from the driver."""
    worker = DeviceWorker("test-rounds")
    engine = FakeEngine(steps=60, step_s=0.002)
    jobs = 0
    submit = worker.submit

    def counting(fn: Any) -> Any:
        nonlocal jobs
        jobs += 1
        return submit(fn)

    worker.submit = counting  # type: ignore[method-assign]
    driver = await _run(engine, worker, burst_s=0.05)
    try:
        await engine.until(lambda: not engine.has_work())
        assert 1 < jobs < 60, jobs  # bursts of several steps, bounded by burst_s
    finally:
        await driver.close()
        worker.close()
