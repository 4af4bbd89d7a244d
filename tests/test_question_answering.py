"""AnswerQuestion end to end: the server's answers against a brute-force search over the
model's own start/end logits (transformers 5 has no question-answering pipeline)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from modelwire import AsyncClient
from modelwire.v1 import inference_service_pb2 as pb
from tests.forward_rows import forward_rows
from tests.helpers import bad_request_fields, raw_error
from tests.tolerances import TINY_SCORE_RTOL

# Short enough that question and context fit one 64-token window.
CONTEXT = "The Eiffel Tower was built in 1889 by Gustave Eiffel in Paris. It is 330 metres tall."
QUESTIONS = ["Who built the tower?", "When was it built?", "How tall is it?"]
LONG_CONTEXT = " ".join(
    f"Report {i}: the {animal} of {city} ate {i * 3} apples on day {i + 1}."
    for i, (animal, city) in enumerate(
        zip(
            ["fox", "owl", "cat", "bee"] * 10,
            ["Oslo", "Lima", "Rome", "Kyiv", "Bern"] * 8,
            strict=True,
        )
    )
)


@dataclass(frozen=True)
class Best:
    start: int
    end: int
    score: float
    null: float  # P(start = CLS) * P(end = CLS)


def brute_force(
    path: str, question: str, context: str, max_answer_length: int = 15, stride: int = 0
) -> list[Best]:
    """Per window, the best span by trying every (start, end) pair; and the no-answer score."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path).eval()
    encoded = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=tokenizer.model_max_length,
        stride=stride,
        return_overflowing_tokens=True,
    )
    found = []
    for enc in encoded.encodings:
        with torch.inference_mode():
            out = model(
                input_ids=torch.tensor([enc.ids]), token_type_ids=torch.tensor([enc.type_ids])
            )
        allowed = [n == 0 or s == 1 for n, s in enumerate(enc.sequence_ids)]
        p_start = out.start_logits[0].masked_fill(~torch.tensor(allowed), -torch.inf).softmax(-1)
        p_end = out.end_logits[0].masked_fill(~torch.tensor(allowed), -torch.inf).softmax(-1)
        best = (-1.0, 0, 0)
        for s in range(1, len(enc.ids)):
            for e in range(s, min(s + max_answer_length, len(enc.ids))):
                if allowed[s] and allowed[e] and float(p_start[s] * p_end[e]) > best[0]:
                    best = (float(p_start[s] * p_end[e]), s, e)
        score, s, e = best
        start = enc.word_to_chars(enc.token_to_word(s), sequence_index=1)[0]
        end = enc.word_to_chars(enc.token_to_word(e), sequence_index=1)[1]
        found.append(Best(start, end, score, float(p_start[0] * p_end[0])))
    return found


@pytest.fixture(scope="module")
def qa_path(server) -> str:
    return server.runner("tiny-qa").config.source


async def test_best_answer_matches_brute_force(qa_path: str, client: AsyncClient) -> None:
    tops = []
    for question in QUESTIONS:
        [expected] = brute_force(qa_path, question, CONTEXT)
        [answer] = await client.answer_question(question, CONTEXT, model="tiny-qa")
        assert (answer.start, answer.end) == (expected.start, expected.end)
        assert answer.score == pytest.approx(expected.score, rel=TINY_SCORE_RTOL)
        assert answer.text == CONTEXT[answer.start : answer.end]
        tops.append((answer.start, answer.end, round(answer.score, 6)))
    # The tiny model reacts to its input: each question gets its own best answer.
    assert len(set(tops)) == len(QUESTIONS)


async def test_top_k_answers_are_distinct_and_best_first(client: AsyncClient) -> None:
    answers = await client.answer_question(QUESTIONS[0], CONTEXT, top_k=6)
    [best] = await client.answer_question(QUESTIONS[0], CONTEXT)
    assert len(answers) == 6 and answers[0] == best
    assert len({(a.start, a.end) for a in answers}) == 6
    assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)
    assert all(a.text == CONTEXT[a.start : a.end] and a.text for a in answers)


