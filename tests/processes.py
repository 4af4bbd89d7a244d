"""Server subprocesses, as an operator runs them: ``python -m modelwire_server serve``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVE_TIMEOUT_S = 240


def spawn_server(*args: str, cache: Path) -> subprocess.Popen[str]:
    """``serve --port 0 *args`` with the preset cache ``cache``; stdout and stderr are
    one unbuffered text pipe (read it with ``read_port``, then ``wait_serving``)."""
    env = {**os.environ, "MODELWIRE_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "modelwire_server", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def read_port(proc: subprocess.Popen[str], log: list[str]) -> int:
    """The port from the server's ``listening on`` line; lines read go to ``log``."""
    assert proc.stdout is not None
    for line in proc.stdout:
        log.append(line)
        if line.startswith("modelwire-server listening on"):
            return int(line.rsplit(":", 1)[1])
    raise AssertionError("server exited before listening:\n" + "".join(log))


def wait_serving(target: str, proc: subprocess.Popen[str], log: list[str]) -> None:
    """Poll health until SERVING (the preset builds and loads every model first); the
    rest of the output keeps going to ``log``."""
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="modelwire.v1.InferenceService")
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server died:\n" + "".join(log)
            status = stub.Check(request, timeout=10).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.5)  # polling an external process: there is no event to wait on
    raise AssertionError("not SERVING in time:\n" + "".join(log))


def kill_if_running(proc: subprocess.Popen[str]) -> None:
    """The clean-up of a test that may have failed before its server exited."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
