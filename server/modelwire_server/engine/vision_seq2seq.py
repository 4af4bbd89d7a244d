"""Vision-encoder-decoder captioners (``VisionEncoderDecoderModel``) in the continuous batch.

``Seq2SeqAdapter`` already runs a feature encoder: a request without prompt tokens
brings its pixel values in ``extras``, prefill encodes them and fills both halves of the
``EncoderDecoderCache``, and a request may bring its own decoder start
(``decoder_prompt_ids``: the decoder start token and a text prompt, a forced prefix the
caption continues). What differs is how a decode step positions each row's token.

The decoder of a vision-encoder-decoder is a causal LM (GPT-2, TrOCR, BERT, ...) inside
the composite model, so ``DecoderPositions`` (which hooks the ``embed_positions`` table
of ``model.get_decoder()``) finds nothing to hook. A decoder whose forward takes
``position_ids`` (GPT-2 and most causal LMs) gets each row's position as
``decoder_position_ids``, which ``VisionEncoderDecoderModel.forward`` hands to the
decoder; one with a BART-style ``embed_positions`` table (TrOCR) gets it through
``DecoderPositions`` on that inner decoder.
"""

from __future__ import annotations

import contextlib
import inspect
from contextlib import AbstractContextManager
from typing import Any

import torch

from modelwire_server.engine.adapter import model_context_length
from modelwire_server.engine.positions import DecoderPositions
from modelwire_server.engine.seq2seq import Seq2SeqAdapter


class _InnerDecoder:
    """What ``DecoderPositions`` reads of a model, for the decoder inside a composite."""

    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder
        self.config = decoder.config

    def get_decoder(self) -> Any:
        inner = self._decoder.get_decoder() if hasattr(self._decoder, "get_decoder") else None
        return inner if inner is not None else self._decoder


def _takes_position_ids(module: Any) -> bool:
    return "position_ids" in inspect.signature(module.forward).parameters


class VisionSeq2SeqAdapter(Seq2SeqAdapter):
    """``Seq2SeqAdapter`` with per-row decoder positions for a composite model's decoder."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str) -> None:
        super().__init__(model, device)
        self.max_prompt = None  # the encoder reads pixels, not tokens
        self.max_context = model_context_length(model.config.get_text_config(decoder=True))

    def setup_positions(self, model: torch.nn.Module) -> None:
        # Not the base's: it hooks model.get_decoder().embed_positions, which a
        # composite's causal-LM decoder lacks.
        decoder = model.get_decoder()
        self.explicit_positions = _takes_position_ids(decoder)
        self.inner_positions = (
            None if self.explicit_positions else DecoderPositions(_InnerDecoder(decoder))
        )

    def place_positions(
        self, positions: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[dict[str, Any], AbstractContextManager[None]]:
        if self.inner_positions is None:
            return {"decoder_position_ids": positions}, contextlib.nullcontext()
        return {}, self.inner_positions.override(positions, tokens)
