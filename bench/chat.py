"""Prefix caching and chunked prefill: multi-turn chat TTFT, and streams during a long prompt.

A GPT-2-small-shaped random model (built offline, as bench/generate.py does), served by
one server subprocess (reached through the SDK) under several model entries that differ
only in the two settings; the contenders run interleaved in the same run, and the report
prints raw numbers beside the ratios.

- Chat: ``--users`` users take turns (user 1's turn 1, user 2's turn 1, ..., then the
  turn 2s), one request at a time; every conversation starts with the same ~700-token
  system prompt, and each follow-up turn repeats the turn before it plus the reply and a
  new user message. Each message goes to the ``prefix_caching: true`` entry and to the
  ``false`` one (alternating which goes first); client-side time to first token of the
  follow-up turns is compared (target: >= 5x lower with the cache), and the cached
  prompt tokens the server reported are printed.
- Stall: 8 streams decode (32-token prompts) and, once each has two tokens, a
  ~900-token prompt arrives. The gaps between the 8 streams' tokens (client-side, from
  their third token to their last) give the median and p99 inter-token latency, per
  entry: ``prefill_chunk_tokens`` of each ``--chunks`` value vs one at least the
  prompt's length (the whole prompt in one step: the stall). Target: p99 <= 3x median.

    python bench/chat.py [--threads 2] [--rounds 3] [--users 8] [--turns 3]
        [--chunks 512,64,32] [--quick]

``--quick``: 4 users, 2 turns, 1 stall round, 48 new tokens per stream (about 80 s with
``--threads 1``). On a 2-core box that other jobs share, 2 torch threads wait on each
other whenever one is descheduled (steps 5-10x slower, and erratic): use ``--threads 1``
there.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import base_parser, model_entry, peak_rss_mib, serve, set_threads
from generate import build_model

SYSTEM_TOKENS = 700
LONG_PROMPT_TOKENS = 900
STREAM_PROMPT_TOKENS = 32
REPLY_TOKENS = 16
WORDS = (
    "the a of and to in is was it that for on with as by at ship sea tide wind port "
    "model server token stream cache prompt block chunk batch request user answer"
).split()


def text_of(tokenizer: Any, tokens: int, seed: int) -> str:
    """Random words that tokenize to about ``tokens`` tokens."""
    rng = random.Random(seed)
    words: list[str] = []
    while len(tokenizer(" ".join(words))["input_ids"]) < tokens:
        words += rng.choices(WORDS, k=max(1, (tokens - len(words)) // 3))
    while len(tokenizer(" ".join(words))["input_ids"]) > tokens:
        words.pop()
    return " ".join(words)


async def first_token(
    client: Any, model: str, messages: list[dict[str, str]]
) -> tuple[float, str, int]:
    """(seconds to the first token, the reply's text, cached prompt tokens)."""
    started = time.perf_counter()
    first = 0.0
    text: list[str] = []
    cached = 0
    async with client.generate_stream(
        messages=messages, model=model, temperature=0, max_new_tokens=REPLY_TOKENS,
        ignore_eos=True,
    ) as stream:  # fmt: skip
        async for chunk in stream:
            if chunk.tokens and not first:
                first = time.perf_counter() - started
            text.append(chunk.text)
            if chunk.usage is not None:
                cached = chunk.usage.cached_prompt_tokens
    return first, "".join(text), cached


async def chat(client: Any, tokenizer: Any, users: int, turns: int) -> dict[str, Any]:
    """TTFTs of every turn on both entries; cached prompt tokens of the caching one."""
    system = text_of(tokenizer, SYSTEM_TOKENS, seed=1)
    chats = [[{"role": "system", "content": system}] for _ in range(users)]
    out: dict[str, Any] = {"on first": [], "off first": [], "on": [], "off": [], "cached": []}
    out["prompt"] = []
    for turn in range(turns):
        for user in range(users):
            said = text_of(tokenizer, 20, seed=100 * user + turn)
            messages = [*chats[user], {"role": "user", "content": said}]
            order = ["on", "off"] if (user + turn) % 2 == 0 else ["off", "on"]
            replies = {}
            for side in order:
                ttft, reply, cached = await first_token(client, f"chat-{side}", messages)
                out[f"{side} first" if turn == 0 else side].append(ttft)
                replies[side] = reply
                if side == "on" and turn:
                    out["cached"].append(cached)
            if turn:
                rendered = tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
                out["prompt"].append(
                    len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
                )
            assert replies["on"] == replies["off"], "the cache changed a greedy reply"
            chats[user] = [*messages, {"role": "assistant", "content": replies["on"]}]
    return out


async def stream_gaps(
    client: Any, model: str, prompt: str, new_tokens: int, started: asyncio.Semaphore
) -> list[float]:
    """Gaps between the stream's tokens from its third on (a message of k tokens: one
    gap, then k - 1 of 0)."""
    times: list[tuple[float, int]] = []
    count = 0
    async with client.generate_stream(
        prompt, model=model, temperature=0, max_new_tokens=new_tokens, ignore_eos=True
    ) as stream:
        async for chunk in stream:
            if not chunk.tokens:
                continue
            before, count = count, count + len(chunk.tokens)
            times.append((time.perf_counter(), len(chunk.tokens)))
            if before < 2 <= count:
                started.release()
    gaps: list[float] = []
    for (a, _), (b, k) in itertools.pairwise(times[1:]):
        gaps += [b - a] + [0.0] * (k - 1)
    return gaps


async def stall(
    client: Any, model: str, prompts: list[str], long_prompt: str, new_tokens: int
) -> tuple[list[float], float]:
    """The 8 streams' token gaps while ``long_prompt`` arrives, and its own TTFT."""
    started = asyncio.Semaphore(0)
    streams = [
        asyncio.ensure_future(stream_gaps(client, model, p, new_tokens, started)) for p in prompts
    ]
    for _ in streams:
        await started.acquire()
    sent = time.perf_counter()
    ttft = 0.0
    async with client.generate_stream(
        long_prompt, model=model, temperature=0, max_new_tokens=2, ignore_eos=True
    ) as stream:
        async for chunk in stream:
            if chunk.tokens and not ttft:
                ttft = time.perf_counter() - sent
    gaps = [g for result in await asyncio.gather(*streams) for g in result]
    return gaps, ttft


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = base_parser(__doc__, None)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--chunks", default="512,64,32", help="prefill_chunk_tokens to compare")
    parser.add_argument("--stream-tokens", type=int, default=96)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.users, args.turns, args.rounds, args.stream_tokens = 4, 2, 1, 48
    chunks = [int(c) for c in args.chunks.split(",")]

    from transformers import AutoTokenizer

    from modelwire import AsyncClient

    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(Path(tmp), "gpt2")
        tokenizer = AutoTokenizer.from_pretrained(path)
        common = {"device": "cpu", "dtype": "float32", "max_batch_tokens": 16384}
        entries = [
            model_entry("chat-on", "text-generation", path, **common, prefix_caching=True),
            model_entry("chat-off", "text-generation", path, **common, prefix_caching=False),
        ]
        stall_names = {f"chunk {c}": f"stall-{c}" for c in chunks}
        stall_names["whole prompt"] = "stall-whole"
        for c in [*chunks, 1024]:
            name = f"stall-{c}" if c != 1024 else "stall-whole"
            entries.append(model_entry(name, "text-generation", path, **common,
                                       prefix_caching=False, prefill_chunk_tokens=c))  # fmt: skip
        prompts = [text_of(tokenizer, STREAM_PROMPT_TOKENS, seed=500 + i) for i in range(8)]
        long_prompt = text_of(tokenizer, LONG_PROMPT_TOKENS, seed=7)
        with serve(Path(tmp) / "chat.yaml", entries, args.threads) as server:
            async with AsyncClient(server.target, timeout=600) as client:
                await client.wait_until_ready(timeout=600)
                for model in ("chat-on", "chat-off", *stall_names.values()):  # warm-ups
                    await client.generate("warm up", model=model, max_new_tokens=2)
                chat_started = time.perf_counter()
                chats = await chat(client, tokenizer, args.users, args.turns)
                chat_s = time.perf_counter() - chat_started
                gaps: dict[str, list[float]] = {label: [] for label in stall_names}
                ttfts: dict[str, list[float]] = {label: [] for label in stall_names}
                for _ in range(args.rounds):
                    for label, model in stall_names.items():
                        got, ttft = await stall(
                            client, model, prompts, long_prompt, args.stream_tokens
                        )
                        gaps[label] += got
                        ttfts[label].append(ttft)
            rss = peak_rss_mib(server.proc.pid)
    report(args, chats, chat_s, gaps, ttfts, rss, len(tokenizer(long_prompt)["input_ids"]))


def report(
    args: Any,
    chats: dict[str, Any],
    chat_s: float,
    gaps: dict[str, list[float]],
    ttfts: dict[str, list[float]],
    rss: float,
    long_tokens: int,
) -> None:
    fmt = ", ".join
    print(
        f"Chat, GPT-2-small-shaped random model, cpu float32, {args.threads} threads; "
        f"server peak RSS {rss:.0f} MiB"
    )
    on, off = chats["on"], chats["off"]
    print(
        f"multi-turn chat: {args.users} users x {args.turns} turns, {SYSTEM_TOKENS}-token "
        f"system prompt, {REPLY_TOKENS}-token replies ({chat_s:.0f} s)"
    )
    print(f"  follow-up prompts (tokens): {fmt(str(n) for n in chats['prompt'])}")
    print(f"  cached prompt tokens reported: {fmt(str(n) for n in chats['cached'])}")
    for name, values in (("cache on ", on), ("cache off", off)):
        print(
            f"  follow-up TTFT {name}: median {statistics.median(values) * 1000:8.1f} ms "
            f"({fmt(f'{v * 1000:.0f}' for v in values)})"
        )
    for name in ("on first", "off first"):
        values = chats[name]
        print(
            f"  first-turn TTFT {name[:-6]:<3}: median {statistics.median(values) * 1000:8.1f} ms "
            f"({fmt(f'{v * 1000:.0f}' for v in values)})"
        )
    per_turn = statistics.median(b / a for a, b in zip(on, off, strict=True))
    ratio = statistics.median(off) / statistics.median(on)
    print(
        f"  ratio off/on of the medians {ratio:.1f}x; median per-turn ratio {per_turn:.1f}x "
        "(target >= 5x)"
    )
    print(
        f"stall: 8 streams of {args.stream_tokens} tokens while a {long_tokens}-token prompt "
        f"arrives, {args.rounds} round(s), interleaved"
    )
    for label, values in gaps.items():
        median = statistics.median(values)
        p99 = percentile(values, 0.99)
        print(
            f"  {label:<13} inter-token median {median * 1000:7.1f} ms, p99 "
            f"{p99 * 1000:7.1f} ms, max {max(values) * 1000:7.1f} ms, p99/median "
            f"{p99 / median:5.1f}x (target <= 3x); long prompt TTFT "
            f"{fmt(f'{t:.2f}' for t in ttfts[label])} s ({len(values)} gaps)"
        )


if __name__ == "__main__":
    asyncio.run(main())
