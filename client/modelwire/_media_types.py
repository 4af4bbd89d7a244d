"""The SDK's media types: results of the image and audio tasks, and raw audio input.

Plain frozen dataclasses like those of ``_types``; nothing here imports numpy or PIL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TimestampGranularity = Literal["segment", "word", "char"]
"""CTC models: "segment" and "word" give words, "char" characters; Whisper: segments, words."""

AudioFormat = Literal["wav_pcm16", "wav_float32", "pcm_float32"]
"""WAV with 16-bit samples (the default), WAV with float32 samples, or raw float32 PCM."""


@dataclass(frozen=True)
class RawAudio:
    """Raw audio with its sample rate.

    ``samples`` is a numpy array (``(samples,)`` mono, or ``(samples, channels)`` as
    soundfile returns it), a sequence of floats, or little-endian float32 bytes
    (interleaved when ``channels > 1``). The server averages channels to mono and
    resamples to the model's rate.
    """

    samples: Any
    sample_rate: int
    channels: int = 1


@dataclass(frozen=True)
class BoundingBox:
    """A box in the original image's pixel coordinates."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass(frozen=True)
class DetectedObject:
    """One detected object: its label, score and box."""

    label: str
    score: float
    box: BoundingBox


@dataclass(frozen=True)
class Detections:
    """The detections of one image above the threshold, best first."""

    objects: list[DetectedObject]

    def __len__(self) -> int:
        return len(self.objects)


@dataclass(frozen=True)
class TimedChunk:
    """A timed piece of a transcription; times in seconds from the clip's start."""

    text: str
    start_s: float
    end_s: float | None
    """None when the model did not close the chunk."""


@dataclass(frozen=True)
class Transcription:
    """The transcription of one clip; ``chunks`` only when timestamps were asked for."""

    text: str
    chunks: list[TimedChunk] = field(default_factory=list)


@dataclass(frozen=True)
class Speech:
    """Synthesized speech: ``audio`` encoded as ``format`` says, mono."""

    audio: bytes
    sample_rate: int
    format: AudioFormat
    num_samples: int
    request_id: str | None = field(default=None, compare=False)

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate if self.sample_rate else 0.0


ImageInput = Any
"""Encoded image ``bytes``, a path (``str`` or ``os.PathLike``), a ``PIL.Image.Image``
or a numpy ``uint8`` array (``(height, width)``, ``(height, width, 3)`` or ``(..., 4)``)."""

AudioClip = Any
"""Encoded audio ``bytes`` (WAV, FLAC, OGG, ...), a path, a ``RawAudio``, or a numpy
array when the method's ``sample_rate`` is given."""
