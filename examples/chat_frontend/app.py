"""A chat page that shows Generate's deltas as they arrive, over Server-Sent Events.

    pip install 'modelwire[examples]'
    python examples/chat_frontend/app.py --target 127.0.0.1:50051 --model tiny-llama
    # open http://127.0.0.1:8000/

``GET /chat/stream?id=...&messages=[...]`` relays one Generate call as SSE (``data:``
events with each delta, then a ``done`` event with the finish reason). ``POST
/chat/stop?id=...`` (the page's Stop button) closes that GenerateStream, which cancels the
gRPC call, so the server stops generating at once rather than when the answer ends.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from modelwire import APIError, AsyncClient, GenerateStream

PAGE = Path(__file__).with_name("index.html")


@dataclass(frozen=True)
class Settings:
    target: str = "127.0.0.1:50051"
    model: str | None = None
    max_new_tokens: int = 200
    ignore_eos: bool = False  # for demos with random-weight models that stop at once


CLIENT = web.AppKey("client", AsyncClient)
SETTINGS = web.AppKey("settings", Settings)
RUNNING = web.AppKey("running", dict[str, GenerateStream])


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[RUNNING] = {}
    app.cleanup_ctx.append(_shared_client)
    app.add_routes(
        [
            web.get("/", page),
            web.get("/chat/stream", stream_answer),
            web.post("/chat/stop", stop_answer),
        ]
    )
    return app


async def _shared_client(app: web.Application) -> AsyncIterator[None]:
    app[CLIENT] = AsyncClient(app[SETTINGS].target, timeout=None)  # answers may run long
    yield
    await app[CLIENT].close()


async def page(_: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGE)


async def stream_answer(request: web.Request) -> web.StreamResponse:
    answer_id = request.query.get("id", "")
    try:
        messages = json.loads(request.query.get("messages", ""))
    except ValueError:
        raise web.HTTPBadRequest(text="`messages` must be JSON chat turns") from None
    settings = request.app[SETTINGS]
    client = request.app[CLIENT]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        try:
            # The page sends the whole conversation each turn: once it outgrows the
            # model's context, the oldest turns are left out (the page is told how many,
            # and forgets them too) instead of the server refusing every later turn.
            fit = await client.fit_chat(
                messages, model=settings.model, max_new_tokens=settings.max_new_tokens
            )
        except (APIError, ValueError) as error:
            await _event(response, "failed", {"error": str(error)})
            return response
        if fit.dropped:
            await _event(response, "fitted", {"dropped": fit.dropped})
        stream = client.generate_stream(
            messages=fit.messages,
            model=settings.model,
            max_new_tokens=fit.max_new_tokens,
            truncate_prompt_tokens=fit.truncate_prompt_tokens,
            ignore_eos=settings.ignore_eos or None,
        )
        request.app[RUNNING][answer_id] = stream
        try:
            await _relay(stream, response)
        finally:
            request.app[RUNNING].pop(answer_id, None)
            await stream.close()  # also when the browser went away mid-answer
    except ConnectionResetError:
        # The browser went away (closing the page, or EventSource.close()): that is how
        # a reader cancels. The stream is closed above, so the server stops generating.
        pass
    return response


async def _relay(stream: GenerateStream, response: web.StreamResponse) -> None:
    finish: Any = None
    try:
        async for chunk in stream:
            if chunk.text and chunk.index == 0:
                await _event(response, "message", {"text": chunk.text})
            finish = chunk.finish_reason or finish
    except APIError as error:
        await _event(response, "failed", {"error": str(error), "request_id": error.request_id})
        return
    # A stream closed by Stop ends without a finish reason: the call was cancelled.
    done = {"finish_reason": finish.value if finish else "stopped", "request_id": stream.request_id}
    await _event(response, "done", done)


async def _event(response: web.StreamResponse, name: str, data: dict[str, Any]) -> None:
    await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())


async def stop_answer(request: web.Request) -> web.Response:
    stream = request.app[RUNNING].get(request.query.get("id", ""))
    if stream is None:
        return web.json_response({"stopped": False})  # it had already finished
    await stream.close()
    return web.json_response({"stopped": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--target", default=os.environ.get("MODELWIRE_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--model")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    args = parser.parse_args()
    settings = Settings(args.target, args.model, args.max_new_tokens)
    web.run_app(create_app(settings), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
