"""Soak: mixed load against one server for a set time; throughput, errors, memory.

Starts a server subprocess on small preset models (or uses ``--target``), then runs
``--concurrency`` workers for ``--seconds``, each picking calls at random: ClassifyText,
Embed, FillMask, AnswerQuestion, Tokenize, a streamed Generate, and a small share of
calls that must fail (an unknown model, an over-long input). Prints calls per second by
kind, error counts by status code, and the server's RSS before and after (a leak shows
as RSS that keeps growing across longer runs).

    python bench/soak.py [--seconds 60] [--concurrency 16] [--target host:port]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from _common import model_entry, serve

from modelwire import APIError, AsyncClient

MODELS = {
    "tiny-sentiment": "sentiment-analysis",
    "tiny-embed": "feature-extraction",
    "tiny-fill-mask": "fill-mask",
    "tiny-qa": "question-answering",
    "tiny-gpt2": "text-generation",
}
Call = Callable[[AsyncClient, random.Random], Awaitable[object]]


async def _generate_all(client: AsyncClient, rng: random.Random) -> None:
    stream = client.generate_stream("Once", model="tiny-gpt2", max_new_tokens=rng.randint(1, 32))
    async for _ in stream:
        pass


CALLS: dict[str, tuple[float, Call]] = {
    "classify": (3, lambda c, r: c.classify_text(["good"] * r.randint(1, 8))),
    "embed": (3, lambda c, r: c.embed(["hello world"] * r.randint(1, 8))),
    "fill_mask": (2, lambda c, r: c.fill_mask("Paris is the [MASK] of France.")),
    "answer": (2, lambda c, r: c.answer_question("Who?", "Ada wrote the program.")),
    "tokenize": (1, lambda c, r: c.tokenize("some text to count", model="tiny-gpt2")),
    "generate": (2, _generate_all),
    "bad_model": (0.5, lambda c, r: c.classify_text("x", model="no-such-model")),
    "too_long": (0.5, lambda c, r: c.classify_text("x " * 60_000)),
}


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak_models() -> list[str]:
    from modelwire_server import preset

    return [
        model_entry(name, task, preset.ensure_model(name), device="cpu", max_input_chars=50000)
        for name, task in MODELS.items()
    ]


async def worker(
    client: AsyncClient, until: float, seed: int, done: Counter[str], errors: Counter[str]
) -> None:
    rng = random.Random(seed)
    names = list(CALLS)
    weights = [CALLS[n][0] for n in names]
    while time.monotonic() < until:
        name = rng.choices(names, weights)[0]
        try:
            await CALLS[name][1](client, rng)
            done[name] += 1
        except APIError as exc:
            code = exc.code.name if exc.code is not None else "NO_STATUS"
            errors[f"{name}:{code}"] += 1


async def soak(target: str, seconds: float, concurrency: int, pid: int | None) -> None:
    async with AsyncClient(target, timeout=60, max_retries=0) as client:
        await client.wait_until_ready(timeout=300)
        await CALLS["classify"][1](client, random.Random(0))  # warm the path
        before = rss_mb(pid) if pid else float("nan")
        done: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(*(worker(client, until, i, done, errors) for i in range(concurrency)))
        elapsed = time.monotonic() - started
        after = rss_mb(pid) if pid else float("nan")
    total = sum(done.values())
    print(f"{total} calls OK in {elapsed:.1f} s: {total / elapsed:.1f}/s")
    for name, count in sorted(done.items()):
        print(f"  {name:<10} {count:>7}  {count / elapsed:8.1f}/s")
    print("errors by call and code:" if errors else "errors: none")
    for key, count in sorted(errors.items()):
        print(f"  {key:<28} {count:>7}")
    print(f"server RSS: {before:.0f} MiB before, {after:.0f} MiB after ({after - before:+.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--target", help="an already running server (RSS is then not read)")
    args = parser.parse_args()
    if args.target:
        asyncio.run(soak(args.target, args.seconds, args.concurrency, None))
        return
    with (
        tempfile.TemporaryDirectory() as root,
        serve(Path(root) / "soak.yaml", soak_models()) as server,
    ):
        asyncio.run(soak(server.target, args.seconds, args.concurrency, server.proc.pid))


if __name__ == "__main__":
    main()
