"""Audio inputs are costed by what they decode to (samples x channels, read from the
header) before anything is decoded; a model's decodes in flight are a capacity."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from modelwire import AsyncClient, RateLimitError
from modelwire.v1 import common_pb2
from modelwire.v1 import inference_service_pb2 as pb
from tests.conftest import client_fixture, preset_server_fixture, preset_variant, swelling_tone
from tests.helpers import bad_request_fields, raw_error
from tests.memory import MB, peak_growth

SR = 16_000
# 1 s per clip: a budget of 96,000 samples x channels (48 kHz stereo for a second).
LIMITED = preset_variant(
    "cls-limited", "audio-classification", "tiny-audio-cls", max_audio_seconds=1.0
)
media = preset_server_fixture("tiny-audio-cls", extra=[LIMITED])
client = client_fixture("media", timeout=120)


def wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def classify(model: str, *clips: bytes) -> pb.ClassifyAudioRequest:
    return pb.ClassifyAudioRequest(
        model=model, clips=[common_pb2.Audio(encoded=clip) for clip in clips]
    )


@pytest.fixture(scope="module")
def silent_flac_bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """40 s of silence at 655,350 Hz in 8 channels: a few hundred KB of FLAC that
    decodes to 210 M samples (900 MB). Written a second at a time, to keep the test small."""
    path = tmp_path_factory.mktemp("bomb") / "silence.flac"
    second = np.zeros((655_350, 8), dtype=np.int16)
    with sf.SoundFile(path, "w", 655_350, 8, "PCM_16", format="FLAC") as out:
        for _ in range(40):
            out.write(second)
    return path.read_bytes()


async def test_a_small_file_of_many_samples_is_refused_before_decoding(
    media, silent_flac_bomb: bytes
) -> None:
    assert len(silent_flac_bomb) < 4_000_000
    with peak_growth() as growth:
        error = await raw_error(
            media, "ClassifyAudio", classify("tiny-audio-cls", silent_flac_bomb)
        )
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["clips[0]"]
    assert "655350 Hz" in error.details()  # past the sample-rate cap
    assert growth.bytes < 300 * MB


async def test_audio_is_costed_by_samples_times_channels(media) -> None:
    eight = wav(np.zeros((48_000, 8), dtype=np.float32), 48_000)  # 1 s, 384,000 values
    error = await raw_error(media, "ClassifyAudio", classify("cls-limited", eight))
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["clips[0]"]
    assert "8 channels" in error.details()


async def test_a_request_is_limited_by_its_samples_together(media) -> None:
    stereo = wav(np.zeros((48_000, 2), dtype=np.float32), 48_000)  # at the limit alone
    error = await raw_error(media, "ClassifyAudio", classify("cls-limited", stereo, stereo))
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["clips"]
    assert "192000 samples" in error.details()


async def test_audio_decoding_beyond_capacity_is_resource_exhausted(
    media, client: AsyncClient
) -> None:
    """While other requests hold the model's decode budget, one that would pass it is
    told to retry (capacity), and is served once the budget is free."""
    budget = media.runner("cls-limited").limits.samples
    clip = swelling_tone(0.5, 440)
    with budget.hold(budget.capacity - 100):  # other requests' decodes, as it were
        with pytest.raises(RateLimitError) as refused:
            await client.classify_audio(clip, sample_rate=SR, model="cls-limited")
        assert refused.value.retry_after is not None
    [result] = await client.classify_audio(clip, sample_rate=SR, model="cls-limited")
    assert result.labels
