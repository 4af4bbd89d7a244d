"""The generation engine: continuous batching over one model on one device.

Threading contract:
- ``submit``, ``cancel``, ``has_work``, ``wait_for_work`` and ``stats`` may be called
  from any thread; they touch only the waiting queue and flags, under the scheduler's
  lock.
- ``step`` runs on one worker thread only (the device worker). It owns the running
  batch, calls the model, and calls the sinks. It never holds that lock while calling
  a sink or the model, so ``submit`` is never blocked behind a forward pass.

Ending a request: every request gets ``PromptInfo`` first, then per sequence its
deltas and one ``Finished``; or ``Failed`` at any point, after which nothing follows.
``cancel`` ends each open sequence with ``Finished(CANCELLED)`` at the next step (its
rows leave the batch and their cache is freed then). A passed ``deadline`` ends the
request with ``Failed(DeadlineExceeded)``; ``time_limit_ms`` (counted from submit)
ends each open sequence with ``Finished(TIME_LIMIT)`` and the text it has so far.

Prefix caching and chunked prefill (causal LMs): at admission a prompt's leading
full blocks are looked up in the ``PrefixCache``; a request with a hit, or a prompt
longer than ``prefill_chunk_tokens``, is prefilled alone as one row in parts: its
row's cache starts from the cached blocks and grows by at most
``prefill_chunk_tokens`` prompt tokens per step (shared by all such requests, first
come first served), between the running rows' decode steps; after its last part it
joins the running batch like any other prefilled request. Every prefilled prompt's
full blocks are stored. Left out (whole prompt at once, never cached): other model
kinds (encoder-decoders, Reformer, image-to-text), requests with ``extras`` (image
chat: its placeholder tokens do not say which image), and prompt logprobs (they need
every prompt position's logits).

The KV budget (``kv_cache_memory``, bytes; None: admission reserves every request's
worst case in ``max_batch_tokens`` as before): admission reserves nothing for
``max_new_tokens``; a request is admitted when the batch it would make (every row padded
to the widest, plus a growable buffer's spare columns, see ``kvbudget``) fits. Before a
decode step whose cache would outgrow the budget, the engine preempts (lowest priority,
then the latest admitted; never the only request running): its rows leave the batch,
their KV freed, and keep everything else (tokens, detokenizer, stop matcher, random
generator, penalties, beams); the request goes back to the queue in its first place.
Re-admitted, each row's prompt and tokens but the pending one are prefilled again, the
logits thrown away, and decoding goes on from the pending token: nothing is emitted
twice, and greedy and seeded outputs are those of an uninterrupted run. A one-row
request of a causal LM resumes like a prompt prefilled in parts (its prompt's blocks
mostly still in the prefix cache, the rest in chunks between decode steps); other rows
(n > 1, beams, encoder-decoders, image chat) are prefilled again in one batch.

Failures stay with the request that caused them: when a batched prefill, decode step
or token selection raises, each request in it is tried alone (prefill again; decode
on a copy of its rows; selection with its rows' random draws undone) and only those
that fail alone end with ``Failed``; the others go on, their outputs unchanged. Only a
failure no single request reproduces fails everything in flight.
"""

from __future__ import annotations

import copy
import itertools
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from modelwire_server.engine import kvbudget, sampler
from modelwire_server.engine.adapter import (
    BatchState,
    CausalLMAdapter,
    CausalState,
    ModelAdapter,
    PrefillInput,
)
from modelwire_server.engine.beam import BeamSearch
from modelwire_server.engine.beam_rows import advance_beams, finish_beams
from modelwire_server.engine.detokenizer import byte_fallback_ids, fast_decode
from modelwire_server.engine.errors import DeadlineExceeded, ResourceExhausted
from modelwire_server.engine.prefix_cache import Hit, PrefixCache
from modelwire_server.engine.reformer import ReformerAdapter, is_reformer
from modelwire_server.engine.scheduler import Scheduler
from modelwire_server.engine.seq2seq import Seq2SeqAdapter
from modelwire_server.engine.sequence import (
    BeamRow,
    RequestGroup,
    Row,
    StreamRow,
    prompt_info,
)
from modelwire_server.engine.tokens import TokenTexts
from modelwire_server.engine.types import (
    Failed,
    Finished,
    FinishReason,
    GenerationRequest,
    Sink,
)
from modelwire_server.engine.validation import Limits, prepare

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Partial:
    """A request prefilled in parts: its one row's state so far and its pinned hit;
    ``ids`` what it prefills (its prompt; a resumed row, its tokens but the pending one),
    ``resumed`` that preempted row, to join the batch as it is."""

    group: RequestGroup
    state: CausalState | None
    hit: Hit | None
    ids: list[int] = field(default_factory=list)
    resumed: Row | None = None


