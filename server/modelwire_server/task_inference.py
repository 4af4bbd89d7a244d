"""Which task a model serves, read from its files: ``serve --model SOURCE`` without ``--task``.

A local model card's ``pipeline_tag`` (the YAML front matter of its README.md) wins
when it names a task this server has; a sentence-transformers directory (modules.json)
is an embedder; otherwise the ``architectures`` of config.json decide: looked up in
transformers' own auto-class tables (``MODEL_FOR_*_MAPPING_NAMES``, which tell an audio
classifier's ``...ForSequenceClassification`` from a text one), then by the head's
class-name suffix for classes those tables do not know (remote code).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from modelwire_server.config import TASK_ALIASES, TASKS, ConfigError, ModelConfig, validate_model

# The hub's pipeline tags that are ours under another name (or are ours as they are).
PIPELINE_TAGS = {
    **{task: task for task in TASKS},
    **TASK_ALIASES,
    "sentence-similarity": "feature-extraction",
    "text2text-generation": "summarization",
    "text-to-audio": "text-to-speech",
}
# Architecture name suffixes (the head's class), tried in order: the first match wins.
_HEADS: tuple[tuple[str, str], ...] = (
    ("ForImageTextToText", "image-text-to-text"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForSequenceClassification", "sentiment-analysis"),
    ("ForTokenClassification", "ner"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCTC", "automatic-speech-recognition"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("ForAudioClassification", "audio-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"),
    ("ForTextToSpeech", "text-to-speech"),
    ("ForConditionalGeneration", "summarization"),  # refined below by model type
)
# Whole architecture names the suffixes above would get wrong or miss.
_ARCHITECTURES = {
    "WhisperForConditionalGeneration": "automatic-speech-recognition",
    "SpeechT5ForTextToSpeech": "text-to-speech",
    "VitsModel": "text-to-speech",
    "VisionEncoderDecoderModel": "image-to-text",
    "BlipForConditionalGeneration": "image-to-text",
    "LlavaForConditionalGeneration": "image-text-to-text",
}
# Encoder-decoders whose conditional generation is translation, not summarization.
_TRANSLATION_TYPES = {"marian", "m2m_100", "nllb-moe", "fsmt"}
_PIPELINE_TAG = re.compile(r"^pipeline_tag:\s*['\"]?([\w-]+)['\"]?\s*$", re.MULTILINE)


def task_of_files(config: dict[str, Any], card: str | None, sentence_transformers: bool) -> str:
    """The task for a model with this config.json, README.md and sentence-transformers flag."""
    tag = _card_tag(card)
    if tag is not None:
        return tag
    if sentence_transformers:
        return "feature-extraction"
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    for name in architectures:
        task = _task_of_architecture(name, str(config.get("model_type", "")))
        if task is not None:
            if task == "sentiment-analysis" and _is_nli(config):
                return "zero-shot-classification"
            return task
    if any(name.endswith("Model") for name in architectures):
        return "feature-extraction"  # a bare encoder: its hidden states are the output
    raise ConfigError(_unknown(architectures))


# transformers' auto-class tables, in the order they are tried (first match wins).
_AUTO_TABLES = (
    ("image-text-to-text", "IMAGE_TEXT_TO_TEXT"),
    ("automatic-speech-recognition", "SPEECH_SEQ_2_SEQ"),
    ("automatic-speech-recognition", "CTC"),
    ("audio-classification", "AUDIO_CLASSIFICATION"),
    ("text-to-speech", "TEXT_TO_WAVEFORM"),
    ("text-to-speech", "TEXT_TO_SPECTROGRAM"),
    ("image-classification", "IMAGE_CLASSIFICATION"),
    ("object-detection", "OBJECT_DETECTION"),
    ("text-generation", "CAUSAL_LM"),
    ("sentiment-analysis", "SEQUENCE_CLASSIFICATION"),
    ("ner", "TOKEN_CLASSIFICATION"),
    ("question-answering", "QUESTION_ANSWERING"),
    ("fill-mask", "MASKED_LM"),
    ("summarization", "SEQ_TO_SEQ_CAUSAL_LM"),
)


@cache
def _auto_classes() -> dict[str, str]:
    """Class name → task, from transformers' auto-class tables."""
    from transformers.models.auto import modeling_auto

    found: dict[str, str] = {}
    for task, table in _AUTO_TABLES:
        names = getattr(modeling_auto, f"MODEL_FOR_{table}_MAPPING_NAMES", {})
        for value in names.values():
            for name in (value,) if isinstance(value, str) else value:
                found.setdefault(name, task)
    return found


