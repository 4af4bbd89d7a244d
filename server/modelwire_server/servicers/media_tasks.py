"""The media RPCs (images and audio in or out); see the vision/audio issue."""

from __future__ import annotations

from modelwire_server.servicers.common import RpcGroup


class MediaTaskRpcs(RpcGroup):
    """ClassifyImage, DetectObjects, CaptionImage, TranscribeAudio, ClassifyAudio,
    SynthesizeSpeech: added here as their task modules land."""
