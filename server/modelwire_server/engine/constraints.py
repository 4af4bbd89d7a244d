"""Structured output: a request's response format as a token mask per row, with xgrammar.

A ``ResponseFormat`` (JSON, a JSON schema, a regex, a choice, an EBNF grammar) is
compiled once per distinct format by the model's ``ConstraintCompiler`` (off the event
loop and off the device worker: the servicer compiles in a thread before submitting) and
cached. Each engine row of a constrained request gets its own ``RowConstraint``: a
matcher that follows the row's tokens and, before each token selection, writes the
tokens the format allows next into one row of a packed bitmask; ``mask_rows`` applies
the bitmask of every constrained row of the batch at once. Once the format is complete
only the model's EOS ids are allowed, so a sequence the format closes ends with EOS.

Why xgrammar (0.2.9) over llguidance (1.9.1), measured on these machines: both compile
a 20-property schema in milliseconds and fill a row's mask in microseconds, but
llguidance stopped with "ParserTooComplex" on the GPT-2-shaped tokenizer of the
benchmark (50257 ids) and xgrammar did not; xgrammar also ships the CPU and CUDA kernels
that apply a packed mask in place. outlines-core was not measured: it builds a full
index per regex ahead of time, which is known to cost far more per new schema.

The matcher reads bytes: special tokens (BOS, padding, ``<unk>``...) are given empty
strings, which xgrammar never allows, so no special token can appear inside the
constrained text, and the text the stream decodes is the bytes the grammar accepted.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr

from modelwire_server.engine.errors import InvalidRequest
from modelwire_server.engine.types import ResponseFormat

# xgrammar's messages start with "[time] /project/cpp/file.cc:NN: "; the rest is the news.
_LOCATION = re.compile(r"^\[[^\]]*\]\s+\S+:\d+:\s*")
MAX_MESSAGE = 500
CACHE_SIZE = 256


def _compiler_message(error: Exception) -> str:
    lines = [_LOCATION.sub("", line).strip() for line in str(error).strip().splitlines()]
    message = " ".join(line for line in lines if line) or type(error).__name__
    return message[:MAX_MESSAGE]


# The characters of a JSON string as xgrammar writes them: a length-bounded string's
# class lets raw control characters (a tab) in, invalid JSON; and both let UTF-8-encoded
# surrogates (ED A0..BF xx) in, which are not UTF-8 and decode to U+FFFD. Both classes
# are replaced by JSON's own: any character but controls, '"', '\\' and surrogates.
_XGRAMMAR_STRING_CHARS = (r"[^\"\\\r\n]", r"[^\0-\x1f\"\\\r\n]")
_JSON_STRING_CHARS = r"[^\0-\x1f\"\\\uD800-\uDFFF]"


def json_grammar(schema: str, *, strict: bool) -> str:
    """The EBNF grammar of compact JSON valid under ``schema`` (``{}``: any JSON)."""
    grammar = str(xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=strict))
    for chars in _XGRAMMAR_STRING_CHARS:
        grammar = grammar.replace(chars, _JSON_STRING_CHARS)
    return grammar


def choice_grammar(choices: Sequence[str]) -> str:
    """An EBNF grammar whose language is exactly ``choices`` (JSON string escapes, which
    xgrammar's EBNF literals share)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled response format; ``row`` makes the matcher of one engine row."""

    format: ResponseFormat
    grammar: Any  # xgr.CompiledGrammar

    def row(self, context_length: int) -> RowConstraint:
        return RowConstraint(xgr.GrammarMatcher(self.grammar), context_length)


class ConstraintViolation(RuntimeError):
    """A row's token was not one its format allows (the mask was bypassed)."""


class RowConstraint:
    """One row's matcher. It catches up with the row's history before each mask, so it
    needs no call when a token is accepted, and a selection that is retried (the engine
    does when a step fails) never feeds it a token twice."""

    def __init__(self, matcher: Any, context_length: int) -> None:
        self.matcher = matcher
        self.start = context_length  # where the row's own tokens begin in its history
        self.consumed = 0

    def follow(self, history: Sequence[int]) -> None:
        for token in history[self.start + self.consumed :]:
            if not self.matcher.accept_token(token):
                raise ConstraintViolation(f"token {token} breaks the response format")
            self.consumed += 1

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, index)


