"""examples/chat_frontend in headless Chromium: deltas render as they arrive, and Stop
cancels the gRPC call on the server.

Needs aiohttp and Playwright's Python package (``pip install -e '.[examples]' playwright``)
and Debian's Chromium (``apt-get install -y chromium``); skipped, saying which, without them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from modelwire import AsyncClient

CHROMIUM = "/usr/bin/chromium"
# On a developer's machine without Chromium the module is skipped, saying so; in CI
# (CI=true, where .ci/run installs it) a missing browser fails instead of hiding.
if not shutil.which(CHROMIUM):
    message = f"the browser test needs {CHROMIUM}: apt-get install -y chromium"
    if os.environ.get("CI"):
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)

from aiohttp.test_utils import TestServer  # noqa: E402
from playwright.async_api import Page, async_playwright  # noqa: E402

from tests.helpers import load_example  # noqa: E402

APP_PATH = Path(__file__).parent.parent / "examples" / "chat_frontend" / "app.py"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# A short prompt and its answer fit tiny-llama's 512-token context.
MAX_NEW_TOKENS = 480
STOP_AT_FIRST_DELTA = """() => {
  const observer = new MutationObserver(() => {
    const answer = document.querySelector(".answer");
    if (answer && Number(answer.dataset.deltas) >= 1) {
      observer.disconnect();
      document.getElementById("stop").click();
    }
  });
  const log = document.getElementById("log");
  observer.observe(log, {subtree: true, attributes: true, attributeFilter: ["data-deltas"]});
}"""


def _load_app() -> Any:
    return load_example(APP_PATH, "chat_frontend_app")


@pytest.fixture
async def page(server: Any) -> AsyncIterator[Page]:
    app_module = _load_app()
    settings = app_module.Settings(
        server.target, model="tiny-llama", max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True
    )
    async with TestServer(app_module.create_app(settings)) as web_server:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
            )
            page = await browser.new_page()
            page.set_default_timeout(60_000)
            await page.goto(str(web_server.make_url("/")))
            yield page
            await browser.close()


async def _ask(page: Page, text: str) -> None:
    await page.fill("#message", text)
    await page.click("#send")


async def test_stop_cancels_the_call_on_the_server(server: Any, page: Page) -> None:
    engine = server.runner("tiny-llama").engine
    generated_before = engine.stats().generated_tokens
    # The page itself clicks Stop when the first delta renders: a round trip through
    # Playwright can take longer than the whole answer on a fast machine.
    await page.evaluate(STOP_AT_FIRST_DELTA)
    await _ask(page, "Tell me a long story")
    answer = page.locator(".answer").nth(0)
    await page.wait_for_function("document.querySelector('.answer').dataset.state !== 'streaming'")
    # "stopped": the stream ended without a finish reason, i.e. it was cancelled; had Stop
    # not reached the call, the answer would have run to its length ("done").
    assert await answer.get_attribute("data-state") == "stopped"
    deadline = time.monotonic() + 30
    while (stats := engine.stats()).running_rows and time.monotonic() < deadline:
        await page.wait_for_timeout(10)  # polling the engine's state
    assert stats.running_rows == 0
    assert stats.generated_tokens - generated_before < MAX_NEW_TOKENS, stats


async def test_answers_render_delta_by_delta(client: AsyncClient, page: Page) -> None:
    reference = await client.generate(
        messages=[{"role": "user", "content": "Hello"}],
        model="tiny-llama",
        max_new_tokens=MAX_NEW_TOKENS,
        ignore_eos=True,
    )
    await _ask(page, "Hello")
    answer = page.locator(".answer").nth(0)
    await page.wait_for_function("document.querySelector('.answer').dataset.state !== 'streaming'")
    assert await answer.get_attribute("data-state") == "done"
    assert await answer.text_content() == reference.text
    assert int(await answer.get_attribute("data-deltas") or 0) > 3  # rendered piece by piece


async def test_a_chat_past_the_context_goes_on(page: Page) -> None:
    """Each 480-token answer fills most of tiny-llama's 512 positions: every later turn
    leaves the older ones out (the page forgets them too) instead of failing."""
    for turn in range(3):
        await _ask(page, f"And then? ({turn})")
        await page.wait_for_function(
            f"document.querySelectorAll('.answer')[{turn}]?.dataset.state === 'done'"
        )
    assert await page.locator(".error").count() == 0
    kept = await page.evaluate("history.length")
    assert kept < 6  # three questions and answers, some of them forgotten
