"""feature-extraction: texts in, pooled (or per-token) embeddings out.

Pooling and normalisation default to the model's sentence-transformers config when it
has one (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``),
so a sentence-transformers model served here gives the vectors its own library gives.

Per-token vectors (pooling NONE) are counted before the work: their floats over a
request stay within ``MAX_TOKEN_FLOATS``, as a response past the message limit would
be built in memory only to be refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModel, AutoTokenizer

from modelwire_server.errors import InvalidArgument
from modelwire_server.tasks.base import (
    BatchedTask,
    check_text_inputs,
    encoder_max_length,
    estimated_tokens,
    read_json,
)

Pooling = Literal["default", "mean", "cls", "none"]
# Floats of per-token vectors in one response: 32 MB, half the default message limit.
MAX_TOKEN_FLOATS = 8 * 1024 * 1024


@dataclass(frozen=True)
class EmbedItem:
    text: str
    index: int  # position in its request, for error messages
    pooling: Pooling
    normalize: bool | None
    truncate: bool


@dataclass
class EmbedResult:
    values: list[float]
    token_vectors: list[list[float]]
    token_count: int
    truncated: bool


@dataclass(frozen=True)
class SentenceTransformersConfig:
    pooling: Pooling | None
    normalize: bool
    max_seq_length: int | None


def read_sentence_transformers_config(source: str) -> SentenceTransformersConfig:
    """The pooling, normalisation and length of a local sentence-transformers model."""
    root = Path(source)
    modules = read_json(root / "modules.json") or []
    pooling: Pooling | None = None
    normalize = False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            pool_cfg = read_json(root / module.get("path", "") / "config.json") or {}
            if pool_cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif pool_cfg.get("pooling_mode_mean_tokens"):
                pooling = "mean"
        elif kind.endswith("Normalize"):
            normalize = True
    st_cfg = read_json(root / "sentence_bert_config.json") or {}
    max_len = st_cfg.get("max_seq_length")
    return SentenceTransformersConfig(
        pooling, normalize, max_len if isinstance(max_len, int) else None
    )


class EmbeddingTask(BatchedTask[EmbedItem, EmbedResult]):
    task = "feature-extraction"
    rpcs = ("Embed",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        self.model = self.place(AutoModel.from_pretrained(source, **kwargs))
        self.st_config = read_sentence_transformers_config(source)
        limits = [
            encoder_max_length(self.tokenizer, self.model.config),
            self.st_config.max_seq_length,
        ]
        known = [n for n in limits if n is not None]
        self.max_length = min(known) if known else None

    @property
    def context_length(self) -> int | None:
        return self.max_length

    def warmup_item(self) -> EmbedItem:
        return EmbedItem("warm up", 0, "default", None, True)

    async def embed(
        self,
        inputs: Sequence[str],
        pooling: Pooling,
        normalize: bool | None,
        truncate: bool,
        *,
        deadline: float | None = None,
    ) -> list[EmbedResult]:
        check_text_inputs(inputs, self.config)
        if pooling == "none":
            tokens = sum(await asyncio.to_thread(self._token_counts, inputs))
            floats = tokens * int(self.model.config.hidden_size)
            if floats > MAX_TOKEN_FLOATS:
                raise InvalidArgument(
                    "pooling",
                    f"NONE returns {tokens} token vectors here, {floats} floats; the limit "
                    f"is {MAX_TOKEN_FLOATS} per request: send fewer inputs per call",
                )
        items = [EmbedItem(t, i, pooling, normalize, truncate) for i, t in enumerate(inputs)]
        return await self.batcher.submit(items, deadline=deadline)

    def _token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as it would be embedded (at most the window)."""
        ids = self.tokenizer(list(texts), truncation=False)["input_ids"]
        return [
            len(seq) if self.max_length is None else min(len(seq), self.max_length) for seq in ids
        ]

    def item_cost(self, item: EmbedItem) -> int:
        return estimated_tokens(len(item.text), self.max_length)

    def run_batch(self, items: list[EmbedItem]) -> list[EmbedResult | BaseException]:
        results: list[EmbedResult | BaseException] = [InvalidArgument("inputs", "not run")] * len(
            items
        )
        ids = self.tokenizer([item.text for item in items], truncation=False)["input_ids"]
        runnable: list[int] = []
        for i, (item, seq) in enumerate(zip(items, ids, strict=True)):
            too_long = self.max_length is not None and len(seq) > self.max_length
            if too_long and not item.truncate:
                results[i] = InvalidArgument(
                    f"inputs[{item.index}]",
                    f"is {len(seq)} tokens; the model takes at most {self.max_length} "
                    "(set truncate to cut it)",
                )
            else:
                runnable.append(i)
        if runnable:
            forwarded = self._forward([items[i] for i in runnable], [len(ids[i]) for i in runnable])
            for i, result in zip(runnable, forwarded, strict=True):
                results[i] = result
        return results

    def _forward(self, items: list[EmbedItem], full_lengths: list[int]) -> list[EmbedResult]:
        encoded = self.tokenizer(
            [item.text for item in items],
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state.float()
        mask = encoded["attention_mask"]
        out = []
        for row, item in enumerate(items):
            count = int(mask[row].sum())
            pooling = self._pooling(item.pooling)
            vectors = hidden[row][mask[row].bool()]
            pooled = self._pool(vectors, pooling)
            if self._normalize(item.normalize):
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out.append(
                EmbedResult(
                    values=[] if pooling == "none" else pooled.cpu().tolist(),
                    token_vectors=pooled.cpu().tolist() if pooling == "none" else [],
                    token_count=count,
                    truncated=full_lengths[row] > count,
                )
            )
        return out

    def _pooling(self, requested: Pooling) -> Pooling:
        if requested != "default":
            return requested
        return self.st_config.pooling or "mean"

    def _normalize(self, requested: bool | None) -> bool:
        return self.st_config.normalize if requested is None else requested

    @staticmethod
    def _pool(vectors: torch.Tensor, pooling: Pooling) -> torch.Tensor:
        if pooling == "cls":
            return vectors[0]
        if pooling == "none":
            return vectors
        return vectors.mean(dim=0)
