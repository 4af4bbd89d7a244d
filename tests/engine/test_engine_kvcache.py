"""PaddedCache: merging rows of different widths, selecting, and trimming dead columns."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from modelwire_server.engine.kvcache import PaddedCache


def _cache(rows: int, width: int, fill: float) -> PaddedCache:
    cache = DynamicCache()
    for layer in range(2):
        kv = torch.full((rows, 2, width, 4), fill + layer)
        cache.update(kv, kv.clone(), layer)
    return PaddedCache(cache, torch.ones(rows, width, dtype=torch.long))


def test_merge_left_pads_the_narrower_side() -> None:
    wide, narrow = _cache(1, 5, 1.0), _cache(2, 3, 7.0)
    wide.merge(narrow)
    assert wide.mask.tolist() == [[1] * 5, [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]]
    keys = wide.cache.layers[1].keys
    assert keys.shape == (3, 2, 5, 4)
    assert torch.all(keys[1:, :, :2] == 0) and torch.all(keys[1:, :, 2:] == 8.0)
    assert wide.positions().tolist() == [5, 3, 3]
    assert wide.tokens_in_use() == 11


def test_select_trims_columns_no_row_uses() -> None:
    state = _cache(1, 6, 1.0)
    state.merge(_cache(1, 2, 2.0))
    state.select(torch.tensor([1, 1]))  # drop the wide row, copy the narrow one
    assert state.width == 2 and state.rows == 2
    assert state.cache.layers[0].keys.shape == (2, 2, 2, 4)
    assert torch.all(state.cache.layers[0].keys == 2.0)


def test_rollback_cuts_a_half_done_step() -> None:
    state = _cache(2, 3, 1.0)
    extra = torch.zeros(2, 2, 1, 4)
    state.cache.update(extra, extra, 0)  # layer 0 grew, then the pass failed
    state.rollback()
    assert [layer.keys.shape[-2] for layer in state.cache.layers] == [3, 3]


def test_growable_layer_appends_in_place_and_equals_concatenation() -> None:
    """A decode step writes one column into spare room (no copy of the cache); what the
    layer holds equals DynamicLayer's concatenation through appends, select, merge and
    trim, and the engine's caches are made of these layers."""
    from modelwire_server.engine.kvcache import GrowableLayer, growable_cache

    torch.manual_seed(0)
    grown, plain = growable_cache(), DynamicCache()
    steps = [torch.randn(3, 2, 5, 4)] + [torch.randn(3, 2, 1, 4) for _ in range(40)]
    buffers = set()
    for kv in steps:
        for layer in range(2):
            k, v = grown.update(kv, kv * 2, layer)
            ref_k, ref_v = plain.update(kv, kv * 2, layer)
            assert torch.equal(k, ref_k) and torch.equal(v, ref_v)
        buffers.add(grown.layers[0]._kbuf.data_ptr())  # type: ignore[attr-defined]
    assert all(type(layer) is GrowableLayer for layer in grown.layers)
    assert len(buffers) <= 3  # 45 columns: the first buffer, then a few regrowths

    mask = torch.ones(3, 45, dtype=torch.long)
    mask[0, :10] = 0
    a, b = PaddedCache(grown, mask.clone()), PaddedCache(plain, mask.clone())
    for state in (a, b):
        state.select(torch.tensor([2, 0]))
        state.merge(_cache(1, 7, 5.0))
        state.select(torch.tensor([1, 2]))  # the narrow row and the merged one: trims
    for mine, theirs in zip(a.cache.layers, b.cache.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    more = torch.randn(2, 2, 1, 4)
    assert torch.equal(a.cache.update(more, more, 0)[0], b.cache.update(more, more, 0)[0])


def test_engine_adapters_use_growable_self_attention_caches() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from modelwire_server.engine.adapter import CausalLMAdapter, PrefillInput
    from modelwire_server.engine.kvcache import GrowableLayer

    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=64)
    adapter = CausalLMAdapter(GPT2LMHeadModel(config).eval(), "cpu")
    out = adapter.prefill([PrefillInput([1, 2, 3]), PrefillInput([4, 5])])
    adapter.decode(out.state, torch.tensor([6, 7]))
    assert {type(layer) for layer in out.state.cache.layers} == {GrowableLayer}  # type: ignore[attr-defined]