async def test_max_answer_length(qa_path: str, client: AsyncClient) -> None:
    questions = [*QUESTIONS, "What is it?", "Where is the tower?", "Which city?"]
    cases = [
        (
            q,
            brute_force(qa_path, q, CONTEXT, max_answer_length=1)[0],
            brute_force(qa_path, q, CONTEXT)[0],
        )
        for q in questions
    ]
    # Only questions whose best answer is longer than one token can tell the limit apart.
    telling = [
        (q, one, best) for q, one, best in cases if (one.start, one.end) != (best.start, best.end)
    ]
    assert telling, "every best answer is a single token"
    for question, one, best in telling:
        [short] = await client.answer_question(question, CONTEXT, max_answer_length=1)
        [free] = await client.answer_question(question, CONTEXT, max_answer_length=15)
        assert (short.start, short.end, free.start, free.end) == (
            one.start,
            one.end,
            best.start,
            best.end,
        )
        assert short.score == pytest.approx(one.score, rel=TINY_SCORE_RTOL)


async def test_impossible_answer_only_when_asked(qa_path: str, client: AsyncClient) -> None:
    [expected] = brute_force(qa_path, QUESTIONS[2], CONTEXT)
    plain = await client.answer_question(QUESTIONS[2], CONTEXT, top_k=200)
    assert not any(a.is_impossible for a in plain)
    allowed = await client.answer_question(
        QUESTIONS[2], CONTEXT, top_k=200, handle_impossible_answer=True
    )
    [null] = [a for a in allowed if a.is_impossible]
    assert (null.text, null.start, null.end) == ("", 0, 0)
    assert null.score == pytest.approx(expected.null, rel=TINY_SCORE_RTOL)
    # It ranks among the spans by its score.
    assert [a.score for a in allowed] == sorted((a.score for a in allowed), reverse=True)


async def test_long_context_is_read_in_windows(server, qa_path: str, client: AsyncClient) -> None:
    stride = 16
    windows = brute_force(qa_path, "Who ate apples in Rome?", LONG_CONTEXT, stride=stride)
    assert len(windows) >= 4
    runner = server.runner("tiny-qa")
    with forward_rows(runner.model) as rows:
        answers = await client.answer_question(
            "Who ate apples in Rome?", LONG_CONTEXT, top_k=40, doc_stride=stride
        )
    assert rows == [len(windows)]  # every window, in one forward pass
    best = max(windows, key=lambda w: w.score)
    assert (answers[0].start, answers[0].end) == (best.start, best.end)
    assert answers[0].score == pytest.approx(best.score, rel=TINY_SCORE_RTOL)
    assert all(a.text == LONG_CONTEXT[a.start : a.end] for a in answers)
    # Answers come from all over the context, not just its first window.
    assert max(a.end for a in answers) > len(LONG_CONTEXT) // 2
    # The default stride reads the whole context too.
    default = await client.answer_question("Who ate apples in Rome?", LONG_CONTEXT, top_k=40)
    assert max(a.end for a in default) > len(LONG_CONTEXT) // 2


async def test_questions_share_forward_passes(server, client: AsyncClient) -> None:
    runner = server.runner("tiny-qa")
    before = len(runner.batcher.stats.sizes)
    with forward_rows(runner.model) as rows:
        results = await asyncio.gather(
            *(client.answer_question(f"Question {i}?", CONTEXT) for i in range(16))
        )
    assert all(len(r) == 1 for r in results) and sum(rows) == 16
    sizes = list(runner.batcher.stats.sizes)[before:]
    assert max(sizes) >= 2, f"no forward pass carried two requests: {sizes}"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"context": CONTEXT}, "question"),
        ({"question": "Who?", "context": " "}, "context"),
        ({"question": "Who?", "context": "x" * 100_001}, "context"),
        ({"question": "Who?", "context": CONTEXT, "top_k": 0}, "top_k"),
        ({"question": "Who?", "context": CONTEXT, "max_answer_length": 0}, "max_answer_length"),
        ({"question": "Who?", "context": CONTEXT, "doc_stride": -1}, "doc_stride"),
        ({"question": "Who?", "context": LONG_CONTEXT, "doc_stride": 60}, "doc_stride"),
        ({"question": "who " * 40, "context": CONTEXT}, "question"),
    ],
)
async def test_bad_requests_name_the_field(server, fields: dict, field: str) -> None:
    request = pb.AnswerQuestionRequest(model="tiny-qa", **fields)
    error = await raw_error(server, "AnswerQuestion", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == [field]
