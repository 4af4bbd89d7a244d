"""text-to-speech: text in, audio out (VITS, and SpeechT5 with its HiFi-GAN vocoder).

Both models draw random numbers at inference: VITS its noise and durations, SpeechT5
the dropout its decoder prenet keeps on in eval mode. A padded batch would draw them
for all rows at once, making a request's audio depend on its neighbours, so each
request runs alone in its forward pass, with torch's generator seeded from the
request's seed inside ``fork_rng`` (nothing else sees the reseeding). The batcher still
queues, bounds and expires the requests.

Memory grows with the text (VITS's attention and its audio; SpeechT5's decoder steps),
so text is tokenized before it is queued and refused past the model's token limit,
and SpeechT5's output stops at its decoder's position table (``max_speech_positions``)
rather than running past it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForTextToWaveform,
    AutoTokenizer,
    SpeechT5ForTextToSpeech,
    SpeechT5HifiGan,
)

from modelwire_server.batcher import check_abandoned
from modelwire_server.errors import InvalidArgument
from modelwire_server.media import AudioFormat, encode_audio
from modelwire_server.tasks.base import BatchedTask, input_token_limit

# A voice given inline: this prefix, then a speaker embedding as base64 float32 LE.
EMBEDDING_PREFIX = "embedding:"


# Tokens of text for a model that names no limit (VITS): about 250 characters,
# some 20 seconds of speech, a few hundred MB at inference.
DEFAULT_MAX_INPUT_TOKENS = 512


@dataclass(frozen=True)
class SpeechItem:
    inputs: dict[str, Any]  # the synthesizer's prepared model inputs
    seed: int


@dataclass(frozen=True)
class Speech:
    audio: bytes
    sample_rate: int
    num_samples: int


class Synthesizer(Protocol):
    model: Any
    sample_rate: int

    def prepare(self, text: str, voice: str | None) -> dict[str, Any]:
        """Model inputs for one request; InvalidArgument for text or voice it cannot take
        (text over the model's token limit included)."""
        ...

    def run(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The waveform (on the device worker, seeded, in inference mode)."""
        ...


class TextToSpeechTask(BatchedTask[SpeechItem, np.ndarray]):
    task = "text-to-speech"
    rpcs = ("SynthesizeSpeech",)

    def load(self) -> None:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        model_type = AutoConfig.from_pretrained(source, **kwargs).model_type
        if model_type == "vits":
            self.synth: Synthesizer = Vits(source, kwargs, self)
        elif model_type == "speecht5":
            self.synth = SpeechT5(source, kwargs, self)
        else:
            raise ValueError(f"text-to-speech serves VITS and SpeechT5 models, not {model_type}")
        self.model = self.synth.model

    def warmup_item(self) -> SpeechItem:
        return SpeechItem(self.synth.prepare("hi", None), 0)

    async def synthesize(
        self,
        text: str,
        voice: str | None,
        seed: int | None,
        fmt: AudioFormat,
        *,
        deadline: float | None = None,
    ) -> Speech:
        if not text.strip():
            raise InvalidArgument("text", "must not be empty")
        if len(text) > self.config.max_input_chars:
            raise InvalidArgument(
                "text", f"has {len(text)} characters; the limit is {self.config.max_input_chars}"
            )
        seed = secrets.randbits(63) if seed is None else seed
        inputs = await asyncio.to_thread(self.synth.prepare, text, voice)
        [samples] = await self.batcher.submit([SpeechItem(inputs, seed)], deadline=deadline)
        rate = self.synth.sample_rate
        audio = await asyncio.to_thread(encode_audio, samples, rate, fmt)
        return Speech(audio, rate, len(samples))

    def run_batch(self, items: list[SpeechItem]) -> list[np.ndarray | BaseException]:
        return [self._one(item) for item in items]

    def _one(self, item: SpeechItem) -> np.ndarray | BaseException:
        check_abandoned()  # each request is a pass of its own
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda), torch.inference_mode():
                torch.manual_seed(item.seed)
                wave = self.synth.run(item.inputs)
        except Exception as exc:  # this request's failure only, not its batch's
            return exc
        return wave.float().cpu().numpy().reshape(-1)


class Vits:
    """VITS (MMS-TTS and the like): one forward pass gives the waveform."""

    def __init__(self, source: str, kwargs: dict[str, Any], runner: TextToSpeechTask) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        self.model = runner.place(AutoModelForTextToWaveform.from_pretrained(source, **kwargs))
        self.device = runner.device
        self.sample_rate = int(self.model.config.sampling_rate)
        self.speakers = int(getattr(self.model.config, "num_speakers", 1) or 1)
        self.max_tokens = input_token_limit(
            runner.config, self.tokenizer, self.model.config, DEFAULT_MAX_INPUT_TOKENS
        )

    def prepare(self, text: str, voice: str | None) -> dict[str, Any]:
        encoded = dict(self.tokenizer(text, return_tensors="pt"))
        # The tokenizer drops characters outside its vocabulary; VITS fails on no input.
        if encoded["input_ids"].numel() == 0:
            raise InvalidArgument("text", "has no characters this model can speak")
        check_text_tokens(encoded["input_ids"].shape[-1], self.max_tokens)
        if voice is not None:
            encoded["speaker_id"] = self._speaker(voice)
        return encoded

    def _speaker(self, voice: str) -> int:
        if self.speakers == 1:
            raise InvalidArgument("voice", "this model has a single voice; leave voice unset")
        if not voice.isdigit() or int(voice) >= self.speakers:
            raise InvalidArgument(
                "voice", f"must be a speaker id from 0 to {self.speakers - 1}, got {voice!r}"
            )
        return int(voice)

    def run(self, inputs: dict[str, Any]) -> torch.Tensor:
        on_device = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        return self.model(**on_device).waveform[0]


class SpeechT5:
    """SpeechT5: a spectrogram decoded step by step, then the HiFi-GAN vocoder.

    Reads ``vocoder/`` and, when present, the default voice ``speaker_embeddings.npy``
    (float32 ``[1, speaker_embedding_dim]``) from the model's directory.
    """

    def __init__(self, source: str, kwargs: dict[str, Any], runner: TextToSpeechTask) -> None:
        root = Path(source)
        if not (root / "vocoder").is_dir():
            raise ValueError(f"SpeechT5 needs its HiFi-GAN vocoder in {root / 'vocoder'}")
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        self.model = runner.place(SpeechT5ForTextToSpeech.from_pretrained(source, **kwargs))
        self.vocoder = runner.place(SpeechT5HifiGan.from_pretrained(root / "vocoder"))
        self.device, self.dtype = runner.device, runner.dtype
        config = self.model.config
        self.max_tokens = min(config.max_text_positions, runner.config.max_input_tokens or 1 << 62)
        self.max_steps = int(config.max_speech_positions) - 1
        self.sample_rate = int(self.vocoder.config.sampling_rate)
        self.dim = int(self.model.config.speaker_embedding_dim)
        default = root / "speaker_embeddings.npy"
        self.default_voice = np.load(default).astype(np.float32) if default.exists() else None

    def prepare(self, text: str, voice: str | None) -> dict[str, Any]:
        ids = self.tokenizer(text, return_tensors="pt").input_ids
        check_text_tokens(ids.shape[-1], self.max_tokens)
        return {"input_ids": ids, "speaker": torch.from_numpy(self._voice(voice))}

    def _voice(self, voice: str | None) -> np.ndarray:
        if voice is None or voice == "default":
            if self.default_voice is None:
                raise InvalidArgument("voice", "this model has no default voice; pass one")
            return self.default_voice
        if not voice.startswith(EMBEDDING_PREFIX):
            raise InvalidArgument(
                "voice", f"must be 'default' or '{EMBEDDING_PREFIX}' + base64 float32 values"
            )
        try:
            raw = base64.b64decode(voice.removeprefix(EMBEDDING_PREFIX), validate=True)
        except binascii.Error:
            raise InvalidArgument("voice", "the embedding is not valid base64") from None
        if len(raw) != 4 * self.dim:
            raise InvalidArgument("voice", f"the embedding must hold {self.dim} float32 values")
        embedding = np.frombuffer(raw, dtype="<f4").reshape(1, self.dim)
        if not np.isfinite(embedding).all():
            raise InvalidArgument("voice", "the embedding holds NaN or infinite values")
        return embedding.copy()

    def run(self, inputs: dict[str, Any]) -> torch.Tensor:
        # transformers stops after tokens x maxlenratio / reduction_factor decoder steps
        # (maxlenratio 20 by default); a step past the position table would fail, so
        # long text stops there, as its default would have for shorter text.
        ids, ratio = inputs["input_ids"], 20.0
        reduction = self.model.config.reduction_factor
        if int(ids.shape[-1] * ratio / reduction) > self.max_steps:
            ratio = self.max_steps * reduction / ids.shape[-1]
        return self.model.generate_speech(
            ids.to(self.device),
            inputs["speaker"].to(self.device, self.dtype),
            vocoder=self.vocoder,
            maxlenratio=ratio,
        )


def check_text_tokens(tokens: int, limit: int) -> None:
    if tokens > limit:
        raise InvalidArgument("text", f"is {tokens} tokens; this model reads {limit} at most")
