"""Which languages a translation model takes, by convention, without loading a model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelwire_server.errors import InvalidArgument
from modelwire_server.tasks.translation_languages import (
    FixedPair,
    LanguageTokens,
    Plan,
    TaskPrefixes,
    languages_for,
    summarization_prefix,
)


class FakeTokenizer:
    unk_token_id = 0

    def __init__(self, specials: list[str]) -> None:
        self.all_special_tokens = specials
        self.ids = {token: 100 + i for i, token in enumerate(specials)}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.ids.get(token, self.unk_token_id)


def config(**fields: Any) -> SimpleNamespace:
    return SimpleNamespace(model_type=fields.pop("model_type", "bart"), **fields)


def field_of(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return error.value.violations[0].field


def test_m2m100_tokens_from_the_tokenizer(tmp_path: Path) -> None:
    tokenizer = FakeTokenizer(["</s>", "__en__", "__fr__"])
    languages = languages_for(str(tmp_path), config(), tokenizer)
    assert isinstance(languages, LanguageTokens)
    assert languages.plan("en", "fr") == Plan(source_token=100 + 1, target_token=100 + 2)
    with pytest.raises(InvalidArgument) as missing:
        languages.plan(None, "fr")
    assert field_of(missing) == "source_language"
    with pytest.raises(InvalidArgument) as unknown:
        languages.plan("en", "de")
    assert field_of(unknown) == "target_language" and "en, fr" in str(unknown.value)


def test_languages_file_wins_and_nllb_codes_are_their_own(tmp_path: Path) -> None:
    (tmp_path / "modelwire_languages.json").write_text('{"english": "eng_Latn"}')
    tokenizer = FakeTokenizer(["eng_Latn", "fra_Latn"])
    from_file = languages_for(str(tmp_path), config(), tokenizer)
    assert isinstance(from_file, LanguageTokens) and list(from_file.tokens) == ["english"]
    (tmp_path / "modelwire_languages.json").unlink()
    nllb = languages_for(str(tmp_path), config(), tokenizer)
    assert isinstance(nllb, LanguageTokens) and set(nllb.tokens) == {"eng_Latn", "fra_Latn"}


def test_source_token_replaces_the_tokenizers_own_wherever_it_is() -> None:
    languages = LanguageTokens({"en": 7, "ro": 8})
    assert languages.encode([7, 50, 51, 2], source_token=8) == [8, 50, 51, 2]  # M2M100
    assert languages.encode([50, 51, 2, 7], source_token=8) == [50, 51, 2, 8]  # mBART
    assert languages.encode([50, 51, 2], source_token=8) == [8, 50, 51, 2]


def test_t5_prefixes_from_task_specific_params(tmp_path: Path) -> None:
    params = {
        "summarization": {"prefix": "summarize: "},
        "translation_en_to_de": {"prefix": "translate English to German: "},
        "translation_en_to_fr": {"prefix": "translate English to French: "},
    }
    t5 = config(model_type="t5", task_specific_params=params)
    languages = languages_for(str(tmp_path), t5, FakeTokenizer([]))
    assert isinstance(languages, TaskPrefixes)
    assert languages.plan(None, "de").prefix == "translate English to German: "
    with pytest.raises(InvalidArgument) as target:
        languages.plan("en", "ro")
    assert field_of(target) == "target_language"
    with pytest.raises(InvalidArgument) as source:
        languages.plan("fr", "de")
    assert field_of(source) == "source_language"
    assert summarization_prefix(t5) == "summarize: "
    assert summarization_prefix(config()) == ""


def test_t5_without_params_names_the_languages(tmp_path: Path) -> None:
    languages = languages_for(str(tmp_path), config(model_type="t5"), FakeTokenizer([]))
    assert languages.plan("de", "ro").prefix == "translate German to Romanian: "


def test_marian_pair_from_its_name(tmp_path: Path) -> None:
    opus = tmp_path / "opus-mt-en-fr"
    opus.mkdir()
    languages = languages_for(str(opus), config(model_type="marian"), FakeTokenizer([]))
    assert isinstance(languages, FixedPair)
    assert languages.plan(None, "fr") == languages.plan("en", "fr") == Plan()
    with pytest.raises(InvalidArgument) as wrong:
        languages.plan("en", "de")
    assert field_of(wrong) == "target_language"
    anything = languages_for(str(tmp_path), config(model_type="marian"), FakeTokenizer([]))
    assert anything.plan("xx", "yy") == Plan()
