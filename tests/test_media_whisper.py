"""TranscribeAudio with Whisper (tiny-whisper) through the generation engine, against a
real server, with transformers' ASR pipeline on the same samples as the reference.

The pipeline adds its own default of ``num_beams=5`` to the model's generation_config
(its ``_default_generation_config``); the server decodes as ``model.generate()`` does
with the model's own generation_config, which is greedy here, so every reference
passes ``generate_kwargs={"num_beams": 1}``. Everything else (decoder start, language
detection, suppression, timestamp rules, length limit, chunking and merging) is the
pipeline's own, and the comparisons are exact: text equal, timestamps equal.
"""

from __future__ import annotations

import asyncio
import copy
import io
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers

from modelwire import AsyncClient, BadRequestError
from modelwire.v1 import common_pb2
from modelwire.v1 import inference_service_pb2 as pb
from modelwire_server.errors import InvalidArgument
from tests.conftest import (
    RunningServer,
    client_fixture,
    cpu_pipeline,
    one_torch_thread_fixture,
    preset_server_fixture,
    served_fixture,
    swelling_tone,
)
from tests.helpers import bad_request_fields, raw_error

SR = 16_000
MODEL = "tiny-whisper"
GREEDY = {"num_beams": 1}


one_thread = one_torch_thread_fixture()


whisper = preset_server_fixture(MODEL)
client = client_fixture("whisper", timeout=300)


asr = served_fixture("whisper", MODEL, cpu_pipeline("automatic-speech-recognition"))


signal = swelling_tone


CLIPS = [signal(2.0, 440), signal(2.5, 2000, 1), signal(1.5, 440, 2), signal(3.0, 2000, 3)]


def long_clip(seconds_each: float, count: int) -> np.ndarray:
    return np.concatenate([signal(seconds_each, (440, 2000, 900)[i % 3], i) for i in range(count)])


def reference(asr: transformers.Pipeline, clip: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    generate_kwargs = {**GREEDY, **kwargs.pop("generate_kwargs", {})}
    return asr(clip, generate_kwargs=generate_kwargs, **kwargs)


def assert_chunks(result: Any, expected: dict[str, Any]) -> None:
    """Timed chunks equal: text, start and end (None: the model did not close it)."""
    assert [c.text for c in result.chunks] == [c["text"] for c in expected["chunks"]]
    for chunk, ref in zip(result.chunks, expected["chunks"], strict=True):
        start, end = ref["timestamp"]
        assert chunk.start_s == pytest.approx(start or 0.0, abs=1e-4)
        if end is None:
            assert chunk.end_s is None
        else:
            assert chunk.end_s == pytest.approx(end, abs=1e-4)


# ------------------------------------------------------------------- parity


async def test_short_clips_match_the_pipeline(asr, client: AsyncClient) -> None:
    """Language unset: detected per clip (as generate does), then greedy decoding."""
    expected = [reference(asr, clip)["text"] for clip in CLIPS]
    results = await client.transcribe_audio(CLIPS, sample_rate=SR, model=MODEL)
    assert [r.text for r in results] == expected
    assert all(r.chunks == [] for r in results)
    assert len(set(expected)) == len(CLIPS), expected  # the tiny model hears the difference


async def test_language_detection_matches_transformers(whisper, asr) -> None:
    """The detected language is ``detect_language``'s, and the decoder start around it
    is the one generate builds (read off the pipeline's own generate call)."""
    runner = whisper.runner(MODEL).whisper
    model = asr.model
    for clip in CLIPS[:2]:
        features = asr.feature_extractor(clip, sampling_rate=SR, return_tensors="pt")
        expected = int(model.detect_language(features.input_features)[0])
        assert expected in runner.lang_to_id.values()
        detected = await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(
                runner._detect_language(features.input_features, "t", None), whisper.loop
            )
        )
        assert detected == expected
        assert runner.init_tokens(None, detected, False) == [
            runner.sot,
            detected,
            runner.no_timestamps,
        ]


@pytest.mark.parametrize("language", ["fr", "french", "<|fr|>", "de"])
async def test_forced_language_matches_the_pipeline(
    asr, client: AsyncClient, language: str
) -> None:
    expected = [reference(asr, c, generate_kwargs={"language": language}) for c in CLIPS[:2]]
    results = await client.transcribe_audio(
        CLIPS[:2], sample_rate=SR, model=MODEL, language=language
    )
    assert [r.text for r in results] == [e["text"] for e in expected]
    unforced = [reference(asr, c)["text"] for c in CLIPS[:2]]
    assert [r.text for r in results] != unforced  # the language token steered the decoder


