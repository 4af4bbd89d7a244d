"""``serve --model SOURCE``: a model with no config file, its task read from its files."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import httpx2 as httpx
import pytest

from modelwire import AsyncClient
from modelwire_server import preset
from modelwire_server.cli import build_parser, main
from modelwire_server.config import TASKS, ConfigError, resolve
from modelwire_server.task_inference import infer_task
from tests.conftest import minilm_path
from tests.processes import kill_if_running, read_port, spawn_server, wait_serving

UNKNOWN = "pass --task, one of: " + ", ".join(TASKS)


@pytest.mark.parametrize("name", [m.name for m in preset.all_models()])
def test_each_preset_kind_gets_its_task(preset_cache: Path, name: str) -> None:
    """Classifiers, NLI, embedders, causal and seq2seq LMs, Whisper and CTC, vision,
    speech: each preset directory's task is the one the preset serves it as."""
    [model] = [m for m in preset.all_models() if m.name == name]
    assert infer_task(str(preset.ensure_model(name))) == model.task


def test_the_command_line_infers_each_kind(preset_cache: Path) -> None:
    """What ``serve --model DIR ...`` with no config resolves to, for a classifier, an
    embedder, a causal LM and a Whisper model."""
    from modelwire_server.cli import flag_models

    kinds = {
        "tiny-sentiment": "sentiment-analysis",
        "tiny-embed": "feature-extraction",
        "tiny-gpt2": "text-generation",
        "tiny-whisper": "automatic-speech-recognition",
    }
    argv = ["serve"]
    for name in kinds:
        argv += ["--model", str(preset.ensure_model(name))]
    args = build_parser().parse_args(argv)
    config = resolve(environ={}, models=flag_models(args.model))
    assert {m.name: m.task for m in config.models} == kinds
    assert config.preset is None  # models given: no preset beside them


def test_sentence_transformers_model_is_an_embedder() -> None:
    assert infer_task(str(minilm_path())) == "feature-extraction"


def test_model_card_pipeline_tag_wins(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    assert infer_task(str(tmp_path)) == "text-generation"
    (tmp_path / "README.md").write_text(
        "---\nlicense: mit\npipeline_tag: text-classification\n---\n"
    )
    assert infer_task(str(tmp_path)) == "sentiment-analysis"


def test_unknown_kind_fails_with_the_tasks(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MysteryNet"]}))
    with pytest.raises(ConfigError) as caught:
        infer_task(str(tmp_path))
    assert "cannot tell which task the model serves" in str(caught.value)
    assert "MysteryNet" in str(caught.value) and UNKNOWN in str(caught.value)
    # The command line says the same sentence and exits 2, before loading anything.
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert UNKNOWN in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["serve", "--model", str(empty)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_model_flags_describe_the_model_before_them(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--model", "a/b", "--task", "ner", "--name", "x", "--model", "/m/c", "--dtype",
         "float16", "--quantization", "int8", "--http-port", "8080"]
    )  # fmt: skip
    assert args.model == [
        {"source": "a/b", "task": "ner", "name": "x"},
        {"source": "/m/c", "dtype": "float16", "quantization": "int8"},
    ]
    assert args.http_port == 8080
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["serve", "--task", "ner", "--model", "a/b"])
    assert caught.value.code == 2


def test_flag_models_join_the_config_file(preset_cache: Path, tmp_path: Path) -> None:
    from modelwire_server.task_inference import flag_model

    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n  - {name: s, task: sentiment-analysis, source: /x}\nhttp_port: 0\n"
    )
    gpt2 = str(preset.ensure_model("tiny-gpt2"))
    resolved = resolve(
        config_file=str(config),
        environ={},
        models=[flag_model(gpt2, dtype="float32", device="cpu", quantization="int8")],
    )
    assert [(m.name, m.task) for m in resolved.models] == [
        ("s", "sentiment-analysis"),
        ("tiny-gpt2", "text-generation"),
    ]
    assert resolved.models[1].dtype == "float32" and resolved.models[1].device == "cpu"
    assert resolved.models[1].quantization == "int8"
    assert resolved.preset is None and resolved.http_port == 0
    with pytest.raises(ConfigError, match="used more than once"):
        resolve(config_file=str(config), environ={}, models=[flag_model(gpt2, name="s")])
    with pytest.raises(ConfigError, match="dtype"):
        flag_model(gpt2, dtype="float8")
    with pytest.raises(ConfigError, match="quantization"):
        flag_model(gpt2, quantization="int3")


async def test_serve_model_dirs_over_grpc_and_http(preset_cache: Path) -> None:
    """The command an operator runs: two directories, no config, both fronts; SIGTERM
    drains both and exits 0."""
    sentiment = str(preset.ensure_model("tiny-sentiment"))
    embed = str(preset.ensure_model("tiny-embed"))
    proc = spawn_server(
        "--model", sentiment, "--device", "cpu", "--model", embed, "--name", "emb",
        "--http-port", "0", cache=preset_cache,
    )  # fmt: skip
    log: list[str] = []
    try:
        port = read_port(proc, log)
        assert proc.stdout is not None
        http_line = proc.stdout.readline()
        log.append(http_line)
        assert http_line.startswith("modelwire-server HTTP on"), "".join(log)
        http_port = int(http_line.rsplit(":", 1)[1])
        wait_serving(f"127.0.0.1:{port}", proc, log)
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            models = {m.name: m.task for m in await client.list_models()}
        assert models == {"tiny-sentiment": "sentiment-analysis", "emb": "feature-extraction"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
            listed = (await http.get("/v1/models")).json()
            assert [m["id"] for m in listed["data"]] == ["tiny-sentiment", "emb"]
            assert (await http.get("/health/ready")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(log)
    finally:
        kill_if_running(proc)
    assert not any("Traceback" in line for line in log), "".join(log)


def test_a_taken_http_port_stops_the_start(preset_cache: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sentiment = str(preset.ensure_model("tiny-sentiment"))
        code = main(["serve", "--port", "0", "--http-port", str(port), "--model", sentiment])
    assert code != 0
    assert f"cannot bind the HTTP port 127.0.0.1:{port}" in capsys.readouterr().err


def test_http_port_from_file_environment_and_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("http_port: 8001\n")
    assert resolve(config_file=str(config), environ={}).http_port == 8001
    env = {"MODELWIRE_HTTP_PORT": "8002"}
    assert resolve(config_file=str(config), environ=env).http_port == 8002
    assert resolve(config_file=str(config), environ=env, http_port=8003).http_port == 8003
    assert resolve(environ={}).http_port is None  # off unless set
    with pytest.raises(ConfigError, match="http_port 50051 is taken by gRPC or metrics"):
        resolve(environ={}, http_port=50051)
    with pytest.raises(ConfigError, match="between 0 and 65535"):
        resolve(environ={}, http_port=70000)
    with pytest.raises(ConfigError, match="MODELWIRE_HTTP_PORT 'x' is not a number"):
        resolve(environ={"MODELWIRE_HTTP_PORT": "x"})
