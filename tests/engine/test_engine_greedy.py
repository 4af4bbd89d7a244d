"""Greedy decoding through the engine equals transformers' ``generate``, alone and while
other requests of different lengths join, leave and get cancelled mid-generation."""

from __future__ import annotations

from engine_helpers import (
    PROMPTS,
    Bundle,
    Collector,
    distinct_ratio,
    expected_text,
    make_engine,
    reference_greedy,
    run_until_idle,
    submit,
)

from modelwire_server.engine import (
    FinishReason,
    GenerationRequest,
    SamplingParams,
    StoppingParams,
)

N = 24


def greedy(n: int = N) -> dict:
    # min_new_tokens = max_new_tokens keeps EOS out, as in reference_greedy.
    return {
        "sampling": SamplingParams(temperature=0),
        "stopping": StoppingParams(max_new_tokens=n, min_new_tokens=n),
    }


def test_alone_matches_generate(bundle: Bundle) -> None:
    engine = make_engine(bundle)
    prompt = bundle.encode(PROMPTS[1])
    sink = submit(engine, prompt, **greedy())
    run_until_idle(engine)
    reference = reference_greedy(bundle, prompt, N)
    assert sink.tokens() == reference
    assert distinct_ratio(reference) >= 0.5, "the tiny model degenerated; the test proves little"
    finished = sink.finished()
    assert finished.reason is FinishReason.LENGTH
    assert finished.text == sink.text() == expected_text(bundle, prompt, reference)
    assert finished.usage.generated_tokens == N
    assert sink.prompt_info.prompt_tokens == len(prompt)


def test_staggered_join_leave_and_cancel(bundle: Bundle) -> None:
    engine = make_engine(bundle)
    prompts = [bundle.encode(p) for p in PROMPTS]
    lengths = [N, 10, N, 17, N, N]
    sinks: list[Collector] = []
    handles = []

    def add(i: int) -> None:
        sink = Collector()
        request = GenerationRequest(prompt_ids=prompts[i], **greedy(lengths[i]))
        handles.append(engine.submit(request, sink))
        sinks.append(sink)

    add(0)
    add(1)
    for _ in range(3):
        engine.step()
    add(2)
    engine.step()
    add(3)
    add(4)
    for _ in range(2):
        engine.step()
    engine.cancel(handles[4])
    engine.step()
    add(5)
    run_until_idle(engine)

    assert engine.stats().max_decode_rows >= 3
    outputs = {}
    for i, sink in enumerate(sinks):
        if i == 4:
            assert sink.finished().reason is FinishReason.CANCELLED
            assert sink.tokens() == reference_greedy(bundle, prompts[i], N)[: len(sink.tokens())]
            continue
        reference = reference_greedy(bundle, prompts[i], lengths[i])
        assert sink.tokens() == reference, f"request {i} diverged from generate()"
        assert sink.text() == expected_text(bundle, prompts[i], reference)
        assert distinct_ratio(reference) >= 0.5
        outputs[i] = tuple(reference)
    assert len(set(outputs.values())) == len(outputs), "different prompts gave the same output"


def test_stats_prove_batching(gpt2: Bundle) -> None:
    engine = make_engine(gpt2)
    for i in range(4):
        submit(engine, gpt2.encode(PROMPTS[i]), **greedy(8))
        engine.step()
    assert engine.stats().running_rows == 4
    assert engine.stats().cache_tokens > 0
    run_until_idle(engine)
    stats = engine.stats()
    assert stats.max_decode_rows >= 3
    assert stats.running_rows == 0 and stats.waiting == 0 and stats.reserved_tokens == 0
