"""The media task methods: what goes on the wire for each kind of input, what comes back,
and which mistakes are caught before sending."""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from modelwire import (
    AsyncClient,
    BoundingBox,
    Classification,
    DetectedObject,
    Detections,
    FinishReason,
    GeneratedText,
    LabelScore,
    RawAudio,
    Speech,
    TimedChunk,
    Transcription,
)
from modelwire.v1 import common_pb2, inference_service_pb2_grpc
from modelwire.v1 import inference_service_pb2 as pb
from tests.sdk.fakes import FakeInference, Recorder

MEDIA_RPCS = ("ClassifyImage", "DetectObjects", "CaptionImage", "TranscribeAudio",
              "ClassifyAudio", "SynthesizeSpeech")  # fmt: skip


class MediaFakes(FakeInference):
    """The SDK tests' fake, answering the media RPCs too."""


for _rpc in MEDIA_RPCS:

    async def _answer(self: MediaFakes, request: Any, context: Any, _rpc: str = _rpc) -> Any:
        return await self._unary(_rpc, request, context)

    setattr(MediaFakes, _rpc, _answer)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[MediaFakes, str]]:
    inference = MediaFakes(Recorder())
    server = grpc.aio.server()
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(inference, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield inference, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def client(fake: tuple[MediaFakes, str]) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(fake[1], timeout=10) as c:
        yield c


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# ------------------------------------------------------------------------------ images


async def test_images_go_out_as_encoded_bytes(client, fake, tmp_path: Path) -> None:
    inference, _ = fake
    inference.responses["ClassifyImage"] = pb.ClassifyImageResponse()
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    grey, rgba = rgb[..., 0], np.dstack([rgb, rgb[..., :1]])
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG")
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg.getvalue())

    await client.classify_image(jpeg.getvalue())
    await client.classify_image([path, str(path), Image.fromarray(rgb), rgb, grey, rgba], top_k=2)

    bare, many = inference.recorder.requests("ClassifyImage")
    assert [i.data for i in bare.images] == [jpeg.getvalue()]
    assert not bare.HasField("top_k") and bare.model == ""
    assert many.top_k == 2
    assert many.images[0].data == many.images[1].data == jpeg.getvalue()
    for image, pixels in zip(many.images[2:], [rgb, rgb, grey, rgba], strict=True):
        np.testing.assert_array_equal(png_pixels(image.data), pixels)  # lossless PNG


async def test_pil_images_are_sent_upright(client, fake) -> None:
    inference, _ = fake
    inference.responses["ClassifyImage"] = pb.ClassifyImageResponse()
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif)
    await client.classify_image(Image.open(io.BytesIO(buffer.getvalue())))
    (request,) = inference.recorder.requests("ClassifyImage")
    assert png_pixels(request.images[0].data).shape == (3, 2, 3)


async def test_image_results_are_typed(client, fake) -> None:
    inference, _ = fake
    inference.responses["ClassifyImage"] = pb.ClassifyImageResponse(
        results=[common_pb2.Classification(labels=[common_pb2.LabelScore(label="cat", score=0.5)])]
    )
    box = pb.BoundingBox(xmin=1, ymin=2, xmax=3.5, ymax=4)
    inference.responses["DetectObjects"] = pb.DetectObjectsResponse(
        results=[
            pb.Detections(objects=[pb.DetectedObject(label="dog", score=0.75, box=box)]),
            pb.Detections(),
        ]
    )
    classified = await client.classify_image(b"img")
    found = await client.detect_objects([b"a", b"b"], threshold=0.25, model="detr")
    assert classified == [Classification([LabelScore("cat", 0.5)])]
    assert found == [
        Detections([DetectedObject("dog", 0.75, BoundingBox(1.0, 2.0, 3.5, 4.0))]),
        Detections([]),
    ]
    assert found.request_id
    (request,) = inference.recorder.requests("DetectObjects")
    assert request.threshold == 0.25 and request.model == "detr"


