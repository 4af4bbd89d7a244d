"""The QA span search on hand-made logits, with answers worked out by hand.

Logits are log-probabilities at the tokens a window allows (the context and [CLS]), so
the window's softmax gives back exactly the probabilities written here. Tokens outside
the context get logit 50: if they leaked into the softmax or into a span, every
expected number below would be wrong.
"""

from __future__ import annotations

import math

import pytest
import torch

from modelwire_server.tasks.qa_spans import (
    AnswerSpan,
    ToChars,
    WindowLogits,
    probabilities,
    select_answers,
)

LEAK = 50.0


def window(
    starts: dict[int, float], ends: dict[int, float], length: int, null: int | None = 0
) -> WindowLogits:
    """A window of ``length`` tokens; ``starts``/``ends`` map allowed tokens to probabilities."""
    context = torch.zeros(length, dtype=torch.bool)
    start, end = torch.full((length,), LEAK), torch.full((length,), LEAK)
    for token, p in starts.items():
        start[token] = math.log(p)
        if token != null:
            context[token] = True
    for token, p in ends.items():
        end[token] = math.log(p)
    return WindowLogits(start, end, context, null)


def token_chars(first: int, last: int) -> tuple[int, int]:
    """Token t of the context covers characters [10 t, 10 t + 5)."""
    return 10 * first, 10 * last + 5


def answers(
    windows: list[WindowLogits],
    to_chars: list | None = None,
    *,
    top_k: int = 1,
    max_answer_length: int = 15,
    handle_impossible_answer: bool = False,
) -> list[tuple[int, int, float]]:
    found = select_answers(
        windows,
        to_chars or [token_chars] * len(windows),
        top_k=top_k,
        max_answer_length=max_answer_length,
        handle_impossible_answer=handle_impossible_answer,
    )
    assert all(isinstance(a, AnswerSpan) for a in found)
    return [(a.start, a.end, round(a.score, 6)) for a in found]


# [CLS] q [SEP] c3 c4 c5 [SEP]: tokens 3-5 are the context.
#   P(start): CLS .1, c3 .5, c4 .3, c5 .1     P(end): CLS .1, c3 .2, c4 .6, c5 .1
#   spans: c3-c4 .30, c4 .18, c3 .10, c3-c5 .05, c4-c5 .03, c5 .01; no answer .01
ONE = window({0: 0.1, 3: 0.5, 4: 0.3, 5: 0.1}, {0: 0.1, 3: 0.2, 4: 0.6, 5: 0.1}, 7)


def test_probabilities_cover_only_the_context_and_cls() -> None:
    start, end = probabilities(ONE)
    assert start.tolist() == pytest.approx([0.1, 0, 0, 0.5, 0.3, 0.1, 0])
    assert end.tolist() == pytest.approx([0.1, 0, 0, 0.2, 0.6, 0.1, 0])


def test_best_spans_in_order() -> None:
    assert answers([ONE]) == [(30, 45, 0.3)]
    assert answers([ONE], top_k=4) == [
        (30, 45, 0.3),
        (40, 45, 0.18),
        (30, 35, 0.1),
        (30, 55, 0.05),
    ]
    # Six spans exist; a larger top_k returns them all.
    assert len(answers([ONE], top_k=50)) == 6


def test_max_answer_length_counts_tokens() -> None:
    assert answers([ONE], top_k=3, max_answer_length=1) == [
        (40, 45, 0.18),
        (30, 35, 0.1),
        (50, 55, 0.01),
    ]
    assert (30, 55, 0.05) in answers([ONE], top_k=6, max_answer_length=3)
    assert (30, 55, 0.05) not in answers([ONE], top_k=6, max_answer_length=2)


# The model is sure there is no answer: P(start = CLS) .7, P(end = CLS) .8 → .56.
#   P(start): c3 .2, c4 .05, c5 .05    P(end): c3 .1, c4 .05, c5 .05 → best span c3 .02
SURE_NOT = window({0: 0.7, 3: 0.2, 4: 0.05, 5: 0.05}, {0: 0.8, 3: 0.1, 4: 0.05, 5: 0.05}, 7)


