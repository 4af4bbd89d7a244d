"""Merging growable KV rows: the joined layer equals padding and concatenating, its
padding is zero, and the next decode step appends in place."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modelwire_server.engine.kvcache import GrowableLayer, PaddedCache, growable_cache


def padded(rows: int, width: int, seed: int) -> PaddedCache:
    generator = torch.Generator().manual_seed(seed)
    cache = growable_cache()
    for _ in range(2):
        layer = GrowableLayer()
        keys = torch.randn(rows, 3, width, 4, generator=generator)
        values = torch.randn(rows, 3, width, 4, generator=generator)
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return PaddedCache(cache, torch.ones(rows, width, dtype=torch.long))


def test_merge_equals_pad_and_cat_and_leaves_room() -> None:
    for widths in ((5, 40), (40, 5), (7, 7)):
        a, b = padded(3, widths[0], seed=1), padded(2, widths[1], seed=2)
        width = max(widths)
        expected = [
            [
                torch.cat([F.pad(x, (0, 0, width - x.shape[-2], 0)) for x in pair])
                for pair in ((la.keys, lb.keys), (la.values, lb.values))
            ]
            for la, lb in zip(a.cache.layers, b.cache.layers, strict=True)
        ]
        a.merge(b)
        assert a.mask.tolist() == [
            [0] * (width - w) + [1] * w for w in [widths[0]] * 3 + [widths[1]] * 2
        ]
        for layer, (keys, values) in zip(a.cache.layers, expected, strict=True):
            assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
            before = layer._kbuf.data_ptr()
            step = torch.ones(5, 3, 1, 4)
            layer.update(step, step)
            assert layer._kbuf.data_ptr() == before  # appended into the spare room
            assert torch.equal(layer.keys[..., :width, :], keys)
            assert torch.equal(layer.keys[..., width:, :], step)
