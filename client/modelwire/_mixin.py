"""The base of AsyncClient's task mixins: what they may call on the client."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    from modelwire._transport import Stubs


class TaskMethods:
    """Mixed into AsyncClient, which provides ``_unary`` (one unary call, its request id)."""

    if TYPE_CHECKING:

        async def _unary(
            self,
            pick: Callable[[Stubs], grpc.aio.UnaryUnaryMultiCallable[Any, Any]],
            request: Any,
            timeout: float | None,
            request_id: str | None,
        ) -> tuple[Any, str]: ...
