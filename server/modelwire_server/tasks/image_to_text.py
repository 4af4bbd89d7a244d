"""image-to-text: captions from the generation engine, one engine request per image.

Two kinds of captioner are served, each through its own engine adapter:

- BLIP (``BlipForConditionalGeneration``): a text decoder that continues a prompt while
  cross-attending to the image (``engine.cross_decoder``). As in BLIP's ``generate``,
  the prompt is the tokenizer's ``[CLS] text [SEP]`` with ``[CLS]`` swapped for the
  decoder's BOS (``[DEC]``) and the trailing ``[SEP]`` dropped; no prompt is BOS alone.
- Vision-encoder-decoders (``VisionEncoderDecoderModel``: ViT + GPT-2, TrOCR, ...): the
  image is the encoder input (``engine.vision_seq2seq``) and the decoder starts from
  ``decoder_start_token_id``. A prompt is tokenized without special tokens and follows
  that start token, a forced prefix the decoder continues, as ``generate`` does when it
  is given those ``decoder_input_ids`` (transformers' pipeline refuses prompts for these
  models; the server takes them).

The runner is a ``TextGenerationTask`` with its own loading and inputs, so its engine is
driven like any other: the images of one call decode together, and with those of
concurrent calls. Images are decoded and preprocessed off the event loop and off the
device worker; pixel values reach the adapter as the request's ``extras``.

A caption's text is the whole caption, the prompt included (what the image-to-text
pipeline returns); ``generated_tokens`` counts the tokens after the prompt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    BlipForConditionalGeneration,
    VisionEncoderDecoderModel,
)

from modelwire_server import errors
from modelwire_server.engine.adapter import ModelAdapter
from modelwire_server.engine.cross_decoder import blip_adapter
from modelwire_server.engine.engine import GenerationEngine
from modelwire_server.engine.types import (
    GenerationRequest,
    SamplingParams,
    StoppingParams,
)
from modelwire_server.engine.vision_seq2seq import VisionSeq2SeqAdapter
from modelwire_server.engine_client import EngineDriver
from modelwire_server.media import MediaLimits, decode_images, image_features
from modelwire_server.tasks.text_generation import TextGenerationTask, TextResult

_MODEL_CLASSES: dict[str, Any] = {
    "blip": BlipForConditionalGeneration,
    "vision-encoder-decoder": VisionEncoderDecoderModel,
}


@dataclass(frozen=True)
class CaptionInput:
    """One image, ready for the engine: its pixel values and the tokens it starts from."""

    pixel_values: torch.Tensor  # [1, C, H, W], in the model's dtype
    prompt_ids: list[int]  # the prompt (BLIP) or empty (encoder-decoder)
    decoder_ids: list[int] | None  # an encoder-decoder's decoder start with the prompt


class ImageToTextTask(TextGenerationTask):
    task = "image-to-text"
    rpcs = ("CaptionImage",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        model_type = AutoConfig.from_pretrained(source, **kwargs).model_type
        model_class = _MODEL_CLASSES.get(model_type)
        if model_class is None:
            raise ValueError(
                f"image-to-text serves BLIP and vision-encoder-decoder models, not {model_type!r}"
            )
        self.kind = model_type
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        self.image_processor = AutoImageProcessor.from_pretrained(source, **kwargs)
        self.model = self.place(model_class.from_pretrained(source, **kwargs))
        self.limits = MediaLimits.of(self.config)
        self.engine = self.make_engine()
        self.driver = EngineDriver(self.engine, self.worker, self.config.name)

    def make_engine(self, adapter: ModelAdapter | None = None) -> GenerationEngine:
        if adapter is None:
            if self.kind == "blip":
                adapter = blip_adapter(self.model, self.device)
            else:
                adapter = VisionSeq2SeqAdapter(self.model, self.device)
        return super().make_engine(adapter)

    def warmup(self) -> None:
        """Caption a blank image, two tokens, end to end (on the worker: steps run inline)."""
        from PIL import Image

        [item] = self._prepare_images([Image.new("RGB", (8, 8))], None, "warmup")
        request = self._request(item, SamplingParams(), StoppingParams(), "warmup", None)
        self.run_inline(request, max_new_tokens=2)

    # -- inputs ------------------------------------------------------------------------

    def _prepare(
        self, images: Sequence[bytes], prompt: str | None
    ) -> tuple[list[CaptionInput], str]:
        """Decode and preprocess in a thread of the caller's, not on the device worker;
        also the text the captions start from, decoded as the reference decodes it, so
        that it and the engine's text make ``decode(prompt + generated tokens)``."""
        items = self._prepare_images(decode_images(images, self.limits), prompt, "images")
        head = items[0].decoder_ids or items[0].prompt_ids
        prefix = self.tokenizer.decode(head, skip_special_tokens=True) if prompt else ""
        return items, prefix

    def _prepare_images(
        self, images: Sequence[Any], prompt: str | None, field: str
    ) -> list[CaptionInput]:
        prompt_ids, decoder_ids = self._prompt(prompt)
        items = []
        for i, image in enumerate(images):
            features = image_features(self.image_processor, image, f"{field}[{i}]")
            pixels = features["pixel_values"].to(dtype=self.dtype)
            items.append(CaptionInput(pixels, prompt_ids, decoder_ids))
        return items

    def _prompt(self, prompt: str | None) -> tuple[list[int], list[int] | None]:
        """(prompt_ids, decoder_ids) of a text prompt, leaving room for one token."""
        prompt_ids, decoder_ids = self._prompt_ids(prompt)
        length, limit = len(decoder_ids or prompt_ids), self.engine.limits.max_context
        if limit is not None and length >= limit:
            raise errors.InvalidArgument(
                "prompt",
                f"takes {length} tokens with the caption's start; this model's context is "
                f"{limit} tokens, and the caption needs at least one",
            )
        return prompt_ids, decoder_ids

    def _prompt_ids(self, prompt: str | None) -> tuple[list[int], list[int] | None]:
        """(prompt_ids, decoder_ids) of a text prompt, as ``generate`` builds them."""
        if self.kind == "blip":
            text = self.model.config.text_config
            if not prompt:
                return [int(text.bos_token_id)], None
            ids = list(self.tokenizer(prompt)["input_ids"])
            ids[0] = int(text.bos_token_id)  # [CLS] -> [DEC]
            return ids[:-1], None  # without the closing [SEP]
        if not prompt:
            return [], None
        assert self.engine.adapter.decoder_prefix is not None
        start = list(self.engine.adapter.decoder_prefix)
        return [], start + list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def _request(
        self,
        item: CaptionInput,
        sampling: SamplingParams,
        stopping: StoppingParams,
        request_id: str,
        deadline: float | None,
    ) -> GenerationRequest:
        return GenerationRequest(
            prompt_ids=item.prompt_ids,
            sampling=sampling,
            stopping=stopping,
            request_id=request_id,
            deadline=deadline,
            extras={"pixel_values": item.pixel_values},
            decoder_prompt_ids=item.decoder_ids,
        )

    # -- captioning --------------------------------------------------------------------

    async def caption(
        self,
        images: Sequence[bytes],
        prompt: str | None,
        sampling: SamplingParams,
        stopping: StoppingParams,
        *,
        request_id: str,
        deadline: float | None,
    ) -> list[TextResult]:
        """One caption per image, in order; each image is its own engine request."""
        if sampling.n not in (None, 1):
            raise errors.InvalidArgument(
                "sampling.n", "this RPC returns one caption per image; use n = 1"
            )
        if prompt is not None and len(prompt) > self.config.max_input_chars:
            raise errors.InvalidArgument(
                "prompt",
                f"has {len(prompt)} characters; the limit is {self.config.max_input_chars}",
            )
        items, prefix = await asyncio.to_thread(self._prepare, images, prompt)
        requests = [
            self._request(item, sampling, stopping, f"{request_id}/{i}", deadline)
            for i, item in enumerate(items)
        ]
        done = await self.complete_all(requests, None)
        return [TextResult(prefix + r.text, r.reason, r.generated_tokens) for r in done]