async def test_caption_image_request_and_results(client, fake, tmp_path: Path) -> None:
    inference, _ = fake
    inference.responses["CaptionImage"] = pb.CaptionImageResponse(
        results=[
            common_pb2.GeneratedText(
                text="a cat on a mat",
                finish_reason=common_pb2.FINISH_REASON_EOS,
                generated_tokens=5,
            ),
            common_pb2.GeneratedText(
                text="a dog", finish_reason=common_pb2.FINISH_REASON_LENGTH, generated_tokens=2
            ),
        ]
    )
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    bare = await client.caption_image(b"img")
    captions = await client.caption_image(
        [path, Image.fromarray(rgb)],
        model="blip",
        prompt="a picture of",
        num_beams=3,
        max_new_tokens=30,
        stop=["."],
        repetition_penalty=1.2,
        timeout=5,
    )
    sampled = await client.caption_image(rgb, temperature=0.7, seed=3, prompt="")
    assert captions == [
        GeneratedText("a cat on a mat", FinishReason.EOS, 5),
        GeneratedText("a dog", FinishReason.LENGTH, 2),
    ]
    assert captions.request_id and bare == sampled == captions
    first, second, third = inference.recorder.requests("CaptionImage")
    assert [i.data for i in first.images] == [b"img"] and first.model == ""
    assert not first.HasField("prompt")
    assert not first.sampling.HasField("temperature") and not first.stopping.HasField(
        "max_new_tokens"
    )
    assert second.model == "blip" and second.prompt == "a picture of"
    assert second.images[0].data == path.read_bytes()
    np.testing.assert_array_equal(png_pixels(second.images[1].data), rgb)
    assert second.sampling.num_beams == 3 and second.stopping.max_new_tokens == 30
    assert list(second.stopping.stop) == ["."]
    assert second.sampling.repetition_penalty == pytest.approx(1.2)
    assert third.sampling.temperature == pytest.approx(0.7) and third.sampling.seed == 3
    assert not third.HasField("prompt")  # an empty prompt is no prompt


# ------------------------------------------------------------------------------- audio


async def test_clips_go_out_as_encoded_bytes_or_pcm(client, fake, tmp_path: Path) -> None:
    inference, _ = fake
    inference.responses["TranscribeAudio"] = pb.TranscribeAudioResponse()
    mono = np.linspace(-1, 1, 8, dtype=np.float64)
    stereo = np.stack([mono, -mono], axis=1)
    path = tmp_path / "clip.wav"
    path.write_bytes(b"RIFF....WAVE")

    await client.transcribe_audio(mono, sample_rate=8_000)
    await client.transcribe_audio(
        [b"OggS", path, RawAudio([0.5, -0.25], 22_050), RawAudio(stereo, 44_100), stereo],
        sample_rate=16_000,
    )

    first, second = inference.recorder.requests("TranscribeAudio")
    (clip,) = first.clips
    assert clip.pcm.samples == mono.astype("<f4").tobytes() and clip.pcm.sample_rate == 8_000
    assert not clip.pcm.HasField("channels")
    encoded, from_path, floats, interleaved, bare = second.clips
    assert encoded.encoded == b"OggS" and from_path.encoded == b"RIFF....WAVE"
    assert floats.pcm.samples == struct.pack("<2f", 0.5, -0.25)
    assert floats.pcm.sample_rate == 22_050
    for message, rate in ((interleaved, 44_100), (bare, 16_000)):
        assert message.pcm.channels == 2 and message.pcm.sample_rate == rate
        assert message.pcm.samples == stereo.astype("<f4").tobytes()  # frame by frame


async def test_transcription_options_and_results(client, fake) -> None:
    inference, _ = fake
    chunk = pb.TimedChunk(text="HI", start_s=0.5)  # end_s unset: not closed
    inference.responses["TranscribeAudio"] = pb.TranscribeAudioResponse(
        results=[pb.Transcription(text="HI THERE", chunks=[chunk])]
    )
    results = await client.transcribe_audio(
        b"wav", chunk_length_s=10, return_timestamps=True, language="en"
    )
    await client.transcribe_audio(b"wav", return_timestamps="char")
    await client.transcribe_audio(b"wav")
    assert results == [Transcription("HI THERE", [TimedChunk("HI", 0.5, None)])]
    full, char, bare = inference.recorder.requests("TranscribeAudio")
    assert full.chunk_length_s == 10 and full.language == "en"
    assert full.return_timestamps == pb.TIMESTAMP_GRANULARITY_SEGMENT
    assert char.return_timestamps == pb.TIMESTAMP_GRANULARITY_CHAR
    assert not bare.HasField("chunk_length_s") and not bare.HasField("language")
    assert bare.return_timestamps == pb.TIMESTAMP_GRANULARITY_UNSPECIFIED


async def test_classify_audio_request_and_results(client, fake) -> None:
    inference, _ = fake
    inference.responses["ClassifyAudio"] = pb.ClassifyAudioResponse(
        results=[common_pb2.Classification(labels=[common_pb2.LabelScore(label="music", score=1)])]
    )
    results = await client.classify_audio(RawAudio(b"\x00" * 8, 16_000), top_k=3)
    assert results == [Classification([LabelScore("music", 1.0)])]
    (request,) = inference.recorder.requests("ClassifyAudio")
    assert request.top_k == 3 and request.clips[0].pcm.samples == b"\x00" * 8


