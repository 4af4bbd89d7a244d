"""Result types of the text task methods (fill-mask, NER, QA): frozen dataclasses, no protobuf.

Zero-shot classification returns the shared ``Classification`` of ``_types``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AggregationStrategyName = Literal["none", "simple", "first", "average", "max"]


@dataclass(frozen=True)
class MaskCandidate:
    """One candidate token for a mask position."""

    token_id: int
    token: str
    """The candidate token's text."""
    sequence: str
    """The input with this mask filled by the candidate."""
    score: float
    """The candidate's probability over the whole vocabulary."""


@dataclass(frozen=True)
class MaskFill:
    """The candidates for one mask token of an input, best first."""

    candidates: list[MaskCandidate]

    @property
    def top(self) -> MaskCandidate:
        """The best candidate. Raises ``IndexError`` if the server returned none."""
        return self.candidates[0]


@dataclass(frozen=True)
class FillMaskResult:
    """The fills of one input: one ``MaskFill`` per mask token, in input order."""

    masks: list[MaskFill]


@dataclass(frozen=True)
class Entity:
    """A recognised entity; ``start``/``end`` are character offsets into its input.

    ``label`` is the entity group (``"PER"``) when tokens are aggregated, the token's tag
    (``"B-PER"``) with ``aggregation_strategy="none"``, which alone also sets ``index``
    (the token's position in the input's encoding). ``word`` is the text as the tokenizer
    decodes it (lower-cased by an uncased model); ``text[start:end]`` is the original.
    """

    label: str
    score: float
    word: str
    start: int
    end: int
    index: int | None = None


@dataclass(frozen=True)
class Answer:
    """An answer span of the context: ``text == context[start:end]``.

    With ``handle_impossible_answer=True`` the "no answer" candidate has empty ``text``
    and ``start == end == 0``.
    """

    text: str
    score: float
    start: int
    end: int

    @property
    def is_impossible(self) -> bool:
        """Whether this is the "no answer in this context" candidate."""
        return self.text == "" and self.start == self.end == 0
