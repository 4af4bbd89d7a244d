"""Encoder-decoder models (T5, BART, Marian, M2M100, NLLB, ...) in the continuous batch.

Prefill runs the encoder once over the admitted prompts (right-padded, as their
tokenizers pad) and the decoder over its start token, which fills both halves of an
``EncoderDecoderCache``: the decoder's self-attention cache, and the cross-attention
cache holding each row's encoder keys and values. A row then carries its encoder output
and encoder mask beside those caches; all of them are selected, merged and trimmed
together, so a request that joins a running batch brings its own encoder state along.

Decoder self-attention caches are left-padded like a causal LM's (``PaddedCache``), so
one decode step appends one column for every row whatever its length; decoders whose
position embeddings read the cache width get each row's own position through
``DecoderPositions``. Every row starts from ``decoder_start_token_id`` alone: a forced
first token (an M2M100/NLLB target language) is chosen by the sampler at the first step,
as transformers' ``ForcedBOSTokenLogitsProcessor`` does, so it counts as generated.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from modelwire_server.engine.adapter import (
    PrefillInput,
    PrefillOutput,
    decode_attention_mask,
    prefill_in_groups,
)
from modelwire_server.engine.kvcache import PaddedCache, growable_cache
from modelwire_server.engine.positions import DecoderPositions


class Seq2SeqState:
    """The running rows of an encoder-decoder: decoder cache, encoder output and masks."""

    def __init__(
        self,
        cache: EncoderDecoderCache,
        decoder_mask: torch.Tensor,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor,
        *,
        token_encoder: bool = True,
    ) -> None:
        self.cache = cache
        self.decoder = PaddedCache(cache.self_attention_cache, decoder_mask)
        self.cross = PaddedCache(cache.cross_attention_cache, encoder_mask)
        self.encoder_hidden = encoder_hidden  # [rows, encoder width, d_model]
        # Token encoders have a padding mask the decoder's cross-attention must see;
        # feature encoders (fixed-size inputs) have none and their models take none.
        self.token_encoder = token_encoder

    @property
    def rows(self) -> int:
        return self.decoder.rows

    def select(self, index: torch.Tensor) -> None:
        self.decoder.select(index)
        index = index.to(self.encoder_hidden.device)
        columns = self.cross.select(index)
        self.encoder_hidden = self.encoder_hidden[index][:, columns]

    def merge(self, other: Seq2SeqState) -> None:
        self.decoder.merge(other.decoder)
        width = max(self.cross.width, other.cross.width)
        self.cross.merge(other.cross)  # pads the narrower side's keys and mask on the left
        self.encoder_hidden = torch.cat(
            [_pad_left(self.encoder_hidden, width), _pad_left(other.encoder_hidden, width)]
        )

    def rollback(self) -> None:
        self.decoder.rollback()  # only the self-attention cache grows in a step

    def tokens_in_use(self) -> int:
        return self.decoder.tokens_in_use() + self.cross.tokens_in_use()

    def slots(self) -> int:
        return self.rows * (self.decoder.width + self.cross.width)


def _pad_left(hidden: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - hidden.shape[1]
    return F.pad(hidden, (0, 0, missing, 0)) if missing else hidden


def _positions_limit(config: Any) -> int | None:
    for name in ("max_position_embeddings", "max_target_positions", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _encoder_width(config: Any) -> int | None:
    """Positions a feature encoder outputs (audio frames, image patches), if fixed."""
    value = getattr(config, "max_source_positions", None)  # Whisper-style audio
    if isinstance(value, int) and value > 0:
        return value
    encoder = getattr(config, "encoder", None)  # vision-encoder-decoder: ViT-style patches
    image, patch = getattr(encoder, "image_size", None), getattr(encoder, "patch_size", None)
    if isinstance(image, int) and isinstance(patch, int) and patch > 0:
        return (image // patch) ** 2 + 1
    return None


class Seq2SeqAdapter:
    """``AutoModelForSeq2SeqLM``-style models: the prompt is the encoder input.

    An encoder that reads features instead of tokens (Whisper's log-mel input, a
    vision-encoder-decoder's pixel values) takes them from each request's ``extras``,
    one item each; those encoders see fixed-size inputs, so no encoder mask is needed.
    Each request may bring its own decoder start (``decoder_ids``, e.g. Whisper's
    language and task tokens); rows whose starts differ in length prefill separately
    and join as one state.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str) -> None:
        self.model = model
        self.device = torch.device(device)
        config = model.config
        self.vocab_size = int(config.get_text_config(decoder=True).vocab_size)
        start = model.generation_config.decoder_start_token_id
        if start is None:
            start = config.decoder_start_token_id
        if start is None:
            raise ValueError("the model has no decoder_start_token_id")
        self.decoder_prefix: list[int] | None = [int(start)]
        pad = config.pad_token_id
        if pad is None:
            pad = getattr(config.get_text_config(decoder=True), "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else 0)
        decoder_config = config.get_text_config(decoder=True)
        # Learned or sinusoidal tables bound both sides; T5's relative bias has no bound.
        self.max_prompt = _positions_limit(config)
        self.max_context = _positions_limit(decoder_config) or _positions_limit(config)
        self.encoder_tokens = _encoder_width(config)
        self.setup_positions(model)

    def setup_positions(self, model: torch.nn.Module) -> None:
        """Prepare per-row decoder positions (see ``place_positions``)."""
        self.positions = DecoderPositions(model)

    @torch.inference_mode()
    def prefill(self, inputs: list[PrefillInput]) -> PrefillOutput:
        # Rows whose decoder starts differ in length prefill separately.
        by_length: dict[int, list[int]] = {}
        for index, item in enumerate(inputs):
            by_length.setdefault(len(self._start(item)), []).append(index)
        return prefill_in_groups(inputs, list(by_length.values()), self._prefill, self.device)

    def _start(self, item: PrefillInput) -> list[int]:
        return item.decoder_ids or self.decoder_prefix or []

    def _prefill(self, items: list[PrefillInput]) -> PrefillOutput:
        features = [item.extras for item in items]
        if all(features) and not any(item.prompt_ids for item in items):
            encoder_inputs = {
                key: torch.cat([f[key] for f in features if f]).to(self.device)
                for key in features[0] or {}
            }
            hidden = self.model.get_encoder()(**encoder_inputs).last_hidden_state
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=self.device)
            encoder_mask: torch.Tensor | None = None
        else:
            width = max(len(item.prompt_ids) for item in items)
            ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(items), width), dtype=torch.long)
            for row, item in enumerate(items):
                ids[row, : len(item.prompt_ids)] = torch.tensor(item.prompt_ids, dtype=torch.long)
                mask[row, : len(item.prompt_ids)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            encoder_mask = mask
        start = torch.tensor([self._start(i) for i in items], dtype=torch.long, device=self.device)
        decoder_mask = torch.ones_like(start)
        cache = EncoderDecoderCache(growable_cache(), DynamicCache())
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            **({"attention_mask": encoder_mask} if encoder_mask is not None else {}),
            decoder_input_ids=start,
            decoder_attention_mask=decoder_mask,
            cache=cache,
            use_cache=True,
        )
        state = Seq2SeqState(
            cache, decoder_mask, hidden, mask, token_encoder=encoder_mask is not None
        )
        # Encoder tokens have no next-token distribution: echoed prompts carry no logprobs.
        return PrefillOutput(out.logits[:, -1, :].float(), state, [None] * len(items))

    @torch.inference_mode()
    def decode(self, state: Any, tokens: torch.Tensor) -> torch.Tensor:
        assert isinstance(state, Seq2SeqState)
        step_mask = state.decoder.mask_for_step()
        tokens = tokens.to(self.device).view(-1, 1)
        positions = state.decoder.positions().view(-1, 1)
        kwargs, placed = self.place_positions(positions, tokens)
        if state.token_encoder:
            kwargs["attention_mask"] = state.cross.mask
        with placed:
            out = self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=state.encoder_hidden),
                decoder_input_ids=tokens,
                # No mask without padding: transformers then builds none either.
                decoder_attention_mask=decode_attention_mask("none", state.decoder, step_mask),
                cache=state.cache,
                use_cache=True,
                **kwargs,
            )
        state.decoder.commit_step(step_mask)
        return out.logits[:, -1, :].float()

    def place_positions(
        self, positions: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[dict[str, Any], AbstractContextManager[None]]:
        """How a decode step gets each row's own position: forward kwargs, and a context
        the forward pass runs in (here: the decoder's position table, overridden)."""
        return {}, self.positions.override(positions, tokens)