# ---------------------------------------------------------------------------- speech


async def test_synthesize_speech_request_and_result(client, fake) -> None:
    inference, _ = fake
    inference.responses["SynthesizeSpeech"] = pb.SynthesizeSpeechResponse(
        audio=b"RIFF", sample_rate=16_000, format=pb.AUDIO_FORMAT_WAV_FLOAT32, num_samples=8_000
    )
    embedding = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    speech = await client.synthesize_speech(
        "hello", voice=embedding, seed=2**64 - 1, format="wav_float32", model="t5"
    )
    await client.synthesize_speech("hello", voice="3")
    await client.synthesize_speech("hello", voice=[0.5, -1.0, 2.0])
    assert speech == Speech(b"RIFF", 16_000, "wav_float32", 8_000)
    assert speech.duration_s == 0.5 and speech.request_id
    full, named, listed = inference.recorder.requests("SynthesizeSpeech")
    assert full.seed == 2**64 - 1 and full.format == pb.AUDIO_FORMAT_WAV_FLOAT32
    assert full.voice.startswith("embedding:")
    assert base64.b64decode(full.voice.removeprefix("embedding:")) == embedding.tobytes()
    assert full.voice == listed.voice
    assert named.voice == "3" and not named.HasField("seed")
    assert named.format == pb.AUDIO_FORMAT_UNSPECIFIED


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.classify_image([]), "`images` must not be empty"),
        (lambda c: c.classify_image(42), "`images` must be one input or a list"),
        (lambda c: c.classify_image([b"ok", b""]), "`images[1]` is empty"),
        (lambda c: c.classify_image("/no/such/file.png"), "`images[0]`: cannot read"),
        (lambda c: c.classify_image(np.zeros((2, 2), np.float32)), "uint8"),
        (lambda c: c.classify_image(b"x", top_k=0), "`top_k`"),
        (lambda c: c.detect_objects(b"x", threshold=1.5), "`threshold`"),
        (lambda c: c.caption_image([]), "`images` must not be empty"),
        (lambda c: c.caption_image(b"x", temperature=-1), "`temperature`"),
        (lambda c: c.caption_image(b"x", n=2), "`n` must be 1"),
        (lambda c: c.caption_image(b"x", max_new_tokens=0), "`max_new_tokens`"),
        (lambda c: c.transcribe_audio(np.zeros(4)), "pass its `sample_rate`"),
        (lambda c: c.transcribe_audio([0.1, 0.2]), "wrap raw samples in RawAudio"),
        (lambda c: c.transcribe_audio(b"x", chunk_length_s=0), "`chunk_length_s`"),
        (lambda c: c.transcribe_audio(b"x", return_timestamps="line"), "`return_timestamps`"),
        (lambda c: c.classify_audio(RawAudio(b"", 0)), "sample_rate"),
        (lambda c: c.classify_audio(RawAudio(np.zeros((2, 2, 2)), 8_000)), "(samples,)"),
        (lambda c: c.synthesize_speech(""), "`text`"),
        (lambda c: c.synthesize_speech("hi", format="mp3"), "`format`"),
        (lambda c: c.synthesize_speech("hi", voice=[]), "`voice`"),
    ],
)
async def test_mistakes_are_caught_before_sending(client, fake, call: Any, message: str) -> None:
    inference, _ = fake
    with pytest.raises(ValueError) as caught:
        await call(client)
    assert message in str(caught.value)
    assert inference.recorder.calls == []


async def test_caption_image_refuses_unknown_keywords_and_non_text_prompts(client, fake) -> None:
    inference, _ = fake
    with pytest.raises(TypeError, match="bogus"):
        await client.caption_image(b"x", bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="`prompt`"):
        await client.caption_image(b"x", prompt=3)  # type: ignore[arg-type]
    assert inference.recorder.calls == []


def test_sending_bytes_loads_neither_numpy_nor_pil() -> None:
    code = (
        "import sys\n"
        "from modelwire import RawAudio\n"
        "from modelwire._media_tasks import classify_image_request, transcribe_audio_request\n"
        "classify_image_request([b'png', 'README.md'], model=None, top_k=None)\n"
        "transcribe_audio_request([b'wav', RawAudio([0.5], 8000)], model=None,\n"
        "    sample_rate=None, chunk_length_s=None, return_timestamps=None, language=None)\n"
        "loaded = [m for m in ('numpy', 'PIL', 'PIL.Image') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=root)