async def test_segment_timestamps_match_the_pipeline(asr, client: AsyncClient) -> None:
    results = await client.transcribe_audio(
        CLIPS, sample_rate=SR, model=MODEL, return_timestamps="segment"
    )
    plain = await client.transcribe_audio(CLIPS, sample_rate=SR, model=MODEL)
    for result, clip in zip(results, CLIPS, strict=True):
        expected = reference(asr, clip, return_timestamps=True)
        assert result.text == expected["text"]
        assert result.chunks, expected
        assert_chunks(result, expected)
    # Timestamp decoding is another decoding (no <|notimestamps|>, timestamp rules).
    assert [r.text for r in results] != [p.text for p in plain]
    with_french = await client.transcribe_audio(
        CLIPS[0], sample_rate=SR, model=MODEL, return_timestamps=True, language="fr"
    )
    expected = reference(asr, CLIPS[0], return_timestamps=True, generate_kwargs={"language": "fr"})
    assert with_french[0].text == expected["text"]
    assert_chunks(with_french[0], expected)


@pytest.fixture(scope="module")
def asr_eager(whisper: RunningServer) -> transformers.Pipeline:
    """A pipeline of its own for word timestamps: generate switches its model to eager
    attention for them, for good."""
    source = whisper.runner(MODEL).config.source
    return transformers.pipeline("automatic-speech-recognition", model=source, device="cpu")


async def test_word_timestamps_match_the_pipeline(asr_eager, client: AsyncClient) -> None:
    """Word times come from the alignment heads' cross-attention through DTW; the server
    takes it from one teacher-forced pass where generate records it step by step."""
    results = await client.transcribe_audio(
        CLIPS[:2], sample_rate=SR, model=MODEL, return_timestamps="word"
    )
    for result, clip in zip(results, CLIPS[:2], strict=True):
        expected = reference(asr_eager, clip, return_timestamps="word")
        assert result.text == expected["text"]
        assert len(result.chunks) >= 3, expected
        assert_chunks(result, expected)
    assert [c.end_s for c in results[0].chunks] != [c.end_s for c in results[1].chunks]
    clip = long_clip(4.0, 5)  # 20 s in 10 s chunks: word times across strides
    (chunked,) = await client.transcribe_audio(
        clip, sample_rate=SR, model=MODEL, chunk_length_s=10.0, return_timestamps="word"
    )
    expected = reference(asr_eager, clip, chunk_length_s=10.0, return_timestamps="word")
    assert chunked.text == expected["text"]
    assert_chunks(chunked, expected)


@pytest.mark.parametrize("timestamps", [False, True])
async def test_chunked_long_clip_matches_the_pipeline(
    whisper, asr, client: AsyncClient, timestamps: bool
) -> None:
    clip = long_clip(4.0, 6)  # 24 s: 10 s windows with 1.67 s strides start every 6.67 s
    expected = reference(
        asr, clip, chunk_length_s=10.0, batch_size=2, return_timestamps=timestamps or None
    )
    engine = whisper.runner(MODEL).whisper.engine
    before = engine.stats().steps
    (result,) = await client.transcribe_audio(
        clip,
        sample_rate=SR,
        model=MODEL,
        chunk_length_s=10.0,
        return_timestamps="segment" if timestamps else None,
    )
    assert engine.stats().steps > before
    assert result.text == expected["text"]
    if timestamps:
        assert_chunks(result, expected)
    (whole,) = await client.transcribe_audio(clip, sample_rate=SR, model=MODEL)
    assert whole.text != result.text  # one 24 s window decodes otherwise


async def test_audio_over_the_window_is_chunked_by_thirty_seconds(asr, client: AsyncClient) -> None:
    """Unset chunk_length_s over 30 s: the pipeline's chunking with 30 s windows (the
    pipeline itself would run generate's sequential long-form decoding there)."""
    clip = long_clip(5.0, 8)  # 40 s
    (result,) = await client.transcribe_audio(clip, sample_rate=SR, model=MODEL)
    assert result.text == reference(asr, clip, chunk_length_s=30.0)["text"]
    (first,) = await client.transcribe_audio(clip[: 30 * SR], sample_rate=SR, model=MODEL)
    assert result.text != first.text  # the last 10 s were heard, not cut


async def test_encoded_audio_matches(asr, client: AsyncClient) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, CLIPS[1], SR, format="FLAC", subtype="PCM_16")
    (result,) = await client.transcribe_audio(buffer.getvalue(), model=MODEL)
    samples, _ = sf.read(io.BytesIO(buffer.getvalue()), dtype="float32")
    assert result.text == reference(asr, samples)["text"]


# ------------------------------------------------------------------- pieces