def mask_rows(scores: torch.Tensor, rows: Iterable[tuple[int, RowConstraint, list[int]]]) -> None:
    """Set to -inf, in place, every token that ``scores[i]``'s format does not allow next,
    for each ``(i, constraint, history)``: one packed bitmask for the batch, applied by
    xgrammar's kernel to those rows only (the others are not read or copied)."""
    items = list(rows)
    if not items:
        return
    batch, vocab = scores.shape
    bitmask = xgr.allocate_token_bitmask(batch, vocab)
    for i, constraint, history in items:
        constraint.follow(history)
        constraint.fill(bitmask, i)
    index = [i for i, _, _ in items]
    xgr.apply_token_bitmask_inplace(
        scores, bitmask.to(scores.device, non_blocking=True), vocab_size=vocab, indices=index
    )


class ConstraintCompiler:
    """Compiles response formats for one model's tokenizer; thread-safe; cached (LRU).

    The tokenizer's byte table is built once, at the first compile (or ``warm``): tenths
    of a second for a 50k vocabulary, a few milliseconds per schema after that."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, eos_ids: Iterable[int], cache_size: int = CACHE_SIZE
    ) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_ids = sorted(eos_ids)
        self._cache_size = cache_size
        self._cache: OrderedDict[ResponseFormat, Compiled] = OrderedDict()
        self._lock = threading.Lock()
        self._compiler: Any = None
        self.compiles = 0  # formats compiled (not served from the cache), for tests

    def warm(self) -> None:
        with self._lock:
            self._grammar_compiler()

    def compile(self, fmt: ResponseFormat) -> Compiled:
        """The compiled format; ``InvalidRequest`` naming ``response_format.<kind>`` with
        the compiler's message when it is not a valid one."""
        with self._lock:
            cached = self._cache.get(fmt)
            if cached is not None:
                self._cache.move_to_end(fmt)
                return cached
            compiled = Compiled(fmt, self._build(fmt))
            self.compiles += 1
            self._cache[fmt] = compiled
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return compiled

    def _build(self, fmt: ResponseFormat) -> Any:
        field = f"response_format.{fmt.kind}"
        compiler = self._grammar_compiler()
        try:
            if fmt.kind == "json_object":
                return compiler.compile_grammar(json_grammar("{}", strict=True))
            if fmt.kind == "json_schema":
                _check_json(fmt.spec, field)
                return compiler.compile_grammar(json_grammar(fmt.spec, strict=fmt.strict))
            if fmt.kind == "regex":
                return compiler.compile_regex(fmt.spec)
            if fmt.kind == "choice":
                return compiler.compile_grammar(choice_grammar(fmt.choices))
            if fmt.kind == "grammar":
                return compiler.compile_grammar(fmt.spec)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InvalidRequest(field, _compiler_message(exc)) from None
        raise InvalidRequest("response_format", f"unknown kind {fmt.kind!r}")

    def _grammar_compiler(self) -> Any:
        if self._compiler is None:
            self._compiler = xgr.GrammarCompiler(self._tokenizer_info(), max_threads=1)
        return self._compiler

    def _tokenizer_info(self) -> Any:
        base = xgr.TokenizerInfo.from_huggingface(
            self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._eos_ids
        )
        special = set(getattr(self._tokenizer, "all_special_ids", ()))
        for token_id, added in getattr(self._tokenizer, "added_tokens_decoder", {}).items():
            if getattr(added, "special", False):
                special.add(token_id)
        vocab = [b"" if i in special else piece for i, piece in enumerate(base.decoded_vocab)]
        return xgr.TokenizerInfo(
            vocab,
            xgr.VocabType.RAW,
            vocab_size=self._vocab_size,
            stop_token_ids=self._eos_ids,
            add_prefix_space=base.add_prefix_space,
        )


def _check_json(text: str, field: str) -> None:
    try:
        json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(field, f"is not valid JSON: {exc}") from None