def _task_of_architecture(name: str, model_type: str) -> str | None:
    if name in _ARCHITECTURES:
        return _ARCHITECTURES[name]
    task = _auto_classes().get(name)
    if task == "summarization" and model_type in _TRANSLATION_TYPES:
        return "translation"
    if task is not None:
        return task
    for suffix, task in _HEADS:
        if name.endswith(suffix):
            if task == "summarization" and model_type in _TRANSLATION_TYPES:
                return "translation"
            return task
    if name.startswith(("Marian", "M2M100")) and name.endswith("MTModel"):
        return "translation"
    return None


def _is_nli(config: dict[str, Any]) -> bool:
    """An NLI classifier (an 'entailment' label) serves zero-shot classification."""
    labels = config.get("label2id") or {}
    return any(str(label).lower().startswith("entail") for label in labels)


def _card_tag(card: str | None) -> str | None:
    if not card or not card.startswith("---"):
        return None
    front = card.split("---", 2)[1] if card.count("---") >= 2 else ""
    match = _PIPELINE_TAG.search(front)
    return PIPELINE_TAGS.get(match.group(1)) if match else None


def _unknown(architectures: list[str]) -> str:
    what = f"architectures {', '.join(architectures)}" if architectures else "no architectures"
    return (
        f"cannot tell which task the model serves (its config.json has {what}); "
        f"pass --task, one of: {', '.join(TASKS)}"
    )


def infer_task(source: str, revision: str | None = None) -> str:
    """The task of the model at ``source``: a local directory or a hub id (whose
    config.json, and README.md if it has one, are fetched into the hub cache)."""
    path = Path(source)
    if path.is_dir():
        read = _local_reader(path)
    else:
        read = _hub_reader(source, revision)
    text = read("config.json")
    if text is None:
        raise ConfigError(f"{source} has no config.json; pass --task, one of: {', '.join(TASKS)}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}/config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{source}/config.json is not a JSON object")
    try:
        return task_of_files(config, read("README.md"), read("modules.json") is not None)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _local_reader(path: Path) -> Any:
    def read(name: str) -> str | None:
        file = path / name
        return file.read_text(errors="replace") if file.is_file() else None

    return read


def _hub_reader(repo: str, revision: str | None) -> Any:
    def read(name: str) -> str | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        try:
            return Path(hf_hub_download(repo, name, revision=revision)).read_text(errors="replace")
        except EntryNotFoundError:
            return None
        except (HfHubHTTPError, OSError, ValueError) as exc:
            if name != "config.json":
                return None
            raise ConfigError(f"cannot read {name} of {repo}: {exc}") from None

    return read


def flag_model(
    source: str,
    *,
    task: str | None = None,
    name: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    quantization: str | None = None,
) -> ModelConfig:
    """The ModelConfig of one ``--model SOURCE`` with its ``--task/--name/--dtype/--device/
    --quantization`` (checked as a config file entry is); the task is inferred when not
    given, and the name is the source's last path segment."""
    name = name or source.rstrip("/").rsplit("/", 1)[-1]
    model = ModelConfig(
        name=name,
        task=task or infer_task(source),
        source=source,
        dtype=dtype or "auto",
        device=device or "auto",
        quantization=quantization or "none",
    )
    validate_model(model, f"--model {source}")
    return model
