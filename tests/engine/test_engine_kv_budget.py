"""The KV budget in bytes: under a budget too small for every stream at once, requests
are preempted and resumed by recomputation, and every output is what it would have
been without interruption (greedy: transformers' ``generate``; seeded: the same
request run alone); a request that cannot fit even alone is refused at submit."""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import (
    CORPUS,
    Bundle,
    Collector,
    make_engine,
    reference_greedy,
    run_until_idle,
    submit,
)

from modelwire_server.engine import (
    FinishReason,
    GenerationEngine,
    GenerationRequest,
    InvalidRequest,
    SamplingParams,
    StoppingParams,
)
from modelwire_server.engine.kvbudget import column_bytes

NEW = 40


def fixed(new: int = NEW, **sampling: Any) -> dict[str, Any]:
    return {
        "sampling": SamplingParams(**{"temperature": 0, **sampling}),
        "stopping": StoppingParams(max_new_tokens=new, min_new_tokens=new),
    }


def prompts(bundle: Bundle, count: int) -> list[list[int]]:
    """``count`` different prompts of 17 to 24 tokens (a full prefix block each, none
    shared)."""
    texts = [" ".join(CORPUS[i % len(CORPUS) :] + CORPUS) for i in range(count)]
    out = [[i + 3, *bundle.encode(text)[: 16 + i % 8]] for i, text in enumerate(texts)]
    assert all(len(p) >= 17 for p in out)
    return out


