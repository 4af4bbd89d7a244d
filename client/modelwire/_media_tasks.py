"""AsyncClient methods of the media tasks (images and audio in or out): each a request
builder, a result converter and a method.

Requests are built in a thread: reading files and encoding PIL images or numpy arrays
is blocking work that must not stall the caller's event loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Unpack

from modelwire import _media_inputs as inputs
from modelwire import _validation as check
from modelwire._media_types import (
    AudioClip,
    AudioFormat,
    BoundingBox,
    DetectedObject,
    Detections,
    ImageInput,
    Speech,
    TimedChunk,
    TimestampGranularity,
    Transcription,
)
from modelwire._mixin import TaskMethods
from modelwire._seq2seq_tasks import (
    GeneratedText,
    TextGenerationParams,
    generated_texts,
)
from modelwire._seq2seq_tasks import _parameters as generation_parameters
from modelwire._tasks import classifications
from modelwire._types import Classification, ResultList
from modelwire.v1 import inference_service_pb2 as pb

if TYPE_CHECKING:
    pass

_TIMESTAMPS: dict[str, pb.TimestampGranularity] = {
    "segment": pb.TIMESTAMP_GRANULARITY_SEGMENT,
    "word": pb.TIMESTAMP_GRANULARITY_WORD,
    "char": pb.TIMESTAMP_GRANULARITY_CHAR,
}
_FORMATS: dict[str, pb.AudioFormat] = {
    "wav_pcm16": pb.AUDIO_FORMAT_WAV_PCM16,
    "wav_float32": pb.AUDIO_FORMAT_WAV_FLOAT32,
    "pcm_float32": pb.AUDIO_FORMAT_PCM_FLOAT32,
}
_FORMAT_NAMES: dict[int, AudioFormat] = {v: k for k, v in _FORMATS.items()}  # type: ignore[misc]


# --- requests -----------------------------------------------------------------------


def classify_image_request(
    images: Any, *, model: str | None, top_k: int | None
) -> pb.ClassifyImageRequest:
    check.integer("top_k", top_k, minimum=1)
    request = pb.ClassifyImageRequest(
        model=check.optional_str("model", model), images=inputs.images("images", images)
    )
    if top_k is not None:
        request.top_k = top_k
    return request


def detect_objects_request(
    images: Any, *, model: str | None, threshold: float | None
) -> pb.DetectObjectsRequest:
    check.number("threshold", threshold, low=0.0, high=1.0)
    request = pb.DetectObjectsRequest(
        model=check.optional_str("model", model), images=inputs.images("images", images)
    )
    if threshold is not None:
        request.threshold = threshold
    return request


def caption_image_request(
    images: Any, *, model: str | None, prompt: str | None, params: TextGenerationParams
) -> pb.CaptionImageRequest:
    sampling, stopping = generation_parameters(params)
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a string or None, not {type(prompt).__name__}")
    request = pb.CaptionImageRequest(
        model=check.optional_str("model", model),
        images=inputs.images("images", images),
        sampling=sampling,
        stopping=stopping,
    )
    if prompt:
        request.prompt = prompt
    return request


def transcribe_audio_request(
    clips: Any,
    *,
    model: str | None,
    sample_rate: int | None,
    chunk_length_s: float | None,
    return_timestamps: TimestampGranularity | bool | None,
    language: str | None,
) -> pb.TranscribeAudioRequest:
    check.number("chunk_length_s", chunk_length_s, low=0.0, low_open=True)
    if return_timestamps is True:
        return_timestamps = "segment"  # the pipeline's return_timestamps=True
    if return_timestamps is not False:
        check.choice("return_timestamps", return_timestamps, _TIMESTAMPS)
    request = pb.TranscribeAudioRequest(
        model=check.optional_str("model", model), clips=inputs.clips("clips", clips, sample_rate)
    )
    if chunk_length_s is not None:
        request.chunk_length_s = chunk_length_s
    if return_timestamps:
        request.return_timestamps = _TIMESTAMPS[return_timestamps]
    if language is not None:
        request.language = check.optional_str("language", language)
    return request


def classify_audio_request(
    clips: Any, *, model: str | None, sample_rate: int | None, top_k: int | None
) -> pb.ClassifyAudioRequest:
    check.integer("top_k", top_k, minimum=1)
    request = pb.ClassifyAudioRequest(
        model=check.optional_str("model", model), clips=inputs.clips("clips", clips, sample_rate)
    )
    if top_k is not None:
        request.top_k = top_k
    return request


def synthesize_speech_request(
    text: str, *, model: str | None, voice: Any, seed: int | None, format: AudioFormat | None
) -> pb.SynthesizeSpeechRequest:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("`text` must be a non-empty string")
    check.integer("seed", seed, minimum=0, maximum=check.UINT64_MAX)
    check.choice("format", format, _FORMATS)
    request = pb.SynthesizeSpeechRequest(model=check.optional_str("model", model), text=text)
    voice_value = inputs.voice(voice)
    if voice_value is not None:
        request.voice = voice_value
    if seed is not None:
        request.seed = seed
    if format is not None:
        request.format = _FORMATS[format]
    return request


# --- results ------------------------------------------------------------------------


def detections(response: pb.DetectObjectsResponse) -> list[Detections]:
    return [
        Detections(
            [
                DetectedObject(
                    o.label, o.score, BoundingBox(o.box.xmin, o.box.ymin, o.box.xmax, o.box.ymax)
                )
                for o in r.objects
            ]
        )
        for r in response.results
    ]


def transcriptions(response: pb.TranscribeAudioResponse) -> list[Transcription]:
    return [
        Transcription(
            r.text,
            [
                TimedChunk(c.text, c.start_s, c.end_s if c.HasField("end_s") else None)
                for c in r.chunks
            ],
        )
        for r in response.results
    ]


def speech(response: pb.SynthesizeSpeechResponse, request_id: str | None) -> Speech:
    return Speech(
        audio=response.audio,
        sample_rate=response.sample_rate,
        # The server always says which format it used; UNSPECIFIED means its default.
        format=_FORMAT_NAMES.get(response.format, "wav_pcm16"),
        num_samples=response.num_samples,
        request_id=request_id,
    )


# --- methods ------------------------------------------------------------------------


class MediaTaskMethods(TaskMethods):
    """Mixed into AsyncClient."""

    async def classify_image(
        self,
        images: ImageInput,
        *,
        top_k: int | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[Classification]:
        """Classify images (image-classification); one result per image.

        An image is encoded bytes (PNG, JPEG, WebP, GIF, ...), a path, a PIL image or a
        uint8 numpy array; a list of them is a batch. ``top_k`` labels each (default 1).
        """
        request = await asyncio.to_thread(classify_image_request, images, model=model, top_k=top_k)
        response, rid = await self._unary(
            lambda s: s.inference.ClassifyImage, request, timeout, request_id
        )
        return ResultList(classifications(response.results), request_id=rid)

    async def caption_image(
        self,
        images: ImageInput,
        *,
        prompt: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **params: Unpack[TextGenerationParams],
    ) -> ResultList[GeneratedText]:
        """Caption images (image-to-text); one ``GeneratedText`` per image, in order.

        Images are as in ``classify_image``. ``prompt`` is text the caption starts from
        (conditional captioning): BLIP continues it, and a vision-encoder-decoder takes
        it as the start of its output; the returned text includes it, while
        ``generated_tokens`` counts only the tokens after it. ``params`` are
        ``generate``'s sampling and stopping keywords (``num_beams=3``,
        ``max_new_tokens=30``, ``temperature=0.7, seed=1``, ...), checked here before
        anything is sent; the images decode together on the server, with other calls'.
        """
        request = await asyncio.to_thread(
            caption_image_request, images, model=model, prompt=prompt, params=params
        )
        response, rid = await self._unary(
            lambda s: s.inference.CaptionImage, request, timeout, request_id
        )
        return ResultList(generated_texts(response.results), request_id=rid)

    async def detect_objects(
        self,
        images: ImageInput,
        *,
        threshold: float | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[Detections]:
        """Detect objects (object-detection); one ``Detections`` per image, best first.

        Boxes are in the original image's pixels (after its EXIF orientation). Only
        detections scoring above ``threshold`` (default 0.5) are returned.
        """
        request = await asyncio.to_thread(
            detect_objects_request, images, model=model, threshold=threshold
        )
        response, rid = await self._unary(
            lambda s: s.inference.DetectObjects, request, timeout, request_id
        )
        return ResultList(detections(response), request_id=rid)

    async def transcribe_audio(
        self,
        clips: AudioClip,
        *,
        sample_rate: int | None = None,
        chunk_length_s: float | None = None,
        return_timestamps: TimestampGranularity | bool | None = None,
        language: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[Transcription]:
        """Transcribe clips (automatic-speech-recognition); one result per clip.

        A clip is encoded bytes (WAV, FLAC, OGG, ...), a path, a ``RawAudio``, or a
        numpy array of samples with ``sample_rate``; the server resamples. Clips longer
        than ``chunk_length_s`` (default: the model's window) are transcribed in
        overlapping chunks. ``return_timestamps`` ("char", "word", "segment" or True)
        adds timed chunks.
        """
        request = await asyncio.to_thread(
            transcribe_audio_request,
            clips,
            model=model,
            sample_rate=sample_rate,
            chunk_length_s=chunk_length_s,
            return_timestamps=return_timestamps,
            language=language,
        )
        response, rid = await self._unary(
            lambda s: s.inference.TranscribeAudio, request, timeout, request_id
        )
        return ResultList(transcriptions(response), request_id=rid)

    async def classify_audio(
        self,
        clips: AudioClip,
        *,
        sample_rate: int | None = None,
        top_k: int | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> ResultList[Classification]:
        """Classify clips (audio-classification); one result per clip, ``top_k`` labels
        each (default 1). Clips are given as for ``transcribe_audio``."""
        request = await asyncio.to_thread(
            classify_audio_request, clips, model=model, sample_rate=sample_rate, top_k=top_k
        )
        response, rid = await self._unary(
            lambda s: s.inference.ClassifyAudio, request, timeout, request_id
        )
        return ResultList(classifications(response.results), request_id=rid)

    async def synthesize_speech(
        self,
        text: str,
        *,
        voice: Any = None,
        seed: int | None = None,
        format: AudioFormat | None = None,
        model: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Speech:
        """Speak ``text`` (text-to-speech).

        ``voice`` is a speaker id of a multi-speaker model, or a speaker embedding
        (floats or a numpy array) for SpeechT5-style models; unset is the model's
        default voice. ``seed`` makes models that draw noise (VITS, SpeechT5)
        reproducible. ``format``: "wav_pcm16" (default), "wav_float32" or "pcm_float32".
        """
        request = synthesize_speech_request(
            text, model=model, voice=voice, seed=seed, format=format
        )
        response, rid = await self._unary(
            lambda s: s.inference.SynthesizeSpeech, request, timeout, request_id
        )
        return speech(response, rid)
