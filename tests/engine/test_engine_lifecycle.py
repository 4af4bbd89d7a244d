"""Admission, limits, cancellation, time limits, deadlines, out-of-memory and logprobs."""

from __future__ import annotations

import queue
import threading

import pytest
import torch
from engine_helpers import (
    PROMPTS,
    Bundle,
    Collector,
    make_engine,
    reference_greedy,
    run_until_idle,
    submit,
)

from modelwire_server.engine import (
    DeadlineExceeded,
    FinishReason,
    GenerationRequest,
    InvalidRequest,
    OutputOptions,
    QueueFull,
    ResourceExhausted,
    SamplingParams,
    StoppingParams,
)
from tests.tolerances import TINY_LOGPROB_ATOL


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cancel_drops_the_row_within_one_step(gpt2: Bundle) -> None:
    engine = make_engine(gpt2)
    keep = submit(engine, gpt2.encode(PROMPTS[0]), stopping=StoppingParams(max_new_tokens=30))
    sink = submit(engine, gpt2.encode(PROMPTS[1]), stopping=StoppingParams(max_new_tokens=30))
    victim = Collector()
    request = GenerationRequest(gpt2.encode(PROMPTS[2]), stopping=StoppingParams(max_new_tokens=30))
    handle = engine.submit(request, victim)
    for _ in range(3):
        engine.step()
    before = engine.stats()
    assert before.running_rows == 3
    engine.cancel(handle)
    engine.step()
    after = engine.stats()
    assert after.running_rows == 2 and after.last_decode_rows == 2
    assert victim.finished().reason is FinishReason.CANCELLED
    produced = len(victim.tokens())
    run_until_idle(engine)
    assert len(victim.tokens()) == produced, "a cancelled row kept producing"
    assert keep.finished().reason is sink.finished().reason is FinishReason.LENGTH
    assert engine.stats().reserved_tokens == 0


def test_cancel_while_waiting(gpt2: Bundle) -> None:
    engine = make_engine(gpt2)
    request = GenerationRequest(gpt2.encode("Hi"), sampling=SamplingParams(n=2))
    sink = Collector()
    handle = engine.submit(request, sink)
    engine.cancel(handle)
    engine.step()
    assert [f.reason for f in sink.all_finished()] == [FinishReason.CANCELLED] * 2
    assert sink.prompt_info.prompt_tokens == len(request.prompt_ids)


def test_queue_full(gpt2: Bundle) -> None:
    engine = make_engine(gpt2, max_waiting=2)
    submit(engine, gpt2.encode("a"))
    submit(engine, gpt2.encode("b"))
    with pytest.raises(QueueFull):
        submit(engine, gpt2.encode("c"))
    engine.step()  # admitted requests leave the queue
    submit(engine, gpt2.encode("c"))


def test_token_budget_holds_requests_back(gpt2: Bundle) -> None:
    prompt = gpt2.encode(PROMPTS[0])
    cost = len(prompt) + 8
    engine = make_engine(gpt2, max_batch_tokens=2 * cost)
    sinks = [submit(engine, prompt, stopping=StoppingParams(max_new_tokens=8)) for _ in range(3)]
    engine.step()
    stats = engine.stats()
    assert (stats.running_rows, stats.waiting) == (2, 1)
    run_until_idle(engine)
    assert all(s.finished().reason is FinishReason.LENGTH for s in sinks)
    assert engine.stats().max_decode_rows == 2


def test_time_limit_running_and_waiting(gpt2: Bundle) -> None:
    clock = FakeClock()
    prompt = gpt2.encode(PROMPTS[0])
    engine = make_engine(gpt2, clock=clock, max_batch_tokens=len(prompt) + 50)
    limited = StoppingParams(max_new_tokens=50, time_limit_ms=100)
    running = submit(engine, prompt, stopping=limited)
    waiting = submit(engine, prompt, stopping=limited)
    for _ in range(3):
        engine.step()
        clock.now += 0.01
    clock.now += 0.1
    engine.step()
    assert engine.stats().running_rows == 0
    finished = running.finished()
    assert finished.reason is FinishReason.TIME_LIMIT
    assert len(running.tokens()) == 4 and finished.text == running.text()
    assert waiting.finished().reason is FinishReason.TIME_LIMIT
    assert waiting.tokens() == [] and waiting.finished().text == ""
    assert engine.stats().reserved_tokens == 0


def test_deadline_fails_the_request(gpt2: Bundle) -> None:
    clock = FakeClock()
    engine = make_engine(gpt2, clock=clock)
    sink = submit(
        engine,
        gpt2.encode(PROMPTS[0]),
        stopping=StoppingParams(max_new_tokens=50),
        deadline=clock.now + 0.05,
    )
    engine.step()
    clock.now += 0.1
    engine.step()
    assert isinstance(sink.failed.error, DeadlineExceeded)
    assert not sink.all_finished() and not engine.has_work()


INVALID = [
    ({"prompt_ids": []}, "prompt"),
    ({"prompt_ids": [10**6]}, "prompt"),
    ({"prompt_ids": [1] * 300}, "prompt"),
    ({"stopping": StoppingParams(max_new_tokens=201)}, "stopping.max_new_tokens"),
    (
        {"stopping": StoppingParams(max_new_tokens=100), "prompt_ids": [1] * 200},
        "stopping.max_new_tokens",
    ),
    ({"stopping": StoppingParams(max_new_tokens=4, min_new_tokens=5)}, "stopping.min_new_tokens"),
    ({"stopping": StoppingParams(stop=[""])}, "stopping.stop"),
    ({"sampling": SamplingParams(temperature=-1)}, "sampling.temperature"),
    ({"sampling": SamplingParams(top_p=0)}, "sampling.top_p"),
    ({"sampling": SamplingParams(presence_penalty=3)}, "sampling.presence_penalty"),
    ({"sampling": SamplingParams(num_beams=2, n=3)}, "sampling.n"),
    ({"sampling": SamplingParams(logit_bias={10**6: 1.0})}, "sampling.logit_bias"),
    ({"options": OutputOptions(top_logprobs=21)}, "options.top_logprobs"),
    (
        {"sampling": SamplingParams(num_beams=2), "stopping": StoppingParams(stop=["x"])},
        "stopping.stop",
    ),
]


