"""Image captioners whose text decoder is a causal LM cross-attending to image embeddings.

BLIP (``BlipForConditionalGeneration``) is a vision model and a text decoder: the
vision model turns each image into embeddings once, and the text decoder, a BERT-style
causal LM with cross-attention, continues a prompt (``[DEC]`` and the prompt's tokens)
while attending to them. ``model.generate`` runs the vision model and then
``text_decoder.generate``; this adapter does the same inside the engine's batch.

So the prompt continues (``decoder_prefix`` is None), as with a causal LM: each row is
its prompt, left-padded with explicit positions, plus its image. The batch state is an
``EncoderDecoderCache`` seen as two ``PaddedCache`` halves, as an encoder-decoder's is:
the self-attention cache grows one column per step, and the cross-attention cache
holds each row's image keys and values, computed once at prefill; the image embeddings
travel with their row (the decoder's cross-attention layers are only entered when
``encoder_hidden_states`` is given, even when their keys come from the cache).
Requests bring their pixel values in ``extras["pixel_values"]`` (``[1, C, H, W]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, EncoderDecoderCache

from modelwire_server.engine.adapter import (
    PrefillInput,
    PrefillOutput,
    decode_attention_mask,
    left_padded,
    model_context_length,
    prompt_logits,
)
from modelwire_server.engine.kvcache import PaddedCache, growable_cache

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]


class CrossDecoderState:
    """The running rows: self-attention cache, image keys/values, image embeddings."""

    def __init__(
        self, cache: EncoderDecoderCache, mask: torch.Tensor, image_embeds: torch.Tensor
    ) -> None:
        self.cache = cache
        self.decoder = PaddedCache(cache.self_attention_cache, mask)
        image_mask = torch.ones(image_embeds.shape[:2], dtype=mask.dtype, device=mask.device)
        self.cross = PaddedCache(cache.cross_attention_cache, image_mask)
        self.image_embeds = image_embeds  # [rows, image tokens, hidden]

    @property
    def rows(self) -> int:
        return self.decoder.rows

    def select(self, index: torch.Tensor) -> None:
        self.decoder.select(index)
        columns = self.cross.select(index)
        self.image_embeds = self.image_embeds[index.to(self.image_embeds.device)][:, columns]

    def merge(self, other: CrossDecoderState) -> None:
        self.decoder.merge(other.decoder)
        # Images of one model have one size, so the image widths normally agree; a model
        # whose processor keeps aspect ratios would pad the narrower side, masked out.
        width = max(self.cross.width, other.cross.width)
        self.cross.merge(other.cross)
        self.image_embeds = torch.cat(
            [_pad_left(self.image_embeds, width), _pad_left(other.image_embeds, width)]
        )

    def rollback(self) -> None:
        self.decoder.rollback()  # the image keys never grow

    def tokens_in_use(self) -> int:
        return self.decoder.tokens_in_use() + self.cross.tokens_in_use()

    def slots(self) -> int:
        return self.rows * (self.decoder.width + self.cross.width)

    def image_mask(self) -> torch.Tensor | None:
        """The cross-attention mask, or None when every image column is real (known
        without a device sync at each step: see ``PaddedCache.padded``)."""
        return self.cross.mask if self.cross.padded() else None


def _pad_left(hidden: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - hidden.shape[1]
    return F.pad(hidden, (0, 0, missing, 0)) if missing else hidden


class CrossDecoderAdapter:
    """A causal text decoder with cross-attention over per-row image embeddings.

    ``encode_images`` maps pixel values ``[N, C, H, W]`` to embeddings ``[N, P, D]``;
    ``decoder`` takes ``input_ids``, ``attention_mask``, ``position_ids``,
    ``encoder_hidden_states``, ``encoder_attention_mask``, ``cache``, ``use_cache`` and
    ``logits_to_keep`` (BLIP's ``BlipTextLMHeadModel`` does).
    """

    def __init__(
        self,
        decoder: torch.nn.Module,
        encode_images: ImageEncoder,
        device: torch.device | str,
        *,
        pad_id: int,
        image_dtype: torch.dtype | None = None,
    ) -> None:
        self.decoder = decoder
        self.encode_images = encode_images
        self.device = torch.device(device)
        self.vocab_size = int(decoder.config.vocab_size)
        self.max_context = model_context_length(decoder.config)
        self.max_prompt: int | None = None
        self.decoder_prefix: list[int] | None = None  # the prompt continues
        self.pad_id = pad_id
        self.image_dtype = image_dtype

    @torch.inference_mode()
    def prefill(self, inputs: list[PrefillInput]) -> PrefillOutput:
        pixels = []
        for item in inputs:
            if not item.extras or "pixel_values" not in item.extras:
                raise ValueError("an image captioner needs pixel_values in every request")
            pixels.append(item.extras["pixel_values"])
        pixel_values = torch.cat(pixels).to(self.device, dtype=self.image_dtype)
        image_embeds = self.encode_images(pixel_values)
        ids, mask, positions = left_padded([i.prompt_ids for i in inputs], self.pad_id, self.device)
        want_all = any(i.want_prompt_logits for i in inputs)
        cache = EncoderDecoderCache(growable_cache(), DynamicCache())
        out = self.decoder(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            encoder_hidden_states=image_embeds,
            cache=cache,
            use_cache=True,
            logits_to_keep=0 if want_all else 1,
        )
        prompts = prompt_logits(out.logits, inputs)
        state = CrossDecoderState(cache, mask, image_embeds)
        return PrefillOutput(out.logits[:, -1, :].float(), state, prompts)

    @torch.inference_mode()
    def decode(self, state: Any, tokens: torch.Tensor) -> torch.Tensor:
        assert isinstance(state, CrossDecoderState)
        step_mask = state.decoder.mask_for_step()
        out = self.decoder(
            input_ids=tokens.to(self.device).view(-1, 1),
            attention_mask=decode_attention_mask("none", state.decoder, step_mask),
            position_ids=state.decoder.positions().view(-1, 1),
            encoder_hidden_states=state.image_embeds,
            encoder_attention_mask=state.image_mask(),
            cache=state.cache,
            use_cache=True,
        )
        state.decoder.commit_step(step_mask)
        return out.logits[:, -1, :].float()


def blip_adapter(model: Any, device: torch.device | str) -> CrossDecoderAdapter:
    """``BlipForConditionalGeneration``: its vision model and its text decoder."""
    text = model.config.text_config
    pad = text.pad_token_id if text.pad_token_id is not None else 0
    vision = model.vision_model

    def encode(pixel_values: torch.Tensor) -> torch.Tensor:
        return vision(pixel_values=pixel_values).last_hidden_state

    dtype = next(vision.parameters()).dtype
    return CrossDecoderAdapter(
        model.text_decoder, encode, device, pad_id=int(pad), image_dtype=dtype
    )
