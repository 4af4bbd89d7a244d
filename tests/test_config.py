"""Configuration: YAML, environment and flags; bad input is refused with a sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelwire_server.config import ConfigError, load_config_file, parse_config, resolve


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "modelwire.yaml"
    path.write_text(text)
    return path


def test_full_model_entry_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
port: 6000
models:
  - name: sst2
    task: text-classification
    source: distilbert/distilbert-base-uncased-finetuned-sst-2-english
    revision: main
    default: true
    device: cuda:1
    dtype: bfloat16
    max_batch_size: 8
    max_wait_ms: 2
""",
    )
    config = load_config_file(path)
    model = config.models[0]
    assert config.port == 6000
    assert model.task == "sentiment-analysis"  # the alias is resolved
    assert (model.device, model.dtype, model.default) == ("cuda:1", "bfloat16", True)
    assert (model.max_batch_size, model.max_wait_ms, model.revision) == (8, 2.0, "main")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"models": [{"name": "a", "task": "ner", "source": "x", "colour": 1}]}, "'colour'"),
        ({"modles": []}, "'modles'"),
        ({"models": [{"name": "a", "task": "dance", "source": "x"}]}, "task 'dance'"),
        ({"models": [{"name": "a", "task": "ner"}]}, "missing 'source'"),
        ({"models": [{"name": "a", "task": "ner", "source": "x", "dtype": "int3"}]}, "dtype"),
        ({"models": [{"name": "a", "task": "ner", "source": "x", "device": "tpu"}]}, "device"),
        (
            {"models": [{"name": "a", "task": "ner", "source": "x", "max_batch_size": 0}]},
            "max_batch_size",
        ),
        ({"models": [{"name": "a", "task": "ner", "source": "x", "default": "yes"}]}, "default"),
        (
            {
                "models": [
                    {"name": "a", "task": "ner", "source": "x"},
                    {"name": "a", "task": "ner", "source": "y"},
                ]
            },
            "more than once",
        ),
        ({"port": 70000}, "port"),
        (
            {"models": [{"name": "a", "task": "ner", "source": "x", "stream_interval_ms": -1}]},
            "stream_interval_ms must be between 0 and 1000",
        ),
        (
            {"models": [{"name": "a", "task": "ner", "source": "x", "stream_interval_ms": 5000}]},
            "stream_interval_ms",
        ),
    ],
)
def test_bad_config_is_refused_naming_the_problem(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(write(tmp_path, "models: [unclosed"))


def test_environment_then_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "host: 0.0.0.0\nport: 7000\nmodels: []\n")
    env = {"MODELWIRE_CONFIG": str(path), "MODELWIRE_PORT": "7001"}
    assert resolve(environ=env).port == 7001
    assert resolve(environ=env).host == "0.0.0.0"
    assert resolve(environ=env, port=7002, host="127.0.0.2").port == 7002
    with pytest.raises(ConfigError, match="MODELWIRE_PORT"):
        resolve(environ={"MODELWIRE_PORT": "many"})


def test_no_models_means_the_tiny_preset() -> None:
    assert resolve(environ={}).preset == "tiny"
    with pytest.raises(ConfigError, match="preset 'huge'"):
        resolve(environ={}, preset="huge")


def test_request_cost_limits_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - {name: t5, task: summarization, source: /m/t5, max_input_tokens: 300,\n"
        "     max_results: 50, max_audio_samples: 96000, max_image_pixels: 1000000}\n"
        "  - {name: vits, task: text-to-speech, source: /m/vits, max_input_tokens: null}\n"
    )
    t5, vits = load_config_file(path).models
    assert (t5.max_input_tokens, t5.max_results) == (300, 50)
    assert (t5.max_audio_samples, t5.max_image_pixels) == (96000, 1000000)
    assert vits.max_input_tokens is None and vits.max_audio_samples is None  # from the model
    for key, value in (("max_input_tokens", 0), ("max_results", 0), ("max_audio_samples", -1)):
        entry = {"name": "m", "task": "fill-mask", "source": "/m", key: value}
        with pytest.raises(ConfigError, match=rf"models\[0\]\.{key} must be at least 1"):
            parse_config({"models": [entry]})
    with pytest.raises(ConfigError, match=r"max_results must be a int"):
        parse_config({"models": [{"name": "m", "task": "ner", "source": "/m", "max_results": "x"}]})
