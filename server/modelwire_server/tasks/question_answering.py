"""question-answering: answer spans of a context, with character offsets into it.

The question and context are encoded as a pair; a context longer than one window is
read in overlapping windows (``doc_stride`` tokens of overlap), each window repeating
the question. Spans are searched per window and merged across windows by ``qa_spans``;
an answer's ends are widened to whole words, as transformers 4's pipeline did, so
``context[start:end]`` is the answer exactly. The windows of every question in a batch
share forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from modelwire_server.config import ModelConfig
from modelwire_server.errors import InvalidArgument
from modelwire_server.tasks import qa_spans
from modelwire_server.tasks.base import BatchedTask, encoder_max_length, estimated_tokens
from modelwire_server.tasks.rows import Row, pad_id_of, reads_token_types, run_rows

DEFAULT_TOP_K = 1
DEFAULT_MAX_ANSWER_LENGTH = 15
# QA heads are fine-tuned on windows of at most 384 tokens (SQuAD); the pipeline kept to it.
MAX_WINDOW = 384
MAX_DEFAULT_STRIDE = 128


@dataclass(frozen=True)
class QaItem:
    question: str
    context: str
    top_k: int
    max_answer_length: int
    handle_impossible_answer: bool
    doc_stride: int | None  # None: the default for the window size


@dataclass(frozen=True)
class Answer:
    text: str  # context[start:end]; empty for "no answer"
    score: float
    start: int
    end: int


class QuestionAnsweringTask(BatchedTask[QaItem, list[Answer]]):
    task = "question-answering"
    rpcs = ("AnswerQuestion",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if not self.tokenizer.is_fast:
            raise ValueError("question answering needs a fast tokenizer: answers carry offsets")
        model = AutoModelForQuestionAnswering.from_pretrained(source, **kwargs)
        self.model = self.place(model)
        model_max = encoder_max_length(self.tokenizer, self.model.config)
        self.max_length = min(model_max or MAX_WINDOW, MAX_WINDOW)
        self.pair_specials = self.tokenizer.num_special_tokens_to_add(pair=True)

    @property
    def context_length(self) -> int | None:
        return self.max_length

    def warmup_item(self) -> QaItem:
        return QaItem("Where?", "In Paris.", 1, DEFAULT_MAX_ANSWER_LENGTH, True, None)

    async def answer(
        self,
        question: str,
        context: str,
        *,
        top_k: int | None = None,
        max_answer_length: int | None = None,
        handle_impossible_answer: bool = False,
        doc_stride: int | None = None,
        deadline: float | None = None,
    ) -> list[Answer]:
        check_text(question, "question", self.config)
        check_text(context, "context", self.config)
        for field, value, least in (
            ("top_k", top_k, 1),
            ("max_answer_length", max_answer_length, 1),
            ("doc_stride", doc_stride, 0),
        ):
            if value is not None and value < least:
                raise InvalidArgument(field, f"must be at least {least}")
        if top_k is not None and top_k > self.config.max_results:
            raise InvalidArgument(
                "top_k", f"is {top_k}; this model returns at most {self.config.max_results}"
            )
        if max_answer_length is not None:
            # No answer is longer than a window: a larger value means the same.
            max_answer_length = min(max_answer_length, self.max_length)
        item = QaItem(
            question,
            context,
            DEFAULT_TOP_K if top_k is None else top_k,
            DEFAULT_MAX_ANSWER_LENGTH if max_answer_length is None else max_answer_length,
            handle_impossible_answer,
            doc_stride,
        )
        [answers] = await self.batcher.submit([item], deadline=deadline)
        return answers

    def item_cost(self, item: QaItem) -> int:
        return estimated_tokens(len(item.question) + len(item.context), None)

    def run_batch(self, items: list[QaItem]) -> list[list[Answer] | BaseException]:
        results: list[list[Answer] | BaseException] = [[] for _ in items]
        windows: list[list[Any]] = [[] for _ in items]
        for i, item in enumerate(items):
            try:
                windows[i] = self._encode(item)
            except InvalidArgument as exc:
                results[i] = exc
        encodings = [enc for item_windows in windows for enc in item_windows]
        logits = self._forward(encodings) if encodings else []
        first = 0
        for i, (item, item_windows) in enumerate(zip(items, windows, strict=True)):
            if item_windows:
                outputs = logits[first : first + len(item_windows)]
                first += len(item_windows)
                results[i] = self._answers(item, item_windows, outputs)
        return results

    def _encode(self, item: QaItem) -> list[Any]:
        """The windows (tokenizers encodings) of the question with its context."""
        question = len(self.tokenizer(item.question, add_special_tokens=False)["input_ids"])
        if question > self.max_length // 2:
            raise InvalidArgument(
                "question",
                f"is {question} tokens; with this model's {self.max_length}-token window "
                f"it may take at most {self.max_length // 2}",
            )
        room = self.max_length - question - self.pair_specials  # context tokens per window
        stride = self._stride(item.doc_stride, room)
        encoded = self.tokenizer(
            item.question,
            item.context,
            truncation="only_second",
            max_length=self.max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        return list(encoded.encodings)

    def _stride(self, requested: int | None, room: int) -> int:
        if requested is None:
            # A quarter window of overlap (at most 128), and always room to move on.
            return min(MAX_DEFAULT_STRIDE, self.max_length // 4, room // 2)
        if requested >= room:
            raise InvalidArgument(
                "doc_stride",
                f"is {requested}; a window holds {room} context tokens with this question, "
                "and the overlap must be smaller",
            )
        return requested

    def _forward(self, encodings: list[Any]) -> list[torch.Tensor]:
        types = reads_token_types(self.tokenizer)
        rows = [Row(list(e.ids), list(e.type_ids) if types else None) for e in encodings]
        return run_rows(
            self.model,
            rows,
            lambda out: torch.stack([out.start_logits, out.end_logits], dim=-1),
            pad_id=pad_id_of(self.tokenizer),
            max_tokens=self.config.max_batch_tokens,
            device=self.device,
        )

    def _answers(
        self, item: QaItem, encodings: list[Any], outputs: list[torch.Tensor]
    ) -> list[Answer]:
        windows = [self._window_logits(e, out) for e, out in zip(encodings, outputs, strict=True)]
        spans = qa_spans.select_answers(
            windows,
            [word_aligned(e) for e in encodings],
            top_k=item.top_k,
            max_answer_length=item.max_answer_length,
            handle_impossible_answer=item.handle_impossible_answer,
        )
        return [Answer(item.context[s.start : s.end], s.score, s.start, s.end) for s in spans]

    def _window_logits(self, encoding: Any, out: torch.Tensor) -> qa_spans.WindowLogits:
        length = len(encoding.ids)
        context = torch.tensor([sequence == 1 for sequence in encoding.sequence_ids])
        has_cls = encoding.ids[0] == self.tokenizer.cls_token_id
        return qa_spans.WindowLogits(
            out[:length, 0], out[:length, 1], context, 0 if has_cls else None
        )


def check_text(text: str, field: str, config: ModelConfig) -> None:
    if not text.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(text) > config.max_input_chars:
        raise InvalidArgument(
            field, f"has {len(text)} characters; the limit is {config.max_input_chars}"
        )


def word_aligned(encoding: Any) -> qa_spans.ToChars:
    """Token span → the characters of the whole words it touches in the context."""

    def to_chars(first: int, last: int) -> tuple[int, int]:
        first_word, last_word = encoding.token_to_word(first), encoding.token_to_word(last)
        if first_word is None or last_word is None:
            return encoding.offsets[first][0], encoding.offsets[last][1]
        start = encoding.word_to_chars(first_word, sequence_index=1)[0]
        end = encoding.word_to_chars(last_word, sequence_index=1)[1]
        return start, end

    return to_chars
