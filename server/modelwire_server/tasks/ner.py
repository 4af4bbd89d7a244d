"""ner / token-classification: entities with labels, scores and character offsets.

Each text is encoded whole; texts longer than the model's window are read in
overlapping windows (``windows``) whose per-token predictions are merged before any
grouping, so an entity that straddles a window edge comes out whole and once. Grouping
follows transformers' NER pipeline (``entity_grouping``), and a text that fits the
window gives exactly the pipeline's entities. The windows of every text in a batch
share forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from modelwire_server.tasks import windows
from modelwire_server.tasks.base import (
    BatchedTask,
    check_text_inputs,
    encoder_max_length,
    estimated_tokens,
)
from modelwire_server.tasks.entity_grouping import Entity, Strategy, TokenPrediction, aggregate
from modelwire_server.tasks.rows import Row, pad_id_of, reads_token_types, run_rows


@dataclass(frozen=True)
class NerItem:
    text: str
    strategy: Strategy


@dataclass(frozen=True)
class _Encoded:
    """One text's whole encoding and its windows."""

    row: Row
    offsets: list[tuple[int, int]]
    special: list[int]
    windows: list[windows.Window]


class NerTask(BatchedTask[NerItem, list[Entity]]):
    task = "ner"
    rpcs = ("RecognizeEntities",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if not self.tokenizer.is_fast:
            raise ValueError("NER needs a fast tokenizer: entities carry character offsets")
        model = AutoModelForTokenClassification.from_pretrained(source, **kwargs)
        self.model = self.place(model)
        self.max_length = encoder_max_length(self.tokenizer, self.model.config)
        self.layout = windows.special_layout(self.tokenizer)
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        backend_model = getattr(getattr(self.tokenizer, "_tokenizer", None), "model", None)
        self.subword_prefix = getattr(backend_model, "continuing_subword_prefix", None)
        self.unk_id = self.tokenizer.unk_token_id  # read per token: the attribute is slow

    @property
    def context_length(self) -> int | None:
        return self.max_length

    def warmup_item(self) -> NerItem:
        return NerItem("Warm up in Paris", "simple")

    async def recognize(
        self, inputs: Sequence[str], strategy: Strategy, *, deadline: float | None = None
    ) -> list[list[Entity]]:
        check_text_inputs(inputs, self.config)
        items = [NerItem(text, strategy) for text in inputs]
        return await self.batcher.submit(items, deadline=deadline)

    def item_cost(self, item: NerItem) -> int:
        return estimated_tokens(len(item.text), None)  # a long text reads in windows

    def run_batch(self, items: list[NerItem]) -> list[list[Entity]]:
        texts = [item.text for item in items]
        encoded = [self._encode(e) for e in self._tokenize(texts).encodings]
        window_rows = [w.row for e in encoded for w in e.windows]
        probs = run_rows(
            self.model,
            window_rows,
            # One softmax per pass: many small per-text ops cost far more on a busy CPU.
            lambda out: out.logits.float().softmax(-1),
            pad_id=pad_id_of(self.tokenizer),
            max_tokens=self.config.max_batch_tokens,
            device=self.device,
        )
        results, first = [], 0
        for item, enc in zip(items, encoded, strict=True):
            outputs = probs[first : first + len(enc.windows)]
            first += len(enc.windows)
            results.append(self._entities(item, enc, self._merge(enc, outputs)))
        return results

    def _merge(self, enc: _Encoded, outputs: list[torch.Tensor]) -> torch.Tensor:
        if len(outputs) == 1:  # the text fit one window: nothing to merge
            return outputs[0][: len(enc.row.input_ids)]
        return windows.merge(enc.windows, outputs, self.layout)

    def _tokenize(self, texts: list[str]) -> Any:
        # No truncation: long texts are windowed, never cut.
        return self.tokenizer(texts, return_offsets_mapping=True)

    def _encode(self, encoding: Any) -> _Encoded:
        types = encoding.type_ids if reads_token_types(self.tokenizer) else None
        row = Row(list(encoding.ids), None if types is None else list(types))
        return _Encoded(
            row,
            list(encoding.offsets),
            list(encoding.special_tokens_mask),
            windows.split(row, self.layout, self.max_length),
        )

    def _entities(self, item: NerItem, enc: _Encoded, probs: torch.Tensor) -> list[Entity]:
        scores = probs.numpy()
        words = self.tokenizer.convert_ids_to_tokens(enc.row.input_ids)
        tokens = [
            self._token(item.text, index, words[index], enc, scores[index])
            for index in range(len(words))
            if not enc.special[index]
        ]
        return aggregate(
            tokens, item.strategy, self.id2label, self.tokenizer.convert_tokens_to_string
        )

    def _token(
        self, text: str, index: int, word: str, enc: _Encoded, scores: Any
    ) -> TokenPrediction:
        start, end = enc.offsets[index]
        original = text[start:end]
        if enc.row.input_ids[index] == self.unk_id:
            # An unknown token reads as the text it stands for and starts a word.
            return TokenPrediction(original, scores, start, end, index, False)
        if self.subword_prefix:
            # "##hn" is longer than the "hn" it covers: the prefix marks a continuation.
            is_subword = len(word) != len(original)
        else:
            # Without a continuation marker, a token glued to the previous character is.
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        return TokenPrediction(word, scores, start, end, index, is_subword)
