"""Admission costs a batch as its padded cache holds it (rows x widest row), so one long
prompt among many short ones never becomes one giant padded prefill (issue 15)."""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import CORPUS, Bundle, make_engine, reference_greedy, run_until_idle, submit
from seq2seq_helpers import reference

from modelwire_server.engine import SamplingParams, StoppingParams

NEW = 6
BUDGET = 480
SHORT = 30


def _record_batches(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """(phase, rows, padded columns) of every prefill and decode forward pass."""
    adapter, seen = engine.adapter, []
    real_prefill, real_decode = adapter.prefill, adapter.decode

    def prefill(inputs: list[Any]) -> Any:
        out = real_prefill(inputs)
        seen.append(("prefill", len(inputs), max(len(i.prompt_ids) for i in inputs)))
        return out

    def decode(state: Any, tokens: Any) -> Any:
        seen.append(("decode", state.rows, state.slots() // state.rows))
        return real_decode(state, tokens)

    monkeypatch.setattr(adapter, "prefill", prefill)
    monkeypatch.setattr(adapter, "decode", decode)
    return seen


def _long_prompt(bundle: Bundle, tokens: int) -> list[int]:
    return bundle.encode(" ".join(CORPUS))[:tokens]


@pytest.mark.parametrize("long_first", [True, False], ids=["long-first", "long-last"])
def test_a_long_prompt_is_not_padded_into_a_batch_of_short_ones(
    gpt2: Bundle, monkeypatch: pytest.MonkeyPatch, long_first: bool
) -> None:
    engine = make_engine(gpt2, max_batch_tokens=BUDGET)
    seen = _record_batches(engine, monkeypatch)
    long = _long_prompt(gpt2, 100)
    shorts = [gpt2.encode(word) for word in ("Hi", "Once", "The", "def", "Hello") * 6][:SHORT]
    prompts = [long, *shorts] if long_first else [*shorts, long]
    # Each alone fits, and so would the sum of their real tokens (30 x 8 + 106 = 346).
    assert sum(len(p) + NEW for p in prompts) <= BUDGET
    greedy, stopping = SamplingParams(temperature=0), StoppingParams(NEW, min_new_tokens=NEW)
    sinks = [submit(engine, p, sampling=greedy, stopping=stopping) for p in prompts]
    run_until_idle(engine)

    for prompt, sink in zip(prompts, sinks, strict=True):
        assert sink.tokens() == reference_greedy(gpt2, prompt, NEW)
    for phase, rows, width in seen:
        assert rows * width <= BUDGET, (phase, rows, width)
    assert max(rows for _, rows, _ in seen) > 1, "short prompts still share batches"
    assert engine.stats().reserved_tokens == 0


def test_a_long_input_is_not_padded_into_a_batch_of_short_ones_seq2seq(
    t5: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Summarize's case: the encoder prefill pads every input to the longest one."""
    engine = make_engine(t5, max_batch_tokens=BUDGET)
    seen = _record_batches(engine, monkeypatch)
    long = _long_prompt(t5, 100)
    prompts = [long, *[t5.encode("hi")] * SHORT]
    assert sum(len(p) + NEW for p in prompts) <= BUDGET
    greedy, stopping = SamplingParams(temperature=0), StoppingParams(NEW, min_new_tokens=NEW)
    sinks = [submit(engine, p, sampling=greedy, stopping=stopping) for p in prompts]
    run_until_idle(engine)

    for prompt, sink in zip(prompts, sinks, strict=True):
        assert sink.tokens() == reference(t5, prompt, NEW)
    for phase, rows, width in seen:
        if phase == "prefill":
            assert rows * (width + NEW) <= BUDGET, (phase, rows, width)
        else:
            assert rows * width <= BUDGET, (phase, rows, width)
    assert engine.stats().reserved_tokens == 0
