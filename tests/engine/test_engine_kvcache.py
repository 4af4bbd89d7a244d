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
