"""The engine on the built-in preset's causal LMs, loaded as the server loads them, with
their own generation_config (Llama stops on two EOS ids), against ``generate()``."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import PROMPTS, Bundle, make_engine, run_until_idle, submit
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from modelwire_server.engine import FinishReason, StoppingParams

N = 24


def _load(name: str) -> Bundle:
    try:
        from modelwire_server import preset

        preset.get(name)
    except (ImportError, KeyError) as exc:
        pytest.skip(f"preset model {name} is not available: {exc}")
    path = preset.ensure_model(name)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Bundle(name, model, tokenizer, GenerationConfig.from_pretrained(path))


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_preset_greedy_matches_generate(name: str) -> None:
    bundle = _load(name)
    engine = make_engine(bundle)
    prompts = [bundle.encode(p) for p in PROMPTS]
    sinks = []
    for prompt in prompts:
        sinks.append(submit(engine, prompt, stopping=StoppingParams(max_new_tokens=N)))
        engine.step()
    run_until_idle(engine)
    assert engine.stats().max_decode_rows >= 3
    eos = set(engine.limits.eos_ids)
    for prompt, sink in zip(prompts, sinks, strict=True):
        out = bundle.model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=N,
        )[0, len(prompt) :].tolist()
        ended = next((i for i, t in enumerate(out) if t in eos), None)
        reference = out if ended is None else out[: ended + 1]
        assert sink.tokens() == reference
        reason = sink.finished().reason
        assert reason is (FinishReason.LENGTH if ended is None else FinishReason.EOS)
