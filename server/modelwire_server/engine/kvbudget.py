"""The KV budget in bytes: what a batch state really holds, and what it will hold.

A running batch holds, per attention layer, key and value buffers of rows x columns
(every row padded to the widest) plus the spare columns a ``GrowableLayer`` keeps for
the next appends; an encoder-decoder also holds its cross-attention cache and encoder
output. ``held_bytes`` counts the storages behind those tensors (each once), so padding
and growth slack are in it; ``bytes_after_step`` is what the state will hold after one
more decode step (a full buffer is reallocated a quarter wider). ``row_bytes`` is the
estimate admission and validation use before any state exists, from the model config
(2 x layers x KV heads x head dim x dtype size per column), grown by the same slack.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

from modelwire_server.engine.kvcache import GrowableLayer, PaddedCache, grown_columns


def padded_caches(state: Any) -> list[PaddedCache]:
    """The padded caches of a batch state (a causal LM's, or both halves of a decoder's)."""
    if isinstance(state, PaddedCache):
        return [state]
    return [c for c in (getattr(state, "decoder", None), getattr(state, "cross", None)) if c]


def _tensors(state: Any) -> Iterable[torch.Tensor]:
    for padded in padded_caches(state):
        for layer in padded.cache.layers:
            if isinstance(layer, GrowableLayer):
                yield from (t for t in (layer._kbuf, layer._vbuf) if t is not None)
            else:
                yield from (t for t in (layer.keys, layer.values) if t is not None)
    for name in ("encoder_hidden", "image_embeds"):
        tensor = getattr(state, name, None)
        if isinstance(tensor, torch.Tensor):
            yield tensor


def held_bytes(state: Any) -> int | None:
    """Bytes of the storages behind ``state``'s caches, each counted once; None for a
    state of another kind (Reformer's per-row caches)."""
    if not padded_caches(state):
        return None
    seen: dict[int, int] = {}
    for tensor in _tensors(state):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def bytes_after_step(state: Any) -> int | None:
    """What ``state`` will hold after one more decode step: a growable layer whose
    buffer is full is reallocated with room (the old one is freed), the rest stay."""
    held = held_bytes(state)
    if held is None:
        return None
    extra = 0
    for padded in padded_caches(state):
        for layer in padded.cache.layers:
            if not isinstance(layer, GrowableLayer):
                continue
            for buffer, filled in ((layer._kbuf, layer._kn), (layer._vbuf, layer._vn)):
                if buffer is None or buffer.dim() != 4 or filled < buffer.shape[-2]:
                    continue
                per_column = buffer.shape[0] * buffer.shape[1] * buffer.shape[3]
                old = buffer.untyped_storage().nbytes()
                new = per_column * grown_columns(filled + 1) * buffer.element_size()
                extra += new - old
    return held + extra


def _dtype_bytes(model: Any) -> int:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        # Quantized weights still compute (and cache) in a floating dtype.
        return dtype.itemsize if dtype.is_floating_point else 2
    return 4


def column_bytes(model: Any) -> int | None:
    """KV bytes of one token (one column of every layer's keys and values), read from
    the config; None when the config does not say."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = _first(text, "num_hidden_layers", "n_layer", "decoder_layers", "num_layers")
    heads = _first(text, "num_attention_heads", "n_head", "decoder_attention_heads", "num_heads")
    if not layers or not heads:
        return None
    kv_heads = _first(text, "num_key_value_heads") or heads
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    head_dim = _first(text, "head_dim", "d_kv") or (hidden // heads if hidden else None)
    if not head_dim:
        return None
    return 2 * layers * kv_heads * head_dim * _dtype_bytes(model)


def _first(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def resolve_budget(setting: int | float | None, device: torch.device) -> int | None:
    """``kv_cache_memory`` in bytes: an int is bytes; a float in (0, 1] a share of the
    free memory of a CUDA device (read now, after the model loaded), or of the machine's
    total memory on the CPU; None: no byte budget."""
    if setting is None:
        return None
    if isinstance(setting, int):
        return setting
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * setting)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * setting)
