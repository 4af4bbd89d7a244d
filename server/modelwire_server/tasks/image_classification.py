"""image-classification: images in, labels with scores out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from modelwire_server.batcher import check_abandoned
from modelwire_server.errors import InvalidArgument
from modelwire_server.media import MediaLimits, decode_images, image_features, stacked_groups
from modelwire_server.tasks.base import BatchedTask
from modelwire_server.tasks.text_classification import LabelScores, default_score_function

if TYPE_CHECKING:
    from transformers import BatchFeature


@dataclass(frozen=True)
class ImageItem:
    features: BatchFeature  # the processor's output for this image alone
    top_k: int


class ImageClassificationTask(BatchedTask[ImageItem, LabelScores]):
    task = "image-classification"
    rpcs = ("ClassifyImage",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.processor = AutoImageProcessor.from_pretrained(source, **kwargs)
        model = AutoModelForImageClassification.from_pretrained(source, **kwargs)
        self.model = self.place(model)
        # The image-classification pipeline picks its function as the text one does.
        self.function = default_score_function(self.model.config)
        self.limits = MediaLimits.of(self.config)

    def warmup_item(self) -> ImageItem:
        from PIL import Image

        return ImageItem(image_features(self.processor, Image.new("RGB", (8, 8)), "warmup"), 1)

    async def classify(
        self, images: Sequence[bytes], top_k: int, *, deadline: float | None = None
    ) -> list[LabelScores]:
        if top_k < 1:
            raise InvalidArgument("top_k", "must be at least 1")
        items = await asyncio.to_thread(self._prepare, images, top_k)
        return await self.batcher.submit(items, deadline=deadline)

    def _prepare(self, images: Sequence[bytes], top_k: int) -> list[ImageItem]:
        """Decode and preprocess in a thread of the caller's, not on the device worker."""
        decoded = decode_images(images, self.limits)
        return [
            ImageItem(image_features(self.processor, image, f"images[{i}]"), top_k)
            for i, image in enumerate(decoded)
        ]

    def run_batch(self, items: list[ImageItem]) -> list[LabelScores]:
        results: list[LabelScores] = [[] for _ in items]
        for indices, batch in stacked_groups([item.features for item in items]):
            check_abandoned()
            with torch.inference_mode():
                inputs = batch.to(device=self.device, dtype=self.dtype)
                logits = self.model(**inputs).logits.float().cpu()
            for row, i in zip(logits, indices, strict=True):
                results[i] = self._ranked(row, items[i].top_k)
        return results

    def _ranked(self, logits: torch.Tensor, top_k: int) -> LabelScores:
        if self.function == "softmax":
            scores = torch.softmax(logits, dim=-1)
        elif self.function == "sigmoid":
            scores = torch.sigmoid(logits)
        else:
            scores = logits
        id2label = self.model.config.id2label
        ranked = sorted(
            ((id2label[i], float(s)) for i, s in enumerate(scores.tolist())),
            key=lambda pair: pair[1],
            reverse=True,
        )
        return ranked[:top_k]
