"""Media inputs and outputs: decoding, per-model limits, resampling, audio encoding.

Decoding runs in threads off the event loop (the runners call it through
``asyncio.to_thread``). Every problem with one input is an ``InvalidArgument`` naming
that input (``images[2]``, ``clips[0].pcm.sample_rate``): decoders raise a zoo of
exception types on corrupt data, and none of them may become INTERNAL. Limits are
checked on what the header promises, before the payload is decoded, so an oversize
input costs no memory: pixels for images, decoded samples x channels for audio (a
small compressed file can promise gigabytes), per input and over a request's inputs.
What a model's requests hold decoded at once is a capacity (``DecodeBudget``): past
it, RESOURCE_EXHAUSTED, to retry.

Pillow, soundfile and scipy are imported where used: a server without libsndfile
still serves images.
"""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from modelwire_server.config import ModelConfig
from modelwire_server.errors import InvalidArgument, ResourceExhausted

if TYPE_CHECKING:
    from PIL import Image
    from transformers import BatchFeature

# Sample rates outside this range are taken for a mistake rather than resampled.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 192_000
# The default budget of decoded samples x channels, per second of max_audio_seconds:
# 48 kHz stereo.
SAMPLES_PER_SECOND = 2 * 48_000
# How many requests' worth of decoded media (each at its limit) a model holds at once.
DECODES_AT_ONCE = 4

_BUFFER_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")

AudioFormat = Literal["wav_pcm16", "wav_float32", "pcm_float32"]


class DecodeBudget:
    """What a model's requests may hold decoded at once, in pixels or samples.

    A request reserves its cost (read from headers) while it decodes; one that would
    pass the capacity while others hold theirs is RESOURCE_EXHAUSTED. Alone, a request
    within its per-request limit always fits.
    """

    def __init__(self, capacity: int, unit: str) -> None:
        self.capacity, self.unit = capacity, unit
        self.held = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        with self._lock:
            if self.held and self.held + amount > self.capacity:
                raise ResourceExhausted(
                    f"this model is decoding {self.held} {self.unit} for other requests "
                    f"(capacity {self.capacity}); retry shortly",
                    retry_after_s=0.5,
                )
            self.held += amount
        try:
            yield
        finally:
            with self._lock:
                self.held -= amount


@dataclass(frozen=True)
class MediaLimits:
    """The per-request limits of one model's media inputs, and its decode budgets."""

    max_inputs: int
    max_image_pixels: int  # per image, and over a request's images
    max_audio_seconds: float  # per clip
    max_input_bytes: int
    max_audio_samples: int = 1 << 62  # decoded samples x channels, over a request's clips
    pixels: DecodeBudget = field(default_factory=lambda: DecodeBudget(1 << 62, "pixels"))
    samples: DecodeBudget = field(default_factory=lambda: DecodeBudget(1 << 62, "samples"))

    @classmethod
    def of(cls, config: ModelConfig) -> MediaLimits:
        samples = config.max_audio_samples or int(config.max_audio_seconds * SAMPLES_PER_SECOND)
        return cls(
            config.max_inputs,
            config.max_image_pixels,
            config.max_audio_seconds,
            config.max_input_bytes,
            samples,
            DecodeBudget(DECODES_AT_ONCE * config.max_image_pixels, "pixels"),
            DecodeBudget(DECODES_AT_ONCE * samples, "audio samples"),
        )


@dataclass(frozen=True)
class PcmInput:
    """Raw little-endian float32 samples, interleaved when there are several channels."""

    samples: bytes
    sample_rate: int
    channels: int = 1


AudioInput = bytes | PcmInput
"""An encoded audio file (WAV, FLAC, OGG, ...) or raw PCM."""


def check_count(inputs: Sequence[object], limits: MediaLimits, field: str) -> None:
    if not inputs:
        raise InvalidArgument(field, "must hold at least one input")
    if len(inputs) > limits.max_inputs:
        raise InvalidArgument(
            field, f"has {len(inputs)} inputs; this model takes at most {limits.max_inputs}"
        )


def _check_bytes(data: bytes, limits: MediaLimits, field: str) -> None:
    if not data:
        raise InvalidArgument(field, "is empty")
    if len(data) > limits.max_input_bytes:
        raise InvalidArgument(
            field, f"has {len(data)} bytes; the limit is {limits.max_input_bytes} bytes"
        )


# ------------------------------------------------------------------------------ images


