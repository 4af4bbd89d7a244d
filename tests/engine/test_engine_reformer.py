"""Reformer (local + LSH attention, its own ``ReformerDynamicCache``) served by the engine
row by row, against transformers' ``generate()`` in the same test (issue 15)."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import (
    PROMPTS,
    Bundle,
    byte_level_tokenizer,
    make_engine,
    run_until_idle,
    submit,
)
from transformers import GenerationConfig

from modelwire_server.engine import SamplingParams, StoppingParams
from modelwire_server.engine.reformer import ReformerAdapter
from tests.reformer_model import tiny_reformer_model

NEW = 12


def tiny_reformer() -> Bundle:
    tok = byte_level_tokenizer()
    model = tiny_reformer_model(len(tok), tok.eos_token_id)
    gc = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return Bundle("reformer", model, tok, gc)


@pytest.fixture(scope="module")
def reformer() -> Bundle:
    return tiny_reformer()


def reference(bundle: Bundle, prompt: list[int], **kwargs: object) -> list[list[int]]:
    with torch.inference_mode():
        out = bundle.model.generate(
            torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            pad_token_id=bundle.generation_config.pad_token_id,
            **kwargs,
        )
    return [row[len(prompt) :] for row in out.tolist()]


def _prompts(bundle: Bundle) -> list[list[int]]:
    """Short ones, and ones longer than a chunk (8) that Reformer pads to a multiple."""
    prompts = [bundle.encode(text) for text in PROMPTS]
    prompts.append(bundle.encode(" ".join(PROMPTS))[:37])
    prompts.append(bundle.encode(" ".join(PROMPTS))[:16])
    assert any(len(p) > 8 and len(p) % 8 for p in prompts)
    return prompts


def test_reformer_greedy_matches_generate_in_one_batch(reformer: Bundle) -> None:
    engine = make_engine(reformer)
    assert isinstance(engine.adapter, ReformerAdapter)
    prompts = _prompts(reformer)
    greedy, stopping = SamplingParams(temperature=0), StoppingParams(NEW, min_new_tokens=NEW)
    sinks = [submit(engine, p, sampling=greedy, stopping=stopping) for p in prompts[:3]]
    engine.step()  # the others join a running batch
    sinks += [submit(engine, p, sampling=greedy, stopping=stopping) for p in prompts[3:]]
    run_until_idle(engine)
    assert engine.stats().max_decode_rows == len(prompts)
    for prompt, sink in zip(prompts, sinks, strict=True):
        assert sink.failed is None, sink.failed
        assert sink.tokens() == reference(reformer, prompt)[0]


def test_reformer_beam_search_matches_generate(reformer: Bundle) -> None:
    engine = make_engine(reformer)
    prompt = _prompts(reformer)[-2]
    sink = submit(
        engine,
        prompt,
        sampling=SamplingParams(num_beams=3, n=2),
        stopping=StoppingParams(NEW, min_new_tokens=NEW),
    )
    run_until_idle(engine)
    expected = reference(reformer, prompt, num_beams=3, num_return_sequences=2)
    assert [[t.id for t in f.tokens] for f in sink.all_finished()] == expected
