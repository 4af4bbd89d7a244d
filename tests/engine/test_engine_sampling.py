"""Seeded sampling: reproducible whatever the batch holds, and distributed as the model says."""

from __future__ import annotations

import torch
from engine_helpers import PROMPTS, Bundle, make_engine, run_until_idle, submit

try:
    from scipy import stats
except ImportError:  # scipy comes with the server extra; the test still runs without it
    stats = None

from modelwire_server.engine import SamplingParams, StoppingParams

N = 20


def sampled(seed: int | None, n: int = 1, **extra: object) -> dict:
    return {
        "sampling": SamplingParams(temperature=1.0, top_k=0, seed=seed, n=n, **extra),
        "stopping": StoppingParams(max_new_tokens=N, min_new_tokens=N),
    }


def test_seed_is_reproducible_and_batch_invariant(bundle: Bundle) -> None:
    prompt = bundle.encode(PROMPTS[0])
    engine = make_engine(bundle)
    alone = submit(engine, prompt, **sampled(seed=1234))
    run_until_idle(engine)

    # The same request again, now among others that join at different steps.
    engine = make_engine(bundle)
    submit(engine, bundle.encode(PROMPTS[1]), **sampled(seed=7))
    engine.step()
    crowded = submit(engine, prompt, **sampled(seed=1234))
    engine.step()
    submit(engine, bundle.encode(PROMPTS[3]), **sampled(seed=None))
    submit(engine, bundle.encode(PROMPTS[4]), sampling=SamplingParams(temperature=0))
    run_until_idle(engine)
    assert engine.stats().max_decode_rows >= 3

    other = make_engine(bundle)
    different = submit(other, prompt, **sampled(seed=1235))
    run_until_idle(other)

    assert crowded.tokens() == alone.tokens()
    assert crowded.text() == alone.text()
    assert different.tokens() != alone.tokens()
    assert alone.finished().seed == 1234


def test_unset_seed_is_reported_and_replays(gpt2: Bundle) -> None:
    prompt = gpt2.encode(PROMPTS[2])
    engine = make_engine(gpt2)
    first = submit(engine, prompt, **sampled(seed=None))
    run_until_idle(engine)
    seed = first.finished().seed
    assert seed is not None
    replay = submit(engine, prompt, **sampled(seed=seed))
    run_until_idle(engine)
    assert replay.tokens() == first.tokens()


def test_n_sequences_use_consecutive_seeds(llama: Bundle) -> None:
    prompt = llama.encode(PROMPTS[5])
    engine = make_engine(llama)
    group = submit(engine, prompt, **sampled(seed=40, n=3))
    singles = [submit(engine, prompt, **sampled(seed=40 + i)) for i in range(3)]
    run_until_idle(engine)
    assert engine.stats().max_decode_rows == 6
    for i, single in enumerate(singles):
        assert group.tokens(i) == single.tokens()
        assert group.finished(i).seed == 40 + i
    assert len({tuple(group.tokens(i)) for i in range(3)}) == 3


def _first_token_draws(bundle: Bundle, prompt: list[int], draws: int, **extra) -> list[int]:
    engine = make_engine(bundle, max_waiting=draws, max_batch_tokens=draws * 64)
    sinks = [
        submit(
            engine,
            prompt,
            sampling=SamplingParams(**{"temperature": 1.0, "top_k": 0, "seed": seed, **extra}),
            stopping=StoppingParams(max_new_tokens=1, ignore_eos=True),
        )
        for seed in range(draws)
    ]
    run_until_idle(engine)
    return [s.tokens()[0] for s in sinks]


def test_first_token_frequencies_fit_the_model(llama: Bundle) -> None:
    prompt = llama.encode(PROMPTS[1])
    draws = 600
    tokens = _first_token_draws(llama, prompt, draws)
    with torch.inference_mode():
        logits = llama.model(torch.tensor([prompt])).logits[0, -1]
    probs = torch.softmax(logits.double(), dim=-1)
    # Group the vocabulary into bins of at least 10% of the mass (60 expected draws),
    # since most single tokens are too unlikely for a chi-square cell of their own.
    bins: list[list[int]] = [[]]
    for token in torch.argsort(probs, descending=True).tolist():
        if float(probs[bins[-1]].sum()) >= 0.1:
            bins.append([])
        bins[-1].append(token)
    if float(probs[bins[-1]].sum()) < 0.1:
        last = bins.pop()
        bins[-1] += last
    bin_of = {t: i for i, members in enumerate(bins) for t in members}
    observed = [0] * len(bins)
    for token in tokens:
        observed[bin_of[token]] += 1
    expected = [float(probs[members].sum()) * draws for members in bins]
    assert 5 <= len(bins) <= 14 and min(expected) >= 5
    expected = [e * draws / sum(expected) for e in expected]
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    if stats is not None:
        assert stats.chi2.sf(statistic, len(bins) - 1) > 0.001, (observed, expected)
    else:
        # Upper 0.1% points of chi-square for 4..13 degrees of freedom (standard table):
        # a correct sampler exceeds them once in a thousand runs.
        critical = [18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26, 32.91, 34.53]
        assert statistic < critical[len(bins) - 1 - 4], (observed, expected)
    # And the sampler is not just argmax: many distinct first tokens come up.
    assert len(set(tokens)) > 20


def test_top_k_limits_the_choices(gpt2: Bundle) -> None:
    prompt = gpt2.encode(PROMPTS[3])
    tokens = _first_token_draws(gpt2, prompt, 200, top_k=5)
    with torch.inference_mode():
        logits = gpt2.model(torch.tensor([prompt])).logits[0, -1]
    allowed = set(torch.topk(logits, 5).indices.tolist())
    assert set(tokens) <= allowed
    assert len(set(tokens)) > 1
