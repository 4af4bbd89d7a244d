"""zero-shot-classification: texts scored against labels chosen per request, with an NLI model.

Each (text, label) pair becomes the premise/hypothesis pair ``(text, template.format(label))``
and the NLI model's entailment logit says how well the label fits, as in transformers'
zero-shot pipeline: a softmax of the entailment logits across labels, or with
``multi_label`` (or a single label) a softmax of entailment against contradiction per
label. Every pair of every input in a batch runs in the same forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from modelwire_server.config import ModelConfig
from modelwire_server.errors import InvalidArgument
from modelwire_server.tasks.base import (
    BatchedTask,
    check_text_inputs,
    encoder_max_length,
    estimated_tokens,
)
from modelwire_server.tasks.rows import Row, pad_id_of, reads_token_types, run_rows

DEFAULT_TEMPLATE = "This example is {}."

LabelScores = list[tuple[str, float]]


@dataclass(frozen=True)
class ZeroShotItem:
    text: str
    labels: tuple[str, ...]
    template: str
    multi_label: bool


class ZeroShotTask(BatchedTask[ZeroShotItem, LabelScores]):
    task = "zero-shot-classification"
    rpcs = ("ClassifyZeroShot",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
        self.model = self.place(model)
        self.max_length = encoder_max_length(self.tokenizer, self.model.config)
        self.entailment_id, self.contradiction_id = nli_label_ids(self.model.config.label2id)

    @property
    def context_length(self) -> int | None:
        return self.max_length

    def warmup_item(self) -> ZeroShotItem:
        return ZeroShotItem("warm up", ("a", "b"), DEFAULT_TEMPLATE, False)

    async def classify(
        self,
        inputs: Sequence[str],
        labels: Sequence[str],
        template: str | None,
        multi_label: bool,
        *,
        deadline: float | None = None,
    ) -> list[LabelScores]:
        check_text_inputs(inputs, self.config)
        check_labels(labels, self.config)
        if len(inputs) * len(labels) > self.config.max_results:
            raise InvalidArgument(
                "candidate_labels",
                f"{len(labels)} labels for {len(inputs)} inputs make "
                f"{len(inputs) * len(labels)} scores to compute; the limit is "
                f"{self.config.max_results} (max_results)",
            )
        template = DEFAULT_TEMPLATE if template is None else template
        check_template(template, labels[0])
        items = [ZeroShotItem(text, tuple(labels), template, multi_label) for text in inputs]
        return await self.batcher.submit(items, deadline=deadline)

    def item_cost(self, item: ZeroShotItem) -> int:
        # One row per label: the premise and the longest hypothesis.
        hypothesis = len(item.template) + max(len(label) for label in item.labels)
        return len(item.labels) * estimated_tokens(len(item.text) + hypothesis, self.max_length)

    def run_batch(self, items: list[ZeroShotItem]) -> list[LabelScores | BaseException]:
        results: list[LabelScores | BaseException] = [[] for _ in items]
        rows: list[Row] = []
        runnable: list[int] = []
        for i, item in enumerate(items):
            try:
                rows += self._rows(item)
            except Exception as exc:  # a pair that cannot fit fails its own request only
                results[i] = InvalidArgument("candidate_labels", _fit_message(exc))
                continue
            runnable.append(i)
        if not rows:
            return results
        # Scores are a few numbers per request: numpy, as torch would fan such tiny ops
        # out to its threads, which costs milliseconds each on a busy CPU.
        logits = np.stack([row.numpy() for row in self._forward(rows)])
        first = 0
        for i in runnable:
            count = len(items[i].labels)
            results[i] = self._scores(items[i], logits[first : first + count])
            first += count
        return results

    def _rows(self, item: ZeroShotItem) -> list[Row]:
        hypotheses = [item.template.format(label) for label in item.labels]
        # Only the premise is cut to fit, as in the pipeline: the label must be read whole.
        encoded = self.tokenizer(
            [item.text] * len(hypotheses),
            hypotheses,
            truncation="only_first" if self.max_length is not None else False,
            max_length=self.max_length,
        )
        types = encoded.get("token_type_ids") if reads_token_types(self.tokenizer) else None
        return [
            Row(ids, types[n] if types is not None else None)
            for n, ids in enumerate(encoded["input_ids"])
        ]

    def _forward(self, rows: list[Row]) -> list[torch.Tensor]:
        return run_rows(
            self.model,
            rows,
            lambda out: out.logits,
            pad_id=pad_id_of(self.tokenizer),
            max_tokens=self.config.max_batch_tokens,
            device=self.device,
        )

    def _scores(self, item: ZeroShotItem, logits: np.ndarray) -> LabelScores:
        if item.multi_label or len(item.labels) == 1:
            pair = logits[:, [self.contradiction_id, self.entailment_id]]
            scores = softmax(pair, axis=-1)[:, 1]
        else:
            scores = softmax(logits[:, self.entailment_id], axis=0)
        ranked = sorted(
            zip(item.labels, scores.tolist(), strict=True), key=lambda pair: pair[1], reverse=True
        )
        return [(label, float(score)) for label, score in ranked]


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def nli_label_ids(label2id: dict[str, int]) -> tuple[int, int]:
    """The entailment and contradiction indices of an NLI head, as the pipeline finds them."""
    entailment = next(
        (i for name, i in label2id.items() if name.lower().startswith("entail")), None
    )
    if entailment is None:
        raise ValueError(
            f"not an NLI model: no label starting with 'entail' among {sorted(label2id)}"
        )
    # The pipeline's rule: contradiction is the first label, or the last if entailment is first.
    return entailment, (len(label2id) - 1 if entailment == 0 else 0)


def check_labels(labels: Sequence[str], config: ModelConfig) -> None:
    if not labels:
        raise InvalidArgument("candidate_labels", "must hold at least one label")
    if len(labels) > config.max_inputs:
        raise InvalidArgument(
            "candidate_labels", f"has {len(labels)} labels; the limit is {config.max_inputs}"
        )
    for i, label in enumerate(labels):
        if not label.strip():
            raise InvalidArgument(f"candidate_labels[{i}]", "must not be empty")
        if len(label) > config.max_input_chars:
            raise InvalidArgument(
                f"candidate_labels[{i}]",
                f"has {len(label)} characters; the limit is {config.max_input_chars}",
            )


def check_template(template: str, label: str) -> None:
    try:
        filled = template.format(label)
    except (IndexError, KeyError, ValueError) as exc:
        raise InvalidArgument(
            "hypothesis_template", f"cannot be filled with a label ({exc}); use '{{}}' for it"
        ) from None
    if filled == template:
        raise InvalidArgument("hypothesis_template", "must contain '{}' where the label goes")


def _fit_message(exc: Exception) -> str:
    return f"a hypothesis does not fit the model's window with its input ({exc})"
