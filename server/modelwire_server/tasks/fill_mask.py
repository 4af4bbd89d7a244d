"""fill-mask: candidates for every mask token of each input, as transformers' pipeline gives.

Each mask token gets its own candidates (a softmax over the vocabulary at its position,
optionally restricted to ``targets``), and each candidate's ``sequence`` is the input
with that one mask filled. An input needs at least one mask token and must fit the
model's window: a fill predicted from a cut text would be a guess about other words.

A request is costed before it runs: ``top_k`` counts up to the candidates there are
(the vocabulary, or the targets), and its masks times that stay within the model's
``max_results``, so neither the work nor the response grows with a large ``top_k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from modelwire_server.errors import InvalidArgument
from modelwire_server.tasks.base import (
    BatchedTask,
    check_text_inputs,
    encoder_max_length,
    estimated_tokens,
)
from modelwire_server.tasks.rows import Row, pad_id_of, reads_token_types, run_rows

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class FillMaskItem:
    text: str
    index: int  # position in its request, for error messages
    top_k: int
    targets: tuple[str, ...]  # empty: the whole vocabulary


@dataclass(frozen=True)
class MaskCandidate:
    token_id: int
    token: str
    sequence: str
    score: float


MaskFills = list[list[MaskCandidate]]  # per mask token of the input, best candidate first


@dataclass(frozen=True)
class _Prepared:
    position: int  # in the batch
    item: FillMaskItem
    row: Row
    masks: list[int]  # positions of the mask tokens in ids
    target_ids: list[int] | None


class FillMaskTask(BatchedTask[FillMaskItem, MaskFills]):
    task = "fill-mask"
    rpcs = ("FillMask",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if self.tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer defines no mask token")
        self.model = self.place(AutoModelForMaskedLM.from_pretrained(source, **kwargs))
        self.max_length = encoder_max_length(self.tokenizer, self.model.config)
        self.vocab: dict[str, int] = self.tokenizer.get_vocab()

    @property
    def context_length(self) -> int | None:
        return self.max_length

    def warmup_item(self) -> FillMaskItem:
        return FillMaskItem(f"warm {self.tokenizer.mask_token} up", 0, 1, ())

    async def fill(
        self,
        inputs: Sequence[str],
        top_k: int | None,
        targets: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> list[MaskFills]:
        check_text_inputs(inputs, self.config)
        if top_k is not None and top_k < 1:
            raise InvalidArgument("top_k", "must be at least 1")
        for i, target in enumerate(targets):
            if not target.strip():
                raise InvalidArgument(f"targets[{i}]", "must not be empty")
        k = DEFAULT_TOP_K if top_k is None else top_k
        k = min(k, len(set(targets)) if targets else len(self.vocab))
        self._check_results([text.count(self.tokenizer.mask_token) for text in inputs], k)
        items = [FillMaskItem(text, i, k, tuple(targets)) for i, text in enumerate(inputs)]
        return await self.batcher.submit(items, deadline=deadline)

    def item_cost(self, item: FillMaskItem) -> int:
        return estimated_tokens(len(item.text), self.max_length)

    def _check_results(self, masks: list[int], top_k: int) -> None:
        """Refuse a request for more candidates than ``max_results`` (counting each
        input's mask tokens as they appear in its text) before any work is done."""
        limit = self.config.max_results
        for i, count in enumerate(masks):
            if count > limit:
                raise InvalidArgument(
                    f"inputs[{i}]",
                    f"has {count} {self.tokenizer.mask_token} tokens; the limit is {limit}",
                )
        wanted = sum(masks) * top_k
        if wanted > limit:
            raise InvalidArgument(
                "top_k",
                f"asks for {wanted} candidates ({sum(masks)} masks x top_k {top_k}); this "
                f"model returns at most {limit} per request",
            )

    def run_batch(self, items: list[FillMaskItem]) -> list[MaskFills | BaseException]:
        results: list[MaskFills | BaseException] = [[] for _ in items]
        encoded = self.tokenizer([item.text for item in items])
        types = encoded.get("token_type_ids") if reads_token_types(self.tokenizer) else None
        prepared: list[_Prepared] = []
        for i, item in enumerate(items):
            row = Row(encoded["input_ids"][i], None if types is None else types[i])
            try:
                prepared.append(self._prepare(i, item, row))
            except InvalidArgument as exc:
                results[i] = exc
        if not prepared:
            return results
        picked = run_rows(
            self.model,
            [p.row for p in prepared],
            lambda out: out.logits,
            pad_id=pad_id_of(self.tokenizer),
            max_tokens=self.config.max_batch_tokens,
            device=self.device,
            pick=lambda n, row: row[prepared[n].masks],
        )
        # One softmax for every mask of the batch, then numpy per request: many small
        # torch ops cost far more on a busy CPU (each fans out to its threads).
        probs = torch.softmax(torch.cat(picked), dim=-1).numpy()
        first = 0
        for p in prepared:
            results[p.position] = self._candidates(p, probs[first : first + len(p.masks)])
            first += len(p.masks)
        return results

    def _prepare(self, position: int, item: FillMaskItem, row: Row) -> _Prepared:
        field, ids = f"inputs[{item.index}]", row.input_ids
        if self.max_length is not None and len(ids) > self.max_length:
            raise InvalidArgument(
                field, f"is {len(ids)} tokens; the model takes at most {self.max_length}"
            )
        mask_id = self.tokenizer.mask_token_id  # once: the attribute is slow to read
        masks = [n for n, token in enumerate(ids) if token == mask_id]
        if not masks:
            raise InvalidArgument(field, f"contains no {self.tokenizer.mask_token} token")
        if len(masks) * item.top_k > self.config.max_results:  # as tokenized, to be sure
            raise InvalidArgument(
                field,
                f"has {len(masks)} masks; with top_k {item.top_k} that is more than the "
                f"{self.config.max_results} candidates this model returns per request",
            )
        target_ids = self._target_ids(item.targets) if item.targets else None
        return _Prepared(position, item, row, masks, target_ids)

    def _target_ids(self, targets: tuple[str, ...]) -> list[int]:
        ids: list[int] = []
        for i, target in enumerate(targets):
            token_id = self.vocab.get(target)
            if token_id is None:
                # A word whose vocabulary entry is spelled differently (e.g. "Ġfox" in a
                # byte-level BPE) still counts when it encodes to exactly one token.
                pieces = self.tokenizer(target, add_special_tokens=False)["input_ids"]
                if len(pieces) != 1:
                    raise InvalidArgument(
                        f"targets[{i}]",
                        f"is {len(pieces)} tokens; a target must be one token of the vocabulary",
                    )
                token_id = pieces[0]
            if token_id not in ids:
                ids.append(token_id)
        return ids

    def _candidates(self, prepared: _Prepared, probs: np.ndarray) -> MaskFills:
        vocab_ids = prepared.target_ids
        if vocab_ids is not None:
            # Scores stay probabilities over the whole vocabulary, as in the pipeline.
            probs = probs[:, vocab_ids]
        top_k = min(prepared.item.top_k, probs.shape[-1])
        single = len(prepared.masks) == 1
        ids = prepared.row.input_ids
        fills: MaskFills = []
        for position, row in zip(prepared.masks, probs, strict=True):
            candidates: list[MaskCandidate] = []
            for j in top_indices(row, top_k):
                token_id = int(j) if vocab_ids is None else vocab_ids[j]
                candidates.append(self._candidate(ids, position, token_id, float(row[j]), single))
            fills.append(candidates)
        return fills

    def _candidate(
        self, ids: list[int], position: int, token_id: int, score: float, single: bool
    ) -> MaskCandidate:
        filled = [*ids[:position], token_id, *ids[position + 1 :]]
        # With several masks the pipeline keeps special tokens, so the other masks show.
        sequence = self.tokenizer.decode(filled, skip_special_tokens=single)
        return MaskCandidate(token_id, self.tokenizer.decode([token_id]), sequence, score)


def top_indices(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first."""
    best = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
    return best[np.argsort(-row[best], kind="stable")]
