"""The media RPCs (images and audio in or out): protobuf ⇄ plain values, no model code.

Task modules are imported for their types only: the registry imports a runner's module
when a model of its task loads, so a server without the audio libraries still serves
images. Bytes are decoded by the runners, off the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import grpc

from modelwire.v1 import common_pb2
from modelwire.v1 import inference_service_pb2 as pb
from modelwire_server.errors import InvalidArgument
from modelwire_server.interceptors import current_request_id
from modelwire_server.media import AudioInput, PcmInput
from modelwire_server.servicers.common import (
    RpcGroup,
    classification,
    deadline_of,
    enum_value,
    optional,
)
from modelwire_server.servicers.generation import (
    generated_text_pb,
    sampling_params,
    stopping_params,
)

if TYPE_CHECKING:
    from modelwire_server.tasks.audio_classification import AudioClassificationTask
    from modelwire_server.tasks.image_classification import ImageClassificationTask
    from modelwire_server.tasks.image_to_text import ImageToTextTask
    from modelwire_server.tasks.object_detection import Detection, ObjectDetectionTask
    from modelwire_server.tasks.speech_recognition import SpeechRecognitionTask, Transcript
    from modelwire_server.tasks.text_to_speech import TextToSpeechTask

_TIMESTAMPS = {
    pb.TIMESTAMP_GRANULARITY_UNSPECIFIED: None,
    pb.TIMESTAMP_GRANULARITY_SEGMENT: "segment",
    pb.TIMESTAMP_GRANULARITY_WORD: "word",
    pb.TIMESTAMP_GRANULARITY_CHAR: "char",
}
_FORMATS = {
    pb.AUDIO_FORMAT_UNSPECIFIED: "wav_pcm16",
    pb.AUDIO_FORMAT_WAV_PCM16: "wav_pcm16",
    pb.AUDIO_FORMAT_WAV_FLOAT32: "wav_float32",
    pb.AUDIO_FORMAT_PCM_FLOAT32: "pcm_float32",
}
_FORMAT_PB = {name: value for value, name in _FORMATS.items() if value}
DEFAULT_THRESHOLD = 0.5


class MediaTaskRpcs(RpcGroup):
    """ClassifyImage, DetectObjects, CaptionImage, TranscribeAudio, ClassifyAudio,
    SynthesizeSpeech. CaptionImage is generation: sampling and stopping read as
    Generate's do, and each image becomes one engine request."""

    def _runner(self, rpc: str, model: str) -> Any:
        # RpcGroup.runner wants the runner class itself, which would import the task.
        return self.registry.runner_for(rpc, model)

    async def ClassifyImage(
        self, request: pb.ClassifyImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyImageResponse:
        runner = cast("ImageClassificationTask", self._runner("ClassifyImage", request.model))
        top_k = optional(request, "top_k")
        results = await runner.classify(
            [image.data for image in request.images],
            1 if top_k is None else top_k,
            deadline=deadline_of(context),
        )
        return pb.ClassifyImageResponse(results=[classification(r) for r in results])

    async def DetectObjects(
        self, request: pb.DetectObjectsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetectObjectsResponse:
        runner = cast("ObjectDetectionTask", self._runner("DetectObjects", request.model))
        threshold = optional(request, "threshold")
        results = await runner.detect(
            [image.data for image in request.images],
            DEFAULT_THRESHOLD if threshold is None else threshold,
            deadline=deadline_of(context),
        )
        return pb.DetectObjectsResponse(results=[_detections(r) for r in results])

    async def CaptionImage(
        self, request: pb.CaptionImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CaptionImageResponse:
        runner = cast("ImageToTextTask", self._runner("CaptionImage", request.model))
        results = await runner.caption(
            [image.data for image in request.images],
            optional(request, "prompt"),
            sampling_params(request.sampling),
            stopping_params(request.stopping),
            request_id=current_request_id.get(),
            deadline=deadline_of(context),
        )
        return pb.CaptionImageResponse(results=[generated_text_pb(r) for r in results])

    async def TranscribeAudio(
        self, request: pb.TranscribeAudioRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranscribeAudioResponse:
        runner = cast("SpeechRecognitionTask", self._runner("TranscribeAudio", request.model))
        if request.return_timestamps not in _TIMESTAMPS:
            raise InvalidArgument("return_timestamps", f"unknown value {request.return_timestamps}")
        timestamps = _TIMESTAMPS[request.return_timestamps]
        results = await runner.transcribe(
            _clips(request.clips),
            optional(request, "chunk_length_s"),
            timestamps,  # type: ignore[arg-type]
            optional(request, "language"),
            deadline=deadline_of(context),
        )
        return pb.TranscribeAudioResponse(results=[_transcription(r) for r in results])

    async def ClassifyAudio(
        self, request: pb.ClassifyAudioRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyAudioResponse:
        runner = cast("AudioClassificationTask", self._runner("ClassifyAudio", request.model))
        top_k = optional(request, "top_k")
        results = await runner.classify(
            _clips(request.clips), 1 if top_k is None else top_k, deadline=deadline_of(context)
        )
        return pb.ClassifyAudioResponse(results=[classification(r) for r in results])

    async def SynthesizeSpeech(
        self, request: pb.SynthesizeSpeechRequest, context: grpc.aio.ServicerContext
    ) -> pb.SynthesizeSpeechResponse:
        runner = cast("TextToSpeechTask", self._runner("SynthesizeSpeech", request.model))
        fmt = enum_value(_FORMATS, request.format, "format")
        speech = await runner.synthesize(
            request.text,
            optional(request, "voice"),
            optional(request, "seed"),
            fmt,  # type: ignore[arg-type]
            deadline=deadline_of(context),
        )
        return pb.SynthesizeSpeechResponse(
            audio=speech.audio,
            sample_rate=speech.sample_rate,
            format=_FORMAT_PB[fmt],
            num_samples=speech.num_samples,
        )


def _clips(clips: Any) -> list[AudioInput]:
    return [_clip(clip, f"clips[{i}]") for i, clip in enumerate(clips)]


def _clip(clip: common_pb2.Audio, field: str) -> AudioInput:
    which = clip.WhichOneof("source")
    if which == "encoded":
        return clip.encoded
    if which == "pcm":
        channels = optional(clip.pcm, "channels")
        return PcmInput(clip.pcm.samples, clip.pcm.sample_rate, 1 if channels is None else channels)
    raise InvalidArgument(field, "set either encoded or pcm")


def _detections(found: list[Detection]) -> pb.Detections:
    return pb.Detections(
        objects=[
            pb.DetectedObject(
                label=d.label,
                score=d.score,
                box=pb.BoundingBox(xmin=d.box[0], ymin=d.box[1], xmax=d.box[2], ymax=d.box[3]),
            )
            for d in found
        ]
    )


def _transcription(result: Transcript) -> pb.Transcription:
    return pb.Transcription(
        text=result.text,
        chunks=[
            pb.TimedChunk(text=c.text, start_s=c.start_s, end_s=c.end_s) for c in result.chunks
        ],
    )
