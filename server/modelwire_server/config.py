"""Server configuration: a YAML file, overridden by MODELWIRE_* variables and flags.

Every key is checked at start: an unknown key or a bad value stops the server with a
sentence naming it, never a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = (
    "sentiment-analysis",
    "zero-shot-classification",
    "text-generation",
    "fill-mask",
    "ner",
    "question-answering",
    "summarization",
    "translation",
    "feature-extraction",
    "image-to-text",
    "object-detection",
    "image-classification",
    "automatic-speech-recognition",
    "audio-classification",
    "text-to-speech",
    "image-text-to-text",
)
TASK_ALIASES = {"text-classification": "sentiment-analysis", "token-classification": "ner"}
DTYPES = ("auto", "float32", "float16", "bfloat16")
# Weight-only quantization of linear layers (modelwire_server.quantize).
QUANTIZATIONS = ("none", "int8", "int4", "fp8")
PRESETS = ("tiny",)
LOG_FORMATS = ("text", "json")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
# device_map: accelerate's placement strategies, or a mapping of module names to devices.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_MAP_DEVICE = re.compile(r"^(cpu|cuda:\d+|disk)$")

# Model names travel in requests, logs, metric labels and URLs: a plain word.
MAX_MODEL_NAME_CHARS = 128
_MODEL_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_MODEL_NAME_CHARS - 1}}}")
MODEL_NAME_RULE = (
    "letters, digits, '.', '_', '-' and ':', starting with a letter or digit, "
    f"at most {MAX_MODEL_NAME_CHARS} characters"
)


class ConfigError(ValueError):
    """A configuration problem, worded for the operator."""


# Past a second, a "stream" would be a poll: refuse it as a likely unit mistake.
MAX_STREAM_INTERVAL_MS = 1000.0


@dataclass
class ModelConfig:
    """One served model."""

    name: str
    task: str
    source: str
    revision: str | None = None
    default: bool = False
    device: str = "auto"
    dtype: str = "auto"
    # Weight-only quantization of every linear layer: int8 (per output channel) or int4
    # (grouped), on the CPU; a model that cannot be quantized so fails to load, saying why.
    quantization: str = "none"
    # A model bigger than its GPU, spread by accelerate at load (text-generation): a
    # strategy ("auto": the GPU, then CPU memory, then disk) or a mapping of module
    # names to "cpu", "cuda:N" or "disk"; one GPU at most for now (the engine keeps a
    # model's KV cache on one device). `device` is where inputs go.
    device_map: str | dict[str, str] | None = None
    trust_remote_code: bool = False
    # float32 on the CPU: linear layers packed for oneDNN at load (modelwire_server.prepack):
    # about 2x faster small batches, results equal to float rounding, not bit for bit.
    cpu_prepack: bool = False
    # One-shot tasks: the dynamic batcher.
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    # Per-request limits.
    max_inputs: int = 256
    max_input_chars: int = 100_000
    # Tokens of one input after tokenization (summarization, translation and speech
    # text); None: the model's own limit (its position table, else its tokenizer's
    # model_max_length, else a task default).
    max_input_tokens: int | None = None
    # The most result entries one request may ask for: fill-mask candidates (masks x
    # top_k), question-answering answers (top_k), zero-shot scores (inputs x labels).
    max_results: int = 1024
    # Media tasks, checked on the headers before anything is decoded: pixels over all
    # the images of a request, seconds per clip, decoded samples x channels over all the
    # clips of a request (None: max_audio_seconds of 48 kHz stereo), encoded bytes.
    max_image_pixels: int = 4096 * 4096
    max_audio_seconds: float = 600.0
    max_audio_samples: int | None = None
    max_input_bytes: int = 32 * 1024 * 1024
    # Generation: the running set's token budget (rows counted padded, as the cache
    # holds them: each row the widest prompt plus its max_new_tokens), waiting queue and
    # output caps.
    max_batch_tokens: int = 16_384
    max_waiting: int = 256
    max_new_tokens: int = 4096
    default_max_new_tokens: int = 256
    # Text generation: keep the KV of prompt prefixes after a request ends and reuse it
    # for any later prompt that starts with the same tokens (chat turns, shared system
    # prompts), in blocks of tokens, least recently used evicted first.
    prefix_caching: bool = True
    # Text generation: run the engine (and the model) in a device process of its own, so
    # that its steps and this process's gRPC relay do not take turns on one GIL.
    engine_process: bool = False
    # Text generation: a prompt longer than this is prefilled in chunks of it between
    # decode steps, so running streams wait one chunk, not a whole prompt. None: 512 on
    # a GPU, 64 on the CPU (where a 512-token chunk costs many decode steps:
    # bench/chat.py measured p99 inter-token latency 2.5x lower with 64).
    prefill_chunk_tokens: int | None = None
    # Text generation: the KV cache's budget, in bytes (an int), or a share in (0, 1] of
    # the device's free memory after load (on the CPU: of the machine's total memory).
    # Admission then reserves nothing for max_new_tokens, and a batch about to outgrow
    # it preempts requests and resumes them later, outputs unchanged. None: each
    # admitted request reserves prompt + max_new_tokens in max_batch_tokens instead.
    kv_cache_memory: int | float | None = None
    # Generate streams: after a message with new tokens, a stream's next message waits
    # this long and carries every token made meanwhile (0: each step's at once). Fewer
    # messages when steps are fast and streams many; first and final messages never wait.
    stream_interval_ms: float = 0.0
    # Translate: the source language of requests that name none (unset: they must).
    source_language: str | None = None
    preset: bool = False


@dataclass
class ServerConfig:
    """The whole server."""

    host: str = "127.0.0.1"
    port: int = 50051
    models: list[ModelConfig] = field(default_factory=list)
    preset: str | None = None
    max_message_bytes: int = 64 * 1024 * 1024
    # Calls at once (streams included); past it grpc answers RESOURCE_EXHAUSTED before
    # reading the request, so received requests hold at most this x max_message_bytes.
    max_concurrent_rpcs: int | None = None
    grace_period_s: float = 30.0
    log_level: str = "INFO"
    log_format: str = "text"  # "json": one JSON object per log line
    # Operations, each off unless set: a Prometheus endpoint (0 picks a free port),
    # bearer-token auth from key files, and TLS (mutual when a client CA is given).
    metrics_port: int | None = None
    # The OpenAI-compatible HTTP API (modelwire_server.http), off unless set; 0 picks a port.
    http_port: int | None = None
    api_keys_file: str | None = None
    admin_key_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    # Keys given in the environment (MODELWIRE_API_KEYS, MODELWIRE_ADMIN_KEY): secrets
    # stay out of the YAML file, so these are no file keys.
    api_keys: list[str] = field(default_factory=list, repr=False)
    admin_key: str | None = field(default=None, repr=False)
    # ModelService.LoadModel: the sources it may load, each a local directory prefix
    # (an absolute path) or a hub-id glob ("my-org/*"); empty turns LoadModel off.
    load_allow_list: list[str] = field(default_factory=list)
    # With no model READY once loading has ended the server exits non-zero, saying
    # why; this keeps it up instead (NOT_SERVING), for models loaded with LoadModel.
    serve_without_models: bool = False


_SECRET_KEYS = {"api_keys", "admin_key"}
_SERVER_KEYS = {f.name for f in dataclasses.fields(ServerConfig)} - {"models"} - _SECRET_KEYS
_FILE_KEYS = (
    "api_keys_file",
    "admin_key_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
)
# MODELWIRE_* variables naming the operations keys, as the config file spells them.
_ENV_KEYS = {f"MODELWIRE_{key.upper()}": key for key in ("log_format", *_FILE_KEYS)}
_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
_MODEL_KEYS = set(_MODEL_FIELDS) - {"preset"}


def _check_type(where: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where} must be a {getattr(kind, '__name__', kind)}, not a boolean")
    if not isinstance(value, kind):
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{where} must be a {name}, got {value!r}")
    return value


def _model_from_dict(index: int, raw: Any) -> ModelConfig:
    where = f"models[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping with name, task and source")
    unknown = sorted(set(raw) - _MODEL_KEYS)
    if unknown:
        raise ConfigError(
            f"{where} has unknown key {unknown[0]!r}; known keys: {', '.join(sorted(_MODEL_KEYS))}"
        )
    for required in ("name", "task", "source"):
        if required not in raw:
            raise ConfigError(f"{where} is missing {required!r}")
    values: dict[str, Any] = {}
    types = {
        "str": str,
        "bool": bool,
        "int": int,
        "float": float,
        "str | None": str,
        "int | None": int,
        "int | float | None": (int, float),
    }
    for key, value in raw.items():
        if key == "device_map":  # a string or a mapping: validate_model checks it
            values[key] = value
            continue
        declared = str(_MODEL_FIELDS[key].type)
        if value is None and declared.endswith("| None"):
            values[key] = None  # null: the default taken from the model
            continue
        values[key] = _check_type(f"{where}.{key}", value, types[declared])
    model = ModelConfig(**values)
    validate_model(model, where)
    return model


def validate_model(model: ModelConfig, where: str) -> None:
    """Check one model's values (also used for ModelService.LoadModel)."""
    model.task = TASK_ALIASES.get(model.task, model.task)
    if model.task not in TASKS:
        raise ConfigError(f"{where}.task {model.task!r} is not one of: {', '.join(TASKS)}")
    if not model.name.strip():
        raise ConfigError(f"{where}.name must not be empty")
    if not _MODEL_NAME.fullmatch(model.name):
        raise ConfigError(f"{where}.name {model.name[:140]!r} must be {MODEL_NAME_RULE}")
    if not model.source.strip():
        raise ConfigError(f"{where}.source must not be empty")
    if not _DEVICE.match(model.device):
        raise ConfigError(f"{where}.device {model.device!r} must be auto, cpu, cuda or cuda:N")
    if model.dtype not in DTYPES:
        raise ConfigError(f"{where}.dtype {model.dtype!r} must be one of {', '.join(DTYPES)}")
    if model.quantization not in QUANTIZATIONS:
        raise ConfigError(
            f"{where}.quantization {model.quantization!r} must be one of {', '.join(QUANTIZATIONS)}"
        )
    if model.engine_process and (model.task != "text-generation" or model.device_map):
        raise ConfigError(f"{where}.engine_process applies to text-generation models on one device")
    if model.device_map is not None:
        _check_device_map(model, where)
        if model.quantization != "none":
            raise ConfigError(
                f"{where}.quantization applies to models on one device, not with device_map"
            )
    for key in (
        "max_batch_size",
        "max_queue",
        "max_inputs",
        "max_input_chars",
        "max_batch_tokens",
        "max_waiting",
        "max_new_tokens",
        "default_max_new_tokens",
        "max_image_pixels",
        "max_input_bytes",
        "max_results",
    ):
        if getattr(model, key) < 1:
            raise ConfigError(f"{where}.{key} must be at least 1")
    for key in ("max_input_tokens", "max_audio_samples", "prefill_chunk_tokens"):
        if getattr(model, key) is not None and getattr(model, key) < 1:
            raise ConfigError(f"{where}.{key} must be at least 1")
    budget = model.kv_cache_memory
    share = isinstance(budget, float) and 0 < budget <= 1
    size = isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1
    if budget is not None and not (share or size):
        raise ConfigError(
            f"{where}.kv_cache_memory must be bytes (an integer >= 1) or a share of memory "
            f"(a number in (0, 1]), not {budget!r}"
        )
    if not model.max_audio_seconds > 0:
        raise ConfigError(f"{where}.max_audio_seconds must be positive")
    if model.max_wait_ms < 0:
        raise ConfigError(f"{where}.max_wait_ms must not be negative")
    if not 0 <= model.stream_interval_ms <= MAX_STREAM_INTERVAL_MS:
        raise ConfigError(
            f"{where}.stream_interval_ms must be between 0 and {MAX_STREAM_INTERVAL_MS}"
        )
    if model.default_max_new_tokens > model.max_new_tokens:
        raise ConfigError(f"{where}.default_max_new_tokens must not exceed max_new_tokens")


