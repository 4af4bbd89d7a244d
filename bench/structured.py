"""Structured output: the cost of a JSON-schema constraint, against free generation.

A GPT-2-small-shaped random model (bench/generate.py's: 12 layers, 768 wide, vocab
50257), 32-token prompts, greedy. Contenders run interleaved in one server, median of
``--rounds``; raw numbers are printed beside the ratios:

- throughput of 16 streams sent at once, 128 new tokens each: unconstrained (EOS
  ignored) vs constrained by a JSON schema whose shortest document is longer than 128
  tokens (an object holding an array of at least 100 strings), so both run all 128
  steps and the difference is the mask: following the tokens, filling each row's
  bitmask and applying it;
- time to first token of one request alone: unconstrained vs constrained by a new
  schema of 20 properties (new property names every time, so never cached: the
  compile is on the request's path); the median of three of each per round.

    python bench/structured.py [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import base_parser, medians, model_entry, serve, set_threads
from generate import build_model, make_prompts

STREAMS = 16
NEW_TOKENS = 128
PROPERTIES = 20
TTFT_TRIES = 3  # per round, each with its own new schema; the round keeps the median
# Never closed within NEW_TOKENS: each of the 100 strings takes at least two tokens.
LONG_SCHEMA = {
    "type": "object",
    "properties": {"notes": {"type": "array", "items": {"type": "string"}, "minItems": 100}},
    "required": ["notes"],
}


def wide_schema(salt: str) -> dict[str, Any]:
    """A schema of PROPERTIES properties of mixed types, named after ``salt``."""
    kinds = [
        {"type": "integer", "minimum": 0, "maximum": 9999},
        {"type": "string", "maxLength": 16},
        {"enum": ["red", "green", "blue"]},
        {"type": "boolean"},
        {"type": "array", "items": {"type": "number"}, "maxItems": 4},
    ]
    names = [f"{salt}_field_{i}" for i in range(PROPERTIES)]
    return {
        "type": "object",
        "properties": {name: kinds[i % len(kinds)] for i, name in enumerate(names)},
        "required": names,
        "additionalProperties": False,
    }


async def stream(client: Any, prompt: str, fmt: Any) -> tuple[float, float, int]:
    """(first token, last token, tokens) as perf_counter instants, from the call's start."""
    started = time.perf_counter()
    first, tokens = 0.0, 0
    extra = {"response_format": fmt} if fmt is not None else {"ignore_eos": True}
    async with client.generate_stream(
        prompt, model="bench", temperature=0, max_new_tokens=NEW_TOKENS, **extra
    ) as chunks:
        async for chunk in chunks:
            if chunk.tokens and not first:
                first = time.perf_counter()
            tokens += len(chunk.tokens)
    return first - started, time.perf_counter() - started, tokens


async def throughput(client: Any, prompts: list[str], fmt: Any) -> float:
    started = time.perf_counter()
    results = await asyncio.gather(*(stream(client, p, fmt) for p in prompts))
    assert all(r[2] == NEW_TOKENS for r in results), [r[2] for r in results]
    return len(prompts) * NEW_TOKENS / (time.perf_counter() - started)


async def ttft(client: Any, prompt: str, fmt: Any) -> float:
    first, _, _ = await stream(client, prompt, fmt)
    return first


async def main() -> None:
    args = base_parser(__doc__, None).parse_args()
    from modelwire import JsonSchema

    set_threads(args.threads)
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)
        print(f"  ... {name}: {value:.3f}", file=sys.stderr, flush=True)

    from modelwire import AsyncClient

    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp))
        prompts = make_prompts(path, STREAMS)
        entry = model_entry("bench", "text-generation", path, max_batch_tokens=16384)
        with serve(Path(tmp) / "bench.yaml", [entry], args.threads) as server:
            async with AsyncClient(server.target, timeout=600) as client:
                await client.wait_until_ready(timeout=300)
                long = JsonSchema(LONG_SCHEMA)
                # Warm-up at the measured batch size, both kinds: the first batch of 16
                # rows is several times slower (allocations, kernel choices).
                await throughput(client, prompts, None)
                await throughput(client, prompts, long)
                for r in range(args.rounds):
                    record("free, 16 streams", await throughput(client, prompts, None))
                    record("schema, 16 streams", await throughput(client, prompts, long))
                    free, new = [], []
                    for i in range(TTFT_TRIES):
                        free.append(await ttft(client, prompts[i], None))
                        schema = json.dumps(wide_schema(f"r{r}_{i}_{time.time_ns()}"))
                        new.append(await ttft(client, prompts[i], JsonSchema(schema)))
                    record("ttft free", statistics.median(free))
                    record("ttft new 20-property schema", statistics.median(new))
    report(results, args.rounds, args.threads)


def report(results: dict[str, list[float]], rounds: int, threads: int) -> None:
    med = medians(results)
    print(
        f"Structured output, GPT-2-small-shaped random model, cpu, {threads} threads, "
        f"{STREAMS} streams x {NEW_TOKENS} tokens, greedy, median of {rounds}"
    )
    for name, values in results.items():
        unit = "s" if name.startswith("ttft") else "tok/s"
        runs = ", ".join(f"{v:.3f}" if unit == "s" else f"{v:.1f}" for v in values)
        print(f"  {name:<28} {med[name]:>9.3f} {unit:<6} ({runs})")
    rows = [
        ("schema vs free throughput", "schema, 16 streams", "free, 16 streams", ">= 0.9"),
        ("TTFT new schema vs free", "ttft new 20-property schema", "ttft free", "<= 1.5"),
    ]
    print("ratios (target): of the medians; per round")
    for label, top, bottom, target in rows:
        paired = [a / b for a, b in zip(results[top], results[bottom], strict=True)]
        print(
            f"  {label:<27} {med[top] / med[bottom]:.2f}x ({target}); "
            f"per round {', '.join(f'{p:.2f}' for p in paired)}"
        )


if __name__ == "__main__":
    asyncio.run(main())