# The prefix cache's default bound: the KV of this share of max_batch_tokens tokens.
PREFIX_CACHE_SHARE = 0.5
PREFIX_BLOCK_TOKENS = 16


@dataclass(frozen=True, slots=True)
class Handle:
    """What ``submit`` returns; pass it to ``cancel``."""

    request_id: str
    group: RequestGroup = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class EngineStats:
    running_rows: int
    running_requests: int
    waiting: int
    cache_tokens: int  # real tokens held in the KV cache
    cache_slots: int  # rows x columns, padding included
    reserved_tokens: int  # budget held by admitted requests
    last_decode_rows: int
    max_decode_rows: int  # most rows any decode step ran (proves batching)
    steps: int
    generated_tokens: int
    # Decode steps run at each batch size (rows), since start: for a metrics histogram.
    decode_batch_sizes: dict[int, int] = field(default_factory=dict)
    # Waiting requests at each priority that has some: for a metrics gauge.
    waiting_by_priority: dict[int, int] = field(default_factory=dict)
    prefilling: int = 0  # requests prefilled in parts (chunks, prefix hits), not yet joined
    # The prefix cache (zeros when off): prompt tokens looked up and those whose KV came
    # from it, blocks and bytes held now, blocks stored and evicted since start.
    prefix_prompt_tokens: int = 0
    prefix_hit_tokens: int = 0
    prefix_blocks: int = 0
    prefix_bytes: int = 0
    prefix_stored_blocks: int = 0
    prefix_evicted_blocks: int = 0
    # The KV budget: bytes the running batch and the prompts prefilling in parts hold
    # (padding and spare columns included), the budget (0: none), preemptions so far.
    kv_bytes: int = 0
    kv_budget: int = 0
    preemptions: int = 0

    @property
    def prefix_hit_rate(self) -> float:
        return (
            self.prefix_hit_tokens / self.prefix_prompt_tokens if self.prefix_prompt_tokens else 0.0
        )


