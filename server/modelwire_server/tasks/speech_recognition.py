"""automatic-speech-recognition with CTC models (wav2vec2 family): clips in, text out.

A clip longer than the window is cut into overlapping chunks exactly as transformers'
ASR pipeline cuts them (a stride of a sixth of the chunk on each inner side, aligned to
the model's frames). Every chunk is one batch item, so the chunks of a long clip and
of concurrent requests share forward passes; each chunk's argmax tokens lose their
strides and the clip's tokens are CTC-decoded together, with character offsets for
timestamps.

Whisper generates its text token by token: a Whisper model is served by
``tasks/whisper.py`` through the generation engine (see there). Any other speech model
fails to load, with a message saying which kinds this server transcribes with.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

from modelwire_server.batcher import check_abandoned
from modelwire_server.errors import InvalidArgument
from modelwire_server.media import (
    AudioChunk,
    AudioInput,
    MediaLimits,
    audio_batches,
    audio_chunks,
    check_min_length,
    decode_clips,
    min_samples,
)
from modelwire_server.tasks.base import BatchedTask

if TYPE_CHECKING:
    from modelwire_server.tasks.whisper import WhisperSpeech

# With chunk_length_s unset, clips up to this long run whole (as the pipeline runs
# them); longer ones are chunked, since attention cost grows with the square of length.
DEFAULT_WINDOW_S = 30.0
# Shorter chunks leave strides below the encoder's receptive field.
MIN_CHUNK_S = 1.0

Granularity = Literal["segment", "word", "char"]


@dataclass(frozen=True)
class TimedText:
    text: str
    start_s: float
    end_s: float | None  # None: the model did not close the chunk (Whisper)


@dataclass(frozen=True)
class Transcript:
    text: str
    chunks: list[TimedText]


class SpeechRecognitionTask(BatchedTask[AudioChunk, np.ndarray]):
    task = "automatic-speech-recognition"
    rpcs = ("TranscribeAudio",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.model_config = AutoConfig.from_pretrained(source, **kwargs)
        self.ctc = self.model_config.model_type in MODEL_FOR_CTC_MAPPING_NAMES
        self.whisper: WhisperSpeech | None = None
        if self.model_config.model_type == "whisper":
            from modelwire_server.tasks.whisper import WhisperSpeech

            self.whisper = WhisperSpeech(self)
            self.whisper.load()
            self.model = self.whisper.model
            return
        if not self.ctc:
            raise ValueError(
                f"{self.architecture} is neither a CTC model (wav2vec2 family) nor Whisper, "
                "the speech models this server transcribes with"
            )
        self.extractor = AutoFeatureExtractor.from_pretrained(source, **kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        self.model = self.place(AutoModelForCTC.from_pretrained(source, **kwargs))
        if not hasattr(self.model, "_get_feat_extract_output_lengths"):
            raise ValueError(
                f"{type(self.model).__name__} has no convolutional feature encoder; this "
                "server runs CTC models of the wav2vec2 family"
            )
        self.rate = int(self.extractor.sampling_rate)
        self.align = int(self.model_config.inputs_to_logits_ratio)
        self.min_samples = min_samples(self.model_config)
        self.limits = MediaLimits.of(self.config)

    @property
    def architecture(self) -> str:
        return (self.model_config.architectures or [self.model_config.model_type])[0]

    @property
    def context_length(self) -> int | None:
        return self.whisper.engine.limits.max_context if self.whisper is not None else None

    async def start(self) -> None:
        if self.whisper is not None:
            await self.whisper.start()
        else:
            await super().start()

    async def close(self) -> None:
        if self.whisper is not None:
            await self.whisper.close()
        else:
            await super().close()

    def warmup(self) -> None:
        if self.whisper is not None:
            self.whisper.warmup()
        elif self.ctc:
            super().warmup()

    def warmup_item(self) -> AudioChunk:
        return AudioChunk(np.zeros(max(self.rate // 4, self.min_samples), np.float32), None)

    async def transcribe(
        self,
        clips: Sequence[AudioInput],
        chunk_length_s: float | None,
        timestamps: Granularity | None,
        language: str | None,
        *,
        deadline: float | None = None,
    ) -> list[Transcript]:
        if self.whisper is not None:
            results = await self.whisper.transcribe(
                clips, chunk_length_s, timestamps, language, deadline=deadline
            )
            return [
                Transcript(text, [TimedText(c.text, c.start_s, c.end_s) for c in chunks])
                for text, chunks in results
            ]
        self._check_options(chunk_length_s, language)
        decoded = await asyncio.to_thread(decode_clips, clips, self.limits, self.rate)
        check_min_length(decoded, self.min_samples, self.rate)
        plans = [
            audio_chunks(s, chunk_length_s, self.rate, window_s=DEFAULT_WINDOW_S, align=self.align)
            for s in decoded
        ]
        tokens = await self.batcher.submit([c for plan in plans for c in plan], deadline=deadline)
        per_clip, start = [], 0
        for plan in plans:
            per_clip.append(np.concatenate(tokens[start : start + len(plan)]))
            start += len(plan)
        return await asyncio.to_thread(lambda: [self._decode(t, timestamps) for t in per_clip])

    def _check_options(self, chunk_length_s: float | None, language: str | None) -> None:
        if language:
            raise InvalidArgument(
                "language", "this CTC model transcribes the language it was trained on"
            )
        if chunk_length_s is not None and not (
            math.isfinite(chunk_length_s) and chunk_length_s >= MIN_CHUNK_S
        ):
            raise InvalidArgument(
                "chunk_length_s", f"must be at least {MIN_CHUNK_S:g} s, got {chunk_length_s}"
            )

    def item_cost(self, item: AudioChunk) -> int:
        return len(item.samples) // self.align + 1  # the encoder's frames

    def run_batch(self, items: list[AudioChunk]) -> list[np.ndarray]:
        results: list[np.ndarray] = [np.empty(0, np.int64)] * len(items)
        clips = [item.samples for item in items]
        for indices, features in audio_batches(self.extractor, clips):
            check_abandoned()
            with torch.inference_mode():
                inputs = features.to(device=self.device, dtype=self.dtype)
                ids = self.model(**inputs).logits.argmax(dim=-1).cpu()
            lengths = torch.tensor([len(clips[i]) for i in indices])
            frames = self.model._get_feat_extract_output_lengths(lengths).tolist()
            for row, n, i in zip(ids, frames, indices, strict=True):
                results[i] = self._inner(row[:n].numpy(), items[i].stride)
        return results

    def _inner(self, tokens: np.ndarray, stride: tuple[int, int, int] | None) -> np.ndarray:
        """A chunk's tokens without its strides (the pipeline's rescale_stride and cut)."""
        if stride is None:
            return tokens
        length, left, right = stride
        token_n = round(length * (1 / self.align))
        left = round(left / length * token_n)
        right = round(right / length * token_n)
        return tokens[left : token_n - right]

    def _decode(self, tokens: np.ndarray, timestamps: Granularity | None) -> Transcript:
        # Specials stay in for CTC (as in the pipeline): the blank is the pad token,
        # which decoding removes after grouping repeats.
        text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        if timestamps is None:
            return Transcript(text, [])
        offsets: list[dict[str, Any]] = self.tokenizer.decode(
            tokens, skip_special_tokens=False, output_char_offsets=True
        )["char_offsets"]
        key = "char" if timestamps == "char" else "word"
        if key == "word":
            offsets = self.tokenizer._get_word_offsets(
                offsets, self.tokenizer.replace_word_delimiter_char
            )
        return Transcript(text, [self._timed(o, key) for o in offsets])

    def _timed(self, offset: dict[str, Any], key: str) -> TimedText:
        start = offset["start_offset"] * self.align / self.rate
        end = offset["end_offset"] * self.align / self.rate
        return TimedText(offset[key], start, end)
