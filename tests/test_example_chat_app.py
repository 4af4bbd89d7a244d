"""examples/chat_frontend's relay without a browser: a conversation past the model's
context goes on, and a reader that goes away mid-answer cancels it quietly."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from yarl import URL

from tests.helpers import load_example

APP_PATH = Path(__file__).parent.parent / "examples" / "chat_frontend" / "app.py"


def _load_app() -> Any:
    return load_example(APP_PATH, "chat_frontend_relay")


@dataclass
class Relay:
    """The example app served as ``web.run_app`` serves it (no handler cancellation:
    a dropped connection shows up as a failed write, as in production)."""

    url: URL
    session: ClientSession
    module: Any


@pytest.fixture
async def relay(server: Any) -> AsyncIterator[Relay]:
    module = _load_app()
    settings = module.Settings(
        server.target, model="tiny-llama", max_new_tokens=200, ignore_eos=True
    )
    runner = web.AppRunner(module.create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with ClientSession() as session:
            yield Relay(URL(f"http://127.0.0.1:{port}"), session, module)
    finally:
        await runner.cleanup()


async def _events(response: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    name = "message"
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


async def test_a_conversation_past_the_context_is_fitted_not_refused(relay: Relay) -> None:
    history: list[dict[str, str]] = []
    for turn in range(4):  # 200-token answers: tiny-llama's 512 positions fill up at once
        history.append({"role": "user", "content": f"Tell me more, part {turn}"})
        query = {"id": f"t{turn}", "messages": json.dumps(history)}
        async with relay.session.get(relay.url / "chat/stream", params=query) as response:
            events = [e async for e in _events(response)]
        names = [name for name, _ in events]
        assert names[-1] == "done" and "failed" not in names, events
        fitted = [data["dropped"] for name, data in events if name == "fitted"]
        if fitted:  # the page forgets the turns the server left out, as index.html does
            history = history[fitted[0] :]
        answer = "".join(data["text"] for name, data in events if name == "message")
        history.append({"role": "assistant", "content": answer})
    assert len(history) < 8  # some turns were left out on the way


async def test_a_reader_that_leaves_cancels_the_answer_without_an_error_log(
    relay: Relay, server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine = server.runner("tiny-llama").engine
    before = engine.stats().generated_tokens
    messages = json.dumps([{"role": "user", "content": "A long story, please"}])
    path = (relay.url / "chat/stream").with_query(id="gone", messages=messages).raw_path_qs
    with caplog.at_level(logging.ERROR):
        # A browser tab that closes mid-answer: the connection drops under the relay.
        reader, writer = await asyncio.open_connection(relay.url.host, relay.url.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        while b"event: message" not in await reader.readline():
            pass
        writer.transport.abort()
        deadline = time.monotonic() + 30
        while engine.stats().running_rows:
            assert time.monotonic() < deadline, engine.stats()
            await asyncio.sleep(0.01)  # polling the engine's state
        async with relay.session.get(relay.url) as page:  # the relay is still serving
            assert page.status == 200
    assert engine.stats().generated_tokens - before < 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