@pytest.mark.parametrize(("fields", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_requests_name_the_field(gpt2: Bundle, fields: dict, field: str) -> None:
    engine = make_engine(gpt2)
    fields = {"prompt_ids": gpt2.encode("Hello"), **fields}
    with pytest.raises(InvalidRequest) as info:
        engine.submit(GenerationRequest(**fields), lambda event: None)
    assert info.value.field == field
    assert not engine.has_work()


def test_out_of_memory_fails_the_youngest_and_keeps_serving(
    gpt2: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(gpt2)
    greedy = SamplingParams(temperature=0)
    stopping = StoppingParams(max_new_tokens=12, min_new_tokens=12)
    old_prompt = gpt2.encode(PROMPTS[1])
    old = submit(engine, old_prompt, sampling=greedy, stopping=stopping)
    engine.step()
    young = submit(engine, gpt2.encode(PROMPTS[2]), sampling=greedy, stopping=stopping)
    # The second block runs out of memory in the first two-row decode step, after the
    # first block has already grown its cache layer: the engine must roll that back.
    block = gpt2.model.transformer.h[1]
    real_forward = block.forward
    fired = []

    def flaky_forward(hidden_states: torch.Tensor, *args: object, **kwargs: object):
        if hidden_states.shape[:2] == (2, 1) and not fired:
            fired.append(True)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(hidden_states, *args, **kwargs)

    monkeypatch.setattr(block, "forward", flaky_forward)
    run_until_idle(engine)
    assert fired and isinstance(young.failed.error, ResourceExhausted)
    assert old.tokens() == reference_greedy(gpt2, old_prompt, 12)
    assert engine.stats().reserved_tokens == 0


def test_logprobs_are_of_the_raw_distribution(llama: Bundle) -> None:
    prompt = llama.encode(PROMPTS[1])
    engine = make_engine(llama)
    sink = submit(
        engine,
        prompt,
        sampling=SamplingParams(temperature=0, repetition_penalty=1.3),
        stopping=StoppingParams(max_new_tokens=6, min_new_tokens=6),
        options=OutputOptions(logprobs=True, top_logprobs=3, echo_prompt_tokens=True),
    )
    run_until_idle(engine)
    tokens = sink.tokens()
    with torch.inference_mode():
        logits = llama.model(torch.tensor([prompt + tokens])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    infos = [t for d in sink.deltas() for t in d.tokens]
    for step, info in enumerate(infos):
        row = logprobs[len(prompt) - 1 + step]
        assert info.logprob == pytest.approx(float(row[info.id]), abs=TINY_LOGPROB_ATOL)
        top = torch.topk(row, 3)
        assert [t[0] for t in info.top] == top.indices.tolist()
        assert [t[2] for t in info.top] == pytest.approx(top.values.tolist(), abs=TINY_LOGPROB_ATOL)
        assert info.text == llama.tokenizer.decode([info.id])
    echoed = sink.prompt_info.tokens
    assert [t.id for t in echoed] == prompt and echoed[0].logprob is None
    for i, info in enumerate(echoed[1:], start=1):
        assert info.logprob == pytest.approx(
            float(logprobs[i - 1, prompt[i]]), abs=TINY_LOGPROB_ATOL
        )
    assert echoed[0].special  # <s>


def test_worker_thread_serves_concurrent_submits(gpt2: Bundle) -> None:
    """The server's shape: one worker thread steps while other threads submit/cancel."""
    engine = make_engine(gpt2)
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            if engine.wait_for_work(timeout=0.05):
                engine.step()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    done: queue.Queue[int] = queue.Queue()
    try:
        sinks = []
        for i, text in enumerate(PROMPTS):
            sink = Collector()
            request = GenerationRequest(
                gpt2.encode(text),
                sampling=SamplingParams(temperature=0),
                stopping=StoppingParams(max_new_tokens=10, min_new_tokens=10),
            )

            def on_event(event: object, sink: Collector = sink, i: int = i) -> None:
                sink(event)  # type: ignore[arg-type]
                if type(event).__name__ in ("Finished", "Failed"):
                    done.put(i)

            engine.submit(request, on_event)
            sinks.append(sink)
        finished = {done.get(timeout=30) for _ in PROMPTS}
    finally:
        stop.set()
        thread.join(timeout=10)
    assert finished == set(range(len(PROMPTS)))
    for text, sink in zip(PROMPTS, sinks, strict=True):
        assert sink.tokens() == reference_greedy(gpt2, gpt2.encode(text), 10)


def test_a_raising_sink_ends_only_its_request(gpt2: Bundle) -> None:
    engine = make_engine(gpt2)
    healthy = submit(engine, gpt2.encode(PROMPTS[0]), stopping=StoppingParams(max_new_tokens=8))

    def broken(event: object) -> None:
        raise RuntimeError("the client's queue is gone")

    engine.submit(GenerationRequest(gpt2.encode(PROMPTS[1])), broken)
    engine.step()
    engine.step()
    assert engine.stats().running_rows == 1
    run_until_idle(engine)
    assert healthy.finished().reason is FinishReason.LENGTH
