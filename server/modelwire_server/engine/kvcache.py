"""A batch of padded KV-cache rows on the transformers 5 ``Cache`` layer API.

A self-attention cache keeps every row's real tokens ending at the last column, so one
decode step appends one column for all rows. Rows of different lengths are aligned by
padding on the left and masking the padding out with the 2D attention mask; positions
are passed explicitly, so no row's position depends on its padding. A cross-attention
cache (an encoder-decoder's encoder keys and values) never grows; its rows may be
padded on either side, since only the mask says which columns are real. When rows
leave, columns that became padding for every remaining row are cut off again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowableLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in buffers with spare columns.

    ``DynamicLayer.update`` concatenates, copying the layer's whole cache at every
    decode step; here a step writes its column into the spare room and the layer's
    ``keys``/``values`` are views of the filled part, so a token costs one column
    write, and a buffer is copied only when it fills (then it grows by a quarter, at
    least ``MIN_ROOM`` columns). Assigning ``keys``/``values`` (as ``PaddedCache``'s
    select, merge, trim and rollback do) adopts the tensor as it is; the next append
    makes room again.
    """

    MIN_ROOM = 32

    def __init__(self, **kwargs: object) -> None:
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._kn = self._vn = 0
        super().__init__(**kwargs)

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor | None:
        return _filled(self._kbuf, self._kn)

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._kbuf, self._kn = value, _width(value)

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor | None:
        return _filled(self._vbuf, self._vn)

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._vbuf, self._vn = value, _width(value)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._kbuf, self._kn = _append(self._kbuf, self._kn, key_states, self.MIN_ROOM)
        self._vbuf, self._vn = _append(self._vbuf, self._vn, value_states, self.MIN_ROOM)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        return keys, values

    def join_rows(self, other: DynamicLayer, width: int) -> bool:
        """Become our rows then ``other``'s, each left-padded with zeros to ``width``
        columns, written once into buffers with room for the next appends (where
        padding and concatenating would copy everything twice, and the next decode
        step a third time). False, changing nothing, when a layer is still empty."""
        mine, theirs = (self.keys, self.values), (other.keys, other.values)
        if any(t is None or t.dim() != 4 for t in (*mine, *theirs)):
            return False
        self._kbuf, self._kn = _joined(mine[0], theirs[0], width, self.MIN_ROOM)
        self._vbuf, self._vn = _joined(mine[1], theirs[1], width, self.MIN_ROOM)
        return True


