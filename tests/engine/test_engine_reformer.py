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
from transformers import GenerationConfig, ReformerConfig, ReformerModelWithLMHead

from modelwire_server.engine import SamplingParams, StoppingParams
from modelwire_server.engine.reformer import ReformerAdapter

NEW = 12


def tiny_reformer() -> Bundle:
    tok = byte_level_tokenizer()
    torch.manual_seed(0)
    config = ReformerConfig(
        vocab_size=len(tok),
        attn_layers=["local", "lsh"],
        hidden_size=32,
        feed_forward_size=64,
        num_attention_heads=2,
        attention_head_size=16,
        axial_pos_embds=True,
        axial_pos_shape=[8, 16],
        axial_pos_embds_dim=[16, 16],
        max_position_embeddings=128,
        local_attn_chunk_length=8,
        lsh_attn_chunk_length=8,
        num_buckets=4,
        num_hashes=1,
        hash_seed=0,  # LSH rotations are random per forward pass unless seeded
        initializer_range=0.5,
        is_decoder=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    model = ReformerModelWithLMHead(config).eval()
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
