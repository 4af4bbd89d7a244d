"""SynthesizeSpeech through the SDK against a real server: VITS and SpeechT5 audio equal,
sample for sample, to the reference model run here with the same seed."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoTokenizer, SpeechT5ForTextToSpeech, SpeechT5HifiGan, VitsModel

from modelwire import AsyncClient, BadRequestError, Speech
from modelwire.v1 import inference_service_pb2 as pb
from tests.conftest import (
    RunningServer,
    client_fixture,
    one_torch_thread_fixture,
    preset_server_fixture,
    preset_variant,
)
from tests.helpers import bad_request_fields, raw_error
from tests.memory import MB, peak_growth

# One thread in the server and the reference alike, so float sums add up in the same
# order and the audio can be compared exactly.
one_thread = one_torch_thread_fixture()


SHORT = preset_variant("vits-short", "text-to-speech", "tiny-vits", max_input_tokens=8)
media = preset_server_fixture("tiny-vits", "tiny-speecht5", extra=[SHORT])
client = client_fixture("media", timeout=300)


@pytest.fixture(scope="module")
def vits(media: RunningServer) -> Any:
    path = media.runner("tiny-vits").config.source
    model = VitsModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def speak(text: str, seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        with torch.no_grad():
            return model(**tokenizer(text, return_tensors="pt")).waveform[0].numpy()

    return speak


@pytest.fixture(scope="module")
def speecht5(media: RunningServer) -> Any:
    path = Path(media.runner("tiny-speecht5").config.source)
    model = SpeechT5ForTextToSpeech.from_pretrained(path).eval()
    vocoder = SpeechT5HifiGan.from_pretrained(path / "vocoder").eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    default = torch.from_numpy(np.load(path / "speaker_embeddings.npy"))

    def speak(text: str, seed: int, speaker: torch.Tensor = default) -> np.ndarray:
        torch.manual_seed(seed)  # the decoder prenet's dropout stays on at inference
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            return model.generate_speech(ids, speaker, vocoder=vocoder).numpy()

    return speak


def decoded(speech: Speech) -> np.ndarray:
    """The samples, read back with soundfile (WAV) or numpy (raw float32)."""
    if speech.format == "pcm_float32":
        return np.frombuffer(speech.audio, dtype="<f4")
    samples, rate = sf.read(io.BytesIO(speech.audio), dtype="float32")
    assert rate == speech.sample_rate
    return samples


async def test_vits_float_wav_is_exactly_the_reference(vits, client: AsyncClient) -> None:
    texts = ["Hello world.", "Good morning, how are you?"]
    results = [await client.synthesize_speech(text, seed=7, format="wav_float32") for text in texts]
    for speech, text in zip(results, texts, strict=True):
        reference = vits(text, 7)
        assert speech.sample_rate == 16_000 and speech.format == "wav_float32"
        assert speech.num_samples == reference.size
        np.testing.assert_array_equal(decoded(speech), reference)
    assert results[0].audio != results[1].audio  # the text matters


async def test_formats_carry_the_same_samples(vits, client: AsyncClient) -> None:
    reference = vits("one two three", 3)
    raw = await client.synthesize_speech("one two three", seed=3, format="pcm_float32")
    np.testing.assert_array_equal(decoded(raw), reference)
    pcm16 = await client.synthesize_speech("one two three", seed=3)  # the default: WAV int16
    assert pcm16.format == "wav_pcm16"
    samples, _ = sf.read(io.BytesIO(pcm16.audio), dtype="int16")
    expected = np.round(np.clip(reference, -1, 1) * 32767).astype(np.int16)
    np.testing.assert_array_equal(samples, expected)
    assert pcm16.duration_s == pytest.approx(reference.size / 16_000)


async def test_seed_reproduces_and_batching_does_not_change_audio(
    media, vits, client: AsyncClient
) -> None:
    texts = ["hello", "good night", "see you soon", "hello"]
    seeds = [1, 2, 3, 4]
    batcher = media.runner("tiny-vits").batcher
    before = len(batcher.stats.sizes)
    together = await asyncio.gather(
        *(client.synthesize_speech(t, seed=s, format="pcm_float32")
          for t, s in zip(texts, seeds, strict=True))
    )  # fmt: skip
    assert max(list(batcher.stats.sizes)[before:]) >= 2  # they did share batches
    for speech, text, seed in zip(together, texts, seeds, strict=True):
        np.testing.assert_array_equal(decoded(speech), vits(text, seed))
    # Same text, other seed: other random durations and noise.
    assert together[0].audio != together[3].audio
    unseeded = [await client.synthesize_speech("hello", format="pcm_float32") for _ in range(2)]
    assert unseeded[0].audio != unseeded[1].audio


async def test_speecht5_uses_its_vocoder_and_voices(speecht5, client: AsyncClient) -> None:
    default = await client.synthesize_speech(
        "Hi there", model="tiny-speecht5", seed=5, format="wav_float32"
    )
    np.testing.assert_array_equal(decoded(default), speecht5("Hi there", 5))
    voice = np.linspace(-1, 1, 16, dtype=np.float32)
    other = await client.synthesize_speech(
        "Hi there", model="tiny-speecht5", seed=5, voice=voice, format="wav_float32"
    )
    reference = speecht5("Hi there", 5, torch.from_numpy(voice).reshape(1, 16))
    np.testing.assert_array_equal(decoded(other), reference)
    n = min(default.num_samples, other.num_samples)
    assert not np.array_equal(decoded(default)[:n], decoded(other)[:n])  # the voice matters


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"text": "你好"}, "text", "no characters this model can speak"),
        ({"text": "   "}, "text", "must not be empty"),
        ({"text": "x" * 100_001}, "text", "limit is 100000"),
        ({"text": "hi", "voice": "3"}, "voice", "single voice"),
        ({"text": "hi", "format": 9}, "format", "unknown value 9"),
        (
            {"text": "hi", "model": "tiny-speecht5", "voice": "embedding:AAAA"},
            "voice",
            "16 float32",
        ),
        ({"text": "hi", "model": "tiny-speecht5", "voice": "alice"}, "voice", "must be 'default'"),
        ({"text": "hi " * 200, "model": "tiny-speecht5"}, "text", "this model reads 256"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    media, client: AsyncClient, fields: dict, field: str, says: str
) -> None:
    error = await raw_error(media, "SynthesizeSpeech", pb.SynthesizeSpeechRequest(**fields))
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == [field]
    assert says in error.details()
    still = await client.synthesize_speech("still here", seed=0)
    assert still.num_samples > 0


async def test_client_checks_arguments_before_sending(client: AsyncClient) -> None:
    for kwargs in ({"format": "mp3"}, {"seed": -1}, {"voice": object()}):
        with pytest.raises(ValueError):
            await client.synthesize_speech("hi", **kwargs)
    with pytest.raises(BadRequestError):  # the server's own check, through the SDK
        await client.synthesize_speech("ÄÖÜ")


async def test_long_vits_text_is_refused_before_it_costs_memory(
    media: RunningServer, client: AsyncClient
) -> None:
    """2,000 characters took VITS 1.5 GB; the text is now counted in tokens first."""
    text = "a long sentence to say " * 87  # 2,001 characters, some 4,000 tokens
    with peak_growth() as growth:
        error = await raw_error(media, "SynthesizeSpeech", pb.SynthesizeSpeechRequest(text=text))
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["text"]
    assert "tokens" in error.details()
    assert growth.bytes < 300 * MB  # the synthesis would take about 1,500 MB
    assert (await client.synthesize_speech("still here", seed=0)).num_samples > 0


async def test_vits_token_limit_defaults_and_is_configurable(
    media: RunningServer, client: AsyncClient
) -> None:
    # The preset's VITS names no limit of its own: the task default applies.
    assert media.runner("tiny-vits").synth.max_tokens == 512
    # vits-short: max_input_tokens 8; "hello" is 11 tokens (a blank between characters).
    with pytest.raises(BadRequestError) as refused:
        await client.synthesize_speech("hello", model="vits-short", seed=0)
    assert refused.value.field_violations[0].field == "text"
    assert "is 11 tokens; this model reads 8" in str(refused.value)
    assert (await client.synthesize_speech("hi", model="vits-short", seed=0)).num_samples > 0


async def test_speecht5_long_text_stops_at_its_position_table(
    media: RunningServer, client: AsyncClient
) -> None:
    """Text whose default output length (20 frames per token) passes the decoder's
    position table used to fail INTERNAL ("2049 vs 2048"); it now stops there."""
    model = media.runner("tiny-speecht5").synth.model
    rf, positions = model.config.reduction_factor, model.config.max_speech_positions
    hop = int(np.prod(media.runner("tiny-speecht5").synth.vocoder.config.upsample_rates))
    text = "speak at length " * 15  # 240 characters: under 256 text positions
    speech = await client.synthesize_speech(text, model="tiny-speecht5", seed=0)
    assert 0 < speech.num_samples <= positions * rf * hop
