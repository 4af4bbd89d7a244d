"""Prefix caching and chunked prefill: outputs equal transformers' ``generate`` whatever
part of the prompt came from the cache and however the rest was cut into chunks, and
the cache's bookkeeping (hits, pins, eviction) is what it says."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from engine_helpers import (
    CORPUS,
    Bundle,
    Collector,
    distinct_ratio,
    make_engine,
    reference_greedy,
    run_until_idle,
    submit,
)

from modelwire_server.engine import (
    FinishReason,
    GenerationEngine,
    GenerationRequest,
    OutputOptions,
    SamplingParams,
    StoppingParams,
)
from modelwire_server.engine.prefix_cache import PrefixCache

N = 12
BLOCK = 16


def greedy(n: int = N) -> dict[str, Any]:
    return {
        "sampling": SamplingParams(temperature=0),
        "stopping": StoppingParams(max_new_tokens=n, min_new_tokens=n),
    }


def long_ids(bundle: Bundle, length: int, start: int = 0) -> list[int]:
    """``length`` token ids of varied text (the corpus from line ``start`` on)."""
    ids = bundle.encode(" ".join(CORPUS[start : start + 40]))
    assert len(ids) >= length
    return ids[:length]


def expected_hit(stored: list[list[int]], prompt: list[int], block: int = BLOCK) -> int:
    """The tokens a lookup must reuse: the longest run of ``stored`` (the full blocks of
    earlier prompts) that ``prompt`` starts with, in whole blocks, leaving its last
    token to compute."""
    best = 0
    for earlier in stored:
        shared = 0
        while shared < min(len(earlier), len(prompt)) and earlier[shared] == prompt[shared]:
            shared += 1
        best = max(best, shared)
    return min(best, len(prompt) - 1) // block * block


def run_one(engine: GenerationEngine, prompt: list[int], n: int = N, **fields: Any) -> Collector:
    sink = submit(engine, prompt, **(greedy(n) | fields))
    run_until_idle(engine)
    assert sink.failed is None, sink.failed
    return sink


@pytest.mark.parametrize("chunk", [512, 3])
def test_hits_of_several_lengths_match_generate(bundle: Bundle, chunk: int) -> None:
    engine = make_engine(bundle, prefill_chunk_tokens=chunk)
    base = long_ids(bundle, 5 * BLOCK + 1)
    first = base[: 3 * BLOCK + 5]
    # After ``first``: the whole of it again (all full blocks hit), one block of it, a
    # longer prompt over it, a prompt that differs inside block 2, the full 5 blocks +
    # 1 (the hit leaves only the last token) and then that one again.
    cases = [
        first,
        base[:BLOCK] + long_ids(bundle, 20, start=7),
        base,
        [*base[: BLOCK + 3], base[0], *base[BLOCK + 4 :]],
        base,
    ]
    run_one(engine, first)
    seen = [first]
    hits = []
    for prompt in cases:
        sink = run_one(engine, prompt)
        reference = reference_greedy(bundle, prompt, N)
        assert sink.tokens() == reference
        assert distinct_ratio(reference) >= 0.4
        hit = sink.finished().usage.cached_prompt_tokens
        stored = [p[: len(p) // BLOCK * BLOCK] for p in seen]
        assert hit == expected_hit(stored, prompt), (len(prompt), hit)
        hits.append(hit)
        seen.append(prompt)
    assert hits[-1] == len(base) - 1  # all but the last token came from the cache
    assert hits[0] == 3 * BLOCK and hits[1] == BLOCK and hits[3] == BLOCK
    stats = engine.stats()
    assert stats.prefix_hit_tokens == sum(hits)
    assert stats.prefix_prompt_tokens == sum(map(len, [first, *cases]))
    assert stats.prefix_blocks == stats.prefix_stored_blocks > 0


@pytest.mark.parametrize("chunk", [1, 3, 16, 50])
def test_chunked_prefill_matches_generate_while_others_decode(bundle: Bundle, chunk: int) -> None:
    engine = make_engine(bundle, prefill_chunk_tokens=chunk, prefix_caching=False)
    short = [long_ids(bundle, 7, start=3), long_ids(bundle, 11, start=5)]
    long = long_ids(bundle, 70, start=1)
    sinks = [submit(engine, p, **greedy(90)) for p in short]
    engine.step()
    while engine.stats().prefilling:  # short prompts are in parts too when chunk < 11
        engine.step()
    assert engine.stats().running_rows == 2
    late = submit(engine, long, **greedy())
    engine.step()  # admitted: prefilling in parts (or at once, when it fits a chunk)
    gaps = []
    while engine.stats().prefilling:
        before = [len(s.tokens()) for s in sinks]
        engine.step()
        gaps.append([len(s.tokens()) - b for s, b in zip(sinks, before, strict=True)])
    # Each step ran one chunk and one decode step: the running rows never waited.
    assert all(g == [1, 1] for g in gaps), gaps
    assert len(gaps) == max(0, -(-len(long) // chunk) - 1)
    run_until_idle(engine)
    assert late.tokens() == reference_greedy(bundle, long, N)
    for sink, prompt in zip(sinks, short, strict=True):
        assert sink.tokens() == reference_greedy(bundle, prompt, 90)
    assert engine.stats().prefix_prompt_tokens == 0  # prefix_caching off: no lookups


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_hit_and_chunks_together_with_several_prompts_at_once(bundle: Bundle, chunk: int) -> None:
    engine = make_engine(bundle, prefill_chunk_tokens=chunk)
    system = long_ids(bundle, 2 * BLOCK + 4)
    run_one(engine, system + long_ids(bundle, 5, start=9))
    prompts = [system + long_ids(bundle, k, start=k) for k in (3, 19, 40)]
    prompts.append(long_ids(bundle, 30, start=11))  # a miss, also in parts when chunk < 30
    sinks = [submit(engine, p, **greedy()) for p in prompts]
    run_until_idle(engine)
    for sink, prompt in zip(sinks, prompts, strict=True):
        assert sink.failed is None
        assert sink.tokens() == reference_greedy(bundle, prompt, N)
    assert [s.finished().usage.cached_prompt_tokens for s in sinks] == [2 * BLOCK] * 3 + [0]


def test_seeded_sampling_same_with_and_without_a_hit(bundle: Bundle) -> None:
    prompt = long_ids(bundle, 3 * BLOCK + 2)
    sampling = SamplingParams(temperature=1.0, top_k=0, seed=1234)
    stopping = StoppingParams(max_new_tokens=20, min_new_tokens=20)
    outputs = []
    for caching in (False, True):
        engine = make_engine(bundle, prefix_caching=caching, prefill_chunk_tokens=5)
        run_one(engine, prompt[: 2 * BLOCK + 1])  # stores 2 blocks when caching
        sink = run_one(engine, prompt, sampling=sampling, stopping=stopping)
        hit = sink.finished().usage.cached_prompt_tokens
        assert hit == (2 * BLOCK if caching else 0)
        outputs.append(sink.tokens())
    assert outputs[0] == outputs[1]
    assert distinct_ratio(outputs[0]) >= 0.4


def test_beams_and_n_rows_start_from_a_hit(gpt2: Bundle) -> None:
    prompt = long_ids(gpt2, 2 * BLOCK + 3)
    fields = {
        "sampling": SamplingParams(temperature=1.0, top_k=0, seed=7, n=3),
        "stopping": StoppingParams(max_new_tokens=10, min_new_tokens=10),
    }
    beams = {
        "sampling": SamplingParams(num_beams=3, temperature=0),
        "stopping": StoppingParams(max_new_tokens=8, min_new_tokens=8),
    }
    results = []
    for caching in (False, True):
        engine = make_engine(gpt2, prefix_caching=caching)
        run_one(engine, prompt)
        sampled = run_one(engine, prompt, **fields)
        beam = run_one(engine, prompt, **beams)
        assert sampled.finished().usage.cached_prompt_tokens == (2 * BLOCK if caching else 0)
        results.append(
            ([sampled.tokens(i) for i in range(3)], [f.text for f in beam.all_finished()])
        )
    assert results[0] == results[1]


def test_prompt_logprobs_and_prefix_off_never_use_the_cache(gpt2: Bundle) -> None:
    prompt = long_ids(gpt2, 3 * BLOCK)
    options = OutputOptions(echo_prompt_tokens=True, logprobs=True, top_logprobs=2)
    infos = []
    for caching in (True, False):
        engine = make_engine(gpt2, prefix_caching=caching)
        run_one(engine, prompt)
        sink = run_one(engine, prompt, options=options)
        assert sink.finished().usage.cached_prompt_tokens == 0
        infos.append([(t.id, round(t.logprob or 0.0, 3)) for t in sink.prompt_info.tokens or []])
        assert engine.stats().prefix_blocks == (3 if caching else 0)
    assert infos[0] == infos[1] and len(infos[0]) == len(prompt)


def test_eviction_under_a_tiny_bound_keeps_pinned_blocks_and_outputs_right(
    bundle: Bundle,
) -> None:
    probe = make_engine(bundle)
    run_one(probe, long_ids(bundle, BLOCK + 1), n=1)
    block_bytes = probe.stats().prefix_bytes
    assert block_bytes > 0
    # Room for three blocks. A prompt that hits the three blocks of ``system`` pins them
    # while its rest prefills in chunks; meanwhile another prompt (whole, at once)
    # stores a block of its own, which puts the cache over its bound with the pinned
    # blocks least recently used: only the unpinned may go.
    engine = make_engine(bundle, prefix_cache_bytes=3 * block_bytes, prefill_chunk_tokens=20)
    cache = engine.prefix_cache
    assert cache is not None
    system = long_ids(bundle, 3 * BLOCK + 2)
    run_one(engine, system)
    sinks: list[Collector] = []
    prompts: list[list[int]] = []
    for k in range(4):
        longer = system[: 3 * BLOCK] + long_ids(bundle, 25 + 5 * k, start=20 + k)
        other = long_ids(bundle, BLOCK + 2, start=4 * k + 5)
        for prompt in (longer, other):
            prompts.append(prompt)
            sinks.append(submit(engine, prompt, **greedy(6)))
        while engine.has_work():
            engine.step()
            pinned = [b for p in engine._partials if p.hit for b in p.hit.blocks]
            assert all(cache._blocks.get(b.key) is b and b.refs > 0 for b in pinned)
            assert cache.stats().bytes <= 3 * block_bytes + sum(b.nbytes for b in pinned)
    for sink, prompt in zip(sinks, prompts, strict=True):
        assert sink.failed is None
        assert sink.tokens() == reference_greedy(bundle, prompt, 6)
    assert [s.finished().usage.cached_prompt_tokens for s in sinks[::2]] == [3 * BLOCK] * 4
    stats = engine.stats()
    assert stats.prefix_evicted_blocks >= 4
    assert stats.prefix_bytes <= 3 * block_bytes
    assert all(b.refs == 0 for b in cache._blocks.values())


def test_cancel_while_prefilling_in_parts_releases_its_pins(gpt2: Bundle) -> None:
    engine = make_engine(gpt2, prefill_chunk_tokens=4)
    prompt = long_ids(gpt2, 3 * BLOCK + 9)
    run_one(engine, prompt[: 2 * BLOCK + 1], n=1)
    sink = Collector()
    handle = engine.submit(GenerationRequest(prompt_ids=prompt, **greedy()), sink)
    engine.step()
    assert engine.stats().prefilling == 1
    assert engine.prefix_cache is not None
    assert any(b.refs for b in engine.prefix_cache._blocks.values())
    engine.cancel(handle)
    run_until_idle(engine)
    assert sink.finished().reason is FinishReason.CANCELLED
    assert all(b.refs == 0 for b in engine.prefix_cache._blocks.values())
    assert engine.stats().prefilling == 0 and not engine.has_work()


def test_cache_keys_chain_and_lru_evicts_leaves_first() -> None:
    block_bytes = 2 * (1 * 1 * 2 * 2) * 4  # keys + values [1, 1, 2, 2] float32
    cache = PrefixCache(2, max_bytes=4 * block_bytes)

    def kv(tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        t = torch.tensor(tokens, dtype=torch.float32).view(1, 1, -1, 1).repeat(1, 1, 1, 2)
        return [(t, -t)]

    cache.store([1, 2, 3, 4, 5], kv([1, 2, 3, 4, 5]))
    assert len(cache) == 2 and cache.stats().bytes == 2 * block_bytes  # full blocks only
    hit = cache.lookup([1, 2, 3, 4])
    assert hit.tokens == 2  # the last token is always left to compute
    cache.release(hit)
    assert cache.lookup([9, 9, 3, 4, 5]).tokens == 0  # block 2 alone is not a prefix
    hit = cache.lookup([1, 2, 3, 4, 7])
    assert hit.tokens == 4
    keys, values = hit.kv()[0]
    assert keys[0, 0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert values[0, 0, :, 0].tolist() == [-1.0, -2.0, -3.0, -4.0]
    cache.store([7, 8, 9, 9, 6, 6], kv([7, 8, 9, 9, 6, 6]))  # 3 more: one over the bound
    assert all(b.key in cache for b in hit.blocks)  # pinned: kept
    assert len(cache) == 4 and cache.stats().evicted_blocks == 1  # [6, 6], the new leaf
    cache.release(hit)
    cache.store([5, 5], kv([5, 5]))  # over again: the least recent unpinned block goes,
    assert cache.lookup([1, 2, 3, 4, 0]).tokens == 2  # [3, 4] before its parent [1, 2]
    assert cache.lookup([7, 8, 9, 9, 6, 6, 0]).tokens == 4
    assert cache.stats().hit_tokens == 2 + 4 + 2 + 4
    assert cache.stats().bytes == 4 * block_bytes
