"""Caller inputs to protobuf: images and clips from bytes, paths, PIL images, numpy arrays.

The SDK never imports numpy or PIL itself: an object can only be a numpy array or a
PIL image if its library is already loaded, so ``sys.modules`` tells which it is, and
callers who pass bytes never load either. Numpy images are written as PNG with zlib.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelwire import _validation as check
from modelwire._media_types import RawAudio
from modelwire.v1 import common_pb2

# A SynthesizeSpeech voice given as a speaker embedding: base64 float32 after this.
EMBEDDING_PREFIX = "embedding:"

_SINGLE = (bytes, bytearray, memoryview, str, os.PathLike)


def _is_array(value: object) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def _is_pil_image(value: object) -> bool:
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)


def _many(name: str, value: Any, single: bool) -> list[Any]:
    """A lone input is a batch of one; a list or tuple is a batch."""
    if single:
        return [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"`{name}` must be one input or a list of inputs")
    if not value:
        raise ValueError(f"`{name}` must not be empty")
    return list(value)


def _read(name: str, value: Any) -> bytes:
    """The bytes of ``bytes``-likes and of files named by paths."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        try:
            data = Path(value).read_bytes()
        except OSError as exc:
            raise ValueError(f"`{name}`: cannot read {value!s}: {exc.strerror}") from None
    if not data:
        raise ValueError(f"`{name}` is empty")
    return data


# ------------------------------------------------------------------------------ images


def images(name: str, value: Any) -> list[common_pb2.Image]:
    single = isinstance(value, _SINGLE) or _is_array(value) or _is_pil_image(value)
    return [image(f"{name}[{i}]", v) for i, v in enumerate(_many(name, value, single))]


def image(name: str, value: Any) -> common_pb2.Image:
    if isinstance(value, _SINGLE):
        return common_pb2.Image(data=_read(name, value))
    if _is_pil_image(value):
        return common_pb2.Image(data=_pil_png(value))
    if _is_array(value):
        return common_pb2.Image(data=_array_png(name, value))
    raise ValueError(
        f"`{name}` must be bytes, a path, a PIL image or a numpy array, got {type(value).__name__}"
    )


def _pil_png(picture: Any) -> bytes:
    from PIL import ImageOps  # loaded already: the caller passed a PIL image

    # PNG keeps no EXIF orientation here, so turn the image upright first, as
    # transformers' load_image would.
    upright = ImageOps.exif_transpose(picture)
    if upright.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
        upright = upright.convert("RGB")
    buffer = io.BytesIO()
    upright.save(buffer, format="PNG")
    return buffer.getvalue()


_PNG_COLOR = {1: 0, 2: 4, 3: 2, 4: 6}  # channels → PNG colour type (grey, grey+alpha, RGB, RGBA)


def _array_png(name: str, array: Any) -> bytes:
    """A uint8 (H, W) or (H, W, C) array as an 8-bit PNG, no PIL needed."""
    numpy = sys.modules["numpy"]
    shape = array.shape
    channels = 1 if array.ndim == 2 else shape[-1]
    if array.dtype != numpy.uint8 or array.ndim not in (2, 3) or channels not in _PNG_COLOR:
        raise ValueError(
            f"`{name}` must be a uint8 array shaped (H, W) or (H, W, C) with C in 1..4, "
            f"got {array.dtype} {shape}"
        )
    height, width = shape[0], shape[1]
    if not height or not width:
        raise ValueError(f"`{name}` has no pixels")
    rows = numpy.ascontiguousarray(array).reshape(height, -1)
    # Each scanline starts with its filter type: 0, none.
    raw = numpy.concatenate([numpy.zeros((height, 1), numpy.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOR[channels], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


# ------------------------------------------------------------------------------- audio


def clips(name: str, value: Any, sample_rate: int | None) -> list[common_pb2.Audio]:
    check.integer("sample_rate", sample_rate, minimum=1)
    single = isinstance(value, (*_SINGLE, RawAudio)) or _is_array(value)
    return [clip(f"{name}[{i}]", v, sample_rate) for i, v in enumerate(_many(name, value, single))]


def clip(name: str, value: Any, sample_rate: int | None) -> common_pb2.Audio:
    if isinstance(value, _SINGLE):
        return common_pb2.Audio(encoded=_read(name, value))
    if isinstance(value, RawAudio):
        return common_pb2.Audio(pcm=_pcm(name, value.samples, value.sample_rate, value.channels))
    if _is_array(value):
        if sample_rate is None:
            raise ValueError(f"`{name}` is a numpy array: pass its `sample_rate` too")
        return common_pb2.Audio(pcm=_pcm(name, value, sample_rate, None))
    if isinstance(value, int | float):
        raise ValueError(f"`{name}` is a number: wrap raw samples in RawAudio(samples, rate)")
    raise ValueError(
        f"`{name}` must be bytes, a path, a RawAudio or a numpy array, got {type(value).__name__}"
    )


def _pcm(name: str, samples: Any, rate: int, channels: int | None) -> common_pb2.PcmAudio:
    check.integer(f"{name}.sample_rate", rate, minimum=1)
    check.integer(f"{name}.channels", channels, minimum=1)
    if _is_array(samples):
        data, found = _array_pcm(name, samples)
        if channels not in (None, 1, found):
            raise ValueError(f"`{name}` has {found} channel columns but channels={channels}")
        channels = found
    elif isinstance(samples, bytes | bytearray | memoryview):
        data = bytes(samples)
    elif isinstance(samples, Sequence) and not isinstance(samples, str):
        data = struct.pack(f"<{len(samples)}f", *samples)
    else:
        raise ValueError(f"`{name}` samples must be a numpy array, floats or float32 bytes")
    message = common_pb2.PcmAudio(samples=data, sample_rate=rate)
    if channels is not None and channels != 1:
        message.channels = channels
    return message


def _array_pcm(name: str, samples: Any) -> tuple[bytes, int]:
    """(samples,) or (samples, channels) as interleaved little-endian float32."""
    if samples.ndim not in (1, 2):
        raise ValueError(f"`{name}` must be shaped (samples,) or (samples, channels)")
    channels = 1 if samples.ndim == 1 else int(samples.shape[1])
    return samples.astype("<f4", copy=False).tobytes(order="C"), channels


def voice(value: Any) -> str | None:
    """A voice name or id as it is; a speaker embedding (floats) encoded inline."""
    if value is None or isinstance(value, str):
        return value
    if _is_array(value):
        data = value.astype("<f4").reshape(-1).tobytes()
    elif isinstance(value, Sequence) and all(isinstance(v, int | float) for v in value):
        data = struct.pack(f"<{len(value)}f", *value)
    else:
        raise ValueError("`voice` must be a string or a speaker embedding (floats)")
    if not data:
        raise ValueError("`voice` embedding must not be empty")
    return EMBEDDING_PREFIX + base64.b64encode(data).decode("ascii")