def grown_columns(columns: int, min_room: int = GrowableLayer.MIN_ROOM) -> int:
    """Columns a ``GrowableLayer`` buffer gets when it must hold ``columns``: a quarter
    more, at least ``min_room`` more."""
    return columns + max(min_room, columns // 4)


def _width(t: torch.Tensor | None) -> int:
    return int(t.shape[-2]) if t is not None and t.dim() >= 2 else 0


def _filled(buffer: torch.Tensor | None, n: int) -> torch.Tensor | None:
    if buffer is None or buffer.dim() < 2 or buffer.shape[-2] == n:
        return buffer
    return buffer[..., :n, :]


def _append(
    buffer: torch.Tensor | None, n: int, new: torch.Tensor, min_room: int
) -> tuple[torch.Tensor, int]:
    """Write ``new``'s columns after the first ``n`` of ``buffer``, growing it if full."""
    add = int(new.shape[-2])
    fits = (
        buffer is not None
        and buffer.dim() == new.dim()
        and buffer.shape[:-2] == new.shape[:-2]
        and n + add <= buffer.shape[-2]
    )
    if not fits:
        total = n + add
        grown = new.new_empty(*new.shape[:-2], grown_columns(total, min_room), new.shape[-1])
        if n:
            assert buffer is not None
            grown[..., :n, :] = buffer[..., :n, :]
        buffer = grown
    assert buffer is not None
    buffer[..., n : n + add, :] = new
    return buffer, n + add


def _joined(
    a: torch.Tensor | None, b: torch.Tensor | None, width: int, min_room: int
) -> tuple[torch.Tensor, int]:
    """``a``'s rows then ``b``'s, right-aligned at column ``width`` of a new buffer with
    spare columns after it; the padding is zeroed, the spare room left as it is."""
    assert a is not None and b is not None
    rows = a.shape[0]
    shape = (rows + b.shape[0], *a.shape[1:-2], grown_columns(width, min_room), a.shape[-1])
    out = a.new_empty(shape)
    for part, top, bottom in ((a, 0, rows), (b, rows, shape[0])):
        start = width - part.shape[-2]
        out[top:bottom, ..., :start, :].zero_()
        out[top:bottom, ..., start:width, :] = part
    return out, width


def growable_cache() -> DynamicCache:
    """A ``DynamicCache`` whose layers are ``GrowableLayer``s (made on first use)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowableLayer
    return cache


def _layers(cache: Cache) -> list[DynamicLayer]:
    layers = list(cache.layers)
    for layer in layers:
        # Sliding-window and linear-attention layers keep a different number of
        # columns than the mask describes, so padding arithmetic would be wrong.
        if type(layer) not in (DynamicLayer, GrowableLayer):
            raise TypeError(f"unsupported cache layer {type(layer).__name__}")
    return layers


class PaddedCache:
    """A ``DynamicCache`` whose rows are padded, plus their attention mask.

    ``mask`` is ``[rows, width]`` (1 = real token).
    """

    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.cache = cache
        self._mask = mask
        self._padded: bool | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self._mask

    @mask.setter
    def mask(self, value: torch.Tensor) -> None:
        self._mask = value
        self._padded = None  # rows joined, left or were cut: look again when asked

    def padded(self) -> bool:
        """Whether any row has padding (a masked column). Decode steps append a column
        of ones, which keeps the answer; only select, merge and trim make it look at
        the mask again (one device sync each, not one per step)."""
        if self._padded is None:
            self._padded = not bool(self._mask.all())
        return self._padded

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def positions(self) -> torch.Tensor:
        """Position of the next token of each row: its count of real tokens."""
        return self.mask.sum(dim=1)

    def tokens_in_use(self) -> int:
        return int(self.mask.sum())

    def mask_for_step(self) -> torch.Tensor:
        """The mask covering the cache plus one new column, as a decode step needs."""
        ones = torch.ones((self.rows, 1), dtype=self.mask.dtype, device=self.mask.device)
        return torch.cat([self.mask, ones], dim=1)

    def commit_step(self, step_mask: torch.Tensor) -> None:
        """Adopt the mask of a decode step whose forward pass has appended its column."""
        self._mask = step_mask  # one more column of ones: padded() stays what it was

    def rollback(self) -> None:
        """Cut layers back to the mask's width after a forward pass failed midway."""
        for layer in _layers(self.cache):
            if layer.keys is not None and layer.keys.shape[-2] > self.width:
                layer.keys = layer.keys[..., : self.width, :]
                layer.values = layer.values[..., : self.width, :]

    def select(self, index: torch.Tensor) -> slice:
        """Keep rows ``index`` (in that order; repeats copy a row) and trim dead columns;
        return the columns kept, so tensors aligned with the cache can follow."""
        index = index.to(self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        return self._trim()

    def _trim(self) -> slice:
        live = self.mask.any(dim=0).nonzero()
        if self.rows == 0 or not live.numel():
            return slice(0, self.width)
        # Leading dead columns appear when the widest rows leave; trailing ones only in
        # a right-padded cross-attention cache, whose longest input left.
        kept = slice(int(live[0]), int(live[-1]) + 1)
        if kept.start == 0 and kept.stop == self.width:
            return kept
        for layer in _layers(self.cache):
            if layer.keys is not None and layer.keys.numel():
                layer.keys = layer.keys[..., kept, :]
                layer.values = layer.values[..., kept, :]
        self.mask = self.mask[:, kept]
        return kept

    def row_columns(self, row: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views of row ``row``'s last ``count`` columns, per layer (keys, values
        ``[1, H, count, D]``): a left-padded row's newest ``count`` tokens."""
        return [
            (
                layer.keys[row : row + 1, ..., -count:, :],
                layer.values[row : row + 1, ..., -count:, :],
            )
            for layer in _layers(self.cache)
        ]

    def merge(self, other: PaddedCache) -> None:
        """Append ``other``'s rows after ours, left-padding whichever is narrower."""
        width = max(self.width, other.width)
        mine, theirs = _layers(self.cache), _layers(other.cache)
        if len(mine) != len(theirs):
            raise ValueError("caches have different numbers of layers")
        for a, b in zip(mine, theirs, strict=True):
            if isinstance(a, GrowableLayer) and a.join_rows(b, width):
                continue
            a.keys = torch.cat([_pad_left(a.keys, width), _pad_left(b.keys, width)], dim=0)
            a.values = torch.cat([_pad_left(a.values, width), _pad_left(b.values, width)], dim=0)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)], dim=0)


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad the sequence axis (-2 for KV ``[B, H, L, D]``, -1 for a mask ``[B, L]``)."""
    if t.dim() == 2:
        missing = width - t.shape[-1]
        return F.pad(t, (missing, 0)) if missing else t
    missing = width - t.shape[-2]
    return F.pad(t, (0, 0, missing, 0)) if missing else t
