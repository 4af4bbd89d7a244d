"""object-detection: images in, labelled boxes in the original image's pixels out."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import AutoImageProcessor, AutoModelForObjectDetection

from modelwire_server.batcher import check_abandoned
from modelwire_server.errors import InvalidArgument
from modelwire_server.media import MediaLimits, decode_images, image_features, stacked_groups
from modelwire_server.tasks.base import BatchedTask

if TYPE_CHECKING:
    from PIL import Image
    from transformers import BatchFeature


@dataclass(frozen=True)
class DetectItem:
    features: BatchFeature  # the processor's output for this image alone
    size: tuple[int, int]  # the original image's height and width
    threshold: float


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax


class ObjectDetectionTask(BatchedTask[DetectItem, list[Detection]]):
    task = "object-detection"
    rpcs = ("DetectObjects",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.processor = AutoImageProcessor.from_pretrained(source, **kwargs)
        self.model = self.place(AutoModelForObjectDetection.from_pretrained(source, **kwargs))
        self.limits = MediaLimits.of(self.config)

    def warmup_item(self) -> DetectItem:
        from PIL import Image

        return self._item(Image.new("RGB", (8, 8)), 0.5, "warmup")

    async def detect(
        self, images: Sequence[bytes], threshold: float, *, deadline: float | None = None
    ) -> list[list[Detection]]:
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise InvalidArgument("threshold", f"must be in [0, 1], got {threshold}")
        items = await asyncio.to_thread(self._prepare, images, threshold)
        return await self.batcher.submit(items, deadline=deadline)

    def _prepare(self, images: Sequence[bytes], threshold: float) -> list[DetectItem]:
        """Decode and preprocess in a thread of the caller's, not on the device worker."""
        decoded = decode_images(images, self.limits)
        return [self._item(image, threshold, f"images[{i}]") for i, image in enumerate(decoded)]

    def _item(self, image: Image.Image, threshold: float, field: str) -> DetectItem:
        features = image_features(self.processor, image, field)
        return DetectItem(features, (image.height, image.width), threshold)

    def run_batch(self, items: list[DetectItem]) -> list[list[Detection]]:
        results: list[list[Detection]] = [[] for _ in items]
        # DETR-style processors pad a batch to its largest image and the backbone sees
        # the padding, so only images of one processed shape share a forward pass.
        for indices, batch in stacked_groups([item.features for item in items]):
            check_abandoned()
            group = [items[i] for i in indices]
            for i, detections in zip(indices, self._detect(batch, group), strict=True):
                results[i] = detections
        return results

    def _detect(self, batch: BatchFeature, items: list[DetectItem]) -> list[list[Detection]]:
        with torch.inference_mode():
            outputs = self.model(**batch.to(device=self.device, dtype=self.dtype))
        # Softmax and pixel scaling in float32: in half precision they would add their
        # own rounding (4 px steps near 600 px) to that of the model's outputs.
        for key in ("logits", "pred_boxes"):
            if key in outputs:
                outputs[key] = outputs[key].float()
        sizes = torch.tensor([item.size for item in items])
        # One post-processing call at the lowest threshold, then each item's own: the
        # threshold only filters, so this equals one call per item.
        lowest = min(i.threshold for i in items)
        raw = self.processor.post_process_object_detection(outputs, lowest, sizes)
        return [self._kept(found, item.threshold) for found, item in zip(raw, items, strict=True)]

    def _kept(self, found: dict[str, torch.Tensor], threshold: float) -> list[Detection]:
        keep = found["scores"] > threshold
        scores, labels = found["scores"][keep].float(), found["labels"][keep]
        boxes = found["boxes"][keep].float().cpu()
        id2label = self.model.config.id2label
        detections = [
            Detection(id2label[int(label)], float(score), tuple(box.tolist()))  # type: ignore[arg-type]
            for score, label, box in zip(scores.cpu(), labels.cpu(), boxes, strict=True)
        ]
        return sorted(detections, key=lambda d: d.score, reverse=True)
