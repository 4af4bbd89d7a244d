"""Keeping a conversation inside its model's context.

A chat frontend sends the whole conversation every turn, so it outgrows the model's
context sooner or later; the server then refuses the turn (prompt + ``max_new_tokens``
over the context). ``fit_chat`` leaves out the oldest turns, never the system message,
until the rendered prompt and the answer's budget fit, and when even the newest turn is
too long it shrinks the budget and cuts the prompt from the left. Tokens are counted by
the server's ``Tokenize`` with the model's own chat template, so the count is the one
``Generate`` will see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelwire._chat import ChatMessageLike
from modelwire._types import ChatMessage

if TYPE_CHECKING:
    from modelwire._client import AsyncClient

# The models a chat's Generate call lands on when it names none, in the server's order.
CHAT_TASKS = ("text-generation", "image-text-to-text")


@dataclass(frozen=True)
class ChatFit:
    """A conversation made to fit: pass ``messages``, ``max_new_tokens`` and (when not
    None) ``truncate_prompt_tokens`` to ``generate``/``generate_stream``."""

    messages: list[ChatMessageLike]
    max_new_tokens: int
    dropped: int
    """How many of the oldest turns were left out."""
    prompt_tokens: int
    """The rendered prompt's length before any ``truncate_prompt_tokens`` cut."""
    truncate_prompt_tokens: int | None = None
    """Set only when the system message and the newest turn alone are too long."""


def _role(message: ChatMessageLike) -> object:
    if isinstance(message, ChatMessage):
        return message.role
    return message.get("role") if isinstance(message, Mapping) else None


async def context_length(client: AsyncClient, model: str | None) -> int | None:
    """The context of ``model``, or of the default model a chat call would use."""
    if model:
        return (await client.get_model(model)).context_length
    for task in CHAT_TASKS:
        for info in await client.list_models(task):
            if info.default_for_task:
                return info.context_length
    return None


async def fit_chat(
    client: AsyncClient,
    messages: Sequence[ChatMessageLike],
    *,
    model: str | None = None,
    max_new_tokens: int | None = None,
    timeout: float | None = None,
) -> ChatFit:
    kept = list(messages)
    context = await context_length(client, model)

    async def count() -> int:
        tokens = await client.tokenize(
            messages=kept, model=model, add_generation_prompt=True, timeout=timeout
        )
        return len(tokens.token_ids)

    if context is None:  # the server does not know: send it all and let it judge
        return ChatFit(kept, max_new_tokens or 256, 0, await count())
    # Without a budget of its own, an answer keeps a quarter of the context free.
    budget = max_new_tokens if max_new_tokens is not None else min(256, context // 4)
    budget = max(1, min(budget, context - 1))
    dropped = 0
    while True:
        prompt = await count()
        if prompt + budget <= context:
            return ChatFit(kept, budget, dropped, prompt)
        oldest = next((i for i, m in enumerate(kept[:-1]) if _role(m) != "system"), None)
        if oldest is None:
            break
        del kept[oldest]
        dropped += 1
        # The answers to a left-out question go with it: a conversation restarts on a
        # user turn.
        while oldest < len(kept) - 1 and _role(kept[oldest]) not in ("user", "system"):
            del kept[oldest]
            dropped += 1
    if prompt < context:  # the newest turn fits, with a shorter answer
        return ChatFit(kept, context - prompt, dropped, prompt)
    budget = max(1, min(budget, context // 4))
    return ChatFit(kept, budget, dropped, prompt, truncate_prompt_tokens=context - budget)