def budget_for(bundle: Bundle, rows: int, width: int) -> int:
    """Bytes for ``rows`` rows of ``width`` columns plus a growable buffer's slack."""
    column = column_bytes(bundle.model)
    assert column is not None
    return rows * (width + max(32, width // 4)) * column


def run_watching(engine: GenerationEngine, max_steps: int = 3000) -> int:
    """Run to idle; return the most KV bytes the engine held after any step."""
    most = steps = 0
    while engine.has_work():
        engine.step()
        most = max(most, engine.stats().kv_bytes)
        steps += 1
        assert steps <= max_steps, "the engine did not finish"
    return most


def test_column_bytes_read_from_the_config(gpt2: Bundle, llama: Bundle) -> None:
    # GPT-2: 2 layers x 4 heads x 16 dims; Llama: 2 layers x 2 KV heads x 16 dims;
    # keys and values, float32.
    assert column_bytes(gpt2.model) == 2 * 2 * 4 * 16 * 4
    assert column_bytes(llama.model) == 2 * 2 * 2 * 16 * 4


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_sixteen_long_streams_under_a_small_budget_all_complete(
    bundle: Bundle, prefix_caching: bool
) -> None:
    budget = budget_for(bundle, 4, 25 + NEW)
    engine = make_engine(bundle, kv_cache_memory=budget, prefix_caching=prefix_caching)
    items = prompts(bundle, 16)
    sinks = [submit(engine, p, **fixed()) for p in items]
    most = run_watching(engine)

    stats = engine.stats()
    assert stats.kv_budget == budget
    assert stats.preemptions > 0  # the budget holds about 4 of the 16 at full length
    assert most <= budget
    assert stats.kv_bytes == 0  # all finished: nothing held
    if prefix_caching:
        # No two prompts share a block: hits are resumed rows finding their own prefix
        # (prompt, and tokens stored when an earlier resumption prefilled them).
        assert stats.prefix_hit_tokens > 0
    for prompt, sink in zip(items, sinks, strict=True):
        assert sink.failed is None
        assert sink.finished().reason is FinishReason.LENGTH
        assert sink.tokens() == reference_greedy(bundle, prompt, NEW)
        assert sink.finished().usage.generated_tokens == NEW
        # Nothing was emitted twice: the deltas hold each token once, the text matches.
        assert sink.finished().text == sink.text()


def test_without_a_budget_nothing_is_preempted(gpt2: Bundle) -> None:
    engine = make_engine(gpt2)
    sinks = [submit(engine, p, **fixed()) for p in prompts(gpt2, 16)]
    run_until_idle(engine)
    assert engine.stats().preemptions == 0
    assert engine.stats().kv_budget == 0
    assert all(s.finished().reason is FinishReason.LENGTH for s in sinks)


KINDS = {
    "seeded n=2 with repetition penalty": (
        fixed(temperature=1.0, top_k=0, seed=11, n=2, repetition_penalty=1.3),
        2,
    ),
    "beams 3, n=2": (fixed(num_beams=3, n=2), 2),
    "seeded top-p with presence penalty": (
        fixed(temperature=0.8, top_p=0.9, seed=5, presence_penalty=0.5),
        1,
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_seeded_n_and_beams_resume_unchanged(llama: Bundle, kind: str) -> None:
    """Each row of an n > 1 request keeps its own generator and ids; a beam search its
    hypotheses: preempted or not, the outputs are those of the request run alone."""
    fields, sequences = KINDS[kind]
    items = prompts(llama, 5)

    def outputs(sink: Collector) -> list[tuple[str, list[int]]]:
        assert sink.failed is None
        return [(sink.finished(k).text, sink.tokens(k)) for k in range(sequences)]

    alone = []
    for prompt in items:
        engine = make_engine(llama)
        sink = submit(engine, prompt, **fields)
        run_until_idle(engine)
        alone.append(outputs(sink))

    rows = fields["sampling"].num_beams or sequences
    engine = make_engine(llama, kv_cache_memory=budget_for(llama, 2 * rows, 25 + NEW))
    sinks = [Collector() for _ in items]
    handles = [engine.submit(_request(p, fields), s) for p, s in zip(items, sinks, strict=True)]
    run_until_idle(engine, 5000)
    assert engine.stats().preemptions > 0
    assert any(h.group.preemptions for h in handles)
    for i, sink in enumerate(sinks):
        assert outputs(sink) == alone[i], f"request {i} changed by preemption"


def _request(prompt: list[int], fields: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(prompt_ids=prompt, **fields)


def test_lowest_priority_then_youngest_is_preempted(gpt2: Bundle) -> None:
    engine = make_engine(gpt2, kv_cache_memory=budget_for(gpt2, 3, 25 + NEW))
    items = prompts(gpt2, 6)
    handles = []
    for i, prompt in enumerate(items):
        priority = 5 if i < 3 else 0  # the first three matter more
        request = GenerationRequest(prompt_ids=prompt, priority=priority, **fixed())
        handles.append(engine.submit(request, Collector()))
    run_until_idle(engine)
    high = [h.group.preemptions for h in handles[:3]]
    low = [h.group.preemptions for h in handles[3:]]
    assert sum(low) > 0
    assert sum(high) == 0  # room was always made from the low-priority requests


def test_a_request_that_cannot_fit_alone_is_refused_naming_the_limit(gpt2: Bundle) -> None:
    engine = make_engine(gpt2, kv_cache_memory=budget_for(gpt2, 1, 30))
    with pytest.raises(InvalidRequest) as caught:
        submit(engine, prompts(gpt2, 1)[0], **fixed(100))
    assert caught.value.field == "stopping.max_new_tokens"
    assert "kv_cache_memory" in caught.value.message
    # n rows count: two rows of what one fits are refused too.
    with pytest.raises(InvalidRequest):
        submit(engine, [5] * 10, **fixed(12, temperature=1.0, n=2))
    sink = submit(engine, [5] * 10, **fixed(12))
    run_until_idle(engine)
    assert sink.finished().reason is FinishReason.LENGTH


def test_cancelling_a_preempted_request_ends_it_with_its_text_so_far(gpt2: Bundle) -> None:
    engine = make_engine(gpt2, kv_cache_memory=budget_for(gpt2, 2, 25 + NEW))
    items = prompts(gpt2, 4)
    sinks = [Collector() for _ in items]
    handles = [engine.submit(_request(p, fixed()), s) for p, s in zip(items, sinks, strict=True)]
    victim = None
    for _ in range(500):
        engine.step()
        victim = next((h for h in handles if h.group.preempted_rows is not None), None)
        if victim is not None:
            break
    assert victim is not None, "nothing was preempted"
    sink = next(s for h, s in zip(handles, sinks, strict=True) if h is victim)
    so_far = sink.text()
    assert so_far
    engine.cancel(victim)
    run_until_idle(engine)
    finished = sink.finished()
    assert finished.reason is FinishReason.CANCELLED
    assert finished.text == so_far
    for other, s in zip(handles, sinks, strict=True):
        if other is not victim:
            assert s.finished().reason is FinishReason.LENGTH


def test_encoder_decoders_resume_from_their_decoder_ids(seq2seq: Bundle) -> None:
    """An encoder-decoder's preempted rows recompute the encoder and their decoder ids
    (start tokens and output but the pending one): greedy output is still generate's."""
    from seq2seq_helpers import SOURCES, reference

    forced = {}
    if seq2seq.name == "m2m100":
        forced = {"forced_bos_token_id": int(seq2seq.tokenizer.convert_tokens_to_ids("__fr__"))}
    items = [seq2seq.encode(SOURCES[i % len(SOURCES)] + " " * i) for i in range(8)]
    width = max(len(p) for p in items)
    column = column_bytes(seq2seq.model)
    assert column is not None
    budget = 3 * (width + 24 + 1 + 32) * column  # about three of the eight at full length
    engine = make_engine(seq2seq, kv_cache_memory=budget)
    sinks = [submit(engine, p, **fixed(24), **forced) for p in items]
    run_until_idle(engine, 5000)
    assert engine.stats().preemptions > 0
    for prompt, sink in zip(items, sinks, strict=True):
        assert sink.failed is None
        assert sink.tokens() == reference(seq2seq, prompt, 24, **forced)


def test_held_bytes_count_padding_and_spare_columns_and_predict_the_next_step(
    gpt2: Bundle,
) -> None:
    import torch

    from modelwire_server.engine.adapter import CausalLMAdapter, PrefillInput
    from modelwire_server.engine.kvbudget import bytes_after_step, held_bytes
    from modelwire_server.engine.kvcache import grown_columns

    adapter = CausalLMAdapter(gpt2.model, torch.device("cpu"))
    column = column_bytes(gpt2.model)
    assert column is not None
    long, short = prompts(gpt2, 2)[1], [5, 6, 7]
    state = adapter.prefill([PrefillInput(long), PrefillInput(short)]).state
    # Two rows, both as wide as the long prompt (the short one padded), plus the room
    # a growable buffer keeps.
    width = len(long)
    assert held_bytes(state) == 2 * grown_columns(width) * column
    for _ in range(40):  # past the first buffer's room: it is reallocated a quarter wider
        predicted = bytes_after_step(state)
        adapter.decode(state, torch.tensor([1, 2]))
        assert held_bytes(state) == predicted
    assert held_bytes(state) > 2 * grown_columns(width) * column
