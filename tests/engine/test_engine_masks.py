"""Decode-step masks: with no padding a step passes no mask, with padding an sdpa model
gets its boolean 4D mask ready-made and others the 2D mask; greedy decoding matches
``generate`` for each attention implementation, with rows of different lengths."""

from __future__ import annotations

import pytest
from engine_helpers import (
    PROMPTS,
    Bundle,
    make_engine,
    reference_greedy,
    run_until_idle,
    submit,
    tiny_gpt2,
    tiny_llama,
)
from transformers import LlamaConfig, MistralConfig

from modelwire_server.engine import StoppingParams
from modelwire_server.engine.adapter import CausalLMAdapter, decode_mask_kind

NEW_TOKENS = 12


def test_mask_kind_follows_the_attention_implementation() -> None:
    sdpa = LlamaConfig(attn_implementation="sdpa")
    eager = LlamaConfig(attn_implementation="eager")
    assert decode_mask_kind(sdpa) == "sdpa"
    assert decode_mask_kind(eager) == "none"
    # A sliding window is cut out of the 2D mask by transformers: keep handing it over.
    assert decode_mask_kind(MistralConfig(sliding_window=16, attn_implementation="sdpa")) == "2d"


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padded_batches_decode_like_generate(make, attention: str) -> None:
    bundle: Bundle = make()
    bundle.model.set_attn_implementation(attention)
    engine = make_engine(bundle)
    assert isinstance(engine.adapter, CausalLMAdapter)
    prompts = [bundle.encode(p) for p in PROMPTS[:4]]
    assert len({len(p) for p in prompts}) > 1  # rows of different lengths: padding
    stopping = StoppingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    sinks = [submit(engine, p, stopping=stopping) for p in prompts]
    engine.step()  # prefill together: one padded state
    state = engine._state
    assert state is not None and state.padded()
    run_until_idle(engine)
    for prompt, sink in zip(prompts, sinks, strict=True):
        assert sink.tokens() == reference_greedy(bundle, prompt, NEW_TOKENS)


def test_padding_is_looked_at_again_only_when_rows_change() -> None:
    bundle = tiny_gpt2()
    engine = make_engine(bundle)
    prompt = bundle.encode(PROMPTS[0])
    stopping = StoppingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    first = submit(engine, prompt, stopping=stopping)
    engine.step()
    assert engine._state is not None and not engine._state.padded()  # one row
    engine.step()
    # A shorter prompt joins a longer row: now there is padding.
    second = submit(engine, prompt[:-2], stopping=stopping)
    engine.step()
    assert engine._state.padded()
    run_until_idle(engine)
    assert first.tokens() == reference_greedy(bundle, prompt, NEW_TOKENS)
    assert second.tokens() == reference_greedy(bundle, prompt[:-2], NEW_TOKENS)