def test_impossible_answer_only_when_asked() -> None:
    assert answers([SURE_NOT]) == [(30, 35, 0.02)]
    assert answers([SURE_NOT], handle_impossible_answer=True) == [(0, 0, 0.56)]
    assert answers([SURE_NOT], top_k=2, handle_impossible_answer=True) == [
        (0, 0, 0.56),
        (30, 35, 0.02),
    ]
    # Where a real answer beats it, "no answer" ranks by its score like any other.
    assert answers([ONE], top_k=3, handle_impossible_answer=True)[2] == (30, 35, 0.1)
    assert (0, 0, 0.01) in answers([ONE], top_k=10, handle_impossible_answer=True)


def test_a_model_without_cls_never_prefers_no_answer() -> None:
    no_cls = window({3: 0.5, 4: 0.5}, {3: 0.5, 4: 0.5}, 6, null=None)
    assert answers([no_cls], top_k=4, handle_impossible_answer=True) == [
        (30, 35, 0.25),
        (30, 45, 0.25),
        (40, 45, 0.25),
        (0, 0, 0.0),
    ]


def test_token_spans_of_the_same_words_are_one_answer() -> None:
    # c4 and c5 are one word ("play" "##ing"): c4, c4-c5 and c5 all answer "playing".
    def words(first: int, last: int) -> tuple[int, int]:
        bounds = {3: (0, 5), 4: (6, 13), 5: (6, 13)}
        return bounds[first][0], bounds[last][1]

    assert answers([ONE], [words], top_k=3) == [
        (0, 13, 0.3),  # c3-c4 .30 (c3-c5 .05 is the same answer)
        (6, 13, 0.18),  # c4 .18 (c4-c5 .03, c5 .01 are the same answer)
        (0, 5, 0.1),
    ]


# Context c0..c5, read in two windows: A holds c0-c3, B holds c2-c5 (c2, c3 overlap).
# Window tokens: [CLS] q [SEP] then the context tokens, so context token c sits at
# window position 3 + c - first.
#   A: P(start) CLS .1, c0 .05, c1 .6, c2 .05, c3 .2
#      P(end)   CLS .1, c0 .05, c1 .05, c2 .1, c3 .7
#      → c1-c3 .42, c3 .14, c1-c2 .06, c1 .03, ...; no answer .01
#   B: P(start) CLS .2, c2 .05, c3 .2, c4 .05, c5 .5
#      P(end)   CLS .1, c2 .05, c3 .3, c4 .05, c5 .5
#      → c5 .25, c3-c5 .10, c3 .06, c2-c5 .025, ...; no answer .02
WINDOW_A = window(
    {0: 0.1, 3: 0.05, 4: 0.6, 5: 0.05, 6: 0.2}, {0: 0.1, 3: 0.05, 4: 0.05, 5: 0.1, 6: 0.7}, 8
)
WINDOW_B = window(
    {0: 0.2, 3: 0.05, 4: 0.2, 5: 0.05, 6: 0.5}, {0: 0.1, 3: 0.05, 4: 0.3, 5: 0.05, 6: 0.5}, 8
)


def in_context(first_context_token: int) -> ToChars:
    def to_chars(first: int, last: int) -> tuple[int, int]:
        return token_chars(first - 3 + first_context_token, last - 3 + first_context_token)

    return to_chars


def test_spans_across_windows() -> None:
    found = answers([WINDOW_A, WINDOW_B], [in_context(0), in_context(2)], top_k=4)
    # c1 (the best start, in A) to c5 (the best end, in B) would score .6 × .5 = .30,
    # but no window holds c1..c5, so it is never an answer.
    assert all((start, end) != (10, 55) for start, end, _ in found)
    assert found == [
        (10, 35, 0.42),  # c1-c3, from A
        (50, 55, 0.25),  # c5, from B
        (30, 35, 0.14),  # c3: .14 in A, .06 in B; the best, not their sum (.20)
        (30, 55, 0.1),  # c3-c5, from B
    ]


def test_no_answer_across_windows_takes_the_lowest() -> None:
    found = answers(
        [WINDOW_A, WINDOW_B],
        [in_context(0), in_context(2)],
        top_k=20,
        handle_impossible_answer=True,
    )
    assert (0, 0, 0.01) in found  # min(.01 in A, .02 in B)
    assert len({(s, e) for s, e, _ in found}) == len(found), "an answer appeared twice"