def _check_device_map(model: ModelConfig, where: str) -> None:
    device_map = model.device_map
    if model.task != "text-generation":
        raise ConfigError(f"{where}.device_map applies to text-generation models only")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ConfigError(
                f"{where}.device_map {device_map!r} must be one of "
                f"{', '.join(DEVICE_MAP_STRATEGIES)}, or a mapping of modules to devices"
            )
        return
    if not isinstance(device_map, dict) or not device_map:
        raise ConfigError(f"{where}.device_map must be a strategy or a mapping of modules")
    for module, device in device_map.items():
        if not isinstance(module, str) or not isinstance(device, str):
            raise ConfigError(f"{where}.device_map maps module names to device names")
        if not _MAP_DEVICE.match(device):
            raise ConfigError(
                f"{where}.device_map[{module!r}] {device!r} must be cpu, cuda:N or disk"
            )
    gpus = sorted({d for d in device_map.values() if d.startswith("cuda")})
    if len(gpus) > 1:  # the engine's KV cache lives on one device (tasks/base.py: place)
        raise ConfigError(
            f"{where}.device_map uses {', '.join(gpus)}: one GPU at most for now, plus cpu or disk"
        )


def parse_config(raw: Any, origin: str = "config") -> ServerConfig:
    """Build a ServerConfig from parsed YAML, refusing unknown keys and bad values."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin} must be a YAML mapping with a 'models' list")
    unknown = sorted(set(raw) - _SERVER_KEYS - {"models"})
    if unknown:
        raise ConfigError(
            f"{origin} has unknown key {unknown[0]!r}; known keys: "
            f"{', '.join(sorted(_SERVER_KEYS | {'models'}))}"
        )
    config = ServerConfig()
    for key in ("host", "log_level", "preset", "log_format", *_FILE_KEYS):
        if key in raw:
            setattr(config, key, _check_type(key, raw[key], str))
    if raw.get("metrics_port") is not None:  # null keeps it off
        config.metrics_port = _check_type("metrics_port", raw["metrics_port"], int)
    if raw.get("http_port") is not None:
        config.http_port = _check_type("http_port", raw["http_port"], int)
    for key in ("port", "max_message_bytes"):
        if key in raw:
            setattr(config, key, _check_type(key, raw[key], int))
    if raw.get("max_concurrent_rpcs") is not None:  # null: no limit
        config.max_concurrent_rpcs = _check_type(
            "max_concurrent_rpcs", raw["max_concurrent_rpcs"], int
        )
    if "grace_period_s" in raw:
        config.grace_period_s = _check_type("grace_period_s", raw["grace_period_s"], float)
    if "serve_without_models" in raw:
        config.serve_without_models = _check_type(
            "serve_without_models", raw["serve_without_models"], bool
        )
    if raw.get("load_allow_list") is not None:
        config.load_allow_list = _string_list("load_allow_list", raw["load_allow_list"])
    models = raw.get("models", [])
    if not isinstance(models, list):
        raise ConfigError("models must be a list")
    config.models = [_model_from_dict(i, m) for i, m in enumerate(models)]
    validate_server(config)
    return config


def _string_list(where: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return list(value)


def validate_server(config: ServerConfig) -> None:
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port {config.port} must be between 0 and 65535")
    if config.max_concurrent_rpcs is not None and config.max_concurrent_rpcs < 1:
        raise ConfigError(f"max_concurrent_rpcs {config.max_concurrent_rpcs} must be at least 1")
    if config.preset is not None and config.preset not in PRESETS:
        raise ConfigError(f"preset {config.preset!r} is not one of: {', '.join(PRESETS)}")
    names = [m.name for m in config.models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"model name {dupes[0]!r} is used more than once")
    for task in TASKS:
        defaults = [m.name for m in config.models if m.task == task and m.default]
        if len(defaults) > 1:
            raise ConfigError(f"task {task!r} has several default models: {', '.join(defaults)}")
    validate_operations(config)


def validate_operations(config: ServerConfig) -> None:
    """Metrics, log format and TLS settings (files are read, and checked, at start)."""
    port = config.metrics_port
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"metrics_port {port} must be between 0 and 65535")
    if port is not None and port != 0 and port == config.port:
        raise ConfigError(f"metrics_port {port} is the gRPC port; give metrics a port of its own")
    http = config.http_port
    if http is not None and not 0 <= http <= 65535:
        raise ConfigError(f"http_port {http} must be between 0 and 65535")
    if http and http in (config.port, port):
        raise ConfigError(f"http_port {http} is taken by gRPC or metrics; give HTTP its own port")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format {config.log_format!r} must be text or json")
    if bool(config.tls_cert_file) != bool(config.tls_key_file):
        raise ConfigError("tls_cert_file and tls_key_file go together: set both or neither")
    if config.tls_client_ca_file and not config.tls_cert_file:
        raise ConfigError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")


def load_config_file(path: str | Path) -> ServerConfig:
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return parse_config(raw, origin=str(path))


def resolve(
    *,
    config_file: str | None = None,
    host: str | None = None,
    port: int | None = None,
    preset: str | None = None,
    environ: dict[str, str] | None = None,
    models: list[ModelConfig] | None = None,
    **flags: Any,
) -> ServerConfig:
    """The file, then MODELWIRE_* variables, then flags; no models means the tiny preset.

    ``models`` (``serve --model``) are served beside the file's. ``flags`` are more keys
    as the config file spells them (``metrics_port``, ``tls_cert_file``, ...); None
    leaves a key as it is.
    """
    env = os.environ if environ is None else environ
    config_file = config_file or env.get("MODELWIRE_CONFIG") or None
    config = load_config_file(config_file) if config_file else ServerConfig()
    if "MODELWIRE_HOST" in env:
        config.host = env["MODELWIRE_HOST"]
    if "MODELWIRE_PORT" in env:
        try:
            config.port = int(env["MODELWIRE_PORT"])
        except ValueError:
            raise ConfigError(f"MODELWIRE_PORT {env['MODELWIRE_PORT']!r} is not a number") from None
    if "MODELWIRE_PRESET" in env:
        config.preset = env["MODELWIRE_PRESET"]
    if "MODELWIRE_LOG_LEVEL" in env:
        config.log_level = env["MODELWIRE_LOG_LEVEL"]
    _apply_operations_env(config, env)
    for key, value in flags.items():
        if key not in _SERVER_KEYS:
            raise TypeError(f"resolve() got an unknown flag {key!r}")
        if value is not None:
            setattr(config, key, value)
    if host is not None:
        config.host = host
    if port is not None:
        config.port = port
    if preset is not None:
        config.preset = preset
    config.models += models or []
    if not config.models and config.preset is None:
        config.preset = "tiny"
    validate_server(config)
    return config


def _apply_operations_env(config: ServerConfig, env: Any) -> None:
    """MODELWIRE_* variables for metrics, logs, auth and TLS; empty ones count as unset."""
    for name, key in _ENV_KEYS.items():
        if env.get(name):
            setattr(config, key, env[name])
    if env.get("MODELWIRE_METRICS_PORT"):
        try:
            config.metrics_port = int(env["MODELWIRE_METRICS_PORT"])
        except ValueError:
            value = env["MODELWIRE_METRICS_PORT"]
            raise ConfigError(f"MODELWIRE_METRICS_PORT {value!r} is not a number") from None
    if env.get("MODELWIRE_HTTP_PORT"):
        try:
            config.http_port = int(env["MODELWIRE_HTTP_PORT"])
        except ValueError:
            value = env["MODELWIRE_HTTP_PORT"]
            raise ConfigError(f"MODELWIRE_HTTP_PORT {value!r} is not a number") from None
    keys = [k.strip() for k in env.get("MODELWIRE_API_KEYS", "").split(",")]
    config.api_keys += [k for k in keys if k]
    if env.get("MODELWIRE_ADMIN_KEY", "").strip():
        config.admin_key = env["MODELWIRE_ADMIN_KEY"].strip()
