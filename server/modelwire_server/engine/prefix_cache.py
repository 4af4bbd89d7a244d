"""Automatic prefix caching: the KV of prompt prefixes, kept in blocks and reused.

A prompt's KV is cut into blocks of ``block_tokens`` tokens. Block ``i`` is keyed by a
hash chain: a digest of block ``i - 1``'s key and block ``i``'s token ids, so a key
names the whole prefix up to the block's end, and any later prompt that starts with the
same tokens (a shared system prompt, the previous chat turn) finds its blocks by
walking the chain. Only full blocks are kept; at least one prompt token is always left
to compute, since its logits choose the first output token. Each block also keeps its
token ids and its parent's key and is checked against them, so even a digest collision
cannot hand a prompt someone else's KV.

Eviction is least recently used, under a byte bound. A lookup pins the blocks it hands
out (``refs``) until the request's prefill is done: a pinned block is never evicted.
A lookup touches a prompt's blocks from last to first, so a chain's first blocks are
the most recently used and leaves go before the blocks that lead to them.

Blocks hold ``[layers][keys, values]`` tensors of shape ``[1, heads, block, head_dim]``
on the model's device, copies of the prefilled row's cache columns. Only the worker
thread touches a ``PrefixCache``; ``stats`` reads plain counters from any thread.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, H, L, D]

ROOT = b""


def block_key(parent: bytes, tokens: tuple[int, ...]) -> bytes:
    """The key of a block: a digest of its parent's key and its own token ids."""
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(array("q", tokens).tobytes())
    return digest.digest()


@dataclass(eq=False, slots=True)
class Block:
    key: bytes
    parent: bytes
    tokens: tuple[int, ...]
    kv: KV
    nbytes: int
    refs: int = 0


@dataclass(frozen=True, slots=True)
class PrefixCacheStats:
    lookups: int = 0  # prompts looked up
    prompt_tokens: int = 0  # their tokens
    hit_tokens: int = 0  # tokens whose KV came from the cache
    blocks: int = 0  # blocks held now
    bytes: int = 0  # bytes those blocks hold
    stored_blocks: int = 0  # blocks stored since start
    evicted_blocks: int = 0  # blocks evicted since start

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(eq=False, slots=True)
class Hit:
    """A lookup's pinned blocks (in prompt order); ``tokens`` of the prompt they cover."""

    blocks: list[Block] = field(default_factory=list)
    released: bool = False

    @property
    def tokens(self) -> int:
        return sum(len(b.tokens) for b in self.blocks)

    def kv(self) -> KV:
        """The blocks' KV joined along the sequence axis (fresh tensors, one row)."""
        layers = len(self.blocks[0].kv)
        return [
            (
                torch.cat([b.kv[i][0] for b in self.blocks], dim=-2),
                torch.cat([b.kv[i][1] for b in self.blocks], dim=-2),
            )
            for i in range(layers)
        ]


class PrefixCache:
    """Prompt-prefix KV blocks keyed by a hash chain, LRU under ``max_bytes``.

    ``max_bytes`` None: ``max_tokens`` tokens' worth, measured on the first block
    stored (the engine passes a fraction of its batch-token budget).
    """

    def __init__(
        self, block_tokens: int, *, max_bytes: int | None = None, max_tokens: int = 0
    ) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.block_tokens = block_tokens
        self.max_bytes = max_bytes
        self._max_tokens = max_tokens
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()  # oldest first
        self._bytes = 0
        self._lookups = self._prompt_tokens = self._hit_tokens = 0
        self._stored = self._evicted = 0

    def __contains__(self, key: bytes) -> bool:
        return key in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            lookups=self._lookups,
            prompt_tokens=self._prompt_tokens,
            hit_tokens=self._hit_tokens,
            blocks=len(self._blocks),
            bytes=self._bytes,
            stored_blocks=self._stored,
            evicted_blocks=self._evicted,
        )

    def keys(self, prompt: list[int], blocks: int) -> list[tuple[bytes, bytes, tuple[int, ...]]]:
        """(key, parent, tokens) of the prompt's first ``blocks`` full blocks."""
        size, parent, out = self.block_tokens, ROOT, []
        for i in range(blocks):
            tokens = tuple(prompt[i * size : (i + 1) * size])
            key = block_key(parent, tokens)
            out.append((key, parent, tokens))
            parent = key
        return out

    def lookup(self, prompt: list[int]) -> Hit:
        """Pin and return the cached blocks that start ``prompt``, leaving at least its
        last token out; release the hit with ``release`` once its prefill is done."""
        self._lookups += 1
        self._prompt_tokens += len(prompt)
        hit = Hit()
        usable = (len(prompt) - 1) // self.block_tokens
        for key, parent, tokens in self.keys(prompt, usable):
            block = self._blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tokens:
                break
            hit.blocks.append(block)
        for block in hit.blocks:
            block.refs += 1
        self._touch(hit.blocks)
        self._hit_tokens += hit.tokens
        return hit

    def release(self, hit: Hit) -> None:
        if hit.released:
            return
        hit.released = True
        for block in hit.blocks:
            block.refs -= 1
        self._evict()

    def store(self, prompt: list[int], kv: KV) -> int:
        """Keep the full blocks of ``prompt`` that are not cached yet; ``kv`` holds the
        prompt's keys and values from its first token on (one row, no padding), as
        per-layer ``[1, H, L, D]`` tensors. Returns the blocks stored."""
        size = self.block_tokens
        chain = self.keys(prompt, len(prompt) // size)
        stored = 0
        for i, (key, parent, tokens) in enumerate(chain):
            if key in self._blocks:
                continue
            cols = slice(i * size, (i + 1) * size)
            copy = [(k[..., cols, :].clone(), v[..., cols, :].clone()) for k, v in kv]
            nbytes = sum(k.nbytes + v.nbytes for k, v in copy)
            self._blocks[key] = Block(key, parent, tokens, copy, nbytes)
            self._bytes += nbytes
            self._stored += 1
            stored += 1
        self._touch([self._blocks[key] for key, _, _ in chain if key in self._blocks])
        if self.max_bytes is None and self._blocks:
            first = next(iter(self._blocks.values()))
            self.max_bytes = self._max_tokens * first.nbytes // size
        self._evict()
        return stored

    def _touch(self, blocks: list[Block]) -> None:
        for block in reversed(blocks):  # the chain's first block ends most recent
            self._blocks.move_to_end(block.key)

    def _evict(self) -> None:
        bound = self.max_bytes
        if bound is None or self._bytes <= bound:
            return
        for key in [k for k, b in self._blocks.items() if b.refs == 0]:
            if self._bytes <= bound:
                break
            self._drop(key)
            self._evicted += 1

    def _drop(self, key: bytes) -> None:
        block = self._blocks.pop(key)
        self._bytes -= block.nbytes
