"""Answer spans from an extractive QA model's start and end logits.

Per window (one forward row: question + a stretch of the context), the start and end
logits are softmaxed over the context tokens and the "no answer" token ([CLS]); a span
(s, e) with s <= e < s + max_answer_length, both ends in the context, scores
P(start = s) * P(end = e), and "no answer" scores P(start = CLS) * P(end = CLS). This is
transformers 4's question-answering pipeline (``select_starts_ends`` / ``decode_spans``).

Across windows (each a distribution of its own), a span can only come from a window
that holds all of it, and an answer seen by several windows (the overlaps) keeps its
best score rather than their sum, which would favour answers that happen to sit in an
overlap. "No answer" scores its lowest over the windows: the context has no answer
only as much as the window most sure of one allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WindowLogits:
    """The model's readout of one window."""

    start: torch.Tensor  # [tokens] start logits
    end: torch.Tensor  # [tokens] end logits
    context: torch.Tensor  # [tokens] bool: the token belongs to the context
    null_index: int | None  # the token that stands for "no answer" ([CLS]), if any


@dataclass(frozen=True)
class TokenSpan:
    start: int  # first token, in the window
    end: int  # last token (inclusive)
    score: float


@dataclass(frozen=True)
class AnswerSpan:
    start: int  # first character in the context
    end: int  # one past the last character; (0, 0) is "no answer"
    score: float


# Maps a window's token span (first, last token) to characters [start, end) of the context.
ToChars = Callable[[int, int], tuple[int, int]]


def probabilities(window: WindowLogits) -> tuple[torch.Tensor, torch.Tensor]:
    """P(start = t) and P(end = t) over the context tokens and the no-answer token."""
    allowed = window.context.clone()
    if window.null_index is not None:
        allowed[window.null_index] = True
    start = torch.softmax(window.start.float().masked_fill(~allowed, -torch.inf), dim=-1)
    end = torch.softmax(window.end.float().masked_fill(~allowed, -torch.inf), dim=-1)
    return start, end


def null_score(window: WindowLogits, start: torch.Tensor, end: torch.Tensor) -> float:
    if window.null_index is None:
        return 0.0  # a model without a no-answer token never says "no answer"
    return float(start[window.null_index] * end[window.null_index])


def ranked_spans(
    window: WindowLogits, start: torch.Tensor, end: torch.Tensor, max_answer_length: int
) -> Iterator[TokenSpan]:
    """Every span a window allows, best first (ties: earlier start, then shorter)."""
    length = len(start)
    starts = torch.arange(length).unsqueeze(1)
    ends = starts + torch.arange(min(max_answer_length, length)).unsqueeze(0)
    inside = ends < length
    ends = ends.clamp(max=length - 1)
    valid = inside & window.context[starts] & window.context[ends]
    scores = start[starts] * end[ends]
    flat_starts, flat_ends, flat_scores = starts.expand_as(ends)[valid], ends[valid], scores[valid]
    order = torch.argsort(flat_scores, descending=True, stable=True)
    for i in order.tolist():
        yield TokenSpan(int(flat_starts[i]), int(flat_ends[i]), float(flat_scores[i]))


def select_answers(
    windows: Sequence[WindowLogits],
    to_chars: Sequence[ToChars],
    *,
    top_k: int,
    max_answer_length: int,
    handle_impossible_answer: bool,
) -> list[AnswerSpan]:
    """The ``top_k`` best distinct answers over all windows of one question, best first."""
    best: dict[tuple[int, int], float] = {}
    lowest_null: float | None = None
    for window, chars in zip(windows, to_chars, strict=True):
        start, end = probabilities(window)
        null = null_score(window, start, end)
        lowest_null = null if lowest_null is None else min(lowest_null, null)
        seen: set[tuple[int, int]] = set()
        # Token spans that cover the same words give the same answer: walk until this
        # window has offered top_k distinct ones (the overall best are among them).
        for span in ranked_spans(window, start, end, max_answer_length):
            key = chars(span.start, span.end)
            if key in seen:
                continue
            seen.add(key)
            best[key] = max(best.get(key, 0.0), span.score)
            if len(seen) == top_k:
                break
    answers = [AnswerSpan(s, e, score) for (s, e), score in best.items()]
    if handle_impossible_answer and lowest_null is not None:
        answers.append(AnswerSpan(0, 0, lowest_null))
    answers.sort(key=lambda a: a.score, reverse=True)
    return answers[:top_k]
