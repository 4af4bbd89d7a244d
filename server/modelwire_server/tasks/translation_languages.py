"""How a translation model is told its languages, and which pairs it can do.

Three conventions cover the common encoder-decoders:
- language tokens (M2M100, NLLB, mBART-50): the source token goes into the encoder
  input where the tokenizer puts its own language token (first for M2M100/NLLB, last
  for mBART; first when it puts none), and the target token is forced as the first
  generated token. The codes come
  from ``modelwire_languages.json`` beside the model (code → token, as the tiny preset
  writes it), else from the tokenizer's special tokens (``__en__`` → ``en``;
  ``eng_Latn`` and ``en_XX`` are their own codes);
- task prefixes (T5): ``translate English to French: `` before the text, taken from the
  config's ``task_specific_params`` (``translation_en_to_fr``) when it lists pairs,
  else built from language names;
- one fixed pair (Marian ``opus-mt-en-fr``): the pair is read from the model's name;
  a model whose name says nothing accepts any request.

A pair the model cannot do is INVALID_ARGUMENT naming ``source_language`` or
``target_language``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from transformers.utils import cached_file

from modelwire_server.errors import InvalidArgument

LANGUAGES_FILE = "modelwire_languages.json"
T5_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5"})
# The languages of T5's own translation prefixes, plus a few common ones.
NAMES = {
    "en": "English", "fr": "French", "de": "German", "ro": "Romanian", "es": "Spanish",
    "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "ru": "Russian", "zh": "Chinese",
    "ja": "Japanese",
}  # fmt: skip
_M2M_TOKEN = re.compile(r"^__([a-z]{2,3}(?:_[A-Za-z]+)?)__$")
_CODE_TOKEN = re.compile(r"^[a-z]{2,3}_[A-Z][A-Za-z]{1,3}$")  # eng_Latn, en_XX
_OPUS_NAME = re.compile(r"opus-mt-([a-z]{2,3})-([a-z]{2,3})(?:$|[^a-z])")


@dataclass(frozen=True)
class Plan:
    """What one Translate request does to each input and to decoding."""

    prefix: str = ""
    source_token: int | None = None
    target_token: int | None = None  # forced as the first generated token


class Languages(Protocol):
    def plan(self, source: str | None, target: str) -> Plan: ...


def _refuse(field: str, code: str | None, known: list[str], what: str) -> InvalidArgument:
    if code is None:
        return InvalidArgument(field, f"is required by this model ({what})")
    listed = ", ".join(sorted(known)) or "none"
    return InvalidArgument(field, f"{code!r} is not a language of this model ({what}: {listed})")


class LanguageTokens:
    """M2M100 / NLLB / mBART-50: one special token per language."""

    def __init__(self, tokens: dict[str, int]) -> None:
        self.tokens = tokens
        self.ids = frozenset(tokens.values())

    def plan(self, source: str | None, target: str) -> Plan:
        known = list(self.tokens)
        if target not in self.tokens:
            raise _refuse("target_language", target, known, "languages")
        if source not in self.tokens:
            raise _refuse("source_language", source, known, "languages")
        return Plan(source_token=self.tokens[source], target_token=self.tokens[target])

    def encode(self, ids: list[int], source_token: int) -> list[int]:
        """Put the source token where the tokenizer put a language token, else first."""
        for i, token in enumerate(ids):
            if token in self.ids:
                return [*ids[:i], source_token, *ids[i + 1 :]]
        return [source_token, *ids]


class TaskPrefixes:
    """T5: the languages are named in a text prefix."""

    def __init__(self, pairs: dict[tuple[str, str], str]) -> None:
        self.pairs = pairs  # empty: any two languages of NAMES

    def plan(self, source: str | None, target: str) -> Plan:
        if self.pairs:
            return Plan(prefix=self._listed(source, target))
        if target not in NAMES:
            raise _refuse("target_language", target, list(NAMES), "named languages")
        if source not in NAMES:
            raise _refuse("source_language", source, list(NAMES), "named languages")
        return Plan(prefix=f"translate {NAMES[source]} to {NAMES[target]}: ")

    def _listed(self, source: str | None, target: str) -> str:
        sources = [s for s, t in self.pairs if t == target]
        if not sources:
            targets = sorted({t for _, t in self.pairs})
            raise _refuse("target_language", target, targets, "targets")
        if source is None and len(sources) == 1:
            source = sources[0]
        if (source, target) not in self.pairs:
            raise _refuse("source_language", source, sources, f"sources into {target!r}")
        return self.pairs[(source, target)]  # type: ignore[index]


class FixedPair:
    """A bilingual model (Marian): its one pair, when its name says which."""

    def __init__(self, source: str | None, target: str | None) -> None:
        self.source, self.target = source, target

    def plan(self, source: str | None, target: str) -> Plan:
        if self.target is not None and target != self.target:
            raise _refuse("target_language", target, [self.target], "it translates into")
        if self.source is not None and source not in (None, self.source):
            raise _refuse("source_language", source, [self.source], "it translates from")
        return Plan()


def languages_for(source: str, config: Any, tokenizer: Any, **hub: Any) -> Languages:
    """The convention of the model at ``source`` (a directory or hub id)."""
    tokens = _file_tokens(source, tokenizer, hub) or _tokenizer_tokens(tokenizer)
    if tokens:
        return LanguageTokens(tokens)
    pairs = _t5_pairs(config)
    if pairs or getattr(config, "model_type", "") in T5_MODEL_TYPES:
        return TaskPrefixes(pairs)
    found = _OPUS_NAME.search(source.rstrip("/").lower())
    return FixedPair(*found.groups()) if found else FixedPair(None, None)


def summarization_prefix(config: Any) -> str:
    """T5's ``summarize: `` when the config says so, else nothing."""
    params = (getattr(config, "task_specific_params", None) or {}).get("summarization") or {}
    return params.get("prefix") or getattr(config, "prefix", None) or ""


def _file_tokens(source: str, tokenizer: Any, hub: dict[str, Any]) -> dict[str, int]:
    try:
        path = cached_file(
            source, LANGUAGES_FILE, _raise_exceptions_for_missing_entries=False, **hub
        )
    except (OSError, ValueError):  # not on disk nor reachable, or not a valid hub id
        return {}
    if path is None:
        return {}
    with open(path, encoding="utf-8") as handle:
        mapping = json.load(handle)
    ids = {code: tokenizer.convert_tokens_to_ids(token) for code, token in mapping.items()}
    unknown = (None, tokenizer.unk_token_id)  # a listed token the vocabulary lacks
    return {code: int(i) for code, i in ids.items() if i not in unknown}


def _tokenizer_tokens(tokenizer: Any) -> dict[str, int]:
    tokens: dict[str, int] = {}
    for token in getattr(tokenizer, "all_special_tokens", []) or []:
        match = _M2M_TOKEN.match(token)
        code = match.group(1) if match else token if _CODE_TOKEN.match(token) else None
        if code is not None:
            tokens[code] = int(tokenizer.convert_tokens_to_ids(token))
    return tokens


def _t5_pairs(config: Any) -> dict[tuple[str, str], str]:
    pairs = {}
    for key, params in (getattr(config, "task_specific_params", None) or {}).items():
        found = re.fullmatch(r"translation_([a-z]{2,3})_to_([a-z]{2,3})", key)
        if found and isinstance(params, dict):
            pairs[(found.group(1), found.group(2))] = str(params.get("prefix") or "")
    return pairs