def test_segment_split_and_seek_follow_generate(whisper) -> None:
    """generate's seek loop, which these tiny outputs rarely reach: a window whose output
    closes a segment with two timestamps is cut there and decoded again from it."""
    from transformers import WhisperForConditionalGeneration as Whisper

    from modelwire_server.tasks.whisper import split_segments

    runner = whisper.runner(MODEL).whisper
    begin = runner.timestamp_begin
    sequences = [
        [begin, 5, 6, begin + 40, begin + 40, 7, 8, begin + 90, begin + 90, 9],
        [begin, 5, 6, begin + 40, begin + 40, 7, begin + 90],  # single ending
        [begin + 3, 5, 6, 7],  # no segment closed
        [5, 6, begin + 20],
        [],
    ]
    for sequence in sequences:
        segments, offset = Whisper._retrieve_segment(
            seek_sequence=torch.tensor(sequence, dtype=torch.long),
            seek_outputs=[{}],
            time_offset=torch.zeros(1, dtype=torch.float64),
            timestamp_begin=begin,
            seek_num_frames=torch.tensor([3000]),
            time_precision=0.02,
            time_precision_features=0.01,
            input_stride=2,
            prev_idx=0,
            idx=0,
            return_token_timestamps=False,
            decoder_input_ids=torch.zeros((1, 3), dtype=torch.long),
        )
        kept = [t for s in segments for t in s["tokens"].tolist()]
        assert split_segments(sequence, begin, 3000, 2) == (kept, int(offset)), sequence
    assert split_segments(sequences[0], begin, 3000, 2)[1] == 180  # seek to <|1.80|>


def test_length_limit_grows_per_seek_round_as_in_generate(whisper, asr) -> None:
    runner = whisper.runner(MODEL).whisper
    config = copy.deepcopy(asr.model.generation_config)
    max_length = int(config.max_length)
    init = torch.zeros((1, 3), dtype=torch.long)
    for _ in range(4):
        asr.model._set_max_new_tokens_and_length(asr.model.config, init, config)
        max_new, max_length = runner._max_new_tokens(3, max_length)
        assert (max_new, max_length) == (config.max_length - 3, config.max_length)


# ------------------------------------------------------------------- batching


async def test_concurrent_calls_share_decode_steps(whisper, client: AsyncClient) -> None:
    engine = whisper.runner(MODEL).whisper.engine
    before = dict(engine.stats().decode_batch_sizes)
    calls = [
        client.transcribe_audio(clip, sample_rate=SR, model=MODEL, language="en")
        for clip in CLIPS[:2]
    ]
    results = await asyncio.gather(*calls)
    after = engine.stats().decode_batch_sizes
    shared = sum(n - before.get(size, 0) for size, n in after.items() if size >= 2)
    assert shared > 0, (before, after)
    alone = [
        (await client.transcribe_audio(clip, sample_rate=SR, model=MODEL, language="en"))[0]
        for clip in CLIPS[:2]
    ]
    assert [r[0].text for r in results] == [a.text for a in alone]


# ------------------------------------------------------------------- refusals


async def test_bad_options_are_invalid_argument_naming_the_field(
    whisper, client: AsyncClient
) -> None:
    cases = [
        ({"language": "klingon"}, "language", "unknown language"),
        ({"language": "<|xx|>"}, "language", "unknown language"),
        ({"return_timestamps": "char"}, "return_timestamps", "CTC"),
        ({"chunk_length_s": 45.0}, "chunk_length_s", "30 s window"),
        ({"chunk_length_s": 0.5}, "chunk_length_s", "between"),
    ]
    for options, field, says in cases:
        with pytest.raises(BadRequestError) as caught:
            await client.transcribe_audio(CLIPS[0], sample_rate=SR, model=MODEL, **options)
        assert caught.value.field_violations[0].field == field, options
        assert says in str(caught.value), options


async def test_word_timestamps_without_alignment_heads_say_why(whisper) -> None:
    runner = whisper.runner(MODEL).whisper
    heads, runner.gc.alignment_heads = runner.gc.alignment_heads, None
    try:
        with pytest.raises(InvalidArgument) as caught:
            runner.check_options(None, "word", None)
    finally:
        runner.gc.alignment_heads = heads
    assert caught.value.violations[0].field == "return_timestamps"
    assert "alignment heads" in str(caught.value)


def test_english_only_models_take_no_language(whisper) -> None:
    """As generate: ``language`` on a model that is not multilingual is refused."""
    runner = whisper.runner(MODEL).whisper
    runner.multilingual = False
    try:
        with pytest.raises(InvalidArgument) as caught:
            runner.check_options(None, None, "en")
    finally:
        runner.multilingual = True
    assert caught.value.violations[0].field == "language"
    assert "English-only" in str(caught.value)
    assert runner.check_options(None, None, "EN") == runner.lang_to_id["<|en|>"]


async def test_empty_and_corrupt_audio_are_invalid_argument(whisper) -> None:
    empty = pb.TranscribeAudioRequest(
        model=MODEL, clips=[common_pb2.Audio(pcm=common_pb2.PcmAudio(samples=b"", sample_rate=SR))]
    )
    corrupt = pb.TranscribeAudioRequest(
        model=MODEL, clips=[common_pb2.Audio(encoded=b"RIFF\x00\x00not a wav at all")]
    )
    for request in (empty, corrupt):
        error = await raw_error(whisper, "TranscribeAudio", request)
        assert error.code().name == "INVALID_ARGUMENT"
        assert bad_request_fields(error)[0].startswith("clips[0]")
