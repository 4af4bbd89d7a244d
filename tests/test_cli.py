"""The console script as an operator runs it: a real subprocess on the offline preset."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelwire_server import cli, preset
from tests.processes import kill_if_running, read_port, spawn_server, wait_serving


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
    proc = spawn_server(cache=preset_cache)
    log: list[str] = []
    try:
        port = read_port(proc, log)
        wait_serving(f"127.0.0.1:{port}", proc, log)
        assert any("MEANINGLESS" in line for line in log), "no preset warning in the log"
        _check_preset_models(f"127.0.0.1:{port}")
        _embed_past_the_tokenizer_maximum(f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        # One line per model, no library progress bars or warnings an operator cannot act on.
        text = "".join(log)
        for noise in ("Loading weights", "Writing model shards", "torchvision", "Token indices"):
            assert noise not in text, noise
        ready = [line for line in log if ": ready on cpu in " in line]
        assert len(ready) == len(preset.all_models()), ready
        for model in preset.all_models():  # one line each, saying what dtype auto chose
            [line] = [x for x in log if f"model {model.name}: " in x]
            assert line.rstrip().endswith(", float32 (dtype auto)"), line
    finally:
        kill_if_running(proc)


def test_version_prints_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("modelwire-server 0.")


def test_a_busy_port_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"modelwire-server: cannot listen on 127.0.0.1:{port}: ")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost"])
def test_the_port_check_takes_the_host_s_own_address_family(host: str) -> None:
    from modelwire_server.server import _check_free

    name = host.strip("[]")
    family = socket.getaddrinfo(name, 0, type=socket.SOCK_STREAM)[0][0]
    with socket.create_server((name, 0), family=family) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on {re.escape(host)}:{port}: "):
            _check_free(host, port)
    _check_free(host, port)  # free again: no refusal


def test_no_model_loads_exits_1_saying_why(tmp_path: Path, preset_cache: Path) -> None:
    config = tmp_path / "models.yaml"
    missing = tmp_path / "no-such-dir"
    config.write_text(f"models:\n  - {{name: a, task: ner, source: {missing}}}\n")
    proc = spawn_server("--config", str(config), cache=preset_cache)
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, out
        assert f"the local directory {missing} does not exist" in out
        assert "no model could be loaded" in out and "Traceback" not in out
    finally:
        kill_if_running(proc)

    # With --serve-without-models it stays up (NOT_SERVING) for LoadModel, and drains.
    proc = spawn_server("--config", str(config), "--serve-without-models", cache=preset_cache)
    log: list[str] = []
    try:
        port = read_port(proc, log)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            ready = grpc.channel_ready_future(channel)
            ready.result(timeout=30)
            request = health_pb2.HealthCheckRequest(service="modelwire.v1.InferenceService")
            for _ in range(600):  # until loading has ended: the failure is in the log
                if any("model a: FAILED" in line for line in log):
                    break
                log.append(proc.stdout.readline())  # type: ignore[union-attr]
            reply = stub.Check(request, timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert proc.poll() is None, "".join(log)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert "SIGTERM: draining" in out, out
    finally:
        kill_if_running(proc)


def _embed_past_the_tokenizer_maximum(target: str) -> None:
    from modelwire.v1 import inference_service_pb2 as pb
    from modelwire.v1 import inference_service_pb2_grpc as pb_grpc

    words = " ".join(["fox"] * 2000)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        reply = stub.Embed(pb.EmbedRequest(inputs=[words], truncate=True), timeout=30)
    assert reply.embeddings[0].truncated


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
