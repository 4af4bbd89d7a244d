"""audio-classification: clips in, labels with scores out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from modelwire_server.batcher import check_abandoned
from modelwire_server.errors import InvalidArgument
from modelwire_server.media import (
    AudioInput,
    MediaLimits,
    audio_batches,
    check_min_length,
    decode_clips,
    min_samples,
)
from modelwire_server.tasks.base import BatchedTask
from modelwire_server.tasks.text_classification import LabelScores


@dataclass(frozen=True)
class ClipItem:
    samples: np.ndarray  # mono float32 at the model's rate
    top_k: int


class AudioClassificationTask(BatchedTask[ClipItem, LabelScores]):
    task = "audio-classification"
    rpcs = ("ClassifyAudio",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.extractor = AutoFeatureExtractor.from_pretrained(source, **kwargs)
        model = AutoModelForAudioClassification.from_pretrained(source, **kwargs)
        self.model = self.place(model)
        self.rate = int(self.extractor.sampling_rate)
        self.limits = MediaLimits.of(self.config)
        self.min_samples = min_samples(self.model.config)
        self.frame = int(getattr(self.model.config, "inputs_to_logits_ratio", 320))

    def warmup_item(self) -> ClipItem:
        return ClipItem(np.zeros(max(self.rate // 4, self.min_samples), dtype=np.float32), 1)

    async def classify(
        self, clips: Sequence[AudioInput], top_k: int, *, deadline: float | None = None
    ) -> list[LabelScores]:
        if top_k < 1:
            raise InvalidArgument("top_k", "must be at least 1")
        decoded = await asyncio.to_thread(decode_clips, clips, self.limits, self.rate)
        check_min_length(decoded, self.min_samples, self.rate)
        items = [ClipItem(samples, top_k) for samples in decoded]
        return await self.batcher.submit(items, deadline=deadline)

    def item_cost(self, item: ClipItem) -> int:
        return len(item.samples) // self.frame + 1  # the encoder's frames

    def run_batch(self, items: list[ClipItem]) -> list[LabelScores]:
        results: list[LabelScores] = [[] for _ in items]
        for indices, features in audio_batches(self.extractor, [i.samples for i in items]):
            check_abandoned()
            with torch.inference_mode():
                inputs = features.to(device=self.device, dtype=self.dtype)
                logits = self.model(**inputs).logits.float().cpu()
            for row, i in zip(logits, indices, strict=True):
                results[i] = self._ranked(row, items[i].top_k)
        return results

    def _ranked(self, logits: torch.Tensor, top_k: int) -> LabelScores:
        # The audio-classification pipeline's default: softmax unless the config says
        # multi-label (sigmoid) or regression (raw) -- one label alone stays softmax.
        problem = getattr(self.model.config, "problem_type", None)
        if problem == "multi_label_classification":
            scores = logits.sigmoid()
        elif problem == "regression":
            scores = logits
        else:
            scores = logits.softmax(-1)
        values, ids = scores.topk(min(top_k, scores.numel()))
        id2label = self.model.config.id2label
        return [(id2label[int(i)], float(v)) for v, i in zip(values, ids, strict=True)]
