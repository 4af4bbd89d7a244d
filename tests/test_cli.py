"""The console script as an operator runs it: a real subprocess on the offline preset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelwire_server import cli

SERVE_TIMEOUT_S = 240


def test_without_the_server_extra_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "missing_server_modules", lambda: ["torch"])
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'modelwire[server]'" in err and err.count("\n") == 0


def test_bad_config_is_one_sentence_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("models:\n  - {name: a, task: ner, source: x, batch: 3}\n")
    assert cli.main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "'batch'" in err and "Traceback" not in err


def test_serve_with_no_config_serves_the_tiny_preset(preset_cache: Path) -> None:
    env = {**os.environ, "MODELWIRE_CACHE": str(preset_cache), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelwire_server", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    log: list[str] = []
    try:
        port = _read_port(proc, log)
        _wait_serving(f"127.0.0.1:{port}", proc, log)
        assert any("MEANINGLESS" in line for line in log), "no preset warning in the log"
        _check_preset_models(f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_port(proc: subprocess.Popen[str], log: list[str]) -> int:
    assert proc.stdout is not None
    for line in proc.stdout:
        log.append(line)
        if line.startswith("modelwire-server listening on"):
            return int(line.rsplit(":", 1)[1])
    raise AssertionError("server exited before listening:\n" + "".join(log))


def _wait_serving(target: str, proc: subprocess.Popen[str], log: list[str]) -> None:
    """Poll health until SERVING (the preset builds and loads every model first)."""
    import threading

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


def _check_preset_models(target: str) -> None:
    """Every preset model of a task this server implements is READY; ModelService says 'tiny'."""
    from modelwire.v1 import model_service_pb2 as pb
    from modelwire.v1 import model_service_pb2_grpc as pb_grpc
    from modelwire_server import preset, tasks

    with grpc.insecure_channel(target) as channel:
        listing = pb_grpc.ModelServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    assert listing.preset == "tiny"
    states = {m.name: m for m in listing.models}
    assert set(states) == {m.name for m in preset.all_models()}
    for model in listing.models:
        assert model.preset
        if tasks.runner_class(model.task) is not None:
            assert model.state == pb.MODEL_STATE_READY, (model.name, model.failure_message)
        else:
            assert "not implemented" in model.failure_message
