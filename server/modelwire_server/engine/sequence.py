"""Per-request and per-row state of the running batch, and the events they emit.

A ``RequestGroup`` is one submitted request: its sink, timings and shared tensors. It
owns one ``StreamRow`` per sampled sequence (``n`` of them), or ``num_beams``
``BeamRow``s driven by its ``BeamSearch``. Rows are what the batch is made of: one KV
cache row each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from modelwire_server.engine.beam import BeamSearch
from modelwire_server.engine.detokenizer import Decode, IncrementalDetokenizer
from modelwire_server.engine.stops import StopMatcher
from modelwire_server.engine.types import (
    Delta,
    Event,
    Failed,
    Finished,
    FinishReason,
    PromptInfo,
    Sink,
    TokenInfo,
    Usage,
)
from modelwire_server.engine.validation import Prepared

log = logging.getLogger(__name__)


class RequestGroup:
    """One request in the engine, from submit to its last event."""

    def __init__(
        self,
        prepared: Prepared,
        sink: Sink,
        vocab_size: int,
        seed: int,
        clock: Callable[[], float],
    ) -> None:
        self.prepared = prepared
        self.clock = clock
        self.sink = sink
        self.vocab_size = vocab_size
        self.seed = seed  # the base seed; sequence i uses seed + i
        self.submitted_at = clock()
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        limit = prepared.request.stopping.time_limit_ms
        self.time_limit_at = self.submitted_at + limit / 1000 if limit else None
        self.cancel_requested = False
        self.closed = False  # no event may follow
        self.released = False  # its batch-token reservation was given back
        self.open_rows = 0
        self.beam: BeamSearch | None = None
        self.prompt_seen: torch.Tensor | None = None
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None
        self.cached_tokens = 0  # prompt tokens whose KV came from the prefix cache
        self.arrival = 0  # the scheduler's arrival number (kept when requeued)
        self.admit_order = 0  # larger: admitted (or resumed) later
        # Preempted: its rows, out of the batch with their KV freed, to resume from.
        self.preempted_rows: list[Row] | None = None
        self.preemptions = 0

    @property
    def prompt_ids(self) -> list[int]:
        return self.prepared.request.prompt_ids

    @property
    def context_ids(self) -> list[int]:
        """What the output continues: the prompt, or an encoder-decoder's decoder start."""
        return self.prepared.context_ids

    def emit(self, event: Event) -> None:
        if self.closed:
            return
        if isinstance(event, Failed):
            self.closed = True
        try:
            self.sink(event)
        except Exception:  # a broken sink must not take the engine down...
            log.exception("sink of request %s raised", self.prepared.request.request_id)
            # ...nor keep a request running that nobody can hear: drop it next step.
            self.cancel_requested = True

    def usage(self, generated: int) -> Usage:
        now = self.clock()
        admitted = self.admitted_at or now
        return Usage(
            prompt_tokens=len(self.prompt_ids),
            generated_tokens=generated,
            queue_time_s=admitted - self.submitted_at,
            time_to_first_token_s=(
                self.first_token_at - self.submitted_at if self.first_token_at else None
            ),
            total_time_s=now - self.submitted_at,
            cached_prompt_tokens=self.cached_tokens,
        )

    def prepare_tensors(self, device: torch.device) -> None:
        """Tensors shared by the group's rows, built once at admission."""
        sampling = self.prepared.sampling
        if sampling.repetition_penalty != 1.0:
            seen = torch.zeros(self.vocab_size, dtype=torch.bool)
            seen[self.context_ids] = True  # what transformers penalises: the decoder's ids
            self.prompt_seen = seen.to(device)
        if sampling.logit_bias:
            ids = torch.tensor(list(sampling.logit_bias), dtype=torch.long, device=device)
            values = torch.tensor(list(sampling.logit_bias.values()), dtype=torch.float32)
            self.bias = (ids, values.to(device))


