"""summarization and translation: encoder-decoders behind the generation engine.

Both runners are a ``TextGenerationTask`` with another loader and their own prompts:
the same driver steps the engine (whose ``Seq2SeqAdapter`` runs the encoder at
prefill), so Generate and Tokenize serve these models too, streaming the decoder's
output. Summarize and Translate submit each input as its own engine request, so the
inputs of one call decode together, and with those of concurrent calls.

A model listed under both tasks with the same source and engine settings is loaded
once per server: its runners share one engine and driver, so summaries and
translations from one model share decode steps (and memory).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from modelwire_server import errors
from modelwire_server.engine.engine import make_adapter
from modelwire_server.engine.types import (
    GenerationRequest,
    SamplingParams,
    StoppingParams,
)
from modelwire_server.engine_client import EngineDriver
from modelwire_server.tasks.base import check_input_tokens, check_text_inputs, input_token_limit
from modelwire_server.tasks.text_generation import TextGenerationTask, TextResult
from modelwire_server.tasks.translation_languages import (
    Languages,
    LanguageTokens,
    languages_for,
    summarization_prefix,
)
from modelwire_server.worker import DeviceWorker


@dataclass
class _Loaded:
    tokenizer: Any
    model: Any
    engine: Any
    driver: EngineDriver


# Inputs of an encoder whose model and tokenizer name no limit (T5's relative positions
# take any length, at a memory cost quadratic in it).
DEFAULT_MAX_INPUT_TOKENS = 1024

# Per device worker (so per server): load key -> the loaded model its runners share.
_LOADED: weakref.WeakKeyDictionary[DeviceWorker, dict[tuple[Any, ...], _Loaded]] = (
    weakref.WeakKeyDictionary()
)
_LOADED_LOCK = threading.Lock()


class Seq2SeqTask(TextGenerationTask):
    """The shared part: loading (or sharing) the model, and running inputs to texts."""

    def load(self) -> None:
        with _LOADED_LOCK:
            table = _LOADED.setdefault(self.worker, {})
            loaded = table.get(self._load_key())
            if loaded is None:
                loaded = table[self._load_key()] = self._load_model()
        self.tokenizer, self.model = loaded.tokenizer, loaded.model
        self.engine, self.driver = loaded.engine, loaded.driver
        self.max_input_tokens = input_token_limit(
            self.config, self.tokenizer, self.model.config, DEFAULT_MAX_INPUT_TOKENS
        )

    def _load_key(self) -> tuple[Any, ...]:
        c = self.config
        settings = (
            c.max_batch_tokens,
            c.max_waiting,
            c.max_new_tokens,
            c.default_max_new_tokens,
            c.kv_cache_memory,
            c.quantization,
        )
        return (c.source, c.revision, c.trust_remote_code, str(self.device), self.dtype, settings)

    def _load_model(self) -> _Loaded:
        source, kwargs = self.config.source, self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        self.model = self.place(AutoModelForSeq2SeqLM.from_pretrained(source, **kwargs))
        adapter = make_adapter(self.model, self.device)
        # A model with relative positions (T5) sets no encoder limit of its own, and its
        # attention memory grows with the square of the prompt: Generate prompts are held
        # to the same limit as Summarize and Translate inputs.
        limit = input_token_limit(
            self.config, self.tokenizer, self.model.config, DEFAULT_MAX_INPUT_TOKENS
        )
        adapter.max_prompt = min(adapter.max_prompt or limit, limit)
        engine = self.make_engine(adapter)
        driver = EngineDriver(engine, self.worker, self.config.name)
        return _Loaded(self.tokenizer, self.model, engine, driver)

    async def close(self) -> None:
        await super().close()
        if not self.driver.running:  # the last runner of this model: let it go
            with _LOADED_LOCK:
                _LOADED.get(self.worker, {}).pop(self._load_key(), None)

    def encode_all(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(list(texts))["input_ids"]]

    async def generate_texts(
        self,
        prompts: list[list[int]],
        sampling: SamplingParams,
        stopping: StoppingParams,
        *,
        request_id: str,
        deadline: float | None,
        forced_bos_token_id: int | None = None,
    ) -> list[TextResult]:
        """Decode every prompt as its own engine request; one text each, in order."""
        check_input_tokens([len(ids) for ids in prompts], self.max_input_tokens)
        if sampling.n not in (None, 1):
            raise errors.InvalidArgument(
                "sampling.n", "this RPC returns one text per input; use Generate for several"
            )
        requests = [
            GenerationRequest(
                prompt_ids=ids,
                sampling=sampling,
                stopping=stopping,
                request_id=f"{request_id}/{i}",
                deadline=deadline,
                forced_bos_token_id=forced_bos_token_id,
            )
            for i, ids in enumerate(prompts)
        ]
        return await self.complete_all(requests, "inputs")


class SummarizationTask(Seq2SeqTask):
    task = "summarization"
    rpcs = ("Generate", "Tokenize", "Summarize")

    async def summarize(
        self,
        inputs: Sequence[str],
        sampling: SamplingParams,
        stopping: StoppingParams,
        *,
        request_id: str,
        deadline: float | None,
    ) -> list[TextResult]:
        check_text_inputs(inputs, self.config)
        prefix = summarization_prefix(self.model.config)
        prompts = await asyncio.to_thread(self.encode_all, [prefix + text for text in inputs])
        return await self.generate_texts(
            prompts, sampling, stopping, request_id=request_id, deadline=deadline
        )


class TranslationTask(Seq2SeqTask):
    task = "translation"
    rpcs = ("Generate", "Tokenize", "Translate")

    def load(self) -> None:
        super().load()
        hub = {"revision": self.config.revision} if self.config.revision else {}
        self.languages: Languages = languages_for(
            self.config.source, self.model.config, self.tokenizer, **hub
        )

    async def translate(
        self,
        inputs: Sequence[str],
        source_language: str | None,
        target_language: str,
        sampling: SamplingParams,
        stopping: StoppingParams,
        *,
        request_id: str,
        deadline: float | None,
    ) -> list[TextResult]:
        check_text_inputs(inputs, self.config)
        if not target_language:
            raise errors.InvalidArgument("target_language", "must not be empty")
        source = source_language or self.config.source_language or None
        plan = self.languages.plan(source, target_language)
        prompts = await asyncio.to_thread(self.encode_all, [plan.prefix + t for t in inputs])
        if plan.source_token is not None:
            assert isinstance(self.languages, LanguageTokens)
            prompts = [self.languages.encode(ids, plan.source_token) for ids in prompts]
        return await self.generate_texts(
            prompts,
            sampling,
            stopping,
            request_id=request_id,
            deadline=deadline,
            forced_bos_token_id=plan.target_token,
        )
