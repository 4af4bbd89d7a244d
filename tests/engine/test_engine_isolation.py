"""One request's failure stays its own: out-of-range floats are refused at submit, and
a step that raises because of one request fails that request alone while its
neighbours in the batch finish with exactly the output they would have had."""

from __future__ import annotations

import math
from typing import Any

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
    FinishReason,
    GenerationRequest,
    InvalidRequest,
    SamplingParams,
    StoppingParams,
)

FLOAT_FIELDS = [
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "length_penalty",
]
# float32's largest values (what a proto float can carry), infinities and NaN.
BAD_FLOATS = [math.nan, math.inf, -math.inf, 3.4e38, -3.4e38]


@pytest.mark.parametrize("value", BAD_FLOATS, ids=str)
@pytest.mark.parametrize("name", [*FLOAT_FIELDS, "logit_bias"])
def test_out_of_range_floats_are_refused_naming_the_field(
    gpt2: Bundle, name: str, value: float
) -> None:
    engine = make_engine(gpt2)
    if name == "logit_bias":
        sampling = SamplingParams(logit_bias={5: value})
    else:
        beams = {"num_beams": 2} if name == "length_penalty" else {}
        sampling = SamplingParams(**{name: value, **beams})
    with pytest.raises(InvalidRequest) as info:
        engine.submit(GenerationRequest(gpt2.encode("Hi"), sampling=sampling), Collector())
    assert info.value.field == f"sampling.{name}"
    assert "finite" in info.value.message
    assert str(value) in info.value.message or name == "logit_bias"
    assert not engine.has_work()


def test_float_ranges_refuse_tiny_divisors_and_keep_sensible_values(gpt2: Bundle) -> None:
    """Scores are divided by the temperature and the repetition penalty: a denormal one
    would overflow every logit to inf. Values in real use stay served."""
    engine = make_engine(gpt2)
    for name in ("temperature", "repetition_penalty"):
        sampling = SamplingParams(**{name: 1e-45})
        with pytest.raises(InvalidRequest) as info:
            engine.submit(GenerationRequest(gpt2.encode("Hi"), sampling=sampling), Collector())
        assert info.value.field == f"sampling.{name}"
    sinks = [
        submit(engine, gpt2.encode("Hi"), sampling=sampling, stopping=StoppingParams(4))
        for sampling in (
            SamplingParams(num_beams=2, length_penalty=-3.0),
            SamplingParams(num_beams=2, length_penalty=2.0),
            SamplingParams(temperature=0.7, top_p=0.9, min_p=0.05, typical_p=0.95),
            SamplingParams(repetition_penalty=1.3, presence_penalty=-2, frequency_penalty=2),
        )
    ]
    run_until_idle(engine)
    assert all(sink.failed is None and sink.all_finished() for sink in sinks)
    assert engine.stats().reserved_tokens == 0


GREEDY = SamplingParams(temperature=0)
LONG = StoppingParams(max_new_tokens=30, min_new_tokens=30)


def _poison_token(bundle: Bundle, *prompts: list[int]) -> int:
    """A token id that none of ``prompts`` nor their greedy continuations contain."""
    used = set()
    for prompt in prompts:
        used |= set(prompt) | set(reference_greedy(bundle, prompt, 30))
    return next(t for t in range(5, len(bundle.tokenizer)) if t not in used)


