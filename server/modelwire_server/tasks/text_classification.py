"""sentiment-analysis / text-classification: texts in, labels with scores out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from modelwire_server.errors import InvalidArgument
from modelwire_server.tasks.base import (
    BatchedTask,
    check_text_inputs,
    encoder_max_length,
    estimated_tokens,
)

ScoreFunction = Literal["default", "softmax", "sigmoid", "none"]


@dataclass(frozen=True)
class ClassifyItem:
    text: str
    top_k: int | None  # None: every label
    function: ScoreFunction


LabelScores = list[tuple[str, float]]


class TextClassificationTask(BatchedTask[ClassifyItem, LabelScores]):
    task = "sentiment-analysis"
    rpcs = ("ClassifyText",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
        self.model = self.place(model)
        self.max_length = encoder_max_length(self.tokenizer, self.model.config)
        self.default_function = default_score_function(self.model.config)

    @property
    def context_length(self) -> int | None:
        return self.max_length

    def warmup_item(self) -> ClassifyItem:
        return ClassifyItem("warm up", 1, "default")

    async def classify(
        self,
        inputs: Sequence[str],
        top_k: int | None,
        function: ScoreFunction,
        *,
        deadline: float | None = None,
    ) -> list[LabelScores]:
        check_text_inputs(inputs, self.config)
        if top_k is not None and top_k < 1:
            raise InvalidArgument("top_k", "must be at least 1")
        items = [ClassifyItem(text, top_k, function) for text in inputs]
        return await self.batcher.submit(items, deadline=deadline)

    def item_cost(self, item: ClassifyItem) -> int:
        return estimated_tokens(len(item.text), self.max_length)

    def run_batch(self, items: list[ClassifyItem]) -> list[LabelScores]:
        # Inputs longer than the model's window are cut: a classifier can only read
        # one window, and refusing would make long reviews unclassifiable.
        encoded = self.tokenizer(
            [item.text for item in items],
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(**encoded).logits.float().cpu()
        return [self._scores(row, item) for row, item in zip(logits, items, strict=True)]

    def _scores(self, logits: torch.Tensor, item: ClassifyItem) -> LabelScores:
        function = self.default_function if item.function == "default" else item.function
        if function == "softmax":
            scores = torch.softmax(logits, dim=-1)
        elif function == "sigmoid":
            scores = torch.sigmoid(logits)
        else:
            scores = logits
        id2label = self.model.config.id2label
        ranked = sorted(
            ((id2label[i], float(s)) for i, s in enumerate(scores.tolist())),
            key=lambda pair: pair[1],
            reverse=True,
        )
        return ranked if item.top_k is None else ranked[: item.top_k]


def default_score_function(config: object) -> ScoreFunction:
    """The function transformers' text-classification pipeline applies by default."""
    problem = getattr(config, "problem_type", None)
    num_labels = getattr(config, "num_labels", 2)
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"