def decode_images(
    images: Sequence[bytes], limits: MediaLimits, field: str = "images"
) -> list[Image.Image]:
    """Upright RGB images (EXIF orientation applied; an animation's first frame)."""
    check_count(images, limits, field)
    return decode_named_images(
        [(f"{field}[{i}]", data) for i, data in enumerate(images)], limits, field
    )


def decode_named_images(
    named: Sequence[tuple[str, bytes]], limits: MediaLimits, field: str
) -> list[Image.Image]:
    """Images named by their fields, limited per image and together (as ``field``)."""
    opened = [_open_image(data, limits, name) for name, data in named]
    pixels = sum(image.width * image.height for image in opened)
    if pixels > limits.max_image_pixels:
        raise InvalidArgument(
            field,
            f"hold {pixels} pixels together; the limit is {limits.max_image_pixels} pixels "
            "per request",
        )
    with limits.pixels.hold(pixels):
        return [_load_image(image, name) for image, (name, _) in zip(opened, named, strict=True)]


def _open_image(data: bytes, limits: MediaLimits, field: str) -> Image.Image:
    """The image with only its header read; over the pixel limit is refused here."""
    from PIL import Image

    # Pillow warns of images over its own pixel budget; ours is checked right after.
    # (Set on each call: re-adding an existing filter only moves it to the front.)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    _check_bytes(data, limits, field)
    try:
        # Pillow's own decompression-bomb check may refuse here too, saying its limit.
        image = Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow raises many types on bad data; all mean "undecodable"
        raise InvalidArgument(field, f"is not a decodable image: {_reason(exc)}") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise InvalidArgument(
            field,
            f"is {width}x{height} pixels; the limit is {limits.max_image_pixels} pixels",
        )
    return image


def _load_image(image: Image.Image, field: str) -> Image.Image:
    from PIL import ImageOps

    try:
        image.load()  # decodes now, so a truncated file fails here and not in a batch
        return ImageOps.exif_transpose(image).convert("RGB")
    except Exception as exc:
        raise InvalidArgument(field, f"could not be decoded: {_reason(exc)}") from None


def image_features(processor: Any, image: Image.Image, field: str) -> BatchFeature:
    """One image through the model's processor, alone, as the pipelines run it.

    A decodable image can still be one the processor cannot take (DETR's resize fails
    on a 1x5000 strip); that is this input's fault, and must not sink its batch.
    """
    try:
        return processor(images=[image], return_tensors="pt")
    except Exception as exc:
        raise InvalidArgument(field, f"cannot be prepared for this model: {_reason(exc)}") from None


# ------------------------------------------------------------------------------- audio


def decode_clips(
    clips: Sequence[AudioInput], limits: MediaLimits, rate: int, field: str = "clips"
) -> list[np.ndarray]:
    check_count(clips, limits, field)
    samples = sum(_header_samples(clip, limits, f"{field}[{i}]") for i, clip in enumerate(clips))
    if samples > limits.max_audio_samples:
        raise InvalidArgument(
            field,
            f"decode to {samples} samples (x channels) together; the limit is "
            f"{limits.max_audio_samples} per request",
        )
    with limits.samples.hold(samples):
        return [_decode_audio(clip, limits, rate, f"{field}[{i}]") for i, clip in enumerate(clips)]


def _header_samples(clip: AudioInput, limits: MediaLimits, field: str) -> int:
    """Samples x channels the clip will decode to, from its header (or PCM length),
    refused past the per-clip limits before anything is decoded."""
    if isinstance(clip, PcmInput):
        # float32 values, at most max_input_bytes of them; checked whole when decoded.
        frames, channels = len(clip.samples) // max(4 * clip.channels, 4), clip.channels
    else:
        import soundfile as sf

        _check_bytes(clip, limits, field)
        _check_riff_length(clip, field)
        try:
            info = sf.info(io.BytesIO(clip))
        except Exception as exc:  # libsndfile's errors on what is not audio
            raise InvalidArgument(field, f"is not decodable audio: {_reason(exc)}") from None
        frames, channels = info.frames, info.channels
        _check_rate(info.samplerate, field)
        _check_duration(frames, info.samplerate, limits, field)
    if frames * channels > limits.max_audio_samples:
        raise InvalidArgument(
            field,
            f"decodes to {frames} samples x {channels} channels; the limit is "
            f"{limits.max_audio_samples} samples x channels",
        )
    return max(frames * channels, 0)