class Row:
    """Fields the sampler reads (see ``sampler.SamplingRow``), common to both row kinds."""

    is_beam = False

    def __init__(self, group: RequestGroup, index: int, device: torch.device) -> None:
        self.group = group
        self.index = index
        self.sampling = group.prepared.sampling
        self.generator: torch.Generator | None = None
        self.prompt_seen = group.prompt_seen
        self.bias = group.bias
        options = group.prepared.request.options
        self.top_logprobs = options.top_logprobs
        self.wants_logprobs = options.logprobs
        self.counts: torch.Tensor | None = None
        if self.sampling.uses_penalties:
            self.counts = torch.zeros(group.vocab_size, dtype=torch.float32, device=device)
        self.pending = -1  # the last chosen token, not yet in the KV cache
        self.logits_hook = group.prepared.request.logits_hook
        # The row's own matcher of the request's response format (constraints.py).
        constraint = group.prepared.request.constraint
        self.constraint = constraint.row(len(group.context_ids)) if constraint else None

    def generated(self) -> int:
        raise NotImplementedError

    def history(self) -> list[int]:
        """The context and every token chosen so far (the newest one included)."""
        raise NotImplementedError

    @property
    def suppressed(self) -> list[int]:
        """Ids this step must not choose: banned ids (begin_suppress_tokens at their step),
        n-gram repeats, and EOS and stop ids until min_new_tokens tokens exist."""
        prepared = self.group.prepared
        ids = list(prepared.banned)
        if prepared.begin_banned and self.generated() == prepared.begin_index:
            ids += prepared.begin_banned
        if prepared.no_repeat_ngram:
            ids += repeated_ngram_tokens(self.history(), prepared.no_repeat_ngram)
        if self.generated() < prepared.min_new_tokens:
            ids += sorted(prepared.eos_ids | prepared.stop_ids)
        return ids

    @property
    def forced(self) -> tuple[int, ...]:
        """The only tokens allowed at this step (forced BOS / EOS), or () for any."""
        return self.group.prepared.forced.get(self.generated(), ())

    def count(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1


class StreamRow(Row):
    """A sampled or greedy sequence that streams its text as it goes."""

    def __init__(
        self,
        group: RequestGroup,
        index: int,
        device: torch.device,
        decode: Decode,
        byte_ids: frozenset[int],
    ) -> None:
        super().__init__(group, index, device)
        self.seed = group.seed + index
        if not self.sampling.greedy:
            self.generator = torch.Generator().manual_seed(self.seed)
        options = group.prepared.request.options
        stopping = group.prepared.request.stopping
        self.output: list[int] = []
        self.text: list[str] = []
        self.detok = IncrementalDetokenizer(
            decode, group.context_ids, options.skip_special_tokens, byte_ids
        )
        self.stops = StopMatcher(stopping.stop, stopping.include_stop_in_output)

    def generated(self) -> int:
        return len(self.output)

    def history(self) -> list[int]:
        return self.group.context_ids + self.output

    def accept(self, token: int, info: TokenInfo) -> bool:
        """Take the chosen token, emit its delta (and Finished); True if the row ended."""
        prepared = self.group.prepared
        self.output.append(token)
        self.count(token)
        reason = None
        if token in prepared.eos_ids:
            reason = FinishReason.EOS
        elif token in prepared.stop_ids:
            reason = FinishReason.STOP_SEQUENCE
        include = reason is None or prepared.request.stopping.include_stop_in_output
        piece = self.detok.push(token) if include else ""
        at_limit = len(self.output) >= prepared.max_new_tokens
        if reason is not None or at_limit:
            piece += self.detok.flush()
        out = self.stops.push(piece)
        if self.stops.matched is not None:
            reason = FinishReason.STOP_SEQUENCE
        elif reason is not None or at_limit:
            out += self.stops.flush()
            reason = reason or FinishReason.LENGTH
        self.pending = token
        self._send(out, [info])
        if reason is not None:
            self.finish(reason, flush=False)
        return reason is not None

    def _send(self, text: str, tokens: list[TokenInfo]) -> None:
        group = self.group
        if group.first_token_at is None:
            group.first_token_at = group.clock()
        self.text.append(text)
        group.emit(Delta(index=self.index, text=text, tokens=tokens))

    def finish(self, reason: FinishReason, *, flush: bool = True) -> None:
        """End the sequence (also from outside: time limit, cancellation)."""
        if flush and reason is not FinishReason.CANCELLED:
            tail = self.stops.push(self.detok.flush())
            tail += self.stops.flush()
            if tail:
                self._send(tail, [])
        self.group.open_rows -= 1
        usage = self.group.usage(len(self.output))
        text = "".join(self.text)
        self.group.emit(Finished(self.index, reason, text, [], usage, self.seed))


class BeamRow(Row):
    """One of a beam-search request's ``num_beams`` rows; the BeamSearch owns the tokens."""

    is_beam = True

    def generated(self) -> int:
        assert self.group.beam is not None
        return self.group.beam.generated

    def history(self) -> list[int]:
        assert self.group.beam is not None  # row k continues running hypothesis k
        return self.group.context_ids + self.group.beam.running[self.index].tokens


def repeated_ngram_tokens(ids: list[int], n: int) -> list[int]:
    """NoRepeatNGramLogitsProcessor: the tokens that would complete an n-gram of ``ids``
    a second time (those that followed its last n - 1 tokens before)."""
    if len(ids) + 1 < n:
        return []
    prefix = ids[len(ids) - n + 1 :]
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == prefix]


def prompt_info(group: RequestGroup, tokens: list[TokenInfo] | None) -> PromptInfo:
    return PromptInfo(prompt_tokens=len(group.prompt_ids), tokens=tokens)
