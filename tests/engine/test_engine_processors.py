"""Penalties and warpers: the first-step distribution matches transformers' processors
(or the formula written here), per row within one batch; greedy decoding with each
penalty matches a plain reference loop that runs the full sequence every step."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
import torch
from engine_helpers import PROMPTS, Bundle, make_engine, run_until_idle, submit
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from modelwire_server.engine import ResolvedSampling, SamplingParams, StoppingParams
from modelwire_server.engine.sampler import apply_penalties, warp


@dataclass
class FakeRow:
    """The fields ``sampler`` reads from an engine row."""

    sampling: ResolvedSampling
    prompt_seen: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    bias: tuple[torch.Tensor, torch.Tensor] | None = None
    is_beam: bool = False
    generator: torch.Generator | None = None
    suppressed: list[int] = field(default_factory=list)
    forced: tuple[int, ...] = ()
    top_logprobs: int = 0
    wants_logprobs: bool = False
    logits_hook: None = None
    constraint: None = None

    def history(self) -> list[int]:
        return []


def _raw_logits(bundle: Bundle, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():  # not inference_mode: the reference edits these in place
        return bundle.model(torch.tensor([prompt])).logits[0, -1].float()


def _resolved(**params: object) -> ResolvedSampling:
    return SamplingParams(**{"temperature": 1.0, "top_k": 0, **params}).resolve(None)


WARPERS = [
    ({"temperature": 0.7}, [TemperatureLogitsWarper(0.7)]),
    ({"top_k": 7}, [TopKLogitsWarper(7)]),
    ({"top_p": 0.8}, [TopPLogitsWarper(0.8)]),
    ({"min_p": 0.05}, [MinPLogitsWarper(0.05)]),
    ({"typical_p": 0.6}, [TypicalLogitsWarper(0.6)]),
    (
        {"temperature": 0.8, "top_k": 30, "top_p": 0.9, "min_p": 0.02},
        [
            TemperatureLogitsWarper(0.8),
            TopKLogitsWarper(30),
            TopPLogitsWarper(0.9),
            MinPLogitsWarper(0.02),
        ],
    ),
]


@pytest.mark.parametrize(("params", "reference"), WARPERS)
def test_warpers_match_transformers(bundle: Bundle, params: dict, reference: list) -> None:
    prompts = [bundle.encode(p) for p in PROMPTS[:3]]
    logits = torch.stack([_raw_logits(bundle, p) for p in prompts])
    # Row 1 has every warper off: it must come out untouched beside the others.
    rows = [_resolved(**params), _resolved(), _resolved(**params)]
    got = warp(logits.clone(), rows)
    expected = LogitsProcessorList(reference)(torch.tensor([prompts[0]]), logits[[0, 2]].clone())
    torch.testing.assert_close(got[[0, 2]], expected, rtol=0, atol=1e-6)
    assert torch.equal(got[1], logits[1])
    assert torch.isinf(got[0]).any() or ("temperature" in params and len(params) == 1)


def test_penalties_match_references(llama: Bundle) -> None:
    prompts = [llama.encode(p) for p in PROMPTS[:3]]
    vocab = llama.model.config.vocab_size
    logits = torch.stack([_raw_logits(llama, p) for p in prompts])
    output = [5, 9, 9, 40, 9]  # an output so far, for the output-only penalties
    counts = torch.zeros(vocab)
    for t, c in Counter(output).items():
        counts[t] = c
    seen = torch.zeros(vocab, dtype=torch.bool)
    seen[prompts[0]] = True
    bias = (torch.tensor([3, 17]), torch.tensor([5.0, -2.5]))
    rows = [
        FakeRow(_resolved(repetition_penalty=1.4), prompt_seen=seen, counts=counts.clone()),
        FakeRow(_resolved(presence_penalty=0.7, frequency_penalty=0.4), counts=counts.clone()),
        FakeRow(_resolved(), bias=bias),
    ]
    got = apply_penalties(logits.clone(), rows)

    ids = torch.tensor([prompts[0] + output])
    rep = RepetitionPenaltyLogitsProcessor(1.4)(ids, logits[:1].clone())[0]
    torch.testing.assert_close(got[0], rep, rtol=0, atol=0)
    freq = logits[1] - counts * 0.4 - (counts > 0).float() * 0.7
    torch.testing.assert_close(got[1], freq, rtol=0, atol=0)
    biased = logits[2].clone()
    biased[3] += 5.0
    biased[17] -= 2.5
    torch.testing.assert_close(got[2], biased, rtol=0, atol=0)


def _reference_penalised(
    bundle: Bundle,
    prompt: list[int],
    n: int,
    repetition: float = 1.0,
    presence: float = 0.0,
    frequency: float = 0.0,
    bias: dict[int, float] | None = None,
) -> list[int]:
    """Greedy with the spec's formulas, the whole sequence through the model each step."""
    ids, out = list(prompt), []
    eos = bundle.generation_config.eos_token_id
    for _ in range(n):
        logits = _raw_logits(bundle, ids)
        for token, value in (bias or {}).items():
            logits[token] += value
        for token in set(ids):
            value = logits[token]
            logits[token] = value / repetition if value > 0 else value * repetition
        for token, count in Counter(out).items():
            logits[token] -= count * frequency + presence
        logits[eos] = float("-inf")  # min_new_tokens = n
        token = int(logits.argmax())
        ids.append(token)
        out.append(token)
    return out


PENALTIES = [
    {"repetition_penalty": 1.5},
    {"presence_penalty": 1.5},
    {"frequency_penalty": 0.8},
    {"logit_bias": {"pick": 4.0}},
]


@pytest.mark.parametrize("penalty", PENALTIES, ids=lambda p: next(iter(p)))
def test_greedy_with_penalty_matches_reference_loop(bundle: Bundle, penalty: dict) -> None:
    n = 24
    prompt = bundle.encode(PROMPTS[1])
    plain = _reference_penalised(bundle, prompt, n)
    if "logit_bias" in penalty:  # boost a token greedy decoding rarely picks
        penalty = {"logit_bias": {plain[0] + 1: 4.0, plain[1]: -3.0}}
    reference = _reference_penalised(
        bundle,
        prompt,
        n,
        repetition=penalty.get("repetition_penalty", 1.0),
        presence=penalty.get("presence_penalty", 0.0),
        frequency=penalty.get("frequency_penalty", 0.0),
        bias=penalty.get("logit_bias"),
    )
    assert reference != plain, "this penalty does not change the output; the test proves little"

    engine = make_engine(bundle)
    sink = submit(
        engine,
        prompt,
        sampling=SamplingParams(temperature=0, **penalty),
        stopping=StoppingParams(max_new_tokens=n, min_new_tokens=n),
    )
    submit(engine, bundle.encode(PROMPTS[2]), sampling=SamplingParams(temperature=0))
    run_until_idle(engine)
    assert sink.tokens() == reference