def _raise_on_token(monkeypatch: pytest.MonkeyPatch, bundle: Bundle, token: int) -> list[int]:
    """Make the model's forward pass raise whenever ``token`` is among its input ids, as a
    model bug triggered by one request's input would; returns the batch sizes it hit."""
    model = bundle.model
    real = model.forward
    hits: list[int] = []

    def forward(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and bool((ids == token).any()):
            hits.append(int(ids.shape[0]))
            raise RuntimeError("index out of range in self (simulated model bug)")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return hits


def test_a_decode_step_that_raises_fails_only_its_request(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    neighbour_prompt = bundle.encode(PROMPTS[1])
    later_prompt = bundle.encode(PROMPTS[5])
    poison = _poison_token(bundle, neighbour_prompt, later_prompt)
    hits = _raise_on_token(monkeypatch, bundle, poison)
    engine = make_engine(bundle)
    neighbour = submit(engine, neighbour_prompt, sampling=GREEDY, stopping=LONG)
    for _ in range(3):
        engine.step()
    # Its first token is the poison (biased in), so its first decode step raises.
    poisoned = submit(
        engine,
        bundle.encode(PROMPTS[0]),
        sampling=SamplingParams(temperature=0, logit_bias={poison: 100.0}),
        stopping=LONG,
    )
    engine.step()
    engine.step()
    later = submit(engine, later_prompt, sampling=GREEDY, stopping=LONG)
    run_until_idle(engine)

    assert 2 in hits, "the poisoned row never reached a batched decode step"
    assert poisoned.failed is not None and "simulated" in str(poisoned.failed.error)
    assert neighbour.failed is None and later.failed is None
    assert neighbour.tokens() == reference_greedy(bundle, neighbour_prompt, 30)
    assert neighbour.finished().reason is FinishReason.LENGTH
    assert later.tokens() == reference_greedy(bundle, later_prompt, 30)
    assert engine.stats().reserved_tokens == 0


def test_a_prefill_that_raises_fails_only_its_request(
    gpt2: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    neighbour_prompt = gpt2.encode(PROMPTS[1])
    poison = _poison_token(gpt2, neighbour_prompt)
    hits = _raise_on_token(monkeypatch, gpt2, poison)
    engine = make_engine(gpt2)
    # Admitted together: one prefill holds both prompts.
    neighbour = submit(engine, neighbour_prompt, sampling=GREEDY, stopping=LONG)
    poisoned = submit(engine, [poison, *gpt2.encode("Hi")], sampling=GREEDY, stopping=LONG)
    run_until_idle(engine)
    assert hits[0] == 2
    assert poisoned.failed is not None
    assert neighbour.failed is None
    assert neighbour.tokens() == reference_greedy(gpt2, neighbour_prompt, 30)
    assert neighbour.prompt_info.prompt_tokens == len(neighbour_prompt)


def _seeded(prompt: list[int]) -> GenerationRequest:
    return GenerationRequest(
        prompt,
        sampling=SamplingParams(temperature=1.0, top_k=0, seed=1234),
        stopping=StoppingParams(max_new_tokens=20, min_new_tokens=20),
    )


def test_token_selection_that_raises_fails_only_its_request(gpt2: Bundle) -> None:
    """A request's own logits hook raises at its fourth step: that request fails; a
    greedy and a seeded neighbour keep exactly their outputs (the seeded one drew no
    extra random numbers while the culprit was found)."""
    greedy_prompt, seeded_prompt = gpt2.encode(PROMPTS[1]), gpt2.encode(PROMPTS[2])
    alone = Collector()
    solo = make_engine(gpt2)
    solo.submit(_seeded(seeded_prompt), alone)
    run_until_idle(solo)

    calls = []

    def hook(ids: list[int], scores: torch.Tensor) -> torch.Tensor:
        calls.append(len(ids))
        if len(calls) >= 4:
            raise ValueError("the hook broke")
        return scores

    engine = make_engine(gpt2)
    greedy = submit(engine, greedy_prompt, sampling=GREEDY, stopping=LONG)
    seeded = Collector()
    engine.submit(_seeded(seeded_prompt), seeded)
    broken = submit(
        engine, gpt2.encode(PROMPTS[0]), sampling=GREEDY, stopping=LONG, logits_hook=hook
    )
    run_until_idle(engine)
    assert broken.failed is not None and "the hook broke" in str(broken.failed.error)
    assert len(broken.tokens()) == 3
    assert greedy.tokens() == reference_greedy(gpt2, greedy_prompt, 30)
    assert seeded.failed is None and seeded.tokens() == alone.tokens()
    assert engine.stats().reserved_tokens == 0


def test_a_beam_group_that_raises_fails_alone(
    gpt2: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelwire_server.engine import beam

    real_step = beam.BeamSearch.step

    def step(self: beam.BeamSearch, logprobs: torch.Tensor, info: Any) -> beam.BeamStep:
        if self.length_penalty == 0.25 and self.generated == 2:
            raise ZeroDivisionError("float division by zero")
        return real_step(self, logprobs, info)

    monkeypatch.setattr(beam.BeamSearch, "step", step)
    engine = make_engine(gpt2)
    prompt = gpt2.encode(PROMPTS[3])
    neighbour = submit(engine, prompt, sampling=GREEDY, stopping=LONG)
    beams = SamplingParams(num_beams=3, length_penalty=0.25)
    broken = submit(engine, gpt2.encode("Hi"), sampling=beams, stopping=StoppingParams(10))
    run_until_idle(engine)
    assert isinstance(broken.failed.error, ZeroDivisionError)
    assert neighbour.tokens() == reference_greedy(gpt2, prompt, 30)
