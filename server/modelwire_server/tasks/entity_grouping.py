"""Token predictions → entities, with the aggregation strategies of transformers' NER pipeline.

NONE reports every token whose label is not "O"; SIMPLE joins adjacent tokens of the
same entity type (a "B-" tag starts a new entity); FIRST, AVERAGE and MAX first force
every token of a word to one label (the first token's, the averaged scores' best, or
the most confident token's) and then join as SIMPLE does. The arithmetic follows the
pipeline (float32 numpy, ``nanmean``) so scores agree with it to float precision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

Strategy = Literal["none", "simple", "first", "average", "max"]
IGNORED_LABELS = ("O",)


@dataclass(frozen=True)
class TokenPrediction:
    """One non-special token: its text, label probabilities and place in the input."""

    token: str
    scores: np.ndarray
    start: int
    end: int
    index: int
    is_subword: bool


@dataclass(frozen=True)
class Entity:
    label: str  # the tag ("B-PER") with strategy NONE, else the group ("PER")
    score: float
    word: str
    start: int
    end: int
    index: int | None = None  # token index, with strategy NONE only


# Joins token strings into text ("jo", "##hn" → "john"): the tokenizer's own rule.
TokensToString = Callable[[list[str]], str]


@dataclass(frozen=True)
class _Tagged:
    label: str
    score: float
    token: str
    start: int
    end: int
    index: int | None


def aggregate(
    tokens: list[TokenPrediction],
    strategy: Strategy,
    id2label: Mapping[int, str],
    to_string: TokensToString,
) -> list[Entity]:
    """The entities of one input, in input order."""
    if strategy in ("none", "simple"):
        tagged = [_tag(t, id2label) for t in tokens]
    else:
        tagged = _words(tokens, strategy, id2label, to_string)
    if strategy == "none":
        entities = [Entity(t.label, t.score, t.token, t.start, t.end, t.index) for t in tagged]
    else:
        entities = _group(tagged, to_string)
    return [e for e in entities if e.label not in IGNORED_LABELS]


def _tag(token: TokenPrediction, id2label: Mapping[int, str]) -> _Tagged:
    best = int(token.scores.argmax())
    return _Tagged(
        id2label[best],
        float(token.scores[best]),
        token.token,
        token.start,
        token.end,
        token.index,
    )


def _words(
    tokens: list[TokenPrediction],
    strategy: Strategy,
    id2label: Mapping[int, str],
    to_string: TokensToString,
) -> list[_Tagged]:
    """One tagged item per word: a token and the subword tokens that follow it."""
    words: list[list[TokenPrediction]] = []
    for token in tokens:
        if words and token.is_subword:
            words[-1].append(token)
        else:
            words.append([token])
    return [_word(word, strategy, id2label, to_string) for word in words]


def _word(
    word: list[TokenPrediction],
    strategy: Strategy,
    id2label: Mapping[int, str],
    to_string: TokensToString,
) -> _Tagged:
    if strategy == "first":
        scores = word[0].scores
    elif strategy == "max":
        scores = max(word, key=lambda t: t.scores.max()).scores
    elif strategy == "average":
        scores = np.nanmean(np.stack([t.scores for t in word]), axis=0)
    else:
        raise ValueError(f"{strategy!r} is not a word-level strategy")
    best = int(scores.argmax())
    text = to_string([t.token for t in word])
    return _Tagged(id2label[best], float(scores[best]), text, word[0].start, word[-1].end, None)


def _split_tag(label: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER"; a label without a B-/I- prefix continues ("I", label)."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _group(tagged: list[_Tagged], to_string: TokensToString) -> list[Entity]:
    groups: list[list[_Tagged]] = []
    for item in tagged:
        bi, tag = _split_tag(item.label)
        if groups and bi != "B" and tag == _split_tag(groups[-1][-1].label)[1]:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [_entity(group, to_string) for group in groups]


def _entity(group: list[_Tagged], to_string: TokensToString) -> Entity:
    label = group[0].label.split("-", 1)[-1]
    score = float(np.nanmean(np.array([t.score for t in group], dtype=np.float32)))
    word = to_string([t.token for t in group])
    return Entity(label, score, word, group[0].start, group[-1].end)
