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
from typing import Any, Literal

import torch
from transformers import AutoModel, AutoTokenizer

from modelwire_server.batcher import check_abandoned
from modelwire_server.errors import InvalidArgument
from modelwire_server.tasks.base import (
    BatchedTask,
    check_text_inputs,
    encoder_max_length,
    estimated_tokens,
    length_passes,
    read_json,
)
from modelwire_server.tasks.rows import Row, pad_id_of, reads_token_types

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
        self._token_types = reads_token_types(self.tokenizer)
        self._pad_id = pad_id_of(self.tokenizer)

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
        """Tokenize the batch once, refuse the over-long inputs not to be cut, and run
        the rest in passes of similar length (``length_passes``)."""
        results: list[EmbedResult | BaseException] = [InvalidArgument("inputs", "not run")] * len(
            items
        )
        encoded = self.tokenizer([item.text for item in items], truncation=False)
        full_lengths = [len(seq) for seq in encoded["input_ids"]]
        rows: list[Row] = []
        runnable: list[int] = []
        cut: list[int] = []
        for i, (item, length) in enumerate(zip(items, full_lengths, strict=True)):
            if self.max_length is not None and length > self.max_length:
                if not item.truncate:
                    results[i] = InvalidArgument(
                        f"inputs[{item.index}]",
                        f"is {length} tokens; the model takes at most {self.max_length} "
                        "(set truncate to cut it)",
                    )
                    continue
                cut.append(len(rows))
            runnable.append(i)
            rows.append(self._row(encoded, i))
        if cut:  # cut by the tokenizer, which keeps the special tokens at the ends
            shortened = self.tokenizer(
                [items[runnable[r]].text for r in cut], truncation=True, max_length=self.max_length
            )
            for n, r in enumerate(cut):
                rows[r] = self._row(shortened, n)
        lengths = [len(row.input_ids) for row in rows]
        for n, chunk in enumerate(length_passes(lengths, self.pass_tokens)):
            if n:
                check_abandoned()  # stop here if every caller of the batch has gone
            forwarded = self._forward([items[runnable[r]] for r in chunk], [rows[r] for r in chunk])
            for r, result in zip(chunk, forwarded, strict=True):
                i = runnable[r]
                result.truncated = full_lengths[i] > result.token_count
                results[i] = result
        return results

    @property
    def pass_tokens(self) -> int:
        """A forward pass's fixed cost, in tokens, for ``length_passes``. On the CPU a
        pass of MiniLM costs what about 30 to 60 tokens cost one thread (measured: 32
        random sentences of 6-40 words took 1.4x less work so cut than in one pass, and
        within 3% from 24 to 96); the fixed part (Python, one sync per op) does not
        shrink with threads while the tokens' part does, hence per thread. On a GPU
        padded tokens are nearly free until a pass is large."""
        if self.device.type != "cpu":
            return 4096
        return 48 * max(1, torch.get_num_threads())

    def _row(self, encoded: Any, i: int) -> Row:
        types = encoded["token_type_ids"][i] if self._token_types else None
        return Row(list(encoded["input_ids"][i]), None if types is None else list(types))

    def _pad(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        """Right padding (absolute positions then see each row as if it ran alone), each
        tensor built from one nested list."""
        width = max(len(row.input_ids) for row in rows)
        gaps = [width - len(row.input_ids) for row in rows]
        batch = {
            "input_ids": [
                r.input_ids + [self._pad_id] * g for r, g in zip(rows, gaps, strict=True)
            ],
            "attention_mask": [[1] * (width - g) + [0] * g for g in gaps],
        }
        if self._token_types:
            batch["token_type_ids"] = [
                (r.token_type_ids or []) + [0] * g for r, g in zip(rows, gaps, strict=True)
            ]
        return {k: torch.tensor(v, dtype=torch.long, device=self.device) for k, v in batch.items()}

    def _forward(self, items: list[EmbedItem], rows: list[Row]) -> list[EmbedResult]:
        """One padded pass; pooled and normalised for all rows at once, and turned into
        Python floats with one ``tolist`` (per-row conversions cost more than the pooling)."""
        batch = self._pad(rows)
        mask = batch["attention_mask"]
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float()
            counts = mask.sum(dim=1)
            poolings = [self._pooling(item.pooling) for item in items]
            pooled = hidden[:, 0]  # right padding: row 0 is every row's first token
            means = [p == "mean" for p in poolings]
            if any(means):
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                summed = (hidden * weights).sum(dim=1)
                mean = summed / counts.unsqueeze(-1).clamp(min=1).to(hidden.dtype)
                pooled = torch.where(
                    torch.tensor(means, device=hidden.device)[:, None], mean, pooled
                )
            unit = [self._normalize(item.normalize) for item in items]
            if any(unit):
                normalized = torch.nn.functional.normalize(pooled, dim=-1)
                pooled = torch.where(
                    torch.tensor(unit, device=hidden.device)[:, None], normalized, pooled
                )
            values = pooled.cpu().tolist() if any(p != "none" for p in poolings) else []
            out = []
            for row, pooling in enumerate(poolings):
                count = len(rows[row].input_ids)
                tokens: list[list[float]] = []
                if pooling == "none":
                    vectors = hidden[row, :count]
                    if unit[row]:
                        vectors = torch.nn.functional.normalize(vectors, dim=-1)
                    tokens = vectors.cpu().tolist()
                out.append(
                    EmbedResult(
                        values=[] if pooling == "none" else values[row],
                        token_vectors=tokens,
                        token_count=count,
                        truncated=False,
                    )
                )
        return out

    def _pooling(self, requested: Pooling) -> Pooling:
        if requested != "default":
            return requested
        return self.st_config.pooling or "mean"

    def _normalize(self, requested: bool | None) -> bool:
        return self.st_config.normalize if requested is None else requested
