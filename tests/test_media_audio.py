"""TranscribeAudio (CTC) and ClassifyAudio through the SDK against a real server, with
transformers' pipelines as the reference on the same samples.

The ASR pipeline needs torchaudio to resample, so references get 16 kHz audio; where
the server resamples, the reference is the pipeline on scipy's ``resample_poly``.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from modelwire import AsyncClient, BadRequestError, RawAudio
from modelwire.v1 import common_pb2
from modelwire.v1 import inference_service_pb2 as pb
from tests.conftest import (
    client_fixture,
    cpu_pipeline,
    one_torch_thread_fixture,
    preset_server_fixture,
    preset_variant,
    served_fixture,
    swelling_tone,
)
from tests.helpers import bad_request_fields, raw_error
from tests.tolerances import TINY_SCORE_ATOL

SR = 16_000
NAMES = ("tiny-wav2vec2-ctc", "tiny-whisper", "tiny-audio-cls")
LIMITS = {"max_audio_seconds": 1.0, "max_input_bytes": 100_000, "max_inputs": 2}


one_thread = one_torch_thread_fixture()


LIMITED = preset_variant("cls-limited", "audio-classification", "tiny-audio-cls", **LIMITS)
media = preset_server_fixture(*NAMES, extra=[LIMITED])
client = client_fixture("media", timeout=300)


asr = served_fixture("media", "tiny-wav2vec2-ctc", cpu_pipeline("automatic-speech-recognition"))
audio_cls = served_fixture("media", "tiny-audio-cls", cpu_pipeline("audio-classification"))


# At 440 Hz and 2 kHz the tiny CTC model writes long strings of letters that change
# with the input.
signal = swelling_tone


CLIPS = [signal(2.0, 440), signal(2.5, 2000, 1), signal(1.5, 440, 2), signal(2.0, 2000, 3)]


def wav(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def as_dict(labels: Any) -> dict[str, float]:
    return {ls.label: ls.score for ls in labels}


def assert_scores(result: Any, reference: list[dict]) -> None:
    got = as_dict(result.labels)
    assert got.keys() == {r["label"] for r in reference}
    for r in reference:
        assert got[r["label"]] == pytest.approx(r["score"], abs=TINY_SCORE_ATOL)


# ----------------------------------------------------------------- TranscribeAudio


async def test_transcription_matches_the_pipeline(asr, client: AsyncClient) -> None:
    expected = [asr(clip)["text"] for clip in CLIPS]
    results = await client.transcribe_audio(CLIPS, sample_rate=SR)
    assert [r.text for r in results] == expected
    assert all(r.chunks == [] for r in results)
    assert len(set(expected)) >= 3, expected  # the tiny model hears the difference


@pytest.mark.parametrize(("granularity", "reference"), [("char", "char"), ("word", "word"),
                                                        ("segment", "word")])  # fmt: skip
async def test_timestamps_match_the_pipeline(
    asr, client: AsyncClient, granularity: str, reference: str
) -> None:
    results = await client.transcribe_audio(
        CLIPS[:2], sample_rate=SR, return_timestamps=granularity
    )
    for result, clip in zip(results, CLIPS[:2], strict=True):
        expected = asr(clip, return_timestamps=reference)
        assert result.text == expected["text"]
        assert [c.text for c in result.chunks] == [c["text"] for c in expected["chunks"]]
        for chunk, ref in zip(result.chunks, expected["chunks"], strict=True):
            assert (chunk.start_s, chunk.end_s) == pytest.approx(ref["timestamp"], abs=1e-4)
    if granularity == "char":
        assert len(results[0].chunks) >= 10


async def test_long_audio_is_chunked_and_merged_like_the_pipeline(
    media, asr, client: AsyncClient
) -> None:
    clip = np.concatenate([signal(3.0, (440, 2000)[i % 2], i) for i in range(4)])  # 12 s
    expected = asr(clip, chunk_length_s=4.0, return_timestamps="char")
    batcher = media.runner("tiny-wav2vec2-ctc").batcher
    before = batcher.stats.items
    (result,) = await client.transcribe_audio(
        clip, sample_rate=SR, chunk_length_s=4.0, return_timestamps="char"
    )
    # 4 s windows with 0.66 s strides start every 2.68 s: four chunks.
    assert batcher.stats.items - before == 4
    assert result.text == expected["text"]
    assert [c.text for c in result.chunks] == [c["text"] for c in expected["chunks"]]
    for chunk, ref in zip(result.chunks, expected["chunks"], strict=True):
        assert (chunk.start_s, chunk.end_s) == pytest.approx(ref["timestamp"], abs=1e-4)
    (whole,) = await client.transcribe_audio(clip, sample_rate=SR)
    assert whole.text == asr(clip)["text"] != result.text


async def test_clips_longer_than_the_window_are_chunked_by_default(
    media, asr, client: AsyncClient
) -> None:
    clip = np.concatenate([signal(5.0, (440, 2000)[i % 2], i) for i in range(7)])  # 35 s
    batcher = media.runner("tiny-wav2vec2-ctc").batcher
    before = batcher.stats.items
    (result,) = await client.transcribe_audio(clip, sample_rate=SR)
    assert batcher.stats.items - before == 2
    assert result.text == asr(clip, chunk_length_s=30.0)["text"]


async def test_encoded_audio_and_other_rates_are_decoded_and_resampled(
    asr, client: AsyncClient
) -> None:
    clip = CLIPS[0]
    flac = wav(clip, SR, "FLAC", "PCM_16")
    slow = signal(2.0, 440, 3, rate=8_000)
    results = await client.transcribe_audio(
        [wav(clip, SR), flac, RawAudio(slow, 8_000)], model="tiny-wav2vec2-ctc"
    )
    flac_samples, _ = sf.read(io.BytesIO(flac), dtype="float32")
    assert results[0].text == asr(clip)["text"]
    assert results[1].text == asr(flac_samples)["text"]
    assert results[2].text == asr(resample_poly(slow, 2, 1).astype(np.float32))["text"]
    (as_if_16k,) = await client.transcribe_audio(slow, sample_rate=SR)
    assert as_if_16k.text != results[2].text  # the rate mattered


# ------------------------------------------------------------------- ClassifyAudio


async def test_audio_classification_matches_the_pipeline(audio_cls, client: AsyncClient) -> None:
    results = await client.classify_audio(CLIPS, sample_rate=SR, top_k=5)
    for result, clip in zip(results, CLIPS, strict=True):
        assert_scores(result, audio_cls(clip, top_k=5))
    speech = [as_dict(r.labels)["speech"] for r in results]
    assert max(speech) - min(speech) >= 0.05
    # Alone, the clip runs in a pass of another shape: the same top label, its score
    # equal to rounding.
    (one,) = await client.classify_audio(CLIPS[0], sample_rate=SR)
    assert [ls.label for ls in one.labels] == [results[0].labels[0].label]
    assert one.labels[0].score == pytest.approx(results[0].labels[0].score, abs=TINY_SCORE_ATOL)


async def test_concurrent_clips_of_different_lengths_share_a_padded_pass(
    media, audio_cls, client: AsyncClient
) -> None:
    batcher = media.runner("tiny-audio-cls").batcher
    before = len(batcher.stats.sizes)
    results = await asyncio.gather(
        *(client.classify_audio(clip, sample_rate=SR, top_k=5) for clip in CLIPS * 3)
    )
    sizes = list(batcher.stats.sizes)[before:]
    assert sum(sizes) == 12 and max(sizes) >= 2, sizes
    for (result,), clip in zip(results, CLIPS * 3, strict=True):
        assert_scores(result, audio_cls(clip, top_k=5))


async def test_formats_channels_and_rates_match_the_pipeline_on_the_same_samples(
    audio_cls, client: AsyncClient
) -> None:
    stereo = np.stack([signal(1.0, 440, 5, 44_100), signal(1.0, 2000, 6, 44_100)], axis=1)
    ogg = wav(CLIPS[1], SR, "OGG", "VORBIS")
    inputs = [
        wav(stereo, 44_100, subtype="PCM_16"),  # 44.1 kHz stereo WAV
        ogg,
        RawAudio(stereo.astype("<f4").tobytes(), 44_100, channels=2),  # interleaved bytes
        RawAudio(CLIPS[2][::2].tolist(), 8_000),  # a list of floats
    ]
    pcm16, _ = sf.read(io.BytesIO(inputs[0]), dtype="float32")
    decoded_ogg, _ = sf.read(io.BytesIO(ogg), dtype="float32")
    references = [
        resample_poly(pcm16.mean(axis=1), 160, 441),
        decoded_ogg,
        resample_poly(stereo.mean(axis=1), 160, 441),
        resample_poly(CLIPS[2][::2], 2, 1),
    ]
    results = await client.classify_audio(inputs, top_k=5)
    for result, reference in zip(results, references, strict=True):
        assert_scores(result, audio_cls(reference.astype(np.float32), top_k=5))


# ------------------------------------------------------------------------ bad input


def pcm(samples: bytes, rate: int = SR, **extra: int) -> common_pb2.Audio:
    return common_pb2.Audio(pcm=common_pb2.PcmAudio(samples=samples, sample_rate=rate, **extra))


GOOD = common_pb2.Audio(encoded=wav(CLIPS[2], SR))
WAV_BYTES = wav(CLIPS[2], SR, subtype="PCM_16")
BAD_CLIPS = [
    ([GOOD, common_pb2.Audio(encoded=b"garbage, not audio")], "clips[1]", "not decodable audio"),
    ([common_pb2.Audio(encoded=WAV_BYTES[: len(WAV_BYTES) // 2])], "clips[0]", "truncated"),
    ([common_pb2.Audio(encoded=wav(np.zeros(0, np.float32), SR))], "clips[0]", "no samples"),
    ([GOOD, pcm(b"")], "clips[1]", "no samples"),
    ([pcm(np.zeros(100, "<f4").tobytes())], "clips[0]", "at least 25.0 ms"),
    ([pcm(np.full(800, np.nan, "<f4").tobytes())], "clips[0]", "NaN"),
    ([pcm(b"\x00" * 4002)], "clips[0].pcm.samples", "float32 frames"),
    ([pcm(b"\x00" * 4000, rate=0)], "clips[0].pcm.sample_rate", "sample rate 0 Hz"),
    ([pcm(b"\x00" * 4000, channels=0)], "clips[0].pcm.channels", "at least 1"),
    ([common_pb2.Audio()], "clips[0]", "either encoded or pcm"),
    ([], "clips", "at least one"),
]


@pytest.mark.parametrize("rpc", ["TranscribeAudio", "ClassifyAudio"])
@pytest.mark.parametrize(("clips", "field", "says"), BAD_CLIPS)
async def test_bad_clips_are_invalid_argument_naming_the_input(
    media, client: AsyncClient, rpc: str, clips: list, field: str, says: str
) -> None:
    error = await raw_error(media, rpc, getattr(pb, f"{rpc}Request")(clips=clips))
    assert error.code().name == "INVALID_ARGUMENT", error.details()
    assert bad_request_fields(error) == [field]
    assert says in error.details()
    (still,) = await client.transcribe_audio(CLIPS[2], sample_rate=SR)
    assert isinstance(still.text, str)


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"chunk_length_s": 0.5}, "chunk_length_s"), ({"language": "en"}, "language"),
     ({"return_timestamps": 9}, "return_timestamps")],
)  # fmt: skip
async def test_bad_transcription_options_are_named(media, extra: dict, field: str) -> None:
    request = pb.TranscribeAudioRequest(clips=[GOOD], **extra)
    error = await raw_error(media, "TranscribeAudio", request)
    assert bad_request_fields(error) == [field]


async def test_limits_refuse_oversize_clips_saying_the_limit(client: AsyncClient) -> None:
    (fits,) = await client.classify_audio(CLIPS[2][:SR], sample_rate=SR, model="cls-limited")
    assert fits.labels
    cases = [
        (CLIPS[2], "clips[0]", "1.50 seconds long; the limit is 1 seconds"),
        (wav(CLIPS[2][:8_800], 8_000), "clips[0]", "1.10 seconds long"),
        ([CLIPS[2][:800], RawAudio(np.zeros(30_000, np.float32), 48_000)],
         "clips[1].pcm.samples", "the limit is 100000 bytes"),
        ([CLIPS[2][:800]] * 3, "clips", "at most 2"),
    ]  # fmt: skip
    for clips, field, says in cases:
        with pytest.raises(BadRequestError) as caught:
            await client.classify_audio(clips, sample_rate=SR, model="cls-limited")
        assert caught.value.field_violations[0].field == field
        assert says in str(caught.value)


async def test_whisper_is_served_beside_ctc(client: AsyncClient) -> None:
    """Whisper goes through the generation engine (tests/test_media_whisper.py has its
    parity tests); here: the same RPC serves it next to the CTC model."""
    (whisper,) = await client.transcribe_audio(CLIPS[0], sample_rate=SR, model="tiny-whisper")
    (ctc,) = await client.transcribe_audio(CLIPS[0], sample_rate=SR)
    assert whisper.text.strip()
    assert whisper.text != ctc.text
