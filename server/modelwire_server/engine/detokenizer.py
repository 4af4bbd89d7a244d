"""Incremental detokenization of one sequence.

Decoding only a short window (``ids[prefix:]`` against ``ids[prefix:read]``) keeps each
step O(1) in the sequence length, and the window always starts a few tokens back so
that tokenizers whose decoding depends on context (a sentencepiece ``▁`` turned into a
space except at the start, WordPiece ``##`` joins) decode the new tokens exactly as
they decode inside the full sequence. Text ending in U+FFFD is an unfinished multi-byte
character (byte-level BPE, sentencepiece byte fallback) and is held until it completes.

Sentencepiece byte fallback needs one more rule: its decoder turns a whole run of
``<0xNN>`` tokens into U+FFFD (one per byte) when the run is not valid UTF-8, so a
character that looks complete can still be replaced by what follows. Text is therefore
held while the newest token is a byte token, until the run ends.

Decoding must match the tokenizer's own ``decode``, post-processing included (such as
``clean_up_tokenization_spaces``), since the reference is ``decode(prompt + output)``.
That wrapper costs several times the decoding itself, twice per token of every stream,
so ``fast_decode`` calls the ``tokenizers`` backend directly where the wrapper is
transformers' plain one, and applies the same clean-up; anything else keeps ``decode``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# How many prompt tokens the first window reaches back: enough for a tokenizer's
# leading-space and word-joining rules to see the context the new token sits in.
_CONTEXT = 5

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def byte_fallback_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of sentencepiece byte-fallback tokens (``<0x00>`` .. ``<0xFF>``), if any."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return frozenset(i for tok, i in vocab.items() if _BYTE_TOKEN.match(tok))


Decode = Callable[[list[int], bool], str]


def fast_decode(tokenizer: Any) -> Decode:
    """``decode(ids, skip_special_tokens)``, equal to ``tokenizer.decode``'s."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: the wrapper is the safe choice
        TokenizersBackend = None
    backend = getattr(tokenizer, "_tokenizer", None)
    plain = (
        TokenizersBackend is not None
        and isinstance(tokenizer, TokenizersBackend)
        and type(tokenizer)._decode is TokenizersBackend._decode
        and type(tokenizer).decode is TokenizersBackend.decode
        and hasattr(backend, "decode")
    )
    if not plain:
        return lambda ids, skip: tokenizer.decode(ids, skip_special_tokens=skip)
    # The clean-up rule of TokenizersBackend._decode: never for a BPE model unless forced.
    cleanup = bool(tokenizer.clean_up_tokenization_spaces) and not (
        type(tokenizer.backend_tokenizer.model).__name__ == "BPE"
        and not getattr(
            tokenizer,
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output",
            False,
        )
    )
    if cleanup:
        clean = tokenizer.clean_up_tokenization
        return lambda ids, skip: clean(backend.decode(ids, skip_special_tokens=skip))
    return lambda ids, skip: backend.decode(ids, skip_special_tokens=skip)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas."""

    def __init__(
        self,
        decode: Decode,
        prompt_ids: list[int],
        skip_special_tokens: bool,
        byte_ids: frozenset[int] = frozenset(),
    ) -> None:
        """``decode``: the tokenizer's ``fast_decode`` (made once per tokenizer)."""
        self._decode_ids = decode
        self._skip = skip_special_tokens
        self._byte_ids = byte_ids
        self._ids = list(prompt_ids[-_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._decode_ids(ids, self._skip)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (often all of it, maybe nothing)."""
        self._ids.append(token_id)
        if token_id in self._byte_ids:
            return ""
        return self._advance(final=False)

    def flush(self) -> str:
        """Return whatever is still held (an unfinished character decodes as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) and not final:
            return ""
        if after.endswith("\ufffd") and not final:
            return ""
        delta = after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        # Drop ids the window will never look at again, so memory stays flat.
        if self._prefix > 64:
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return delta
