"""GenerateStream: one running Generate call, read as typed chunks."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self, cast

import grpc

from modelwire._errors import echoed_request_id, from_rpc_error
from modelwire._generation import GenerationAccumulator, generation_chunk
from modelwire._structured import Parser
from modelwire._types import GenerationChunk, GenerationResult
from modelwire.v1 import generate_pb2

_Call = grpc.aio.UnaryStreamCall[generate_pb2.GenerateRequest, generate_pb2.GenerateResponse]


class GenerateStream:
    """The chunks of one Generate call, in arrival order.

    Use it as an async iterator, ideally inside ``async with`` so that leaving early
    cancels the call on the server (which then stops generating)::

        async with client.generate_stream("Once upon a time", max_new_tokens=20) as stream:
            async for chunk in stream:
                print(chunk.text, end="")
            result = await stream.final()

    Errors arrive as the SDK's exceptions (``APIError`` subclasses) from iteration.
    ``text()`` and ``final()`` read whatever is left, so they can follow partial iteration.
    """

    def __init__(self, call: _Call, *, sent_request_id: str, parse: Parser | None = None) -> None:
        self._call = call
        self._sent_request_id = sent_request_id
        self._echoed_request_id: str | None = None
        self._accumulator = GenerationAccumulator(parse)
        self._closed = False

    @property
    def request_id(self) -> str:
        """The request id the server echoed once it answered; until then, the one sent."""
        return self._echoed_request_id or self._sent_request_id

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._closed:
            raise StopAsyncIteration
        try:
            response = await self._call.read()
        except grpc.aio.AioRpcError as error:
            self._closed = True
            raise from_rpc_error(error, fallback_request_id=self.request_id) from error
        except asyncio.CancelledError:
            # close() from another task makes a pending read raise CancelledError; that
            # is the end of the stream, unless this task itself is being cancelled.
            task = asyncio.current_task()
            if self._closed and not (task and task.cancelling()):
                raise StopAsyncIteration from None
            raise
        if response is grpc.aio.EOF:
            self._closed = True
            self._learn_request_id(await self._call.trailing_metadata())
            raise StopAsyncIteration
        if self._echoed_request_id is None:
            self._learn_request_id(await self._call.initial_metadata())
        chunk = generation_chunk(cast(generate_pb2.GenerateResponse, response))
        self._accumulator.add(chunk)
        return chunk

    def _learn_request_id(self, metadata: grpc.aio.Metadata | None) -> None:
        if self._echoed_request_id is None:
            self._echoed_request_id = echoed_request_id(metadata)

    async def text(self) -> str:
        """The full text of sequence 0, reading the rest of the stream."""
        await self._drain()
        return self._accumulator.text(0)

    async def final(self) -> GenerationResult:
        """Every sequence's text, tokens, finish reason, usage and seed, reading the rest."""
        await self._drain()
        return self._accumulator.result(self.request_id)

    async def _drain(self) -> None:
        async for _ in self:
            pass

    async def close(self) -> None:
        """Cancel the call if it is still running; iteration then ends. Safe to repeat."""
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