def _decode_audio(clip: AudioInput, limits: MediaLimits, rate: int, field: str) -> np.ndarray:
    """Mono float32 samples at ``rate``, from an encoded file or raw PCM."""
    if isinstance(clip, PcmInput):
        samples, source_rate = _pcm_samples(clip, limits, field)
    else:
        samples, source_rate = _decoded_samples(clip, limits, field)
    if samples.size == 0:
        raise InvalidArgument(field, "has no samples")
    if not np.isfinite(samples).all():
        raise InvalidArgument(field, "contains NaN or infinite samples")
    return resample(samples, source_rate, rate)


def _pcm_samples(clip: PcmInput, limits: MediaLimits, field: str) -> tuple[np.ndarray, int]:
    _check_rate(clip.sample_rate, f"{field}.pcm.sample_rate")
    if clip.channels < 1:
        raise InvalidArgument(f"{field}.pcm.channels", "must be at least 1")
    if len(clip.samples) > limits.max_input_bytes:
        raise InvalidArgument(
            f"{field}.pcm.samples",
            f"has {len(clip.samples)} bytes; the limit is {limits.max_input_bytes} bytes",
        )
    frame_bytes = 4 * clip.channels
    if len(clip.samples) % frame_bytes:
        raise InvalidArgument(
            f"{field}.pcm.samples",
            f"has {len(clip.samples)} bytes, not a whole number of {clip.channels}-channel "
            "float32 frames",
        )
    _check_duration(len(clip.samples) // frame_bytes, clip.sample_rate, limits, field)
    interleaved = np.frombuffer(clip.samples, dtype="<f4").reshape(-1, clip.channels)
    return interleaved.mean(axis=1, dtype=np.float32), clip.sample_rate


def _decoded_samples(data: bytes, limits: MediaLimits, field: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    _check_bytes(data, limits, field)
    _check_riff_length(data, field)
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            _check_rate(audio.samplerate, field)
            _check_duration(audio.frames, audio.samplerate, limits, field)
            frames = audio.read(dtype="float32", always_2d=True)
            promised, rate = audio.frames, audio.samplerate
    except InvalidArgument:
        raise
    except Exception as exc:  # libsndfile errors, and codec errors mid-stream
        raise InvalidArgument(field, f"is not decodable audio: {_reason(exc)}") from None
    # A header promising more than the stream holds means a cut-off file (MP3 frame
    # counts are estimates, hence the slack).
    if len(frames) < 0.99 * promised:
        raise InvalidArgument(
            field, f"is truncated: its header promises {promised} samples, {len(frames)} decode"
        )
    return frames.mean(axis=1, dtype=np.float32), rate


def _check_riff_length(data: bytes, field: str) -> None:
    """A WAV cut short: libsndfile quietly reads what is there, so check the RIFF size."""
    if data[:4] != b"RIFF" or len(data) < 8:
        return
    declared = int.from_bytes(data[4:8], "little")
    # 0 and 0xFFFFFFFF are what streaming writers put when they do not know the length.
    if declared not in (0, 0xFFFFFFFF) and declared + 8 > len(data):
        raise InvalidArgument(
            field, f"is truncated: its RIFF header declares {declared + 8} bytes, {len(data)} came"
        )


def _check_rate(rate: int, field: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidArgument(
            field,
            f"sample rate {rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz",
        )


def _check_duration(frames: int, rate: int, limits: MediaLimits, field: str) -> None:
    seconds = frames / rate
    if seconds > limits.max_audio_seconds:
        raise InvalidArgument(
            field,
            f"is {seconds:.2f} seconds long; the limit is {limits.max_audio_seconds:g} seconds",
        )


@dataclass(frozen=True)
class AudioChunk:
    """A clip, or one overlapping chunk of it with its stride in samples
    (``(length, left, right)``, as transformers' ASR pipeline carries it)."""

    samples: np.ndarray
    stride: tuple[int, int, int] | None  # None: the whole clip


def audio_chunks(
    samples: np.ndarray,
    chunk_length_s: float | None,
    rate: int,
    *,
    window_s: float,
    align: int = 1,
) -> list[AudioChunk]:
    """The ASR pipeline's ``chunk_iter``: chunks of ``chunk_length_s`` overlapping by a
    sixth of a chunk on each inner side, lengths aligned to ``align`` samples (the
    model's frames). With ``chunk_length_s`` unset, a clip up to ``window_s`` is one
    chunk and a longer one is cut into ``window_s`` chunks."""
    if chunk_length_s is None:
        if len(samples) <= window_s * rate:
            return [AudioChunk(samples, None)]
        chunk_length_s = window_s
    chunk_len = int(round(chunk_length_s * rate / align) * align)
    stride = int(round(chunk_length_s / 6 * rate / align) * align)
    chunks = []
    for start in range(0, len(samples), chunk_len - 2 * stride):
        chunk = samples[start : start + chunk_len]
        is_last = start + chunk_len >= len(samples)
        left, right = (0 if start == 0 else stride), (0 if is_last else stride)
        if len(chunk) > left:
            chunks.append(AudioChunk(chunk, (len(chunk), left, right)))
        if is_last:
            break
    return chunks


def min_samples(model_config: Any) -> int:
    """The shortest clip a convolutional feature encoder (wav2vec2, HuBERT, ...) takes:
    its receptive field. Shorter input fails inside the model's first convolution."""
    kernels = getattr(model_config, "conv_kernel", None)
    strides = getattr(model_config, "conv_stride", None)
    if not kernels or not strides:
        return 1
    receptive = 1
    for kernel, stride in zip(reversed(kernels), reversed(strides), strict=True):
        receptive = (receptive - 1) * stride + kernel
    return receptive


def check_min_length(
    clips: Sequence[np.ndarray], minimum: int, rate: int, field: str = "clips"
) -> None:
    for i, clip in enumerate(clips):
        if len(clip) < minimum:
            raise InvalidArgument(
                f"{field}[{i}]",
                f"is {len(clip) / rate * 1000:.1f} ms long; this model needs at least "
                f"{minimum / rate * 1000:.1f} ms",
            )


def resample(samples: np.ndarray, source: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliasing FIR, Kaiser window) by the reduced rate ratio."""
    if source == target:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(source, target)
    return resample_poly(samples, target // g, source // g).astype(np.float32)


def encode_audio(samples: np.ndarray, rate: int, fmt: AudioFormat) -> bytes:
    """Mono float32 samples as a WAV file (16-bit or float) or raw little-endian float32."""
    if fmt == "pcm_float32":
        return samples.astype("<f4").tobytes()
    import soundfile as sf

    buffer = io.BytesIO()
    if fmt == "wav_float32":
        sf.write(buffer, samples.astype(np.float32), rate, format="WAV", subtype="FLOAT")
    else:
        # libsndfile wraps out-of-range floats around when converting; clip first.
        pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
        sf.write(buffer, pcm, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- batching


def groups_by(keys: Sequence[object]) -> Iterator[list[int]]:
    """Indices of equal keys, in first-seen order.

    Inputs of different shapes cannot share a forward pass without padding, and for
    models that take no padding mask (DETR's backbone, group-norm wav2vec2) padding
    changes the result, so such batches run as one pass per shape.
    """
    groups: dict[object, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    yield from groups.values()


def stacked_groups(features: Sequence[BatchFeature]) -> Iterator[tuple[list[int], BatchFeature]]:
    """Per-input processor outputs (a batch of one each), stacked into one batch per shape.

    Processing each input alone, as the pipelines do, keeps its preprocessing (resizing,
    padding to its own size) independent of what it is batched with.
    """
    import torch
    from transformers import BatchFeature

    keys = [tuple((name, tuple(value.shape)) for name, value in f.items()) for f in features]
    for indices in groups_by(keys):
        names = features[indices[0]].keys()
        yield (
            indices,
            BatchFeature({n: torch.cat([features[i][n] for i in indices]) for n in names}),
        )


def audio_batches(
    extractor: Any, clips: Sequence[np.ndarray]
) -> Iterator[tuple[list[int], BatchFeature]]:
    """Clips as feature batches: padded together when the model takes an attention mask,
    else one batch per length (padding without a mask changes a group-norm wav2vec2)."""
    masked = bool(getattr(extractor, "return_attention_mask", False))
    for indices in groups_by([0 if masked else len(clip) for clip in clips]):
        yield (
            indices,
            extractor(
                [clips[i] for i in indices],
                sampling_rate=extractor.sampling_rate,
                padding=True,
                return_attention_mask=masked,
                return_tensors="pt",
            ),
        )


def _reason(exc: BaseException) -> str:
    """A decoder's complaint, short and without the reprs of our in-memory buffers."""
    text = str(getattr(exc, "error_string", None) or exc).strip()
    text = _BUFFER_REPR.sub("", text.splitlines()[0] if text else "")
    return text[:200] or type(exc).__name__