def eos_token_ids(generation_config: Any, model: Any, tokenizer: Any) -> frozenset[int]:
    for source in (generation_config, getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is not None:
            return frozenset([value] if isinstance(value, int) else value)
    return frozenset()


def make_adapter(model: Any, device: torch.device) -> ModelAdapter:
    """The adapter of ``model``'s kind: encoder-decoder, Reformer, else causal LM."""
    if getattr(model.config, "is_encoder_decoder", False):
        return Seq2SeqAdapter(model, device)
    if is_reformer(model):
        return ReformerAdapter(model, device)
    return CausalLMAdapter(model, device)


class GenerationEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: torch.device | str,
        generation_config: Any | None,
        max_batch_tokens: int,
        max_waiting: int,
        max_new_tokens_cap: int,
        default_max_new_tokens: int,
        adapter: ModelAdapter | None = None,
        clock: Callable[[], float] = time.monotonic,
        prefix_caching: bool = True,
        prefill_chunk_tokens: int = 512,
        prefix_block_tokens: int = PREFIX_BLOCK_TOKENS,
        prefix_cache_bytes: int | None = None,
        kv_cache_memory: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.clock = clock  # injectable so tests can drive time limits and deadlines
        self.adapter: ModelAdapter = adapter or make_adapter(model, self.device)
        prefix = self.adapter.decoder_prefix
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.limits = Limits(
            vocab_size=self.adapter.vocab_size,
            max_context=self.adapter.max_context,
            max_new_tokens_cap=max_new_tokens_cap,
            default_max_new_tokens=default_max_new_tokens,
            max_batch_tokens=max_batch_tokens,
            eos_ids=eos_token_ids(generation_config, model, tokenizer),
            decoder_prefix=tuple(prefix) if prefix is not None else None,
            max_prompt=self.adapter.max_prompt,
            encoder_tokens=getattr(self.adapter, "encoder_tokens", None) or 0,
            kv_budget=kv_cache_memory,
            kv_column_bytes=kvbudget.column_bytes(model) if kv_cache_memory else None,
        )
        self._budget = kv_cache_memory
        # One token's KV bytes: from the config, else measured at the first prefill.
        self._column_bytes = self.limits.kv_column_bytes
        self._admits = itertools.count(1)
        self._preemptions = 0
        self._kv_bytes = 0
        self._texts = TokenTexts(tokenizer)
        self._byte_ids = byte_fallback_ids(tokenizer)
        self._decode_text = fast_decode(tokenizer)
        self._queue = Scheduler(max_waiting, max_batch_tokens)
        # Worker-thread state: the running rows and their batched model state.
        self._rows: list[Row] = []
        self._state: BatchState | None = None
        self._prefilling: list[RequestGroup] = []
        self._steps = self._generated = self._last_rows = self._max_rows = 0
        self._decode_sizes: Counter[int] = Counter()
        # Prefill in parts (causal LMs only; see the module's notes).
        self._parts = isinstance(self.adapter, CausalLMAdapter)
        self._chunk = max(1, prefill_chunk_tokens)
        self._partials: list[Partial] = []
        self.prefix_cache: PrefixCache | None = None
        if self._parts and prefix_caching:
            self.prefix_cache = PrefixCache(
                prefix_block_tokens,
                max_bytes=prefix_cache_bytes,
                max_tokens=int(max_batch_tokens * PREFIX_CACHE_SHARE),
            )

    # ---- any thread -------------------------------------------------------------

    def submit(self, request: GenerationRequest, sink: Sink) -> Handle:
        """Queue a request; raise ``InvalidRequest`` or ``QueueFull`` at once."""
        prepared = prepare(request, self.limits, self.generation_config)
        seed = prepared.sampling.seed
        if seed is None:
            seed = secrets.randbits(62)  # leaves room for seed + i
        group = RequestGroup(prepared, sink, self.limits.vocab_size, seed, self.clock)
        self._queue.push(group)
        return Handle(request.request_id, group)

    def cancel(self, handle: Handle) -> None:
        """Ask for the request to end; it does at the start of the next step."""
        self._queue.cancel(handle.group)

    def has_work(self) -> bool:
        return bool(self._rows) or bool(self._partials) or self._queue.pending()

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until there is something for ``step`` to do (or ``timeout``)."""
        return self._queue.wait(lambda: bool(self._rows or self._partials), timeout)

    def stats(self) -> EngineStats:
        state = self._state
        waiting = self._queue.waiting()
        rows = list(self._rows)
        prefix = self.prefix_cache.stats() if self.prefix_cache is not None else None
        return EngineStats(
            running_rows=len(rows),
            running_requests=len({id(r.group) for r in rows}),
            waiting=waiting,
            cache_tokens=state.tokens_in_use() if state is not None and rows else 0,
            cache_slots=state.slots() if state is not None and rows else 0,
            reserved_tokens=self._queue.reserved,
            last_decode_rows=self._last_rows,
            max_decode_rows=self._max_rows,
            steps=self._steps,
            generated_tokens=self._generated,
            decode_batch_sizes=dict(self._decode_sizes),
            waiting_by_priority=self._queue.waiting_by_priority(),
            prefilling=len(self._partials),
            prefix_prompt_tokens=prefix.prompt_tokens if prefix else 0,
            prefix_hit_tokens=prefix.hit_tokens if prefix else 0,
            prefix_blocks=prefix.blocks if prefix else 0,
            prefix_bytes=prefix.bytes if prefix else 0,
            prefix_stored_blocks=prefix.stored_blocks if prefix else 0,
            prefix_evicted_blocks=prefix.evicted_blocks if prefix else 0,
            kv_bytes=self._kv_bytes,
            kv_budget=self._budget or 0,
            preemptions=self._preemptions,
        )

    # ---- worker thread ----------------------------------------------------------

    def step(self) -> None:
        """One iteration: reap, admit + prefill, a prompt chunk, one decode step for
        every row."""
        self._steps += 1
        try:
            self._reap_waiting()
            self._reap_running()
            self._reap_partials()
            groups = self._queue.admit(self._fits if self._budget is not None else None)
            if groups:
                self._prefill(groups)
            if self._partials:
                self._prefill_parts()
            if self._rows:
                self._make_room()
                self._decode()
        except Exception as exc:  # a bug must not wedge the server: fail what is in flight
            log.exception("generation step failed")
            self._fail_rows(exc)
        try:
            self._kv_bytes = self._held_bytes()
        except Exception:  # a gauge: never let it fail a step
            log.exception("counting the KV bytes held failed")

    def _verdict(self, group: RequestGroup, now: float) -> FinishReason | Exception | None:
        deadline = group.prepared.request.deadline
        if deadline is not None and now >= deadline:
            return DeadlineExceeded("the request's deadline passed")
        if group.cancel_requested:
            return FinishReason.CANCELLED
        if group.time_limit_at is not None and now >= group.time_limit_at:
            return FinishReason.TIME_LIMIT
        return None

    def _reap_waiting(self) -> None:
        now = self.clock()
        ended = self._queue.reap(lambda group: self._verdict(group, now))
        for group, verdict in ended:
            self._end_unstarted(group, verdict)

    def _end_unstarted(self, group: RequestGroup, verdict: FinishReason | Exception) -> None:
        """End a request that has no rows in the batch (waiting, preempted, or
        prefilling in parts)."""
        if isinstance(verdict, Exception):
            group.preempted_rows = None
            group.emit(Failed(verdict))
            return
        if group.preempted_rows is not None:
            self._end_preempted(group, verdict)
            return
        group.emit(prompt_info(group, None))
        for index in range(group.prepared.sampling.n):
            seed = None if group.prepared.is_beam else group.seed + index
            group.emit(Finished(index, verdict, "", [], group.usage(0), seed))

    def _end_preempted(self, group: RequestGroup, reason: FinishReason) -> None:
        """End a preempted request's open sequences with what they have so far."""
        rows, group.preempted_rows = group.preempted_rows or [], None
        if group.beam is not None:
            finish_beams(group, reason, self.tokenizer)
            return
        for row in rows:
            if isinstance(row, StreamRow):
                row.finish(reason)

    def _reap_partials(self) -> None:
        now = self.clock()
        for partial in list(self._partials):
            verdict = self._verdict(partial.group, now)
            if verdict is not None:
                self._drop_partial(partial)
                self._end_unstarted(partial.group, verdict)
                self._release(partial.group)

    def _reap_running(self) -> None:
        now = self.clock()
        verdicts = {}
        for row in self._rows:
            if row.group not in verdicts:
                verdicts[row.group] = self._verdict(row.group, now)
        ended = {g: v for g, v in verdicts.items() if v is not None}
        for group, verdict in ended.items():
            if isinstance(verdict, Exception):
                self._fail(group, verdict)
                continue
            try:
                self._finish_early(group, verdict)
            except Exception as exc:
                self._fail_one(group, exc, "finishing")
            self._release(group)
        if ended:
            self._remove_groups(set(ended))

    def _finish_early(self, group: RequestGroup, reason: FinishReason) -> None:
        """End a running request's open sequences (cancelled, time limit)."""
        if group.beam is not None:
            finish_beams(group, reason, self.tokenizer)
            return
        for row in self._rows:
            if row.group is group and isinstance(row, StreamRow):
                row.finish(reason)

    # ---- prefill and decode -------------------------------------------------------

    def _prefill(self, groups: list[RequestGroup]) -> None:
        self._prefilling = groups
        for group in groups:
            group.admit_order = next(self._admits)
        resumed = [group for group in groups if group.preempted_rows is not None]
        if resumed:
            self._resume(resumed)
        fresh = [group for group in groups if group not in resumed]
        whole = [group for group in fresh if not self._start_parts(group)]
        if whole:
            self._prefill_and_join(whole)
        self._prefilling = []

    def _start_parts(self, group: RequestGroup, resumed: Row | None = None) -> bool:
        """Look the prompt (or a resumed row's tokens) up in the prefix cache; queue it
        for prefill in parts (True) when it hit or is longer than a chunk, else leave it
        to the batched prefill."""
        request = group.prepared.request
        options = request.options
        if not self._parts or request.extras or (options.echo_prompt_tokens and options.logprobs):
            return False
        prompt = group.prompt_ids if resumed is None else resumed.history()[:-1]
        hit = self.prefix_cache.lookup(prompt) if self.prefix_cache is not None else None
        if hit is not None and not hit.blocks:
            hit = None
        if hit is None and len(prompt) <= self._chunk:
            return False
        partial = Partial(group, None, hit, prompt, resumed)
        self._partials.append(partial)
        try:
            if resumed is None:  # a resumed request keeps its first admission's numbers
                group.admitted_at = self.clock()
                group.prepare_tensors(self.device)
            if hit is not None:
                assert isinstance(self.adapter, CausalLMAdapter)
                partial.state = self.adapter.state_from_kv(hit.kv())
                if resumed is None:
                    group.cached_tokens = hit.tokens
        except Exception as exc:
            self._drop_partial(partial)
            self._fail_one(group, exc, "prefill")
        return True

    def _prefill_parts(self) -> None:
        """Run up to one chunk of prompt tokens of the requests prefilling in parts, in
        order; a request whose prompt is done joins the running batch."""
        adapter = self.adapter
        assert isinstance(adapter, CausalLMAdapter)
        budget = self._chunk
        for partial in list(self._partials):
            if budget <= 0:
                break
            group, prompt = partial.group, partial.ids
            done = partial.state.width if partial.state is not None else 0
            take = min(budget, len(prompt) - done)
            budget -= take
            try:
                logits, partial.state = adapter.extend(partial.state, prompt[done : done + take])
            except torch.OutOfMemoryError:
                self._drop_partial(partial)
                self._free_device_memory()
                self._fail(group, ResourceExhausted("out of device memory during prefill"))
                continue
            except Exception as exc:
                self._drop_partial(partial)
                self._fail_one(group, exc, "prefill")
                continue
            if done + take == len(prompt):
                self._drop_partial(partial)
                self._join_parts(partial, logits)

    def _join_parts(self, partial: Partial, logits: torch.Tensor) -> None:
        """A request whose prompt was prefilled in parts: store its blocks, make its
        rows, choose their first tokens and join the running batch (a resumed row
        joins as it was: its pending token is already chosen)."""
        group, state = partial.group, partial.state
        assert state is not None
        if self.prefix_cache is not None:
            try:
                self.prefix_cache.store(partial.ids, state.row_columns(0, state.width))
            except Exception:  # the cache is an optimisation: never fail requests for it
                log.exception("storing prompt prefixes failed")
        if partial.resumed is not None:
            group.preempted_rows = None
            self._join(state, [partial.resumed], [0])
            return
        try:
            self._send_prompt_info(group, None)
            rows = self._make_rows(group)
        except Exception as exc:
            self._fail_one(group, exc, "prefill")
            return
        order = torch.zeros(len(rows), dtype=torch.long, device=self.device)
        state.select(order)
        kept, sources = self._advance(rows, logits.index_select(0, order))
        if kept:
            self._join(state, kept, sources)

    def _drop_partial(self, partial: Partial) -> None:
        """Take ``partial`` off the list and unpin its prefix-cache blocks."""
        if partial in self._partials:
            self._partials.remove(partial)
        if partial.hit is not None and self.prefix_cache is not None:
            self.prefix_cache.release(partial.hit)

    def _store_prefixes(self, groups: list[RequestGroup], state: BatchState) -> None:
        """Keep the full blocks of a batched prefill's prompts (row i: groups[i])."""
        cache = self.prefix_cache
        if cache is None or not isinstance(state, CausalState):
            return
        for i, group in enumerate(groups):
            if not group.prepared.request.extras and len(group.prompt_ids) >= cache.block_tokens:
                cache.store(group.prompt_ids, state.row_columns(i, len(group.prompt_ids)))

    def _prefill_and_join(self, groups: list[RequestGroup]) -> None:
        now = self.clock()
        inputs = []
        for group in groups:
            group.admitted_at = now
            group.prepare_tensors(self.device)
            options = group.prepared.request.options
            echo_logprobs = options.echo_prompt_tokens and options.logprobs
            request = group.prepared.request
            inputs.append(
                PrefillInput(
                    group.prompt_ids,
                    want_prompt_logits=echo_logprobs,
                    extras=request.extras,
                    decoder_ids=request.decoder_prompt_ids,
                )
            )
        try:
            out = self.adapter.prefill(inputs)
        except torch.OutOfMemoryError:
            self._free_device_memory()
            for group in groups:
                self._fail(group, ResourceExhausted("out of device memory during prefill"))
            return
        except Exception as exc:  # only these requests were in this forward pass
            if len(groups) > 1:
                # Find the one that broke it: each alone fails or joins on its own.
                log.warning("prefill of %d requests failed (%r); each alone", len(groups), exc)
                for group in groups:
                    self._prefill_and_join([group])
                return
            self._fail_one(groups[0], exc, "prefill")
            return
        self._measure(out.state)
        try:
            self._store_prefixes(groups, out.state)
        except Exception:  # the cache is an optimisation: never fail requests for it
            log.exception("storing prompt prefixes failed")
        rows: list[Row] = []
        index: list[int] = []
        for i, group in enumerate(groups):
            try:
                self._send_prompt_info(group, out.prompt_logits[i])
                new = self._make_rows(group)
            except Exception as exc:
                self._fail_one(group, exc, "prefill")
                continue
            rows += new
            index += [i] * len(new)
        if not rows:
            return
        order = torch.tensor(index, dtype=torch.long, device=self.device)
        out.state.select(order)
        kept, sources = self._advance(rows, out.logits.index_select(0, order))
        if kept:
            self._join(out.state, kept, sources)

    def _send_prompt_info(self, group: RequestGroup, logits: torch.Tensor | None) -> None:
        options = group.prepared.request.options
        tokens = None
        if options.echo_prompt_tokens:
            top = options.top_logprobs if options.logprobs else 0
            tokens = self._texts.prompt_infos(group.prompt_ids, logits, top)
        group.emit(prompt_info(group, tokens))

    def _make_rows(self, group: RequestGroup) -> list[Row]:
        prepared = group.prepared
        rows: list[Row]
        if prepared.is_beam:
            s = prepared.sampling
            group.beam = BeamSearch(
                num_beams=s.num_beams,
                max_new_tokens=prepared.max_new_tokens,
                length_penalty=s.length_penalty,
                early_stopping=s.early_stopping,
                eos_ids=sorted(prepared.eos_ids | prepared.stop_ids),
            )
            rows = [BeamRow(group, k, self.device) for k in range(s.num_beams)]
        else:
            rows = [
                StreamRow(group, i, self.device, self._decode_text, self._byte_ids)
                for i in range(prepared.sampling.n)
            ]
        group.open_rows = len(rows)
        return rows

    def _join(self, state: BatchState, rows: list[Row], sources: list[int]) -> None:
        if sources != list(range(state.rows)):
            state.select(torch.tensor(sources, dtype=torch.long))
        if self._state is None or not self._rows:
            self._state = state
        else:
            self._state.merge(state)
        self._rows += rows

    def _decode(self) -> None:
        logits = self._forward_decode()
        if logits is None:
            return
        self._last_rows = len(self._rows)
        self._max_rows = max(self._max_rows, self._last_rows)
        self._decode_sizes[self._last_rows] += 1
        kept, sources = self._advance(self._rows, logits)
        assert self._state is not None
        if sources != list(range(len(self._rows))):
            self._state.select(torch.tensor(sources, dtype=torch.long))
        self._rows = kept

    def _forward_decode(self) -> torch.Tensor | None:
        """Run the decode forward pass; on OOM, fail the youngest request and retry."""
        while self._rows and self._state is not None:
            tokens = torch.tensor([r.pending for r in self._rows], dtype=torch.long)
            try:
                return self.adapter.decode(self._state, tokens)
            except torch.OutOfMemoryError:
                self._state.rollback()
                self._free_device_memory()
                victim = max({r.group for r in self._rows}, key=lambda g: g.admitted_at or 0.0)
                rid = victim.prepared.request.request_id
                log.warning("out of device memory; failing request %s", rid)
                self._fail(victim, ResourceExhausted("out of device memory during decoding"))
                self._remove_groups({victim})
            except Exception as exc:
                self._state.rollback()
                culprits = self._decode_culprits(tokens, exc)
                for group, error in culprits.items():
                    self._fail_one(group, error, "decode step")
                self._remove_groups(set(culprits))
        return None

    def _decode_culprits(
        self, tokens: torch.Tensor, error: Exception
    ) -> dict[RequestGroup, Exception]:
        """The requests a failed decode step fails alone: each request's rows are run by
        themselves on a copy of their state. When none fails alone, the step cannot be
        pinned on one request and ``error`` goes up to fail them all."""
        assert self._state is not None
        groups = _positions_by_group(self._rows)
        if len(groups) == 1:
            return {next(iter(groups)): error}
        log.warning("a decode step of %d requests failed (%r); each alone", len(groups), error)
        culprits: dict[RequestGroup, Exception] = {}
        for group, index in groups.items():
            trial = copy.deepcopy(self._state)
            trial.select(torch.tensor(index, dtype=torch.long))
            try:
                self.adapter.decode(trial, tokens[index])
            except torch.OutOfMemoryError:
                raise error from None  # the trial's own copy ran out: no verdict
            except Exception as exc:
                culprits[group] = exc
            del trial
        if not culprits:
            raise error
        return culprits

    # ---- the KV budget: admission, preemption, resumption --------------------------

    def _fits(self, admitted: list[RequestGroup], head: RequestGroup) -> bool:
        """Whether ``head`` may join the batch now, beside what runs, what prefills in
        parts and ``admitted`` (this step's): the batch they make, at its widest, with a
        growable buffer's slack, within the budget; this step's prefill within
        ``max_batch_tokens``. Alone, a request always fits (validation saw to that)."""
        if not admitted and not self._rows and not self._partials:
            return True
        groups = [*admitted, head]
        widths = [_widths_now(group) for group in groups]
        rows = [group.prepared.rows for group in groups]
        prefill = sum(rows) * max(e + d for e, d in widths)
        if admitted and prefill > self.limits.max_batch_tokens:
            return False
        column = self._column_bytes
        if column is None or self._budget is None:
            return True
        enc, dec = _state_widths(self._state) if self._rows else (0, 0)
        for partial in self._partials:
            widths.append((0, len(partial.ids)))
            rows.append(partial.group.prepared.rows)
        enc = max([enc] + [e for e, _ in widths])
        dec = max([dec] + [d for _, d in widths])
        need = (len(self._rows) + sum(rows)) * (enc + kvbudget.grown_columns(dec + 1)) * column
        return need <= self._budget

    def _make_room(self) -> None:
        """Preempt requests until the next decode step's cache fits the budget: lowest
        priority first, then the latest admitted; never the last one running."""
        if self._budget is None:
            return
        while True:
            groups = {row.group for row in self._rows}
            if len(groups) < 2 or self._step_bytes() <= self._budget:
                return
            victim = min(groups, key=lambda g: (g.prepared.request.priority, -g.admit_order))
            self._preempt(victim)

    def _preempt(self, group: RequestGroup) -> None:
        """Take ``group``'s rows out of the batch (freeing their KV) and queue it again."""
        group.preempted_rows = [row for row in self._rows if row.group is group]
        group.preemptions += 1
        self._preemptions += 1
        log.info(
            "KV budget: preempted request %s (%d rows)",
            group.prepared.request.request_id,
            len(group.preempted_rows),
        )
        self._remove_groups({group})
        self._queue.requeue(group)

    def _resume(self, groups: list[RequestGroup]) -> None:
        """Prefill preempted requests' rows again (each its context and tokens but the
        pending one), throw the logits away and join the batch where they left off.
        A one-row request of a causal LM goes through the prefix cache and prefills in
        parts like a prompt: its prompt's blocks are mostly still cached."""
        parted = [
            group
            for group in groups
            if len(group.preempted_rows or []) == 1
            and self._start_parts(group, (group.preempted_rows or [])[0])
        ]
        groups = [group for group in groups if group not in parted]
        if not groups:
            return
        inputs: list[PrefillInput] = []
        rows: list[Row] = []
        for group in groups:
            request = group.prepared.request
            for row in group.preempted_rows or []:
                ids = row.history()[:-1]  # the pending token is not in the cache yet
                if self.limits.decoder_prefix is not None:
                    item = PrefillInput(group.prompt_ids, extras=request.extras, decoder_ids=ids)
                else:
                    item = PrefillInput(ids, extras=request.extras)
                inputs.append(item)
                rows.append(row)
        try:
            out = self.adapter.prefill(inputs)
        except torch.OutOfMemoryError:
            self._free_device_memory()
            for group in groups:
                group.preempted_rows = None
                self._fail(group, ResourceExhausted("out of device memory resuming the request"))
            return
        except Exception as exc:
            if len(groups) > 1:
                for group in groups:
                    self._resume([group])
                return
            groups[0].preempted_rows = None
            self._fail_one(groups[0], exc, "resumption")
            return
        for group in groups:
            group.preempted_rows = None
        self._measure(out.state)
        self._join(out.state, rows, list(range(len(rows))))

    def _measure(self, state: BatchState) -> None:
        """Learn one token's KV bytes from a state, when the config did not say."""
        if self._column_bytes is not None or self._budget is None:
            return
        held = kvbudget.held_bytes(state)
        slots = sum(c.rows * c.width for c in kvbudget.padded_caches(state))
        if held and slots:
            self._column_bytes = max(1, held // slots)

    def _held_bytes(self) -> int:
        """KV bytes held now: the running batch and the prompts prefilling in parts."""
        states: list[Any] = [p.state for p in self._partials if p.state is not None]
        if self._rows and self._state is not None:
            states.append(self._state)
        return sum(self._bytes_of(state, kvbudget.held_bytes) for state in states)

    def _step_bytes(self) -> int:
        """KV bytes held after the next decode step (the prompts in parts as now)."""
        partials = [p.state for p in self._partials if p.state is not None]
        held = sum(self._bytes_of(state, kvbudget.held_bytes) for state in partials)
        return held + self._bytes_of(self._state, kvbudget.bytes_after_step)

    def _bytes_of(self, state: Any, count: Callable[[Any], int | None]) -> int:
        if state is None:
            return 0
        value = count(state)
        if value is None:  # a state of another kind: its token slots at the config's rate
            value = state.slots() * (self._column_bytes or 0)
        return value

    # ---- token selection and bookkeeping ----------------------------------------

    def _advance(self, rows: list[Row], logits: torch.Tensor) -> tuple[list[Row], list[int]]:
        """Choose each row's next token and emit; return surviving rows and their sources.

        A request whose token selection or bookkeeping raises fails alone; the others
        go on as if it had not been in the batch."""
        origin = list(range(len(rows)))
        try:
            selection = sampler.select(logits, rows)  # type: ignore[arg-type]
        except Exception as exc:
            origin = self._drop_selection_culprits(rows, logits, exc)
            if not origin:
                return [], []
            rows = [rows[i] for i in origin]
            selection = sampler.select(logits[origin], rows)  # type: ignore[arg-type]
        kept: list[Row] = []
        sources: list[int] = []
        for group, index in _positions_by_group(rows).items():
            try:
                group_kept, group_sources = self._advance_group(group, rows, index, selection)
            except Exception as exc:
                self._fail_one(group, exc, "token selection")
                continue
            kept += group_kept
            sources += [origin[i] for i in group_sources]
        self._generated += len(rows)
        return kept, sources

    def _advance_group(
        self, group: RequestGroup, rows: list[Row], index: list[int], selection: sampler.Selection
    ) -> tuple[list[Row], list[int]]:
        """One request's step (its rows are ``rows[index]``): emit their tokens; return
        the rows that go on and the position in ``rows`` whose cache each continues
        (a stream row its own; a beam the row it now extends)."""
        group_rows = [rows[i] for i in index]
        if group.beam is None:
            going: list[Row] = []
            sources: list[int] = []
            for i, row in zip(index, group_rows, strict=True):
                assert isinstance(row, StreamRow)
                token = selection.tokens[i]
                info = self._texts.info(token, selection.chosen_logprobs[i], selection.top.get(i))
                if not row.accept(token, info):
                    going.append(row)
                    sources.append(i)
            if group.open_rows == 0:
                self._release(group)
            return going, sources
        beam_sources = advance_beams(group, group_rows, index, selection, self._texts)
        if beam_sources is None:
            finish_beams(group, None, self.tokenizer)
            self._release(group)
            return [], []
        return group_rows, beam_sources

    def _drop_selection_culprits(
        self, rows: list[Row], logits: torch.Tensor, error: Exception
    ) -> list[int]:
        """Fail the requests whose token selection raises alone; return the positions
        of the other rows. Selection draws its random numbers last, so the failed
        batched call left every generator as it was; the trials' draws are undone."""
        groups = _positions_by_group(rows)
        culprits: dict[RequestGroup, Exception] = {}
        if len(groups) == 1:
            culprits[next(iter(groups))] = error
        else:
            log.warning("token selection for %d requests failed (%r)", len(groups), error)
            generators = [row.generator for row in rows if row.generator is not None]
            states = [g.get_state() for g in generators]
            for group, index in groups.items():
                try:
                    sampler.select(logits[index], [rows[i] for i in index])  # type: ignore[arg-type]
                except Exception as exc:
                    culprits[group] = exc
            for generator, state in zip(generators, states, strict=True):
                generator.set_state(state)
        if not culprits:
            raise error
        for group, exc in culprits.items():
            self._fail_one(group, exc, "token selection")
        return [i for i, row in enumerate(rows) if row.group not in culprits]

    # ---- failure and cleanup ------------------------------------------------------

    def _release(self, group: RequestGroup) -> None:
        self._queue.release(group)

    def _fail(self, group: RequestGroup, error: Exception) -> None:
        group.emit(Failed(error))
        group.open_rows = 0
        self._release(group)

    def _fail_one(self, group: RequestGroup, error: Exception, where: str) -> None:
        """Fail one request whose own work raised (logged with its traceback)."""
        rid = group.prepared.request.request_id
        log.error("request %s failed in its %s", rid, where, exc_info=error)
        self._fail(group, error)

    def _remove_groups(self, groups: set[RequestGroup]) -> None:
        keep = [i for i, r in enumerate(self._rows) if r.group not in groups]
        if len(keep) == len(self._rows):
            return
        if self._state is not None and keep:
            self._state.select(torch.tensor(keep, dtype=torch.long))
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._state = None

    def _fail_rows(self, error: Exception) -> None:
        partials = {p.group for p in self._partials}
        for partial in list(self._partials):
            self._drop_partial(partial)
        for group in {r.group for r in self._rows} | set(self._prefilling) | partials:
            self._fail(group, error)
        self._rows = []
        self._state = None
        self._prefilling = []

    def _free_device_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _widths_now(group: RequestGroup) -> tuple[int, int]:
    """The cache columns (encoder side, growing side) ``group``'s rows need now: its
    prompt, or for a preempted request the longest row it resumes."""
    prepared = group.prepared
    grown = max((len(row.history()) for row in group.preempted_rows or []), default=0)
    if prepared.encoder_width:
        return prepared.encoder_width, max(grown, len(prepared.context_ids))
    return 0, max(grown, len(group.prompt_ids))


def _state_widths(state: BatchState | None) -> tuple[int, int]:
    """The running batch's (encoder side, growing side) widths."""
    caches = kvbudget.padded_caches(state)
    if not caches:
        return 0, state.slots() // max(state.rows, 1) if state is not None else 0
    return (caches[1].width if len(caches) > 1 else 0), caches[0].width


def _positions_by_group(rows: list[Row]) -> dict[RequestGroup, list[int]]:
    """Each request's rows' positions in ``rows``, requests in order of first row."""
    groups: dict[RequestGroup, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.group, []).append(i)
    return groups
