"""Whisper speech recognition through the generation engine.

Each window of audio (a whole clip of up to 30 s, or one chunk of a longer one) is one
engine request: its log-mel features ride in ``GenerationRequest.extras`` (the
``Seq2SeqAdapter`` runs Whisper's encoder over them at prefill, with no prompt tokens)
and its decoder starts from the tokens transformers' Whisper ``generate`` builds:
``<|startoftranscript|>``, the language, the task, and ``<|notimestamps|>`` unless
timestamps are asked for. Windows of one call, of concurrent calls and of other
generation share the engine's decode steps.

What mirrors transformers (``WhisperGenerationMixin.generate`` as the ASR pipeline
calls it) and how:

- decoding is greedy, or beam search when the generation_config sets ``num_beams``, as
  generate's temperature fallback loop does with its default temperature; the length
  limit is generate's (``max_length`` counted after the decoder start, or
  ``max_new_tokens``, within ``max_target_positions``), and it grows with each seek
  round exactly as generate's does;
- ``suppress_tokens`` and ``begin_suppress_tokens`` (the engine bans them, the latter at
  the first generated step), EOS and the other generation_config processors are the
  engine's; timestamps use transformers' own ``WhisperTimeStampLogitsProcessor``,
  called on each row's ids through the request's logits hook;
- ``language`` is resolved as generate resolves it ("en", "english", "<|en|>"); left
  unset on a multilingual model, each window's language is detected as
  ``detect_language`` does it (one decoder step from ``<|startoftranscript|>``, argmax
  over the language tokens): an engine request of one token whose hook masks every
  other token;
- a window whose output closes a segment with two timestamps before its end is decoded
  again from that timestamp (generate's seek loop over the 3000 feature frames, which it
  runs even for short-form input), and the rounds' tokens are concatenated;
- word timestamps (``return_timestamps="word"``: timestamp decoding plus
  ``return_token_timestamps``) time each token by transformers' own
  ``_extract_token_timestamps`` (DTW over the generation_config's ``alignment_heads``),
  fed the cross-attention of one teacher-forced, eager-attention pass over the decoded
  sequence on the device worker, where generate records it step by step; a model
  without alignment heads answers INVALID_ARGUMENT for them;
- chunking is the ASR pipeline's ``chunk_iter`` (a sixth of the chunk as stride on
  inner sides), and the windows' tokens are merged into text and timed chunks by the
  tokenizer's ``_decode_asr``, exactly as the pipeline's postprocess does.

Audio longer than the 30 s window with ``chunk_length_s`` unset is chunked with a 30 s
window (and 5 s strides) rather than truncated; the pipeline would instead run
generate's sequential long-form decoding there, whose windows depend on each other's
output and so cannot be decoded side by side.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer
from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from modelwire_server import errors
from modelwire_server.calls import current_call
from modelwire_server.engine import errors as engine_errors
from modelwire_server.engine.engine import GenerationEngine
from modelwire_server.engine.types import (
    Delta,
    GenerationRequest,
    SamplingParams,
    StoppingParams,
)
from modelwire_server.engine_client import EngineDriver
from modelwire_server.media import (
    AudioChunk,
    AudioInput,
    MediaLimits,
    audio_chunks,
    decode_clips,
)
from modelwire_server.tasks.text_generation import run_inline

WINDOW_S = 30.0  # Whisper's window (the feature extractor's chunk_length) if unsaid
MIN_CHUNK_S = 1.0


@dataclass(frozen=True)
class WhisperChunk:
    text: str
    start_s: float
    end_s: float | None


class WhisperSpeech:
    """The Whisper half of the automatic-speech-recognition runner (see module doc)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.config = runner.config

    # -- loading ----------------------------------------------------------------------

    def load(self) -> None:
        runner = self.runner
        source, kwargs = self.config.source, runner.pretrained_kwargs()
        self.extractor = AutoFeatureExtractor.from_pretrained(source, **kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        self.model = runner.place(AutoModelForSpeechSeq2Seq.from_pretrained(source, **kwargs))
        config = self.model.config
        self.gc = self.model.generation_config
        self.engine = GenerationEngine(
            self.model,
            self.tokenizer,
            device=runner.device,
            generation_config=self.gc,
            max_batch_tokens=self.config.max_batch_tokens,
            max_waiting=self.config.max_waiting,
            max_new_tokens_cap=self.config.max_new_tokens,
            default_max_new_tokens=self.config.default_max_new_tokens,
        )
        self.driver = EngineDriver(self.engine, runner.worker, self.config.name)
        self.rate = int(self.extractor.sampling_rate)
        self.window_s = float(getattr(self.extractor, "chunk_length", WINDOW_S))
        self.limits = MediaLimits.of(self.config)
        encoder = self.model.get_encoder()
        self.input_stride = int(encoder.conv1.stride[0] * encoder.conv2.stride[0])
        self.segment_frames = self.input_stride * int(config.max_source_positions)
        # Seconds per timestamp step, as the pipeline computes it.
        self.time_precision = float(self.extractor.chunk_length) / config.max_source_positions
        self.max_target = int(config.max_target_positions)
        self.sot = int(self.gc.decoder_start_token_id)
        self.no_timestamps = getattr(self.gc, "no_timestamps_token_id", None)
        self.timestamp_begin = (
            self.no_timestamps + 1 if self.no_timestamps is not None else config.vocab_size + 1
        )
        self.lang_to_id: dict[str, int] = dict(getattr(self.gc, "lang_to_id", None) or {})
        self.multilingual = bool(getattr(self.gc, "is_multilingual", bool(self.lang_to_id)))
        # detect_language's argmax runs over these tokens only
        self.language_mask = torch.zeros(self.engine.limits.vocab_size, dtype=torch.bool)
        if self.lang_to_id:
            self.language_mask[list(self.lang_to_id.values())] = True
        self.language_mask = self.language_mask.to(runner.device)

    async def start(self) -> None:
        await self.driver.start()

    async def close(self) -> None:
        await self.driver.close()

    def warmup(self) -> None:
        """Decode two tokens from silence (on the worker: engine steps run inline)."""
        features, _ = self._features(np.zeros(self.rate // 4, np.float32))
        request = GenerationRequest(
            prompt_ids=[],
            sampling=SamplingParams(temperature=0.0, num_beams=1),
            extras={"input_features": features},
            decoder_prompt_ids=[self.sot],
        )
        run_inline(self.engine, request, max_new_tokens=2)

    # -- options ----------------------------------------------------------------------

    def check_options(
        self, chunk_length_s: float | None, timestamps: str | None, language: str | None
    ) -> int | None:
        """Refuse what this model cannot do; return the forced language token, if any."""
        if timestamps == "char":
            raise errors.InvalidArgument(
                "return_timestamps",
                "Whisper predicts segment timestamps (and word timestamps from its "
                "cross-attention); character timestamps come from CTC models",
            )
        if timestamps == "word":
            if not getattr(self.gc, "alignment_heads", None):
                raise errors.InvalidArgument(
                    "return_timestamps",
                    "word timestamps align tokens to audio through the model's cross-attention "
                    "alignment heads, and this model's generation_config names none "
                    "(alignment_heads); ask for segment timestamps",
                )
        if timestamps is not None and self.no_timestamps is None:
            raise errors.InvalidArgument(
                "return_timestamps",
                "this model's generation_config has no no_timestamps_token_id, so it has no "
                "timestamp tokens",
            )
        if chunk_length_s is not None and not (
            math.isfinite(chunk_length_s) and MIN_CHUNK_S <= chunk_length_s <= self.window_s
        ):
            raise errors.InvalidArgument(
                "chunk_length_s",
                f"must be between {MIN_CHUNK_S:g} and Whisper's {self.window_s:g} s window, "
                f"got {chunk_length_s}",
            )
        if language:
            return self.language_id(language)
        configured = getattr(self.gc, "language", None)
        return self.language_id(str(configured)) if configured else None

    def language_id(self, language: str) -> int:
        """generate's ``language_to_id``: a token ("<|fr|>"), a code ("fr") or a name."""
        if not self.multilingual:
            raise errors.InvalidArgument(
                "language", "this Whisper model is English-only: it takes no language"
            )
        if not self.lang_to_id:
            raise errors.InvalidArgument(
                "language", "this model's generation_config has no lang_to_id table"
            )
        lowered = language.lower()
        if lowered in self.lang_to_id:
            token = lowered
        elif lowered in TO_LANGUAGE_CODE:
            token = f"<|{TO_LANGUAGE_CODE[lowered]}|>"
        elif lowered in TO_LANGUAGE_CODE.values():
            token = f"<|{lowered}|>"
        else:
            raise errors.InvalidArgument(
                "language",
                f"unknown language {language[:40]!r}; give a code such as 'en' or 'fr', a name "
                "such as 'french', or a token such as '<|fr|>'",
            )
        if token not in self.lang_to_id:
            raise errors.InvalidArgument(
                "language", f"{token} is not one of this model's languages (lang_to_id)"
            )
        return self.lang_to_id[token]

    # -- transcription ----------------------------------------------------------------

    async def transcribe(
        self,
        clips: Sequence[AudioInput],
        chunk_length_s: float | None,
        timestamps: str | None,
        language: str | None,
        *,
        deadline: float | None,
    ) -> list[tuple[str, list[WhisperChunk]]]:
        language_id = self.check_options(chunk_length_s, timestamps, language)
        decoded = await asyncio.to_thread(decode_clips, clips, self.limits, self.rate)
        # Whisper's chunks align to single samples (the pipeline's alignment for it is 1).
        plans = [
            audio_chunks(s, chunk_length_s, self.rate, window_s=self.window_s) for s in decoded
        ]
        flat = [window for plan in plans for window in plan]
        features = await asyncio.to_thread(lambda: [self._features(w.samples) for w in flat])
        call = current_call.get()
        request_id = call.request_id if call is not None else "transcribe"
        jobs = [
            self._window_tokens(f, frames, language_id, timestamps, f"{request_id}/{i}", deadline)
            for i, (f, frames) in enumerate(features)
        ]
        outputs = await _gather_or_cancel(jobs)
        results, start = [], 0
        for plan in plans:
            results.append(self._merge(plan, outputs[start : start + len(plan)], timestamps))
            start += len(plan)
        return results

    def _features(self, samples: np.ndarray) -> tuple[torch.Tensor, int]:
        """Log-mel features padded to the 30 s window, as the pipeline prepares them, and
        how many of their frames hold audio (for word timestamps)."""
        processed = self.extractor(
            samples, sampling_rate=self.rate, return_tensors="pt", return_attention_mask=True
        )
        frames = int(processed["attention_mask"].sum(-1)[0])
        return processed["input_features"].to(dtype=self.runner.dtype), frames

    # -- one window -------------------------------------------------------------------

    async def _window_tokens(
        self,
        features: torch.Tensor,
        audio_frames: int,
        language_id: int | None,
        granularity: str | None,
        request_id: str,
        deadline: float | None,
    ) -> tuple[list[int], list[float] | None]:
        """generate's output for one window: its tokens after the decoder start, EOS cut,
        and with word timestamps, each token's time (``_extract_token_timestamps``)."""
        timestamps = granularity is not None
        detected = None
        if language_id is None and self.lang_to_id and self._language_undefined():
            detected = await self._detect_language(features, request_id, deadline)
        init = self.init_tokens(language_id, detected, timestamps)
        hook = self._timestamp_hook(len(init)) if timestamps else None
        max_frames = features.shape[-1]
        seek, rounds, output = 0, 0, []
        times: list[float] | None = [] if granularity == "word" else None
        max_length = int(getattr(self.gc, "max_length", None) or 20)
        while seek < max_frames:
            rounds += 1
            frames = min(max_frames - seek, self.segment_frames)
            segment = features[:, :, seek : seek + frames]
            if segment.shape[-1] < self.segment_frames:
                segment = F.pad(segment, (0, self.segment_frames - segment.shape[-1]))
            max_new, max_length = self._max_new_tokens(len(init), max_length)
            request = GenerationRequest(
                prompt_ids=[],
                sampling=SamplingParams(temperature=0.0),
                stopping=StoppingParams(max_new_tokens=max_new),
                request_id=f"{request_id}/{rounds}",
                deadline=deadline,
                extras={"input_features": segment},
                decoder_prompt_ids=init,
                logits_hook=hook,
            )
            generated = await self._run(request)
            ids = generated
            if ids and ids[-1] in self.engine.limits.eos_ids:
                ids = ids[:-1]
            kept, offset = split_segments(ids, self.timestamp_begin, frames, self.input_stride)
            if times is not None:
                sequence, left = init + generated, audio_frames - seek
                token_times = await self.runner.worker.run(
                    lambda s=segment, q=sequence, n=left: self._token_times(s, q, len(init), n)
                )
                # generate adds the window's offset (float64) to float32 times
                offset_s = torch.tensor(seek * self.time_precision / self.input_stride)
                shifted = token_times[len(init) : len(init) + len(kept)] + offset_s.double()
                times += shifted.float().tolist()
            output += kept
            seek += offset
        return output, times

    def _legacy_prefix(self, language_id: int | None) -> list[int | None]:
        """The ``forced_decoder_ids`` prefix (positions 1, 2, ...) that generate honours
        when neither a task nor a language is set."""
        if getattr(self.gc, "task", None) is not None or language_id is not None:
            return []
        forced = getattr(self.gc, "forced_decoder_ids", None)
        if forced is None:
            forced = getattr(self.model.config, "forced_decoder_ids", None)
        out: list[int | None] = []
        for position, token in forced or []:
            if position != len(out) + 1:
                break
            out.append(token)
        return out

    def _language_undefined(self) -> bool:
        """generate detects the language when the decoder start does not name one."""
        prefix = self._legacy_prefix(None)
        return not prefix or prefix[0] is None

    def init_tokens(
        self, language_id: int | None, detected: int | None, timestamps: bool
    ) -> list[int]:
        """``_retrieve_init_tokens`` for one window: ``language_id`` is a forced language
        (the request's, else the generation_config's), ``detected`` a detected one."""
        tokens: list[int | None] = [self.sot, *self._legacy_prefix(language_id)]
        language = language_id if language_id is not None else detected
        if language is not None:
            if len(tokens) > 1:
                tokens[1] = language
            else:
                tokens.append(language)
        task = getattr(self.gc, "task", None)
        task_to_id = dict(getattr(self.gc, "task_to_id", None) or {})
        if task is not None:
            tokens.append(task_to_id[task])
        elif language_id is not None and task_to_id:  # a forced language: transcribe
            if not any(t in tokens for t in task_to_id.values()):
                tokens.append(task_to_id["transcribe"])
        if not timestamps and self.no_timestamps is not None and tokens[-1] != self.no_timestamps:
            tokens.append(self.no_timestamps)
        elif timestamps and tokens[-1] == self.no_timestamps:
            tokens = tokens[:-1]
        return [t for t in tokens if t is not None]

    def _token_times(
        self, features: torch.Tensor, sequence: list[int], num_input_ids: int, frames: int
    ) -> torch.Tensor:
        """Per-token times from the alignment heads' cross-attention, by transformers'
        ``_extract_token_timestamps`` (DTW). generate records the attention step by step
        while decoding; here one teacher-forced pass over the decoded sequence (all but its
        last token, as generate has no attention for that one) gives the same weights.
        Eager attention, as generate switches to for token timestamps, returns them. On the
        device worker."""
        # generate crops the attention to ``frames // 2`` encoder positions; at 0 or 1
        # frame left (a seek round at the very end of the audio) that leaves no column
        # and its DTW fails, so keep one.
        frames = 2 if 0 <= frames < 2 else frames
        config = self.model.config
        previous = config._attn_implementation
        config._attn_implementation = "eager"
        try:
            with torch.inference_mode():
                ids = torch.tensor([sequence[:-1]], dtype=torch.long, device=self.runner.device)
                out = self.model(
                    input_features=features.to(self.runner.device),
                    decoder_input_ids=ids,
                    output_attentions=True,
                    use_cache=False,
                )
                outputs = _Outputs(
                    cross_attentions=(tuple(a.float().cpu() for a in out.cross_attentions),),
                    sequences=torch.tensor([sequence]),
                )
                times = self.model._extract_token_timestamps(
                    outputs,
                    self.gc.alignment_heads,
                    num_frames=torch.tensor([frames]),
                    num_input_ids=num_input_ids,
                )
        finally:
            config._attn_implementation = previous
        return times[0]

    async def _detect_language(
        self, features: torch.Tensor, request_id: str, deadline: float | None
    ) -> int:
        """``detect_language``: one step from <|startoftranscript|>, language tokens only."""
        mask = self.language_mask

        def languages_only(_ids: list[int], scores: torch.Tensor) -> torch.Tensor:
            return scores.masked_fill(~mask, float("-inf"))

        request = GenerationRequest(
            prompt_ids=[],
            sampling=SamplingParams(temperature=0.0, num_beams=1),
            stopping=StoppingParams(max_new_tokens=1, ignore_eos=True),
            request_id=f"{request_id}/language",
            deadline=deadline,
            extras={"input_features": features[:, :, : self.segment_frames]},
            decoder_prompt_ids=[self.sot],
            logits_hook=languages_only,
        )
        return (await self._run(request))[0]

    def _timestamp_hook(self, begin_index: int) -> Any:
        processor = WhisperTimeStampLogitsProcessor(self.gc, begin_index=begin_index)

        def timestamps(ids: list[int], scores: torch.Tensor) -> torch.Tensor:
            ids_tensor = torch.tensor([ids], dtype=torch.long, device=scores.device)
            return processor(ids_tensor, scores.unsqueeze(0))[0]

        return timestamps

    def _max_new_tokens(self, init: int, max_length: int) -> tuple[int, int]:
        """generate's ``_set_max_new_tokens_and_length``; returns (max_new_tokens, the
        max_length the next seek round starts from: generate raises it every round)."""
        cap = self.engine.limits.max_new_tokens_cap
        asked = getattr(self.gc, "max_new_tokens", None)
        if asked is not None:
            return max(1, min(asked, self.max_target - init, cap)), max_length
        initial = min(self.max_target // 2 - 1, init)
        max_length = min(max_length + initial, self.max_target)
        return max(1, min(max_length - init, cap)), max_length

    async def _run(self, request: GenerationRequest) -> list[int]:
        """Submit one request and collect its token ids."""
        ids: list[int] = []
        # The caller going away, or another window failing, cancels it on the way out.
        async with self.driver.open(request, rename=_window_error) as stream:
            async for events in stream:
                ids += [t.id for e in events if isinstance(e, Delta) for t in e.tokens]
        return ids

    # -- merging ----------------------------------------------------------------------

    def _merge(
        self,
        plan: list[AudioChunk],
        outputs: list[tuple[list[int], list[float] | None]],
        granularity: str | None,
    ) -> tuple[str, list[WhisperChunk]]:
        """The pipeline's postprocess: strides in seconds, then ``_decode_asr``."""
        model_outputs: list[dict[str, Any]] = []
        for window, (ids, times) in zip(plan, outputs, strict=True):
            item: dict[str, Any] = {"tokens": np.asarray([ids], dtype=np.int64)}
            if times is not None:
                item["token_timestamps"] = torch.tensor([times], dtype=torch.float32)
            if window.stride is not None:
                item["stride"] = tuple(s / self.rate for s in window.stride)
            model_outputs.append(item)
        text, optional = self.tokenizer._decode_asr(
            model_outputs,
            return_timestamps="word" if granularity == "word" else granularity is not None,
            return_language=False,
            time_precision=self.time_precision,
        )
        chunks = []
        for chunk in optional.get("chunks", []) if granularity else []:
            start, end = chunk["timestamp"]
            chunks.append(WhisperChunk(chunk["text"], float(start or 0.0), end))
        return text, chunks


def split_segments(
    ids: list[int], timestamp_begin: int, frames: int, input_stride: int
) -> tuple[list[int], int]:
    """generate's ``_retrieve_segment`` for one window's output (EOS removed): the tokens
    it keeps, and how many feature frames to seek forward. Output that closes a segment
    with two timestamps before its end drops what follows, to be decoded again from
    that timestamp."""
    is_timestamp = [t >= timestamp_begin for t in ids]
    single_ending = is_timestamp[-2:] == [False, True]
    ends = [i + 1 for i in range(len(ids) - 1) if is_timestamp[i] and is_timestamp[i + 1]]
    if not ends or single_ending:
        return ids, frames
    last = ends[-1] + 1  # the last segment keeps its closing timestamp
    return ids[:last], (ids[last - 2] - timestamp_begin) * input_stride


class _Outputs(dict):  # type: ignore[type-arg]
    """What ``_extract_token_timestamps`` reads of generate's output: keys as attributes."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


def _window_error(exc: engine_errors.InvalidRequest) -> errors.InvalidArgument:
    """The engine's fields are Generate's; here a window is what does not fit (e.g. a
    batch-token budget below one encoder window)."""
    return errors.InvalidArgument("clips", f"{exc.field}: {exc.message}")


async def _gather_or_cancel(jobs: list[Any]) -> list[Any]:
    """Run the windows side by side; the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
