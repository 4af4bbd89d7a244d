"""AsyncClient methods of the remaining text tasks (zero-shot, fill-mask, NER, QA,
summarization, translation): each a request builder, a result converter and a method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    from modelwire._transport import Stubs


class TextTaskMethods:
    """Mixed into AsyncClient, which provides ``_unary``."""

    if TYPE_CHECKING:

        async def _unary(
            self,
            pick: Callable[[Stubs], grpc.aio.UnaryUnaryMultiCallable[Any, Any]],
            request: Any,
            timeout: float | None,
            request_id: str | None,
        ) -> tuple[Any, str]: ...
