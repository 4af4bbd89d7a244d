"""What one call did: the record the interceptor keeps for the access log and metrics.

The interceptor opens a ``CallRecord`` for each RPC and makes it current (a context
variable, so it follows the call into the servicer, the batcher's ``submit`` and the
tasks ``asyncio.gather`` starts). Code deeper down adds what only it knows through the
``note_*`` hooks, which do nothing outside a call (warm-up, engine tests).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelwire_server.engine.types import Usage

log = logging.getLogger(__name__)


@dataclass
class CallRecord:
    """One RPC, from the interceptor's first look to its status."""

    request_id: str
    rpc: str  # the method's short name, e.g. "ClassifyText"
    model: str = ""  # the model that served it: the requested name, or the task's default
    peer: str = ""
    trace_id: str = ""
    span_id: str = ""
    started: float = field(default_factory=time.monotonic)
    code: str = "OK"
    message: str = ""  # the status message of a failed call
    error: BaseException | None = None  # what a handler raised, for the log's traceback
    duration_s: float = 0.0
    queue_s: float | None = None  # longest wait of any of its inputs before running
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    time_to_first_token_s: float | None = None
    # Mean gap between tokens, one value per finished sequence of two or more tokens.
    inter_token_s: list[float] = field(default_factory=list)

    def finish(self, code: str, message: str = "", error: BaseException | None = None) -> None:
        self.code, self.message, self.error = code, message, error
        self.duration_s = time.monotonic() - self.started

    def report(self, observers: Iterable[Callable[[CallRecord], None]]) -> None:
        """Hand the ended call to each observer (the access log, metrics); a broken
        observer must not fail the call it observes."""
        for observe in observers:
            try:
                observe(self)
            except Exception:
                log.exception("call observer %r failed", observe)

    def add_queue_time(self, seconds: float) -> None:
        self.queue_s = seconds if self.queue_s is None else max(self.queue_s, seconds)

    def add_usage(self, usage: Usage, *, count_prompt: bool) -> None:
        """A finished sequence's usage; ``count_prompt`` once per distinct prompt."""
        self.add_queue_time(usage.queue_time_s)
        if count_prompt:
            self.prompt_tokens = (self.prompt_tokens or 0) + usage.prompt_tokens
        self.generated_tokens = (self.generated_tokens or 0) + usage.generated_tokens
        ttft = usage.time_to_first_token_s
        if ttft is not None:
            best = self.time_to_first_token_s
            self.time_to_first_token_s = ttft if best is None else min(best, ttft)
            if usage.generated_tokens > 1:
                gaps = usage.generated_tokens - 1
                self.inter_token_s.append((usage.total_time_s - ttft) / gaps)


current_call: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "current_call", default=None
)


def note_queue_time(seconds: float) -> None:
    """How long the current call's inputs waited in a batcher's queue."""
    call = current_call.get()
    if call is not None:
        call.add_queue_time(seconds)


def note_usage(usage: Usage, *, count_prompt: bool = True) -> None:
    """A generated sequence of the current call finished (engine ``Usage``)."""
    call = current_call.get()
    if call is not None:
        call.add_usage(usage, count_prompt=count_prompt)
